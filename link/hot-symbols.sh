#!/usr/bin/env bash
# Writes link/hot-symbols.txt: the functions keyward runs when it starts, loads a config with one
# resource of every protocol, accepts a first connection on each (a tcp upstream speaking TLS 1.3
# and one speaking only TLS 1.2) and serves its admin endpoint, then the functions `keyward demo`
# runs (a verified mTLS HTTP round trip). build.rs hands the list to the linker
# (`--symbol-ordering-file`), which lays these functions out together at the front of the text:
# the kernel maps a binary's text in windows of 64 KiB and more around each page it runs, so an
# idle keyward's resident text is the windows its startup touched (see README, memory).
#
# Native, not emulated: what runs depends on the CPU (ring's assembly takes its ADX, VAES and
# SHA-NI paths where the CPU has them; valgrind's CPU has none of them). Two steps: keyward runs
# the scenario as it is and link/resident-functions.py lists the functions on the text pages it
# then has resident (a superset); keyward runs it again under gdb with a one-shot breakpoint on
# each of those (link/first-calls.py), which gives the ones that ran, in the order they first ran.
#
#   bash link/hot-symbols.sh        # needs gdb, curl, openssl, python3, nm; a dist build, then ~8 min
#
# The names are those of the dist build (the shipped binary: one LTO unit, so no `.llvm.<hash>`
# suffixes that change from build to build). Functions renamed since the list was written keep
# their default place; rerun this after large changes, rebuild (`cargo build --profile dist`) and
# compare `bash bench/memory.sh` with KEYWARD_BIN set to the binary before.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
need gdb:gdb curl:curl openssl:openssl python3:python3 nm:binutils
T=$(mktemp -d /tmp/keyward-hot.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT

# The dist build with its symbol table kept (KEYWARD_KEEP_SYMBOLS: build.rs then does not strip
# it; the names are those of the stripped build, which the next plain dist build relinks), or a
# prebuilt one (KEYWARD_BIN, built so). It keeps the current list's layout: the names do not
# depend on it, and with the hot functions together step 1 has fewer candidates for gdb.
BIN=${KEYWARD_BIN:-}
if [ -z "$BIN" ]; then
  KEYWARD_KEEP_SYMBOLS=1 cargo build --profile dist --locked --quiet --bin keyward
  cp "${CARGO_TARGET_DIR:-target}/dist/keyward" "$T/keyward"
  BIN=$T/keyward
fi
make_pki

# The `tcp` and `http` resources relay to TLS servers (openssl s_server; `-www` answers HTTP), as
# bench/memory.sh's resource does; the databases' upstreams refuse (nothing listens): their first
# connection runs accept, the protocol's handler and the upstream dial up to its refusal.
DEAD=$(free_port); ADMIN=$(free_port); UP_TCP=$(free_port); UP_WWW=$(free_port)
openssl s_server -accept "$UP_TCP" -cert "$T/server.pem" -key "$T/server.key" -quiet < /dev/null > /dev/null 2>&1 & pids+=($!)
# Upstreams that speak only TLS 1.2 are common (older servers and managed databases); their
# handshake runs client code of its own.
UP_TLS12=$(free_port)
openssl s_server -accept "$UP_TLS12" -cert "$T/server.pem" -key "$T/server.key" -tls1_2 -quiet < /dev/null > /dev/null 2>&1 & pids+=($!)
openssl s_server -accept "$UP_WWW" -cert "$T/server.pem" -key "$T/server.key" -www -quiet > /dev/null 2>&1 & pids+=($!)
P_HTTP=$(free_port); P_PG=$(free_port); P_MY=$(free_port); P_RE=$(free_port); P_TCP=$(free_port); P_TLS12=$(free_port)
echo "s3cret" > "$T/pw"
# Written the way users write it (block style, the defaults section, comments): each YAML form
# and each config section runs parsing code of its own.
cat > "$T/keyward.yaml" <<YAML
# one resource of every protocol
admin:
  listen: 127.0.0.1:$ADMIN
defaults:
  connect_timeout: 5s
  handshake_timeout: 10s
  client_handshake_timeout: 10s
  idle_timeout: 1h
  max_connections: 1024
resources:
  - name: api
    protocol: http
    listen: 127.0.0.1:$P_HTTP
    upstream: https://localhost:$UP_WWW
    tls:
      ca: $T/ca.pem
    auth:
      type: bearer
      token: \${file:$T/pw}
  - name: pg
    protocol: postgres
    listen: 127.0.0.1:$P_PG
    upstream: localhost:$DEAD
    tls: { ca: $T/ca.pem }
    auth: { type: password, username: app, password: "\${file:$T/pw}" }
  - name: my
    protocol: mysql
    listen: 127.0.0.1:$P_MY
    upstream: localhost:$DEAD
    tls: { ca: $T/ca.pem }
    auth: { type: password, username: app, password: "\${file:$T/pw}" }
  - name: cache
    protocol: redis
    listen: 127.0.0.1:$P_RE
    upstream: localhost:$DEAD
    tls: { ca: $T/ca.pem }
    auth: { type: password, password: "\${file:$T/pw}" }
  - name: raw
    protocol: tcp
    listen: 127.0.0.1:$P_TCP
    upstream: localhost:$UP_TCP
    tls:
      ca: $T/ca.pem
  - name: legacy
    protocol: tcp
    listen: 127.0.0.1:$P_TLS12
    upstream: localhost:$UP_TLS12
    tls:
      ca: $T/ca.pem
YAML
# A first connection on each database and the tcp resources.
cat > "$T/talk.py" <<'PY'
import socket, struct, sys
pg, my, re, tcp, tls12 = (int(p) for p in sys.argv[1:])
def talk(port, data):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if data:
        s.sendall(data)
    try:
        s.recv(4096)
    except OSError:
        pass
    s.close()
body = struct.pack("!i", 196608) + b"user\0app\0database\0app\0\0"
talk(pg, struct.pack("!i", len(body) + 4) + body)
talk(my, b"")
talk(re, b"*1\r\n$4\r\nPING\r\n")
talk(tcp, b"hello")
talk(tls12, b"hello")
PY
# What the scenario does once keyward is up (its admin endpoint ready): an HTTP request twice, a
# first connection on each database and the tcp resources, /metrics and /resources.
scenario() {
  until curl -sf "http://127.0.0.1:$ADMIN/readyz" > /dev/null; do
    kill -0 "$1" 2>/dev/null || { cat "$2"; exit 1; }
    sleep 0.2
  done
  curl -s -o /dev/null "http://127.0.0.1:$P_HTTP/" || true
  curl -s -o /dev/null "http://127.0.0.1:$P_HTTP/again" || true
  python3 "$T/talk.py" "$P_PG" "$P_MY" "$P_RE" "$P_TCP" "$P_TLS12"
  curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/metrics"
  curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/resources"
  sleep 2
}
# 1. Natively, as it runs: the functions on the text pages keyward has resident after the
#    scenario, and after `keyward demo` served its round trip, are the candidates
#    (link/resident-functions.py).
for i in 1 2; do
  "$BIN" run -c "$T/keyward.yaml" > "$T/native$i.log" 2>&1 & KW=$!; pids+=($!)
  scenario "$KW" "$T/native$i.log"
  python3 link/resident-functions.py "$KW" "$BIN" >> "$T/candidates"
  kill -INT "$KW"; wait "$KW" || true
done
"$BIN" demo > "$T/demo-native.log" 2>&1 & KW=$!; pids+=($!)
until grep -q "Try it yourself" "$T/demo-native.log"; do
  kill -0 "$KW" 2>/dev/null || { cat "$T/demo-native.log"; exit 1; }
  sleep 0.2
done
python3 link/resident-functions.py "$KW" "$BIN" >> "$T/candidates"
kill -INT "$KW"; wait "$KW" || true
echo "$(sort -u "$T/candidates" | wc -l) candidate functions on resident pages"
# 2. Natively under gdb (link/first-calls.py), watching the candidates: the order they first
#    run. What runs varies a little from run to run (timers, the order tasks wake in), so the
#    list is the union of RUNS of them.
traced() { # in a subshell of its own: it becomes gdb, keyward its child
  local out=$1; shift
  FIRST_CALLS_ONLY=$T/candidates FIRST_CALLS_OUT=$out exec gdb -q -batch -nx -x link/first-calls.py --args "$BIN" "$@"
}
for i in $(seq "${RUNS:-3}"); do
  traced "$T/run$i.calls" run -c "$T/keyward.yaml" > "$T/run$i.log" 2>&1 & G=$!; pids+=($!)
  scenario "$G" "$T/run$i.log"
  pkill -INT -P "$G"; wait "$G" || true
done
(traced "$T/demo.calls" demo --once > "$T/demo.log" 2>&1)
grep -q "HTTP 200 OK" "$T/demo.log" || { cat "$T/demo.log"; exit 1; }

# The union, in the order the runs first name the functions.
awk '!seen[$0]++' "$T"/run*.calls "$T/demo.calls" > link/hot-symbols.txt
echo "link/hot-symbols.txt: $(wc -l < link/hot-symbols.txt) functions"
