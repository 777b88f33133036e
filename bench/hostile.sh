#!/usr/bin/env bash
# Hostile traffic beside real traffic: pgbench and wrk through keyward at a steady rate (the
# stack of bench/stack.sh: PostgreSQL, Redis, an HTTPS API), in three phases of PHASE seconds:
# baseline, hostile (bench/hostile.py at nice 19 — an attacker elsewhere would not take the
# proxy's CPU — on the same listeners: IDLE idle connections, slowloris on
# HTTP headers and on PostgreSQL/Redis handshakes, garbage and truncated TLS ClientHellos on a
# listen_tls port, oversized startup packets and RESP bulk headers, connect-and-reset storms),
# and after. Prints the real clients' throughput and p99 per phase with the hostile/baseline
# ratios, keyward's RSS and open fds (baseline, peak during the attack, after), how the hostile
# connections ended, and the reasons keyward recorded for them (keyward_connection_errors_total).
#
#   bash bench/hostile.sh                      # PHASE=30 IDLE=10000
#   PHASE=20 IDLE=2000 bash bench/hostile.sh
#   HOSTILE_KINDS=idle,resets bash bench/hostile.sh   # some attacks only (see bench/hostile.py)
#   HOSTILE_TARGET=twin bash bench/hostile.sh  # the attack on a second keyward process with the
#       same config and upstreams: what the attack costs the machine, not keyward's own clients
#   HOSTILE_SCHED=idle bash bench/hostile.sh   # the attacker at SCHED_IDLE instead of nice 19
#
# Needs what bench/soak.sh needs; run as root. It asserts nothing; the figures go in README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PHASE=${PHASE:-30}
IDLE=${IDLE:-10000}
ulimit -n "$(ulimit -Hn)"   # the idle flood needs a descriptor per connection on both ends
source bench/stack.sh hostile
KT=$(free_port); UP=$(free_port)
# Room for the idle flood (half on each database port) beside the real clients.
STACK_TOP="defaults: { max_connections: $((IDLE / 2 + 200)) }"
EXTRA_YAML="  - name: tlsapp
    protocol: tcp
    listen: 127.0.0.1:$KT
    listen_tls: { cert: $T/server.pem, key: $T/server.key }
    upstream: localhost:$UP
    tls: { ca: $T/ca.pem }"
start_stack
until curl -sf "http://127.0.0.1:$ADMIN/metrics" | grep -q 'resource="tlsapp"'; do sleep 0.1; done

errors() { curl -sf "http://127.0.0.1:$ADMIN/metrics" | grep '^keyward_connection_errors_total' | sort || true; }

phase() { # $1 name: pgbench and wrk for PHASE seconds; prints one line
  local name=$1 tx failed p99 h_n h_err h_status h_p99 c0 c1
  c0=$(cpu_ticks $KW)
  steady_load "$name" "$PHASE"
  wait $PG_PID $WRK_PID || true
  c1=$(cpu_ticks $KW)
  read -r tx failed p99 h_n h_err h_status h_p99 < <(steady_results "$name")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$tx" "$failed" "$p99" "$h_n" "$h_err" "$h_status" "$h_p99" >> "$T/phases.tsv"
  printf '%-9s pg %6s tx %s failed p99 %6s ms | http %6s req %s errors %s non-2xx p99 %6s ms | rss_kib fds %s | keyward CPU %s%% of a core\n' \
    "$name" "$tx" "$failed" "$p99" "$h_n" "$h_err" "$h_status" "$h_p99" "$(sample)" "$(( (c1 - c0) / PHASE ))"
}

# The attacked listeners: this keyward's, or (HOSTILE_TARGET=twin) a second keyward's.
AP=$KP; AR=$KR; AH=$KH; AT=$KT
if [ "${HOSTILE_TARGET:-}" = twin ]; then
  AP=$(free_port); AR=$(free_port); AH=$(free_port); AT=$(free_port); TWIN_ADMIN=$(free_port)
  sed -e "s/127.0.0.1:$KP\b/127.0.0.1:$AP/; s/127.0.0.1:$KR\b/127.0.0.1:$AR/; s/127.0.0.1:$KH\b/127.0.0.1:$AH/" \
      -e "s/127.0.0.1:$KT\b/127.0.0.1:$AT/; s/127.0.0.1:$ADMIN\b/127.0.0.1:$TWIN_ADMIN/" "$T/keyward.yaml" > "$T/twin.yaml"
  "$KW_BIN" run -c "$T/twin.yaml" 2> "$T/twin.log" & pids+=($!)
  until curl -sf "http://127.0.0.1:$TWIN_ADMIN/readyz" >/dev/null; do sleep 0.05; done
fi
# The attacker's priority: nice 19, or (HOSTILE_SCHED=idle) SCHED_IDLE, which runs it only on a
# core nothing else wants: the nearest this machine comes to an attacker on another host. What
# its connections cost in the kernel's receive path and in keyward is charged as before.
if [ "${HOSTILE_SCHED:-}" = idle ]; then ATTACKER=(chrt --idle 0); else ATTACKER=(nice -n 19); fi
echo "hostile: phases of ${PHASE}s, $IDLE idle connections, attacks ${HOSTILE_KINDS:-all} on ${HOSTILE_TARGET:-the same} keyward, attacker at ${ATTACKER[*]}; keyward $($KW_BIN --version)"
: > "$T/phases.tsv"
phase baseline
BASE_SAMPLE=$(sample)
errors > "$T/errors-before.txt"
"${ATTACKER[@]}" python3 bench/hostile.py "$PHASE" "$IDLE" "$AP" "$AR" "$AH" "$AT" > "$T/hostile.json" &
HOSTILE=$!
( peak_rss=0; peak_fds=0
  while kill -0 $HOSTILE 2>/dev/null; do
    read -r rss fds < <(sample)
    [ "$rss" -gt "$peak_rss" ] && peak_rss=$rss
    [ "$fds" -gt "$peak_fds" ] && peak_fds=$fds
    echo "$peak_rss $peak_fds" > "$T/peak.txt"
    sleep 0.5
  done ) &
phase hostile
wait $HOSTILE || true
sleep 12   # hostile connections still open end by client_handshake_timeout (10 s)
phase after
AFTER_SAMPLE=$(sample)
errors > "$T/errors-after.txt"
echo "hostile connections (made, and how they ended): $(cat "$T/hostile.json")"
echo "keyward rss_kib fds: baseline $BASE_SAMPLE, peak during the attack $(cat "$T/peak.txt" 2>/dev/null), after $AFTER_SAMPLE"
echo "keyward_connection_errors_total added during the attack (resource, side, reason):"
python3 - "$T/errors-before.txt" "$T/errors-after.txt" <<'PY'
import re, sys
def load(p):
    out = {}
    for line in open(p):
        m = re.match(r'keyward_connection_errors_total\{(.*)\} (\d+)', line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out
before, after = load(sys.argv[1]), load(sys.argv[2])
for k in sorted(after):
    d = after[k] - before.get(k, 0)
    if d:
        print(f"  {d:8d}  {k}")
PY
python3 - "$T/phases.tsv" <<'PY'
import sys
rows = {r[0]: r for r in (l.rstrip("\n").split("\t") for l in open(sys.argv[1]))}
num = lambda x: float(x) if x.replace(".", "", 1).isdigit() else float("nan")
b, h = rows["baseline"], rows["hostile"]
print(f"under attack / baseline: pg throughput {num(h[1]) / num(b[1]):.2f}x, p99 {num(h[3]) / num(b[3]):.2f}x; "
      f"http throughput {num(h[4]) / num(b[4]):.2f}x, p99 {num(h[7]) / num(b[7]):.2f}x")
PY
