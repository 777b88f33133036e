#!/usr/bin/env bash
# Benchmark: an HTTPS API (nginx, TLS 1.3) reached three ways, same machine, one run,
# interleaved repetitions:
#   direct   wrk → https://upstream                                     (wrk does TLS itself)
#   nginx    wrk → http://nginx → proxy_pass https (verify on, TLS 1.2–1.3, keepalive,
#            Authorization set)
#   haproxy  wrk → http://haproxy (mode http, http-reuse always) → https (ssl verify required,
#            verifyhost, Authorization set by http-request set-header)
#   keyward  wrk → http://keyward (protocol: http, verify-full, bearer injected)
# Prints req/s, p50, p99 and proxy CPU µs per request for each, and the ratios.
#
#   bash bench/http.sh     # needs nginx, haproxy, wrk, openssl (Debian: nginx haproxy wrk openssl)
#   REPS=5 DURATION=10 CONNS=32 THREADS=2 bash bench/http.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
T=$(mktemp -d /tmp/keyward-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT
source bench/lib.sh
need wrk:wrk openssl:openssl haproxy:haproxy

# A prebuilt binary (KEYWARD_BIN) is measured as it is; otherwise the shipped (dist) build of
# the work tree (bench/lib.sh).
KEYWARD_BIN=$(keyward_bin)
make_pki

UP=$(free_port); NP=$(free_port); KP=$(free_port); HP=$(free_port)
mkdir -p "$T/up" "$T/px"
nginx_conf "$T/up" "server { listen 127.0.0.1:$UP ssl; ssl_certificate $T/server.pem; ssl_certificate_key $T/server.key; ssl_protocols TLSv1.3; keepalive_requests 1000000; location / { return 200 'ok\n'; } }" 1
nginx_conf "$T/px" "upstream api { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$NP; keepalive_requests 1000000; location / {
    proxy_pass https://api; proxy_http_version 1.1; proxy_set_header Connection '';
    proxy_ssl_verify on; proxy_ssl_trusted_certificate $T/ca.pem; proxy_ssl_name localhost; proxy_ssl_server_name on;
    proxy_ssl_session_reuse on; proxy_ssl_protocols TLSv1.2 TLSv1.3;
    proxy_set_header Authorization 'Bearer bench-token'; } }" auto
"$NGINX" -e stderr -p "$T/up" -c "$T/up/nginx.conf" & pids+=($!)
"$NGINX" -e stderr -p "$T/px" -c "$T/px/nginx.conf" & pids+=($!)
NGINX_PROXY_PID=$!
haproxy_start http http "frontend api
  bind 127.0.0.1:$HP
  default_backend api
backend api
  http-reuse always
  http-request set-header Authorization \"Bearer bench-token\"
  server up 127.0.0.1:$UP ssl verify required ca-file $T/ca.pem verifyhost localhost sni str(localhost)"
api_keyward_yaml "$KP" "$UP" > "$T/keyward.yaml"
"$KEYWARD_BIN" run -c "$T/keyward.yaml" 2> "$T/keyward.log" & pids+=($!)
KEYWARD_PID=$!
# KEYWARD_BIN_B=path (and/or KEYWARD_ENV_B="VAR=value ..."): a second keyward beside the first,
# same config on another port, measured in the same interleaved run as "keyward_b" (a build
# before/after a change, or e.g. KEYWARD_ENV_B=KEYWARD_WORKER_THREADS=1).
if [ -n "${KEYWARD_BIN_B:-}${KEYWARD_ENV_B:-}" ]; then
  KPB=$(free_port)
  sed "s/127.0.0.1:$KP\b/127.0.0.1:$KPB/" "$T/keyward.yaml" > "$T/keyward-b.yaml"
  env ${KEYWARD_ENV_B:-} "${KEYWARD_BIN_B:-$KEYWARD_BIN}" run -c "$T/keyward-b.yaml" 2> "$T/keyward-b.log" & pids+=($!)
  KEYWARD_B_PID=$!
fi
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$KP/" >/dev/null 2>&1 && curl -sf "http://127.0.0.1:$NP/" >/dev/null 2>&1 && curl -sf "http://127.0.0.1:$HP/" >/dev/null 2>&1 \
  && { [ -z "${KPB:-}" ] || curl -sf "http://127.0.0.1:$KPB/" >/dev/null 2>&1; } && break; sleep 0.05; done

# nginx's proxy work happens in its workers: the master's children.
NGINX_WORKER=$(pgrep -P "$NGINX_PROXY_PID" | tr '\n' ' ')
HZ=$(getconf CLK_TCK)
run() { # $1 name, $2 url, $3 pids to charge CPU and system calls to (or empty)
  local u0 k0 u1 k1 out
  syscalls_start $3
  read -r u0 k0 < <(cpu_ticks_split $3)
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "$2")
  read -r u1 k1 < <(cpu_ticks_split $3)
  syscalls_stop
  # A row of error responses measures nothing (nginx 1.22's proxy_ssl_protocols leaves TLS 1.3
  # out: every request was a 502 until it was set).
  if grep -q "Non-2xx" <<< "$out"; then
    echo "$1: $(grep "Non-2xx" <<< "$out" | tr -s ' ') — not a measurement" >&2
    exit 1
  fi
  echo "$out" | awk -v name="$1" -v ut=$((u1 - u0)) -v kt=$((k1 - k0)) -v hz="$HZ" -v calls="$SYSCALLS" '
    /Requests\/sec/ { rps = $2 }
    /^ +50%/ { p50 = $2 } /^ +99%/ { p99 = $2 }
    /requests in/ { n = $1 }
    END { per = n > 0 ? 1e6 / hz / n : 0; printf "%s %s %s %s %.1f %.1f %.1f %.2f\n", name, rps, p50, p99, (ut + kt) * per, ut * per, kt * per, (calls < 0 || n == 0) ? -1 : calls / n }'
}
results=()
for r in $(seq "$REPS"); do
  results+=("$(run direct "https://127.0.0.1:$UP/" "")")
  results+=("$(run nginx "http://127.0.0.1:$NP/" "$NGINX_WORKER")")
  results+=("$(run haproxy "http://127.0.0.1:$HP/" "$HAPROXY_PID")")
  results+=("$(run keyward "http://127.0.0.1:$KP/" "$KEYWARD_PID")")
  [ -z "${KEYWARD_B_PID:-}" ] || results+=("$(run keyward_b "http://127.0.0.1:$KPB/" "$KEYWARD_B_PID")")
done
printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
rows = {}
for line in sys.stdin:
    name, rps, p50, p99, cpu, user, kernel, calls = line.split()
    rows.setdefault(name, []).append((float(rps), p50, p99, float(cpu), float(user), float(kernel), float(calls)))
def ms(v):
    v = v.strip()
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if v.endswith(unit): return float(v[: -len(unit)]) * f
    return float(v)
print(f"wrk -t'"$THREADS"' -c'"$CONNS"' -d'"$DURATION"'s, medians of '"$REPS"' interleaved runs")
print("%-10s %10s %8s %8s %17s %16s %13s" % ("path", "req/s", "p50 ms", "p99 ms", "proxy CPU us/req", "(user + kernel)", "syscalls/req"))
med = {}
for name in ("direct", "nginx", "haproxy", "keyward", "keyward_b"):
    if name not in rows:
        continue
    r = rows[name]
    med[name] = (statistics.median(x[0] for x in r), statistics.median(ms(x[1]) for x in r), statistics.median(ms(x[2]) for x in r),
                 *(statistics.median(x[i] for x in r) for i in (3, 4, 5, 6)))
    m = med[name]
    cpu = f"{m[3]:.1f}" if name != "direct" else "-"
    split = f"({m[4]:.1f} + {m[5]:.1f})" if name != "direct" else ""
    calls = f"{m[6]:.2f}" if m[6] >= 0 else "-"
    print(f"{name:10} {m[0]:>10.0f} {m[1]:>8.3f} {m[2]:>8.3f} {cpu:>17} {split:>16} {calls:>13}")
k, d = med["keyward"], med["direct"]
best = max(("nginx", "haproxy"), key=lambda n: med[n][0])
for n in ("nginx", "haproxy"):
    p = med[n]
    print(f"keyward/{n} req/s {k[0]/p[0]:.2f}x, p99 {k[2]/p[2]:.2f}x, CPU/req {k[3]/p[3]:.2f}x" + ("  (strongest peer)" if n == best else ""))
print(f"keyward/direct req/s {k[0]/d[0]:.2f}x")
if "keyward_b" in med:
    b = med["keyward_b"]
    print(f"keyward_b/keyward req/s {b[0]/k[0]:.2f}x, p99 {b[2]/k[2]:.2f}x, CPU/req {b[3]/k[3]:.2f}x")
'
