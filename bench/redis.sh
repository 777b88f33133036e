#!/usr/bin/env bash
# Benchmark: Redis through a keyward `redis` resource (plaintext app, no password → keyward →
# TLS 1.3 verify-full + AUTH injected → Redis with requirepass) versus redis-benchmark speaking
# TLS to Redis directly (with the password), versus two client tunnels doing the TLS part of
# keyward's job (the client sends the password): stunnel (verifyChain + checkHost) and nginx's
# stream proxy (proxy_ssl_verify on), and HAProxy (mode tcp, ssl verify required, verifyhost).
# One run, interleaved repetitions.
#
# Floor rows measure what one loopback hop costs by itself: redis-benchmark → keyward `tcp`
# (no TLS, no auth) → Redis's plaintext port, and the same through HAProxy (mode tcp, splice),
# against redis-benchmark → Redis plaintext.
# Each row shows requests/s and the CPU µs per request of the client, Redis and the proxy
# (all processes share the machine's cores: the proxy's CPU is taken from the other two).
#
#   bash bench/redis.sh          # needs redis-server, redis-benchmark, stunnel4, nginx with
#                                # the stream module (libnginx-mod-stream), haproxy, openssl, time
#   REPS=5 REQUESTS=200000 CLIENTS=32 bash bench/redis.sh
#   KEYWARD_BIN_B=path bash bench/redis.sh   # a second keyward build beside the first (or
#                                # KEYWARD_ENV_B="VAR=value": the same binary, another setting)
# With perf (Debian: linux-perf) and readable tracepoints, each proxy's system calls per request.
#
# It asserts nothing; the numbers go in README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
REQUESTS=${REQUESTS:-100000}
CLIENTS=${CLIENTS:-16}
source bench/lib.sh
need redis-server:redis-server redis-benchmark:redis-tools stunnel:stunnel4 haproxy:haproxy openssl:openssl /usr/bin/time:time
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
STREAM=/usr/lib/nginx/modules/ngx_stream_module.so
[ -x "$NGINX" ] && [ -f "$STREAM" ] || { echo "missing nginx with the stream module (Debian: nginx libnginx-mod-stream)" >&2; exit 2; }
T=$(mktemp -d /tmp/keyward-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT

# A prebuilt binary (KEYWARD_BIN) is measured as it is; otherwise the shipped (dist) build of
# the work tree (bench/lib.sh).
KEYWARD_BIN=$(keyward_bin)
# PKI: a CA and a server certificate for localhost (EC P-256).
make_pki

RPORT=$(free_port)   # TLS
PPORT=$(free_port)   # plaintext, for the floor row
redis-server --bind 127.0.0.1 --port "$PPORT" --tls-port "$RPORT" --tls-cert-file "$T/server.pem" --tls-key-file "$T/server.key" \
  --tls-ca-cert-file "$T/ca.pem" --tls-auth-clients no --save "" --appendonly no --dir "$T" --logfile "$T/redis.log" \
  --requirepass benchpw &
REDIS_PID=$!; pids+=($!)
KPORT=$(free_port)
FPORT=$(free_port)
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
floor_resource "$FPORT" "$PPORT" >> "$T/keyward.yaml"
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
STUNNEL_PID=$!; pids+=($!)
NPORT=$(free_port)
cat > "$T/nginx.conf" <<CONF
load_module $STREAM;
daemon off;
worker_processes auto;
pid $T/nginx.pid;
error_log $T/nginx-error.log warn;
events { worker_connections 1024; }
stream {
  server {
    listen 127.0.0.1:$NPORT;
    proxy_pass 127.0.0.1:$RPORT;
    proxy_ssl on;
    proxy_ssl_verify on;
    proxy_ssl_trusted_certificate $T/ca.pem;
    proxy_ssl_name localhost;
    proxy_ssl_server_name on;
    proxy_ssl_session_reuse on;
    proxy_ssl_protocols TLSv1.2 TLSv1.3;  # nginx 1.22 leaves TLS 1.3 out by default
  }
}
CONF
"$NGINX" -c "$T/nginx.conf" -e "$T/nginx-error.log" &
NGINX_PID=$!; pids+=($!)
HPORT=$(free_port); HFPORT=$(free_port)
haproxy_start redis tcp "listen redis
  bind 127.0.0.1:$HPORT
  server up 127.0.0.1:$RPORT ssl verify required ca-file $T/ca.pem verifyhost localhost sni str(localhost)
listen floor
  bind 127.0.0.1:$HFPORT
  option splice-auto
  server up 127.0.0.1:$PPORT"
"$KEYWARD_BIN" run -c "$T/keyward.yaml" 2> "$T/keyward.log" &
KEYWARD_PID=$!; pids+=($!)
# KEYWARD_BIN_B=path (and/or KEYWARD_ENV_B="VAR=value ..."): a second keyward beside the first,
# same config on other ports, measured in the same interleaved run as "keyward_b" and "floor_b".
B_PORTS=()
if [ -n "${KEYWARD_BIN_B:-}${KEYWARD_ENV_B:-}" ]; then
  KPORT_B=$(free_port); FPORT_B=$(free_port); B_PORTS=("$KPORT_B" "$FPORT_B")
  sed -e "s/127.0.0.1:$KPORT\b/127.0.0.1:$KPORT_B/" -e "s/127.0.0.1:$FPORT\b/127.0.0.1:$FPORT_B/" "$T/keyward.yaml" > "$T/keyward-b.yaml"
  env ${KEYWARD_ENV_B:-} "${KEYWARD_BIN_B:-$KEYWARD_BIN}" run -c "$T/keyward-b.yaml" 2> "$T/keyward-b.log" &
  KEYWARD_B_PID=$!; pids+=($!)
fi
for port in "$KPORT" "$FPORT" "$SPORT" "$NPORT" "$HPORT" "$HFPORT" "${B_PORTS[@]}"; do
  ok=
  for _ in $(seq 100); do
    redis-cli -p "$port" --no-auth-warning -a benchpw PING 2>/dev/null | grep -q PONG && { ok=1; break; }
    sleep 0.05
  done
  [ -n "$ok" ] || { echo "port $port does not answer PING" >&2; tail -5 "$T"/*.log >&2; exit 1; }
done

# One redis-benchmark run: mode → "SET GET client_us redis_us proxy_us proxy_syscalls
# proxy_user_us proxy_sys_us" (req/s, CPU µs/request, the proxy's system calls per request or -1
# where they are not counted, the proxy's CPU split into user space and kernel).
bench() {
  local args proxy=() r0 r1 out u0=0 k0=0 u1=0 k1=0
  case $1 in
    direct) args=(-p "$RPORT" --tls --cacert "$T/ca.pem" --sni localhost -a benchpw) ;;
    keyward) args=(-p "$KPORT"); proxy=("$KEYWARD_PID") ;;
    stunnel) args=(-p "$SPORT" -a benchpw); proxy=("$STUNNEL_PID") ;;
    nginx) args=(-p "$NPORT" -a benchpw); proxy=("$NGINX_PID") ;;
    haproxy) args=(-p "$HPORT" -a benchpw); proxy=("$HAPROXY_PID") ;;
    plain) args=(-p "$PPORT" -a benchpw) ;;
    hfloor) args=(-p "$HFPORT" -a benchpw); proxy=("$HAPROXY_PID") ;;
    floor) args=(-p "$FPORT" -a benchpw); proxy=("$KEYWARD_PID") ;;
    keyward_b) args=(-p "$KPORT_B"); proxy=("$KEYWARD_B_PID") ;;
    floor_b) args=(-p "$FPORT_B" -a benchpw); proxy=("$KEYWARD_B_PID") ;;
  esac
  syscalls_start "${proxy[@]}"   # with the children: nginx's workers
  r0=$(cpu_ticks "$REDIS_PID"); [ "${#proxy[@]}" -gt 0 ] && read -r u0 k0 < <(cpu_ticks_split "${proxy[@]}")
  out=$(/usr/bin/time -o "$T/time" -f "cpu %U %S" redis-benchmark -h 127.0.0.1 "${args[@]}" -t set,get -n "$REQUESTS" -c "$CLIENTS" -q 2>/dev/null | tr '\r' '\n'; cat "$T/time")
  r1=$(cpu_ticks "$REDIS_PID"); [ "${#proxy[@]}" -gt 0 ] && read -r u1 k1 < <(cpu_ticks_split "${proxy[@]}")
  syscalls_stop
  awk -v dr=$((r1 - r0)) -v dp=$((u1 - u0 + k1 - k0)) -v n=$((2 * REQUESTS)) -v calls="$SYSCALLS" -v du=$((u1 - u0)) -v dk=$((k1 - k0)) '
    /requests per second/ { for (i = 1; i <= NF; i++) if ($i == "requests") rps = rps " " $(i - 1) }
    /^cpu / { cl = $2 + $3 }
    END { printf "%s %.1f %.1f %.1f %.2f %.1f %.1f\n", rps, cl * 1e6 / n, dr * 1e4 / n, dp * 1e4 / n, calls < 0 ? -1 : calls / n, du * 1e4 / n, dk * 1e4 / n }' <<< "$out"
}

modes=(direct keyward stunnel nginx haproxy plain floor hfloor)
[ -z "${KEYWARD_B_PID:-}" ] || modes+=(keyward_b floor_b)
echo "redis-benchmark -t set,get -n $REQUESTS -c $CLIENTS, $REPS interleaved repetitions"
echo "(req/s SET GET, then CPU µs per request: client / redis / proxy)"
rows=()
for r in $(seq "$REPS"); do
  line="  rep $r"
  for m in "${modes[@]}"; do
    v=$(bench "$m"); rows+=("$m $v"); line="$line  $m: $v"
  done
  echo "$line"
done
printf '%s\n' "${rows[@]}" > "$T/rows"
python3 - "$T/rows" <<'PY'
import statistics, sys
rows = {}
for l in open(sys.argv[1]):
    m, *v = l.split()
    rows.setdefault(m, []).append([float(x) for x in v])
med = {m: [statistics.median(c) for c in zip(*v)] for m, v in rows.items()}
rps = lambda m: (med[m][0] + med[m][1]) / 2
label = {"direct": "redis-benchmark --tls -> Redis", "keyward": "-> keyward -> TLS -> Redis (AUTH injected)",
         "stunnel": "-> stunnel -> TLS -> Redis", "nginx": "-> nginx stream -> TLS -> Redis",
         "haproxy": "-> HAProxy tcp -> TLS -> Redis",
         "plain": "redis-benchmark -> Redis, no TLS", "floor": "-> keyward tcp -> Redis, no TLS",
         "hfloor": "-> HAProxy tcp splice -> Redis, no TLS",
         "keyward_b": "-> keyward B -> TLS -> Redis (AUTH injected)", "floor_b": "-> keyward B tcp -> Redis, no TLS"}
print(f"{'path':44} {'SET/s':>9} {'GET/s':>9} {'ratio':>6}  CPU us/req client/redis/proxy (proxy: user+kernel)  proxy syscalls/req")
for m in ("direct", "keyward", "stunnel", "nginx", "haproxy", "plain", "floor", "hfloor", "keyward_b", "floor_b"):
    if m not in med:
        continue
    base = "plain" if m in ("plain", "floor", "hfloor", "floor_b") else "direct"
    c = med[m]
    calls = f"{c[5]:.2f}" if c[5] >= 0 else "-"
    split = f"({c[6]:.1f}+{c[7]:.1f})" if m not in ("direct", "plain") else ""
    print(f"{label[m]:44} {c[0]:9,.0f} {c[1]:9,.0f} {rps(m) / rps(base):6.2f}  {c[2]:.1f}/{c[3]:.1f}/{c[4]:.1f} {split:14}  {calls:>18}")
peers = ("stunnel", "nginx", "haproxy")
best = max(peers, key=rps)
cheapest = min(peers, key=lambda m: med[m][4])
print("keyward / " + ", ".join(f"{p} {rps('keyward') / rps(p):.2f}x" for p in peers) + f" (req/s; strongest: {best})")
print(f"keyward CPU/req / the cheapest peer's ({cheapest}): {med['keyward'][4] / med[cheapest][4]:.2f}x")
print(f"floor: one plaintext loopback hop alone keeps {rps('floor') / rps('plain'):.2f} (keyward) and "
      f"{rps('hfloor') / rps('plain'):.2f} (HAProxy) of the plaintext throughput; keyward/HAProxy {rps('floor') / rps('hfloor'):.2f}x")
if "keyward_b" in med:
    for a, b in (("keyward", "keyward_b"), ("floor", "floor_b")):
        print(f"{b}/{a}: req/s {rps(b) / rps(a):.2f}x, CPU/req {med[b][4] / med[a][4]:.2f}x")
PY
