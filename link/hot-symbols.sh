#!/usr/bin/env bash
# Writes link/hot-symbols.txt: the functions keyward runs when it starts, loads a config with one
# resource of every protocol, accepts a first connection on each and serves its admin endpoint,
# then the functions `keyward demo --once` runs (a verified mTLS HTTP round trip). build.rs
# hands the list to the linker (`--symbol-ordering-file`), which lays these functions out
# together at the front of the text: the kernel maps a binary's text in large page-cache folios,
# so an idle keyward's resident text is the folios its startup touched (see README, memory).
#
#   bash link/hot-symbols.sh        # needs valgrind, curl, openssl, python3; a dist build, then ~1 min
#
# The names are those of the dist build (the shipped binary: one LTO unit, so no `.llvm.<hash>`
# suffixes that change from build to build). Functions renamed since the list was written keep
# their default place; rerun this after large changes, rebuild (`cargo build --profile dist`) and
# compare `KEYWARD_BIN=target/dist/keyward bash bench/memory.sh` with the binary before.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
need valgrind:valgrind curl:curl openssl:openssl python3:python3 nm:binutils
T=$(mktemp -d /tmp/keyward-hot.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT

# The dist build with its symbol table kept (KEYWARD_KEEP_SYMBOLS: build.rs then does not strip
# it; the names are those of the stripped build, which the next plain dist build relinks), or a
# prebuilt one (KEYWARD_BIN, built so).
BIN=${KEYWARD_BIN:-}
if [ -z "$BIN" ]; then
  KEYWARD_KEEP_SYMBOLS=1 KEYWARD_NO_SYMBOL_ORDER=1 cargo build --profile dist --locked --quiet --bin keyward
  cp "${CARGO_TARGET_DIR:-target}/dist/keyward" "$T/keyward"
  BIN=$T/keyward
fi
make_pki

# The `tcp` and `http` resources relay to TLS servers (openssl s_server; `-www` answers HTTP), as
# bench/memory.sh's resource does; the databases' upstreams refuse (nothing listens): their first
# connection runs accept, the protocol's handler and the upstream dial up to its refusal.
DEAD=$(free_port); ADMIN=$(free_port); UP_TCP=$(free_port); UP_WWW=$(free_port)
openssl s_server -accept "$UP_TCP" -cert "$T/server.pem" -key "$T/server.key" -quiet < /dev/null > /dev/null 2>&1 & pids+=($!)
openssl s_server -accept "$UP_WWW" -cert "$T/server.pem" -key "$T/server.key" -www -quiet > /dev/null 2>&1 & pids+=($!)
P_HTTP=$(free_port); P_PG=$(free_port); P_MY=$(free_port); P_RE=$(free_port); P_TCP=$(free_port)
echo "s3cret" > "$T/pw"
cat > "$T/keyward.yaml" <<YAML
admin: { listen: 127.0.0.1:$ADMIN }
resources:
  - { name: api, protocol: http, listen: 127.0.0.1:$P_HTTP, upstream: "https://localhost:$UP_WWW",
      tls: { ca: $T/ca.pem }, auth: { type: bearer, token: "\${file:$T/pw}" } }
  - { name: pg, protocol: postgres, listen: 127.0.0.1:$P_PG, upstream: "localhost:$DEAD",
      tls: { ca: $T/ca.pem }, auth: { type: password, username: app, password: "\${file:$T/pw}" } }
  - { name: my, protocol: mysql, listen: 127.0.0.1:$P_MY, upstream: "localhost:$DEAD",
      tls: { ca: $T/ca.pem }, auth: { type: password, username: app, password: "\${file:$T/pw}" } }
  - { name: cache, protocol: redis, listen: 127.0.0.1:$P_RE, upstream: "localhost:$DEAD",
      tls: { ca: $T/ca.pem }, auth: { type: password, password: "\${file:$T/pw}" } }
  - { name: raw, protocol: tcp, listen: 127.0.0.1:$P_TCP, upstream: "localhost:$UP_TCP",
      tls: { ca: $T/ca.pem } }
YAML

# A first connection on each database and the tcp resource.
cat > "$T/talk.py" <<'PY'
import socket, struct, sys
pg, my, re, tcp = (int(p) for p in sys.argv[1:])
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
PY

# One profiled run; what runs varies a little from run to run (timers, the order tasks wake in),
# so the list is the union of RUNS of them.
profile_run() {
  valgrind --tool=callgrind --demangle=no --callgrind-out-file="$T/run$1.out" \
    "$BIN" run -c "$T/keyward.yaml" 2> "$T/run$1.log" & KW=$!; pids+=($!)
  until curl -sf "http://127.0.0.1:$ADMIN/readyz" > /dev/null; do
    kill -0 "$KW" 2>/dev/null || { cat "$T/run$1.log"; exit 1; }
    sleep 0.2
  done
  curl -s -o /dev/null "http://127.0.0.1:$P_HTTP/" || true
  curl -s -o /dev/null "http://127.0.0.1:$P_HTTP/again" || true
  python3 "$T/talk.py" "$P_PG" "$P_MY" "$P_RE" "$P_TCP"
  curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/metrics"
  curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/resources"
  sleep 2
  kill -INT "$KW"; wait "$KW" || true
}
for i in $(seq "${RUNS:-3}"); do profile_run "$i"; done

valgrind --tool=callgrind --demangle=no --callgrind-out-file="$T/demo.out" \
  "$BIN" demo --once > "$T/demo.log" 2>&1 || { cat "$T/demo.log"; exit 1; }

# The functions of keyward's own binary in the order the runs first name them.
nm --defined-only "$BIN" | awk '$2 ~ /^[tTwW]$/ {print $3}' > "$T/defined"
python3 - "$T/defined" "$T"/run*.out "$T/demo.out" > link/hot-symbols.txt <<'PY'
import re, sys
defined = set(open(sys.argv[1]).read().split())
seen, order = set(), []
for path in sys.argv[2:]:
    names = {}
    for line in open(path):
        m = re.match(r"c?fn=\((\d+)\)(?: (\S+))?$", line.strip())
        if not m:
            continue
        if m.group(2):
            names[m.group(1)] = m.group(2)
        name = names.get(m.group(1))
        if name in defined and name not in seen:
            seen.add(name)
            order.append(name)
print("\n".join(order))
PY
echo "link/hot-symbols.txt: $(wc -l < link/hot-symbols.txt) functions"
