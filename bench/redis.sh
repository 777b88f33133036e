#!/usr/bin/env bash
# Benchmark: Redis through a keyward `redis` resource (plaintext app, no password → keyward →
# TLS 1.3 verify-full + AUTH injected → Redis with requirepass) versus redis-benchmark speaking
# TLS to Redis directly (with the password), versus a stunnel client tunnel (plaintext → stunnel
# → TLS, verifyChain + checkHost; the client sends the password). One run, interleaved
# repetitions. Prints requests/s and the ratios.
#
#   bash bench/redis.sh          # needs redis-server, redis-benchmark, stunnel4, openssl
#   REPS=5 REQUESTS=200000 CLIENTS=32 bash bench/redis.sh
#
# It asserts nothing; the numbers go in README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
REQUESTS=${REQUESTS:-100000}
CLIENTS=${CLIENTS:-16}
T=$(mktemp -d /tmp/keyward-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT

source bench/lib.sh

cargo build --release --locked --quiet
# PKI: a CA and a server certificate for localhost (EC P-256).
make_pki

RPORT=$(free_port)
redis-server --bind 127.0.0.1 --port 0 --tls-port "$RPORT" --tls-cert-file "$T/server.pem" --tls-key-file "$T/server.key" \
  --tls-ca-cert-file "$T/ca.pem" --tls-auth-clients no --save "" --appendonly no --dir "$T" --logfile "$T/redis.log" \
  --requirepass benchpw &
pids+=($!)
KPORT=$(free_port)
cat > "$T/keyward.yaml" <<YAML
admin: null
log: { level: warn }
resources:
  - name: redis
    protocol: redis
    listen: 127.0.0.1:$KPORT
    upstream: localhost:$RPORT
    tls: { ca: $T/ca.pem }
    auth: { type: password, password: benchpw }
YAML
SPORT=$(free_port)
cat > "$T/stunnel.conf" <<CONF
foreground = yes
pid =
[redis]
client = yes
accept = 127.0.0.1:$SPORT
connect = 127.0.0.1:$RPORT
CAfile = $T/ca.pem
verifyChain = yes
checkHost = localhost
CONF
stunnel "$T/stunnel.conf" 2> "$T/stunnel.log" &
pids+=($!)
./target/release/keyward run -c "$T/keyward.yaml" 2> "$T/keyward.log" &
pids+=($!)
for _ in $(seq 100); do
  redis-cli -p "$KPORT" PING 2>/dev/null | grep -q PONG && break
  sleep 0.05
done

rps() { awk '/requests per second/ { for (i = 1; i <= NF; i++) if ($i == "requests") print $(i - 1) }' | tr '\n' ' '; }
run_direct() { redis-benchmark -h 127.0.0.1 -p "$RPORT" --tls --cacert "$T/ca.pem" --sni localhost -a benchpw -t set,get -n "$REQUESTS" -c "$CLIENTS" -q 2>/dev/null | tr '\r' '\n' | rps; }
run_keyward() { redis-benchmark -h 127.0.0.1 -p "$KPORT" -t set,get -n "$REQUESTS" -c "$CLIENTS" -q 2>/dev/null | tr '\r' '\n' | rps; }
run_stunnel() { redis-benchmark -h 127.0.0.1 -p "$SPORT" -a benchpw -t set,get -n "$REQUESTS" -c "$CLIENTS" -q 2>/dev/null | tr '\r' '\n' | rps; }

echo "redis-benchmark -t set,get -n $REQUESTS -c $CLIENTS, $REPS interleaved repetitions (req/s: SET GET)"
direct_all=(); keyward_all=(); stunnel_all=()
for r in $(seq "$REPS"); do
  d=$(run_direct); k=$(run_keyward); s=$(run_stunnel)
  echo "  rep $r  direct TLS: $d   keyward: $k   stunnel: $s"
  direct_all+=($d); keyward_all+=($k); stunnel_all+=($s)
done
python3 - "${direct_all[*]}" "${keyward_all[*]}" "${stunnel_all[*]}" <<'PY'
import statistics, sys
d, k, s = ([float(x) for x in a.split()] for a in sys.argv[1:4])
for name, i in (("SET", 0), ("GET", 1)):
    dm, km, sm = (statistics.median(v[i::2]) for v in (d, k, s))
    print(f"{name}: direct TLS {dm:,.0f} req/s | keyward {km:,.0f} | stunnel {sm:,.0f} | keyward/direct {km/dm:.2f}  keyward/stunnel {km/sm:.2f}")
PY
