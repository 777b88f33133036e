#!/usr/bin/env bash
# Benchmark: mysqlslap through a keyward `mysql` resource (app plaintext on loopback, no
# password → keyward → TLS verify-full + login injected → MariaDB) versus mysqlslap speaking TLS
# (--ssl-verify-server-cert) to MariaDB directly. One run, interleaved repetitions. Prints the
# average seconds per run and the ratio (throughput keyward/direct). A floor row measures what one
# loopback hop costs by itself: mysqlslap → keyward `tcp` (no TLS, no login of its own) →
# MariaDB, against mysqlslap → MariaDB, both plaintext.
#
#   bash bench/mysql.sh          # needs mariadb-server, mariadb-client (mysqlslap), openssl; root
#   REPS=5 QUERIES=20000 CONCURRENCY=8 bash bench/mysql.sh
#
# MODE=connect measures logins instead (the MySQL analogue of `pgbench -C`, for apps that connect
# per request): bench/mysql_logins.py (PyMySQL) times LOGINS connects each, interleaved, directly
# over verified TLS (a TLS context per login, as PyMySQL makes one, and one reused context) and
# through keyward, for a mysql_native_password and a client_ed25519 user; p50 / p99 login
# latency, logins per second and the ratios keyward/direct.
#
#   MODE=connect LOGINS=500 bash bench/mysql.sh     # also needs python3 with pymysql and pynacl
#
# It asserts nothing; the numbers go in README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
QUERIES=${QUERIES:-10000}
CONCURRENCY=${CONCURRENCY:-8}
MODE=${MODE:-slap}
LOGINS=${LOGINS:-500}
T=$(mktemp -d /dev/shm/keyward-bench-my.XXXXXX 2>/dev/null || mktemp -d /tmp/keyward-bench-my.XXXXXX)
chmod 755 "$T"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT
source bench/lib.sh
need mariadb-install-db:mariadb-server mysqlslap:mariadb-client openssl:openssl
if [ "$MODE" = connect ] && ! python3 -c 'import pymysql, nacl' 2>/dev/null; then
  echo "MODE=connect needs python3 with pymysql and pynacl (pip install pymysql pynacl)" >&2
  exit 2
fi

# A prebuilt binary (KEYWARD_BIN) is measured as it is; otherwise the shipped (dist) build of
# the work tree (bench/lib.sh).
KEYWARD_BIN=$(keyward_bin)
make_pki
user=()
if [ "$(id -u)" = 0 ]; then chown -R mysql:mysql "$T"; user=(--user=mysql); fi
mariadb-install-db --no-defaults "${user[@]}" --datadir="$T/data" --auth-root-authentication-method=socket \
  --skip-test-db --innodb-buffer-pool-size=64M --innodb-log-file-size=16M >/dev/null
MPORT=$(free_port)
/usr/sbin/mariadbd --no-defaults "${user[@]}" --datadir="$T/data" --socket="$T/mysqld.sock" --pid-file="$T/mysqld.pid" \
  --log-error="$T/error.log" --bind-address=127.0.0.1 --port="$MPORT" --skip-name-resolve \
  --ssl-ca="$T/ca.pem" --ssl-cert="$T/server.pem" --ssl-key="$T/server.key" \
  --innodb-buffer-pool-size=64M --innodb-flush-log-at-trx-commit=0 --skip-log-bin --max-connections=500 \
  --plugin-load-add=auth_ed25519 &
pids+=($!)
until mariadb-admin --no-defaults --socket="$T/mysqld.sock" -uroot ping >/dev/null 2>&1; do sleep 0.05; done
mariadb --no-defaults --socket="$T/mysqld.sock" -uroot -e "CREATE USER 'bench'@'127.0.0.1' IDENTIFIED BY 'benchpw'; GRANT ALL ON *.* TO 'bench'@'127.0.0.1';
  CREATE USER 'benched'@'127.0.0.1' IDENTIFIED VIA ed25519 USING PASSWORD('benchpw'); GRANT ALL ON *.* TO 'benched'@'127.0.0.1'"

KPORT=$(free_port)
FPORT=$(free_port)
EPORT=$(free_port)
cat > "$T/keyward.yaml" <<YAML
admin: null
log: { level: warn }
resources:
  - name: my
    protocol: mysql
    listen: 127.0.0.1:$KPORT
    upstream: localhost:$MPORT
    tls: { ca: $T/ca.pem }
    auth: { type: password, username: bench, password: benchpw }
  - name: my-ed
    protocol: mysql
    listen: 127.0.0.1:$EPORT
    upstream: localhost:$MPORT
    tls: { ca: $T/ca.pem }
    auth: { type: password, username: benched, password: benchpw }
YAML
floor_resource "$FPORT" "$MPORT" >> "$T/keyward.yaml"
"$KEYWARD_BIN" run -c "$T/keyward.yaml" 2> "$T/keyward.log" &
pids+=($!)
until mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$KPORT" --skip-ssl -e "select 1" >/dev/null 2>&1; do sleep 0.05; done

if [ "$MODE" = connect ]; then
  echo "logins (PyMySQL connect until a usable session), $LOGINS per target, interleaved"
  python3 bench/mysql_logins.py "$LOGINS" \
    "native-direct-tls=localhost:$MPORT:bench:benchpw:$T/ca.pem" \
    "native-direct-tls-reused=localhost:$MPORT:bench:benchpw:$T/ca.pem:reuse" "native-keyward=127.0.0.1:$KPORT:app:" \
    "ed25519-direct-tls=localhost:$MPORT:benched:benchpw:$T/ca.pem" \
    "ed25519-direct-tls-reused=localhost:$MPORT:benched:benchpw:$T/ca.pem:reuse" "ed25519-keyward=127.0.0.1:$EPORT:app:" |
    tee "$T/logins.txt"
  python3 - "$T/logins.txt" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    name, *kv = line.split()
    rows[name] = {k: float(v) for k, v in (x.split("=") for x in kv)}
for plugin in ("native", "ed25519"):
    k = rows[f"{plugin}-keyward"]
    for direct in ("direct-tls", "direct-tls-reused"):
        d = rows[f"{plugin}-{direct}"]
        print(f"{plugin}: keyward / {direct}: p50 {k['p50_ms'] / d['p50_ms']:.2f}x, p99 {k['p99_ms'] / d['p99_ms']:.2f}x, logins/s {k['logins_per_s'] / d['logins_per_s']:.2f}x")
PY
  exit 0
fi

slap() { # extra args → average seconds
  mysqlslap --no-defaults --protocol=TCP --host=127.0.0.1 "$@" --concurrency="$CONCURRENCY" --iterations=1 \
    --number-of-queries="$QUERIES" --auto-generate-sql --auto-generate-sql-load-type=read 2>/dev/null |
    awk '/Average number of seconds/ { print $(NF-1) }'
}
echo "mysqlslap read load, $QUERIES queries, concurrency $CONCURRENCY, $REPS interleaved repetitions (seconds)"
rows=()
for r in $(seq "$REPS"); do
  d=$(slap --port="$MPORT" --user=bench --password=benchpw --ssl --ssl-ca="$T/ca.pem" --ssl-verify-server-cert --host=localhost)
  k=$(slap --port="$KPORT" --user=app --skip-ssl)
  p=$(slap --port="$MPORT" --user=bench --password=benchpw --skip-ssl)
  f=$(slap --port="$FPORT" --user=bench --password=benchpw --skip-ssl)
  echo "  rep $r  direct TLS: ${d}s   keyward: ${k}s   plaintext: ${p}s   plaintext via keyward tcp: ${f}s"
  rows+=("$d $k $p $f")
done
printf '%s\n' "${rows[@]}" | python3 -c '
import statistics, sys
r = [[float(x) for x in l.split()] for l in sys.stdin if l.strip()]
d, k, p, f = (statistics.median(x[i] for x in r) for i in range(4))
print(f"direct TLS {d:.3f} s | keyward {k:.3f} s | throughput keyward/direct {d/k:.2f}")
print(f"floor: plaintext {p:.3f} s, through a keyward tcp hop (no TLS, no login) {f:.3f} s: one loopback hop alone keeps {p/f:.2f}")
'
