#!/usr/bin/env bash
# Benchmark: pgbench through a keyward `postgres` resource (app plaintext on loopback → keyward →
# TLS verify-full + SCRAM login injected → PostgreSQL 15) versus pgbench speaking TLS
# (verify-full) to PostgreSQL directly, versus PgBouncer in session mode doing keyward's job
# (server_tls_sslmode=verify-full, the login injected from its config). One run, interleaved
# repetitions. Two workloads: `-S` on open connections, and `-S -C` (a new connection per
# transaction, where the login cost shows). Prints tps, average latency and the ratios.
#
#   bash bench/postgres.sh                  # needs postgresql-15, pgbouncer, openssl, time; run as root
#   REPS=3 DURATION=20 bash bench/postgres.sh
#   AUDIT_B=1 bash bench/postgres.sh        # keyward B = the same binary with audit level
#                                           # statements (file sink): the cost of statement events
#
# It asserts nothing; the numbers go in README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
DURATION=${DURATION:-20}
CLIENTS=${CLIENTS:-8}
B=/usr/lib/postgresql/15/bin
T=$(mktemp -d /tmp/keyward-bench-pg.XXXXXX)
chmod 755 "$T"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT
# A command prefix that runs as postgres when root (setpriv execs, so $! is the server itself).
AS_PG=(); [ "$(id -u)" = 0 ] && AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --)
as_pg() { "${AS_PG[@]}" "$@"; }
source bench/lib.sh
need pgbouncer:pgbouncer openssl:openssl /usr/bin/time:time

# A prebuilt binary (KEYWARD_BIN) is measured as it is; otherwise the shipped (dist) build of
# the work tree (bench/lib.sh).
KEYWARD_BIN=$(keyward_bin)
make_pki
chmod 600 "$T/server.key"; chmod 644 "$T/ca.pem"
echo adminpw > "$T/pwfile"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$T"

PGPORT=$(free_port)
as_pg $B/initdb -D "$T/data" -U postgres --pwfile="$T/pwfile" -A scram-sha-256 --auth-local=trust -E UTF8 --locale=C --no-sync --no-instructions >/dev/null
cat >> "$T/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$T'
ssl = on
ssl_cert_file = '$T/server.pem'
ssl_key_file = '$T/server.key'
password_encryption = 'scram-sha-256'
fsync = off
synchronous_commit = off
max_connections = 100
EOF
printf 'local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\nhostnossl bench benchuser 127.0.0.1/32 scram-sha-256\nhostnossl all all 0.0.0.0/0 reject\n' > "$T/data/pg_hba.conf"
"${AS_PG[@]}" $B/postgres -D "$T/data" > "$T/pg.log" 2>&1 &
PG_PID=$!; pids+=($!)
until $B/pg_isready -q -h 127.0.0.1 -p "$PGPORT"; do sleep 0.05; done
as_pg $B/psql -h "$T" -p "$PGPORT" -U postgres -qc "CREATE ROLE benchuser LOGIN PASSWORD 'benchpw'" -c "CREATE DATABASE bench OWNER benchuser"

KPORT=$(free_port)
FPORT=$(free_port)
cat > "$T/keyward.yaml" <<YAML
admin: null
log: { level: warn }
resources:
  - name: pg
    protocol: postgres
    listen: 127.0.0.1:$KPORT
    upstream: localhost:$PGPORT
    tls: { ca: $T/ca.pem }
    auth: { type: password, username: benchuser, password: benchpw }
    pool_max_idle: ${POOL_MAX_IDLE:-20}   # server connections kept for reuse (0: each app connection logs in)
YAML
floor_resource "$FPORT" "$PGPORT" >> "$T/keyward.yaml"
"$KEYWARD_BIN" run -c "$T/keyward.yaml" 2> "$T/keyward.log" &
KW_PID=$!; pids+=($!)
# KEYWARD_BIN_B=path: a second keyward build beside the first, same config on other ports,
# measured in the same interleaved run (e.g. before/after a change); its numbers are printed
# in the repetition lines as "keyward B". KEYWARD_ENV_B="VAR=value ...": keyward B is this
# binary (or KEYWARD_BIN_B) run with that environment (e.g. KEYWARD_WORKER_THREADS=1).
# AUDIT_B=1: keyward B is this binary with every statement recorded (audit: statements, a
# rotated file sink in the bench's directory).
if [ -n "${AUDIT_B:-}${KEYWARD_ENV_B:-}" ]; then KEYWARD_BIN_B=${KEYWARD_BIN_B:-$KEYWARD_BIN}; fi
if [ -n "${KEYWARD_BIN_B:-}" ]; then
  KPORT_B=$(free_port)
  sed -e "s/127.0.0.1:$KPORT/127.0.0.1:$KPORT_B/" -e "s/127.0.0.1:$FPORT/127.0.0.1:$(free_port)/" "$T/keyward.yaml" > "$T/keyward-b.yaml"
  if [ -n "${AUDIT_B:-}" ]; then
    sed -i -e "s|^log: .*|&\naudit: { sink: file, path: $T/audit.jsonl, max_size: 64MiB, max_files: 2 }|" \
      -e "s|^    pool_max_idle: .*|&\n    audit: statements|" "$T/keyward-b.yaml"
  fi
  env ${KEYWARD_ENV_B:-} "$KEYWARD_BIN_B" run -c "$T/keyward-b.yaml" 2> "$T/keyward-b.log" &
  KWB_PID=$!; pids+=($!)
fi

BPORT=$(free_port)
echo '"benchuser" ""' > "$T/userlist.txt"
cat > "$T/pgbouncer.ini" <<INI
[databases]
bench = host=localhost port=$PGPORT dbname=bench user=benchuser password=benchpw
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BPORT
unix_socket_dir =
auth_type = trust
auth_file = $T/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 20
server_tls_sslmode = verify-full
server_tls_ca_file = $T/ca.pem
logfile = $T/pgbouncer.log
pidfile = $T/pgbouncer.pid
INI
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$T"
"${AS_PG[@]}" pgbouncer "$T/pgbouncer.ini" > /dev/null 2>&1 &
PB_PID=$!; pids+=($!)

DIRECT="host=localhost port=$PGPORT dbname=bench user=benchuser password=benchpw sslmode=verify-full sslrootcert=$T/ca.pem"
KEYWARD="host=127.0.0.1 port=$KPORT dbname=bench user=benchuser sslmode=disable"
KEYWARD_B="host=127.0.0.1 port=${KPORT_B:-0} dbname=bench user=benchuser sslmode=disable"
BOUNCER="host=127.0.0.1 port=$BPORT dbname=bench user=benchuser sslmode=disable"
PLAIN="host=127.0.0.1 port=$PGPORT dbname=bench user=benchuser password=benchpw sslmode=disable"
FLOOR="host=127.0.0.1 port=$FPORT dbname=bench user=benchuser password=benchpw sslmode=disable"
for c in "$KEYWARD" "$BOUNCER" ${KEYWARD_BIN_B:+"$KEYWARD_B"}; do
  for _ in $(seq 100); do $B/psql "$c" -Atc "select 1" >/dev/null 2>&1 && break; sleep 0.05; done
done
$B/pgbench -i -s 1 -q "$DIRECT" >/dev/null 2>&1

run() { # proxy pid (or -), conninfo, extra args → "tps latency_ms client_us server_us proxy_us
        # proxy_syscalls proxy_user_us proxy_kernel_us" (per transaction; -1: not counted)
  local proxy=() s0 s1 out u0=0 k0=0 u1=0 k1=0
  [ "$1" != - ] && proxy=("$1")
  shift
  syscalls_start "${proxy[@]}"
  s0=$(cpu_ticks "$PG_PID"); [ "${#proxy[@]}" -gt 0 ] && read -r u0 k0 < <(cpu_ticks_split "${proxy[@]}")
  out=$(/usr/bin/time -o "$T/time" -f "cpu %U %S" $B/pgbench -S -c "$CLIENTS" -j 2 -T "$DURATION" "${@:2}" "$1" 2>/dev/null; cat "$T/time")
  s1=$(cpu_ticks "$PG_PID"); [ "${#proxy[@]}" -gt 0 ] && read -r u1 k1 < <(cpu_ticks_split "${proxy[@]}")
  syscalls_stop
  awk -v ds=$((s1 - s0)) -v dp=$((u1 - u0 + k1 - k0)) -v dur="$DURATION" -v calls="$SYSCALLS" -v du=$((u1 - u0)) -v dk=$((k1 - k0)) '
    /^latency average/ { lat = $4 } /^tps = / { tps = $3 } /^cpu / { cl = $2 + $3 }
    END { n = tps * dur; printf "%s %s %.1f %.1f %.1f %.2f %.1f %.1f\n", tps, lat, cl * 1e6 / n, ds * 1e4 / n, dp * 1e4 / n,
          calls < 0 ? -1 : calls / n, du * 1e4 / n, dk * 1e4 / n }' <<< "$out"
}

echo "pgbench -S -c $CLIENTS -j 2 -T $DURATION, $REPS interleaved repetitions"
echo "(tps, average latency ms, CPU µs per transaction of pgbench / postgres / the proxy)"
results=(); floors=()
for mode in open reconnect; do
  extra=(); [ "$mode" = reconnect ] && extra=(-C)
  for r in $(seq "$REPS"); do
    d=$(run - "$DIRECT" "${extra[@]}"); k=$(run "$KW_PID" "$KEYWARD" "${extra[@]}"); b=$(run "$PB_PID" "$BOUNCER" "${extra[@]}")
    line="  $mode rep $r  direct TLS: $d   keyward: $k   pgbouncer: $b"
    kb=""
    if [ -n "${KEYWARD_BIN_B:-}" ]; then kb=$(run "$KWB_PID" "$KEYWARD_B" "${extra[@]}"); line="$line   keyward B: $kb"; fi
    if [ "$mode" = open ]; then
      p=$(run - "$PLAIN"); f=$(run "$KW_PID" "$FLOOR")
      line="$line   plaintext: $p   plaintext via keyward tcp: $f"
      floors+=("$p $f")
    fi
    echo "$line"
    results+=("$mode $d $k $b $kb")
  done
done
printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
rows = [l.split() for l in sys.stdin if l.strip()]
for mode in ("open", "reconnect"):
    r = [x for x in rows if x[0] == mode]
    med = lambda i: statistics.median(float(x[i]) for x in r)
    G = 8  # fields per path (see run)
    D, K, B, KB = (1 + G * i for i in range(4))
    d, dl, k, kl, b, bl = (med(i) for i in (D, D + 1, K, K + 1, B, B + 1))
    cpu = lambda o: "/".join(f"{med(o + 2 + i):.0f}" for i in range(3))
    calls = lambda o: f"{med(o + 5):.2f}" if med(o + 5) >= 0 else "-"
    split = lambda o: f"{med(o + 6):.1f} + {med(o + 7):.1f}"
    label = "-S" if mode == "open" else "-S -C"
    print(f"{label:6} direct TLS {d:9,.0f} tps {dl:6.3f} ms | keyward {k:9,.0f} tps {kl:6.3f} ms | pgbouncer {b:9,.0f} tps {bl:6.3f} ms | keyward/direct {k/d:.2f}  keyward/pgbouncer {k/b:.2f}")
    print(f"       CPU µs/transaction (pgbench/postgres/proxy): direct {cpu(D)} | keyward {cpu(K)} | pgbouncer {cpu(B)}"
          f" | proxy CPU keyward/pgbouncer {med(K + 4) / med(B + 4):.2f}x")
    print(f"       proxy CPU user + kernel µs/transaction: keyward {split(K)} | pgbouncer {split(B)};"
          f" proxy syscalls/transaction: keyward {calls(K)} | pgbouncer {calls(B)}")
    if len(r[0]) > KB:
        print(f"       keyward B {med(KB):9,.0f} tps {med(KB + 1):6.3f} ms, proxy CPU {med(KB + 4):.1f} µs/transaction"
              f" ({split(KB)}), {calls(KB)} syscalls | B/keyward: {med(KB) / k:.2f}x tps, {med(KB + 4) / med(K + 4):.2f}x proxy CPU")
'''
printf '%s\n' "${floors[@]}" | python3 -c '
import statistics, sys
r = [[float(x) for x in l.split()] for l in sys.stdin if l.strip()]
p, f = (statistics.median(x[i] for x in r) for i in (0, 8))
print(f"floor: plaintext {p:,.0f} tps, through a keyward tcp hop (no TLS, no login) {f:,.0f} tps: one loopback hop alone keeps {f/p:.2f}")
'
if [ -n "${AUDIT_B:-}" ]; then
  echo "keyward B wrote $(cat "$T"/audit.jsonl* | grep -c '"event":"statement"') statement events"
fi
if [ -n "${KEYWARD_LOG:-}" ]; then
  echo "keyward: $(grep -c 'reused=false' "$T/keyward.log") server logins, $(grep -c 'reused=true' "$T/keyward.log") reuses, $(grep -c 'dropping a pooled' "$T/keyward.log") dead pooled connections dropped"
fi
