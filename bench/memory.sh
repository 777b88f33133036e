#!/usr/bin/env bash
# keyward's memory and threads, idle and holding N idle proxied TLS connections: one `tcp`
# resource in front of an HTTPS nginx at `localhost` (a name, so each connection's upstream
# address is looked up), verify-full. Prints keyward's RSS idle, RSS and threads with N app
# connections open (each with its upstream TLS session; the peak thread count while they
# open), KiB per open connection (sockets / 2), and RSS once they closed.
#
#   bash bench/memory.sh            # N=2000
#   N=500 bash bench/memory.sh
#   KEYWARD_BIN=target/release/keyward bash bench/memory.sh   # another build (default: dist)
#
# Needs nginx, openssl, python3. It asserts nothing; the figures go in README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}
ulimit -n "$(ulimit -Hn)"
source bench/lib.sh
need openssl:openssl python3:python3
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
T=$(mktemp -d /tmp/keyward-memory.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT
KW_BIN=$(keyward_bin)
KW_FILE=$(readlink -f "$KW_BIN")   # the file itself (KW_BIN may be a link): its smaps name
# Read the binary as a container's first start reads it: its pages evicted from the page cache
# first, so exec maps them in the folios readahead makes. A binary just written (by the linker,
# by cp) sits in the folios its writes made, which map in larger windows: 0.3-0.6 MB more idle
# RSS for the same build.
sync "$KW_FILE"
python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$KW_FILE"
make_pki

UP=$(free_port); KT=$(free_port)
mkdir -p "$T/up/tmp"
cat > "$T/up/nginx.conf" <<CONF
daemon off; worker_processes 1; pid $T/up/nginx.pid; error_log $T/up/error.log warn;
events { worker_connections $((N + 100)); }
http {
  access_log off;
  client_body_temp_path $T/up/tmp/body; proxy_temp_path $T/up/tmp/proxy; fastcgi_temp_path $T/up/tmp/fastcgi;
  uwsgi_temp_path $T/up/tmp/uwsgi; scgi_temp_path $T/up/tmp/scgi;
  client_header_timeout 600s; keepalive_timeout 600s;
  server { listen 127.0.0.1:$UP ssl; ssl_certificate $T/server.pem; ssl_certificate_key $T/server.key;
    location / { return 200 'ok\n'; } }
}
CONF
"$NGINX" -e stderr -p "$T/up" -c "$T/up/nginx.conf" & pids+=($!)
cat > "$T/keyward.yaml" <<YAML
defaults: { max_connections: $((N + 100)) }
resources:
  - name: api
    protocol: tcp
    listen: 127.0.0.1:$KT
    upstream: localhost:$UP
    tls: { ca: $T/ca.pem }
YAML
"$KW_BIN" run -c "$T/keyward.yaml" 2> "$T/keyward.log" & KW=$!; pids+=($!)
until curl -sf --cacert "$T/ca.pem" "https://localhost:$UP/" >/dev/null; do sleep 0.05; done
until python3 -c "import socket; socket.create_connection(('127.0.0.1', $KT)).close()" 2>/dev/null; do sleep 0.05; done

rss() { awk '/VmRSS/ {print $2}' /proc/$KW/status; }
threads() { awk '/Threads/ {print $2}' /proc/$KW/status; }
upstreams() { ls -l /proc/$KW/fd 2>/dev/null | grep -c socket || true; }
sleep 1
IDLE_RSS=$(rss); IDLE_THREADS=$(threads)
# What the idle RSS is made of (/proc/PID/smaps, KiB): the binary's mappings by permission
# (r-x text; r-- read-only data, relocations, unwind tables; rw- data and relocated
# vtables), the shared libraries, and anonymous memory (heap, arenas, thread stacks).
IDLE_DETAIL=$(awk -v bin="$KW_FILE" '
  /^[0-9a-f]+-[0-9a-f]+ / { perms = $2; name = $6; next }
  /^Rss:/ {
    if (name == bin) key = "binary " perms
    else if (name ~ /\.so/) { n = name; sub(/.*\//, "", n); sub(/\.so.*/, "", n); key = n }
    else if (name == "[stack]") key = "main stack"
    else if (name ~ /^\[/) key = name
    else key = "anonymous"
    kb[key] += $2
  }
  END { for (k in kb) if (kb[k] > 0) printf "%s %d KiB; ", k, kb[k] }' /proc/$KW/smaps)

# N app connections, silent until told to close (a `tcp` resource opens each one's upstream
# TLS session at accept).
cat > "$T/hold.py" <<'PY'
import asyncio, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
async def one(stop):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    await stop.wait()
    w.close()
async def main():
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(one(stop)) for _ in range(n)]
    await asyncio.sleep(0)
    print("open", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    stop.set()
    await asyncio.gather(*tasks)
asyncio.run(main())
PY
( peak=0; while kill -0 $KW 2>/dev/null; do t=$(threads); [ "$t" -gt "$peak" ] && peak=$t && echo "$peak" > "$T/peak-threads"; sleep 0.05; done ) & pids+=($!)
coproc HOLD { python3 "$T/hold.py" "$KT" "$N"; }
read -r _ <&"${HOLD[0]}"
# Each app connection is two sockets in keyward once its upstream TLS is up.
for _ in $(seq 300); do [ "$(upstreams)" -ge $((2 * N)) ] && break; sleep 0.1; done
sleep 1
OPEN_RSS=$(rss); OPEN_THREADS=$(cat "$T/peak-threads"); SOCKETS=$(upstreams)
echo >&"${HOLD[1]}"
wait "$HOLD_PID" 2>/dev/null || true
for _ in $(seq 100); do [ "$(upstreams)" -le 4 ] && break; sleep 0.1; done
sleep 2
AFTER_RSS=$(rss); AFTER_THREADS=$(threads)

echo "keyward $($KW_BIN --version); $(nproc) CPUs"
mb() { awk -v k="$1" 'BEGIN { printf "%6.1f MB", k / 1024 }'; }
printf 'idle:                       RSS %s, %s threads\n' "$(mb "$IDLE_RSS")" "$IDLE_THREADS"
printf '  of it: %s\n' "$IDLE_DETAIL"
printf '%5d TLS connections open: RSS %s, at most %s threads, %s sockets; %s KiB per connection\n' \
  "$N" "$(mb "$OPEN_RSS")" "$OPEN_THREADS" "$SOCKETS" "$(awk -v a="$OPEN_RSS" -v b="$IDLE_RSS" -v n="$SOCKETS" 'BEGIN { printf "%.1f", (a - b) / (n / 2) }')"
printf 'after they closed:          RSS %s, %s threads\n' "$(mb "$AFTER_RSS")" "$AFTER_THREADS"
