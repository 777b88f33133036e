# Shared by bench/soak.sh and bench/hostile.sh: `source bench/stack.sh NAME` (from the
# repository root) makes the scratch directory $T (removed at exit with every process in
# pids), checks the tools, builds keyward unless KEYWARD_BIN names a binary, and defines
# start_stack: the stack they drive. A private PostgreSQL 15 (TLS only, SCRAM, pgbench tables),
# Redis 7 (TLS only, client certificate required, ACL user `soak` with two valid passwords),
# an HTTPS API (nginx: 200 only with X-Api-Key key-a or key-b), and keyward in front of them
# (resources pg, redis, api; the admin endpoint on $ADMIN) with $EXTRA_YAML appended to its
# resources and $STACK_TOP to its top level. Sets PGPORT RPORT UP KP KR KH KX ADMIN KW; sample prints keyward's RSS and fds.
B=/usr/lib/postgresql/15/bin
T=$(mktemp -d /tmp/keyward-$1.XXXXXX)
chmod 755 "$T"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT
AS_PG=(); [ "$(id -u)" = 0 ] && AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --)
source bench/lib.sh
need redis-server:redis-server redis-benchmark:redis-tools wrk:wrk openssl:openssl pgbench:postgresql-client-15
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$B/postgres" ] || { echo "missing $B/postgres (Debian: postgresql-15)" >&2; exit 2; }

KW_BIN=$(keyward_bin)

start_stack() {
make_pki
chmod 600 "$T/server.key"; chmod 644 "$T/ca.pem" "$T/server.pem"
cp "$T/ca.pem" "$T/upstream-ca.pem"
# keyward's first client certificate (Redis requires one).
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$T/client.key" -out "$T/client.csr" -subj "/CN=soak-client" 2>/dev/null
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' > "$T/client.ext"
openssl x509 -req -in "$T/client.csr" -CA "$T/ca.pem" -CAkey "$T/ca.key" -CAcreateserial -days 2 -extfile "$T/client.ext" -out "$T/client.pem" 2>/dev/null
echo pw-a > "$T/redis-pw"; echo key-a > "$T/api-key"

# PostgreSQL 15: TLS only, SCRAM.
echo adminpw > "$T/pwfile"
mkdir -p "$T/pg"; cp "$T/server.pem" "$T/server.key" "$T/pg/"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$T/pg" "$T/pwfile"
PGPORT=$(free_port)
"${AS_PG[@]}" $B/initdb -D "$T/pg/data" -U postgres --pwfile="$T/pwfile" -A scram-sha-256 --auth-local=trust -E UTF8 --locale=C --no-sync --no-instructions >/dev/null
cat >> "$T/pg/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$T/pg'
ssl = on
ssl_cert_file = '$T/pg/server.pem'
ssl_key_file = '$T/pg/server.key'
fsync = off
synchronous_commit = off
max_connections = 100
EOF
printf 'local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\nhostnossl all all 0.0.0.0/0 reject\n' > "$T/pg/data/pg_hba.conf"
"${AS_PG[@]}" $B/postgres -D "$T/pg/data" > "$T/pg.log" 2>&1 & pids+=($!)
until $B/pg_isready -q -h 127.0.0.1 -p "$PGPORT"; do sleep 0.05; done
"${AS_PG[@]}" $B/psql -h "$T/pg" -p "$PGPORT" -U postgres -qc "CREATE ROLE benchuser LOGIN PASSWORD 'benchpw'" -c "CREATE DATABASE bench OWNER benchuser"
"${AS_PG[@]}" $B/pgbench -h "$T/pg" -p "$PGPORT" -U benchuser -i -s 1 -q bench >/dev/null 2>&1

# Redis 7: TLS only, client certificate required, an ACL user with two valid passwords.
RPORT=$(free_port)
cat > "$T/redis.conf" <<CONF
bind 127.0.0.1
port 0
tls-port $RPORT
tls-cert-file $T/server.pem
tls-key-file $T/server.key
tls-ca-cert-file $T/ca.pem
tls-auth-clients yes
save ""
appendonly no
dir $T
logfile $T/redis.log
user default off
user soak on >pw-a >pw-b ~* &* +@all
CONF
redis-server "$T/redis.conf" & pids+=($!)

# nginx: HTTPS, answers 200 only with a valid API key.
UP=${UP:-$(free_port)}
mkdir -p "$T/up/tmp"
cat > "$T/up/nginx.conf" <<CONF
daemon off; worker_processes 1; pid $T/up/nginx.pid; error_log $T/up/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $T/up/tmp/body; proxy_temp_path $T/up/tmp/proxy; fastcgi_temp_path $T/up/tmp/fastcgi;
  uwsgi_temp_path $T/up/tmp/uwsgi; scgi_temp_path $T/up/tmp/scgi;
  server { listen 127.0.0.1:$UP ssl; ssl_certificate $T/server.pem; ssl_certificate_key $T/server.key;
    keepalive_requests 1000000;
    location / { if (\$http_x_api_key !~ "^key-(a|b)\$") { return 401; } return 200 'ok\n'; } }
}
CONF
"$NGINX" -e stderr -p "$T/up" -c "$T/up/nginx.conf" & pids+=($!)

KP=$(free_port); KR=$(free_port); KH=$(free_port); KX=$(free_port); ADMIN=$(free_port)
cat > "$T/keyward.yaml.in" <<YAML
admin: { listen: 127.0.0.1:$ADMIN }
log: { level: warn }
${STACK_TOP:-}
resources:
  - name: pg
    protocol: postgres
    listen: 127.0.0.1:$KP
    upstream: localhost:$PGPORT
    tls: { ca: $T/upstream-ca.pem }
    auth: { type: password, username: benchuser, password: benchpw }
  - name: redis
    protocol: redis
    listen: 127.0.0.1:$KR
    upstream: localhost:$RPORT
    tls: { ca: $T/upstream-ca.pem, client_cert: $T/client.pem, client_key: $T/client.key }
    auth: { type: password, username: soak, password: "\${file:$T/redis-pw}" }
  - name: api
    protocol: http
    listen: 127.0.0.1:$KH
    upstream: https://localhost:$UP
    tls: { ca: $T/upstream-ca.pem }
    auth: { type: api_key, header: X-Api-Key, value: "\${file:$T/api-key}" }
${EXTRA_YAML}
YAML
cat > "$T/extra.yaml" <<YAML
  - name: extra
    protocol: tcp
    listen: 127.0.0.1:$KX
    upstream: localhost:$UP
    tls: { ca: $T/upstream-ca.pem }
YAML
cat > "$T/delay.lua" <<'LUA'
function delay() return 5 end
done = function(summary, latency, requests)
  io.write(string.format("WRK %d %d %d %.3f\n", summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(99) / 1000))
end
LUA
cp "$T/keyward.yaml.in" "$T/keyward.yaml"
"$KW_BIN" run -c "$T/keyward.yaml" 2> "$T/keyward.log" & KW=$!; pids+=($!)
until curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null; do sleep 0.05; kill -0 $KW || { cat "$T/keyward.log"; exit 1; }; done
for _ in $(seq 200); do redis-cli -p "$KR" PING 2>/dev/null | grep -q PONG && break; sleep 0.05; done
redis-cli -p "$KR" PING | grep -q PONG || { echo "Redis through keyward does not answer:"; tail -5 "$T/keyward.log" "$T/redis.log"; exit 1; }
}

# The real clients, in the background for $2 seconds under the name $1: pgbench -S (2 clients,
# 200 tx/s, a per-transaction log for the p99) and wrk (2 connections, a request every 5 ms
# each). Sets PG_PID and WRK_PID; steady_results reads what they printed once both ended.
steady_load() {
  ( cd "$T" && pgbench -h 127.0.0.1 -p "$KP" -U benchuser -n -S -c 2 -R 200 -T "$2" -l --log-prefix="pg-$1" bench > "pg-$1.out" 2>&1 ) &
  PG_PID=$!
  wrk -t1 -c2 -d"$2s" -s "$T/delay.lua" "http://127.0.0.1:$KH/" > "$T/wrk-$1.out" 2>&1 &
  WRK_PID=$!
}

# steady_load $1's figures, one line: pg transactions, failed, p99 ms; http requests, socket
# errors, non-2xx, p99 ms ("?" where a tool printed nothing).
steady_results() {
  local tx failed p99 http
  tx=$(grep -oE 'number of transactions actually processed: [0-9]+' "$T/pg-$1.out" | grep -oE '[0-9]+$' || echo 0)
  failed=$(grep -oE 'number of failed transactions: [0-9]+' "$T/pg-$1.out" | grep -oE '[0-9]+$' || echo "?")
  grep -q "aborted" "$T/pg-$1.out" && failed="$failed+aborted"
  p99=$(cat "$T"/pg-$1.[0-9]* 2>/dev/null | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {if (NR) printf "%.2f", a[int(NR*0.99)]/1000; else print "?"}')
  http=$(grep '^WRK' "$T/wrk-$1.out" | cut -d' ' -f2-) || true
  echo "$tx $failed $p99 ${http:-0 ? ? ?}"
}

sample() { # RSS (KiB) and open fds of keyward
  echo "$(awk '/VmRSS/ {print $2}' /proc/$KW/status) $(ls /proc/$KW/fd | wc -l)"
}
