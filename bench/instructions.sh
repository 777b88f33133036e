#!/usr/bin/env bash
# User-space instructions keyward executes per proxied HTTP request, counted by callgrind
# (valgrind): exact and repeatable from run to run, unlike CPU time on a shared machine, so a
# change to the per-request path can be judged with one run of each build. Kernel time (system
# calls, the network stack) is not counted: `bench/http.sh` measures that side.
#
# keyward (one worker, protocol: http, verify-full, bearer injected) in front of a TLS 1.3 nginx
# API; WARMUP requests on one keep-alive connection, then instrumentation on for N more. Prints
# the instructions per request and the functions that execute most of them (self cost).
#
#   bash bench/instructions.sh            # needs valgrind, nginx, openssl, python3
#   N=5000 TOP=40 bash bench/instructions.sh
#   KEYWARD_BIN=path bash bench/instructions.sh   # a build with symbols (release keeps them)
#
# The default binary is the release build (`cargo build --release`: line tables and symbols);
# the dist build's symbols are stripped. Under valgrind, ring takes its generic AES-GCM code
# paths (valgrind's CPU lacks VAES and the like), and `rep movsb` counts once per byte, which
# makes large copies stand out more than they cost natively.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}
WARMUP=${WARMUP:-200}
TOP=${TOP:-25}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
T=$(mktemp -d /tmp/keyward-instr.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT
source bench/lib.sh
need valgrind:valgrind callgrind_annotate:valgrind openssl:openssl python3:python3
[ -x "$NGINX" ] || { echo "missing nginx (Debian: nginx)" >&2; exit 1; }

BIN=${KEYWARD_BIN:-}
if [ -z "$BIN" ]; then
  cargo build --release --locked --quiet --bin keyward >&2
  BIN="${CARGO_TARGET_DIR:-target}/release/keyward"
fi
make_pki
UP=$(free_port); KP=$(free_port)
nginx_conf "$T/up" "server { listen 127.0.0.1:$UP ssl; ssl_certificate $T/server.pem; ssl_certificate_key $T/server.key;
    ssl_protocols TLSv1.3; keepalive_requests 1000000; location / { return 200 'ok\n'; } }" 1
"$NGINX" -e stderr -p "$T/up" -c "$T/up/nginx.conf" & pids+=($!)
api_keyward_yaml "$KP" "$UP" > "$T/keyward.yaml"
KEYWARD_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$T/callgrind.out" \
  --instr-atstart=no "$BIN" run -c "$T/keyward.yaml" 2> "$T/valgrind.log" & pids+=($!)
VG=$!

# Sends $2 GET requests on one keep-alive connection to port $1; every answer must be a 200.
requests() {
  python3 - "$1" "$2" <<'PY'
import http.client, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
for _ in range(600):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.connect()
        break
    except OSError:
        time.sleep(0.1)
for _ in range(n):
    c.request("GET", "/x")
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
PY
}
requests "$KP" "$WARMUP"
callgrind_control -i on "$VG" > /dev/null 2>&1
requests "$KP" "$N"
callgrind_control -i off "$VG" > /dev/null 2>&1
callgrind_control -d "$VG" > /dev/null 2>&1
OUT=$(ls "$T"/callgrind.out.* | head -1)
TOTAL=$(callgrind_annotate "$OUT" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
echo "$(basename "$BIN"): $N requests, $TOTAL instructions in keyward: $((TOTAL / N)) per request"
echo "top functions (self cost, % of the total):"
callgrind_annotate "$OUT" 2>/dev/null | sed -n '/file:function/,$p' | sed -n "3,$((TOP + 2))p" \
  | sed -e 's|/root/.cargo/registry/src/[^/]*/||' -e 's| \[[^]]*\]$||' | cut -c1-160
