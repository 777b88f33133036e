#!/usr/bin/env bash
# Soak: keyward in front of a private PostgreSQL 15 (TLS, SCRAM), Redis 7 (TLS with a client
# certificate, ACL user) and an HTTPS API (nginx, API key checked), driven at a steady rate by
# pgbench, redis-benchmark and wrk at the same time, in windows of WINDOW seconds, while
# bench/soak_reloads.py makes at least MIN_RELOADS reloads (CA bundle rollovers, client
# certificate and secret rotations, a resource added and removed, a broken config every tenth
# step, which must be refused and leave service untouched).
#
#   bash bench/soak.sh                         # SOAK_SECONDS=600 MIN_RELOADS=1000 WINDOW=30
#   SOAK_SECONDS=120 MIN_RELOADS=200 bash bench/soak.sh
#
# Needs postgresql-15, redis-server + redis-tools, nginx, wrk, openssl (Debian packages); run as
# root (PostgreSQL runs as postgres). Prints per window: transactions/requests and failures
# per client, p99; then per phase (first, middle, last third) the median p99, keyward's RSS and
# open file descriptors at start, middle and end, and the reloads applied/refused.
# It asserts nothing; the figures go in README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SOAK_SECONDS=${SOAK_SECONDS:-600}
MIN_RELOADS=${MIN_RELOADS:-1000}
WINDOW=${WINDOW:-30}
B=/usr/lib/postgresql/15/bin
T=$(mktemp -d /tmp/keyward-soak.XXXXXX)
chmod 755 "$T"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT
AS_PG=(); [ "$(id -u)" = 0 ] && AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --)
source bench/lib.sh
need redis-server:redis-server redis-benchmark:redis-tools wrk:wrk openssl:openssl pgbench:postgresql-client-15
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$B/postgres" ] || { echo "missing $B/postgres (Debian: postgresql-15)" >&2; exit 2; }

[ -n "${KEYWARD_BIN:-}" ] || cargo build --release --locked --quiet
KW_BIN=${KEYWARD_BIN:-./target/release/keyward}
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
UP=$(free_port)
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
YAML
cat > "$T/extra.yaml" <<YAML
  - name: extra
    protocol: tcp
    listen: 127.0.0.1:$KX
    upstream: localhost:$UP
    tls: { ca: $T/upstream-ca.pem }
YAML
cp "$T/keyward.yaml.in" "$T/keyward.yaml"
"$KW_BIN" run -c "$T/keyward.yaml" 2> "$T/keyward.log" & KW=$!; pids+=($!)
until curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null; do sleep 0.05; kill -0 $KW || { cat "$T/keyward.log"; exit 1; }; done
for _ in $(seq 200); do redis-cli -p "$KR" PING 2>/dev/null | grep -q PONG && break; sleep 0.05; done
redis-cli -p "$KR" PING | grep -q PONG || { echo "Redis through keyward does not answer:"; tail -5 "$T/keyward.log" "$T/redis.log"; exit 1; }

sample() { # RSS (KiB) and open fds of keyward
  echo "$(awk '/VmRSS/ {print $2}' /proc/$KW/status) $(ls /proc/$KW/fd | wc -l)"
}
cat > "$T/delay.lua" <<'LUA'
function delay() return 5 end
done = function(summary, latency, requests)
  io.write(string.format("WRK %d %d %d %.3f\n", summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(99) / 1000))
end
LUA

echo "soak: ${SOAK_SECONDS}s, windows of ${WINDOW}s, at least $MIN_RELOADS reloads; keyward $($KW_BIN --version)"
START_SAMPLE=$(sample)
python3 bench/soak_reloads.py "$T" "$ADMIN" "$SOAK_SECONDS" "$MIN_RELOADS" > "$T/reloads.json" 2> "$T/reloads.err" & RELOADER=$!
windows=$(( (SOAK_SECONDS + WINDOW - 1) / WINDOW ))
: > "$T/windows.tsv"
for w in $(seq 1 "$windows"); do
  # pgbench: 2 clients, 200 tx/s, per-transaction log for the p99.
  ( cd "$T" && pgbench -h 127.0.0.1 -p "$KP" -U benchuser -n -S -c 2 -R 200 -T "$WINDOW" -l --log-prefix="pg$w" bench > "pg$w.out" 2>&1 ) &
  PGB=$!
  # redis-benchmark: 2 clients, GET/SET in repeated short runs for the window.
  ( end=$((SECONDS + WINDOW)); n=0; f=0; p99s=""
    while [ $SECONDS -lt $end ]; do
      out=$(redis-benchmark -p "$KR" -c 2 -n 2000 -t get,set 2>&1) || f=$((f + 1))
      echo "$out" | grep -qiE "error|refused" && f=$((f + 1))
      n=$((n + $(echo "$out" | grep -cE '^ +[0-9]+ requests completed|requests completed in') * 2000))
      p99s="$p99s $(echo "$out" | awk 'tolower($0) ~ /latency summary/ {getline; getline; print $5}' | sort -n | tail -1)"
      sleep 0.5
    done
    echo "REDIS $n $f $(echo $p99s | tr ' ' '\n' | sort -n | tail -1)" ) > "$T/redis$w.out" &
  RB=$!
  wrk -t1 -c2 -d"${WINDOW}s" -s "$T/delay.lua" "http://127.0.0.1:$KH/" > "$T/wrk$w.out" 2>&1 &
  WB=$!
  wait $PGB $RB $WB || true
  pg_tx=$(grep -oE 'number of transactions actually processed: [0-9]+' "$T/pg$w.out" | grep -oE '[0-9]+$' || echo 0)
  pg_fail=$(grep -oE 'number of failed transactions: [0-9]+' "$T/pg$w.out" | grep -oE ' [0-9]+' | tr -d ' ' || echo "?")
  grep -q "aborted" "$T/pg$w.out" && pg_fail="$pg_fail+aborted"
  pg_p99=$(cat "$T"/pg$w.* 2>/dev/null | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {if (NR) printf "%.2f", a[int(NR*0.99)]/1000}')
  read -r _ r_n r_f r_p99 < "$T/redis$w.out"
  read -r _ h_n h_err h_status h_p99 < <(grep '^WRK' "$T/wrk$w.out" || echo "WRK 0 ? ? ?")
  printf 'window %3d  pg %6s tx %3s failed p99 %6s ms | redis %7s req %2s failed p99 %6s ms | http %7s req %s errors %s non-2xx p99 %6s ms | rss_kib fds %s\n' \
    "$w" "$pg_tx" "$pg_fail" "$pg_p99" "$r_n" "$r_f" "$r_p99" "$h_n" "$h_err" "$h_status" "$h_p99" "$(sample)"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$pg_tx" "$pg_fail" "$pg_p99" "$r_n" "$r_f" "$r_p99" "$h_n" "$h_err" "$h_status" "$h_p99" >> "$T/windows.tsv"
  [ "$w" -eq $(( (windows + 1) / 2 )) ] && MID_SAMPLE=$(sample)
done
wait $RELOADER || true
END_SAMPLE=$(sample)
echo "reloads: $(cat "$T/reloads.json")"
[ -s "$T/reloads.err" ] && echo "reloader: $(cat "$T/reloads.err")"
echo "keyward rss_kib fds: start $START_SAMPLE, middle ${MID_SAMPLE:-?}, end $END_SAMPLE"
python3 - "$T/windows.tsv" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
num = lambda x: float(x) if x.replace(".", "", 1).isdigit() else None
third = max(1, len(rows) // 3)
phases = [("first", rows[:third]), ("middle", rows[third:len(rows) - third] or rows[third:third + 1]), ("last", rows[-third:])]
for name, (count, failed, p99) in (("pg", (0, 1, 2)), ("redis", (3, 4, 5)), ("http", (6, 7, 9))):
    total = sum(num(r[count]) or 0 for r in rows)
    bad = sum(num(r[failed]) or 0 for r in rows) + (sum(num(r[8]) or 0 for r in rows) if name == "http" else 0)
    unknown = sum(1 for r in rows if num(r[failed]) is None)
    per_phase = []
    for phase, rs in phases:
        vals = [v for v in (num(r[p99]) for r in rs) if v is not None]
        per_phase.append(f"{phase} {statistics.median(vals):.2f}" if vals else f"{phase} ?")
    print(f"{name:5s} {int(total):9d} done, {int(bad)} failed" + (f" ({unknown} windows unparsed)" if unknown else "") + "; p99 ms by phase: " + ", ".join(per_phase))
PY
grep -c "reload failed" "$T/keyward.log" | sed 's/^/keyward log lines "reload failed": /'
