# Shared by the bench scripts (sourced): a free loopback port, and a throwaway PKI in $T.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# $T/ca.pem, and $T/server.pem + $T/server.key for localhost and 127.0.0.1 (EC P-256).
make_pki() {
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$T/ca.key" -out "$T/ca.pem" \
    -days 2 -subj "/CN=bench-ca" -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$T/server.key" -out "$T/server.csr" -subj "/CN=localhost" 2>/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$T/server.ext"
  openssl x509 -req -in "$T/server.csr" -CA "$T/ca.pem" -CAkey "$T/ca.key" -CAcreateserial -days 2 -extfile "$T/server.ext" -out "$T/server.pem" 2>/dev/null
}
