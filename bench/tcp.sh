#!/usr/bin/env bash
# Benchmark: Redis traffic through a keyward `tcp` resource (plaintext app → keyward → TLS 1.3
# verify-full → Redis) versus the client speaking TLS to Redis directly, same machine, one run,
# interleaved repetitions. Prints requests/s for each and the ratio keyward/direct.
#
#   bash bench/tcp.sh            # needs redis-server, redis-benchmark (redis-tools), openssl
#   REPS=5 REQUESTS=200000 CLIENTS=32 bash bench/tcp.sh
#
# What it measures: the cost keyward adds per request on a warm connection (one TLS session
# per benchmark client either way). It does not assert anything: numbers go in README.md.
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
need redis-server:redis-server redis-benchmark:redis-tools openssl:openssl

# A prebuilt binary (KEYWARD_BIN) is measured as it is; otherwise the shipped (dist) build of
# the work tree (bench/lib.sh).
KEYWARD_BIN=$(keyward_bin)
# PKI: a CA and a server certificate for localhost (EC P-256).
make_pki

RPORT=$(free_port)
redis-server --bind 127.0.0.1 --port 0 --tls-port "$RPORT" --tls-cert-file "$T/server.pem" --tls-key-file "$T/server.key" \
  --tls-ca-cert-file "$T/ca.pem" --tls-auth-clients no --save "" --appendonly no --dir "$T" --logfile "$T/redis.log" &
pids+=($!)
KPORT=$(free_port)
cat > "$T/keyward.yaml" <<YAML
admin: null
log: { level: warn }
resources:
  - name: redis
    protocol: tcp
    listen: 127.0.0.1:$KPORT
    upstream: localhost:$RPORT
    tls: { ca: $T/ca.pem }
YAML
"$KEYWARD_BIN" run -c "$T/keyward.yaml" 2> "$T/keyward.log" &
pids+=($!)
for _ in $(seq 100); do
  redis-cli -p "$KPORT" PING 2>/dev/null | grep -q PONG && break
  sleep 0.05
done

rps() { awk '/requests per second/ { for (i = 1; i <= NF; i++) if ($i == "requests") print $(i - 1) }' | tr '\n' ' '; }
run_direct() { redis-benchmark -h 127.0.0.1 -p "$RPORT" --tls --cacert "$T/ca.pem" --sni localhost -t set,get -n "$REQUESTS" -c "$CLIENTS" -q 2>/dev/null | tr '\r' '\n' | rps; }
run_keyward() { redis-benchmark -h 127.0.0.1 -p "$KPORT" -t set,get -n "$REQUESTS" -c "$CLIENTS" -q 2>/dev/null | tr '\r' '\n' | rps; }

echo "redis-benchmark -t set,get -n $REQUESTS -c $CLIENTS, $REPS interleaved repetitions (req/s: SET GET)"
direct_all=(); keyward_all=()
for r in $(seq "$REPS"); do
  d=$(run_direct); k=$(run_keyward)
  echo "  rep $r  direct TLS: $d   through keyward: $k"
  direct_all+=($d); keyward_all+=($k)
done
python3 - "${direct_all[*]}" "${keyward_all[*]}" <<'PY'
import statistics, sys
d = [float(x) for x in sys.argv[1].split()]; k = [float(x) for x in sys.argv[2].split()]
for name, i in (("SET", 0), ("GET", 1)):
    dm = statistics.median(d[i::2]); km = statistics.median(k[i::2])
    print(f"{name}: direct TLS {dm:,.0f} req/s, through keyward {km:,.0f} req/s, ratio keyward/direct {km/dm:.2f}")
PY
