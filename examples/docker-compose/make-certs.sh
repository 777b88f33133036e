#!/usr/bin/env sh
# A throwaway CA and a server certificate for the compose service "postgres" (EC P-256).
set -eu
cd "$(dirname "$0")"
mkdir -p certs secrets
openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 365 \
  -keyout certs/ca.key -out certs/ca.crt -subj "/CN=compose-example-ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign"
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
  -keyout certs/server.key -out certs/server.csr -subj "/CN=postgres"
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:postgres\n' > certs/server.ext
openssl x509 -req -in certs/server.csr -CA certs/ca.crt -CAkey certs/ca.key -CAcreateserial \
  -days 365 -extfile certs/server.ext -out certs/server.crt
rm certs/server.csr certs/server.ext
chmod 644 certs/server.key   # the postgres service copies it to 0600 for itself
