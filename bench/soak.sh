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
source bench/stack.sh soak
EXTRA_YAML=""
start_stack

echo "soak: ${SOAK_SECONDS}s, windows of ${WINDOW}s, at least $MIN_RELOADS reloads; keyward $($KW_BIN --version)"
START_SAMPLE=$(sample)
python3 bench/soak_reloads.py "$T" "$ADMIN" "$SOAK_SECONDS" "$MIN_RELOADS" > "$T/reloads.json" 2> "$T/reloads.err" & RELOADER=$!
windows=$(( (SOAK_SECONDS + WINDOW - 1) / WINDOW ))
: > "$T/windows.tsv"
for w in $(seq 1 "$windows"); do
  steady_load "$w" "$WINDOW"
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
  wait $PG_PID $RB $WRK_PID || true
  read -r pg_tx pg_fail pg_p99 h_n h_err h_status h_p99 < <(steady_results "$w")
  read -r _ r_n r_f r_p99 < "$T/redis$w.out"
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
