# Shared by the bench scripts (sourced): a free loopback port, and a throwaway PKI in $T.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# $T/ca.pem, and $T/server.pem + $T/server.key for localhost and 127.0.0.1 (EC P-256).
make_pki() {
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$T/ca.key" -out "$T/ca.pem" \
    -days 2 -subj "/CN=bench-ca" -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$T/server.key" -out "$T/server.csr" -subj "/CN=localhost" 2>/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$T/server.ext"
  openssl x509 -req -in "$T/server.csr" -CA "$T/ca.pem" -CAkey "$T/ca.key" -CAcreateserial -days 2 -extfile "$T/server.ext" -out "$T/server.pem" 2>/dev/null
}

# YAML for the benchmarks' floor row: a keyward `tcp` resource on 127.0.0.1:$1 relaying to
# 127.0.0.1:$2 with no TLS and no login of its own — one loopback hop and nothing else.
floor_resource() {
  cat <<YAML
  - name: floor
    protocol: tcp
    listen: 127.0.0.1:$1
    upstream: 127.0.0.1:$2
    tls: { mode: disable }
YAML
}

# CPU time in clock ticks (1/100 s) used so far by the given processes (all their threads, exited
# ones included) and their direct children (live ones, plus the reaped ones each waited for), as
# "user system": ticks in the processes' own code and libraries, and in the kernel on their
# behalf (their system calls and the network stack work those do).
cpu_ticks_split() {
  local u=0 k=0 p s
  for p in "$@" $(for p in "$@"; do pgrep -P "$p"; done); do
    s=$(sed 's/.*) //' /proc/"$p"/stat 2>/dev/null) || continue
    set -- $s
    u=$((u + ${12} + ${14})); k=$((k + ${13} + ${15}))
  done
  echo "$u $k"
}

# cpu_ticks_split's two numbers added up.
cpu_ticks() {
  local u k
  read -r u k < <(cpu_ticks_split "$@")
  echo $((u + k))
}

# System calls of the given processes (every thread, and their direct children's), where perf can
# count them (Debian: linux-perf; tracepoints readable: root or kernel.perf_event_paranoid <= 1).
# `syscalls_start PID...` before the load and `syscalls_stop` after it, both in the same shell
# (not in `$(...)`: it waits for perf), which leaves the count in SYSCALLS, -1 where nothing
# was counted. Uses $T/perf.
SYSCALLS_COUNTED=
perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1 && SYSCALLS_COUNTED=1
syscalls_start() {
  SYSCALLS_PERF=
  [ -n "$SYSCALLS_COUNTED" ] && [ $# -gt 0 ] || return 0
  perf stat -x, -e raw_syscalls:sys_enter -o "$T/perf" \
    -p "$(printf '%s\n' "$@" $(for p in "$@"; do pgrep -P "$p"; done) | paste -sd,)" &
  SYSCALLS_PERF=$!
  sleep 0.2   # attached before the load starts
}
syscalls_stop() {
  SYSCALLS=-1
  [ -n "${SYSCALLS_PERF:-}" ] || return 0
  kill -INT "$SYSCALLS_PERF"; wait "$SYSCALLS_PERF" 2>/dev/null || true
  SYSCALLS=$(awk -F, '/raw_syscalls:sys_enter/ { print $1 }' "$T/perf")
  SYSCALLS=${SYSCALLS:--1}
}

# Fails with the list of what is missing (and the Debian packages that have it) unless every
# named command is on PATH. Arguments: command:package pairs.
need() {
  local miss=() c
  for c in "$@"; do command -v "${c%%:*}" >/dev/null 2>&1 || miss+=("$c"); done
  if [ "${#miss[@]}" -gt 0 ]; then
    echo "missing commands (command:Debian package): ${miss[*]}" >&2
    exit 2
  fi
}

# HAProxy (Debian: haproxy) as a peer: runs in the foreground in mode $2 (http, tcp) with the
# config body $3 (frontends and backends) after a common head (as many threads as cores; no
# logging) written to $T/haproxy-$1.cfg; leaves the PID in HAPROXY_PID and appends it to pids.
haproxy_start() {
  cat > "$T/haproxy-$1.cfg" <<CONF
global
  nbthread $(nproc)
  maxconn 4096
defaults
  mode $2
  timeout connect 5s
  timeout client 60s
  timeout server 60s
$3
CONF
  haproxy -db -f "$T/haproxy-$1.cfg" 2> "$T/haproxy-$1.log" &
  HAPROXY_PID=$!; pids+=($!)
}

# The keyward binary a benchmark measures: KEYWARD_BIN as it is, or else the build the container
# image ships (`cargo build --profile dist`: one LTO unit, its startup functions laid out
# together), built from the work tree. The release profile (`cargo build --release`, what the
# tests run) measured 0.92x the dist build's HTTP req/s at 1.09x its CPU per request.
keyward_bin() {
  if [ -n "${KEYWARD_BIN:-}" ]; then echo "$KEYWARD_BIN"; return; fi
  cargo build --profile dist --locked --quiet --bin keyward >&2
  echo "${CARGO_TARGET_DIR:-target}/dist/keyward"
}

# An nginx config in $1 (its pid, logs and temp paths there too) with the http block's server
# block(s) $2 and $3 worker processes.
nginx_conf() { # $1 dir, $2 server block, $3 worker_processes
  mkdir -p "$1/tmp"
  cat > "$1/nginx.conf" <<CONF
daemon off; worker_processes $3; pid $1/nginx.pid; error_log $1/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $1/tmp/body; proxy_temp_path $1/tmp/proxy; fastcgi_temp_path $1/tmp/fastcgi;
  uwsgi_temp_path $1/tmp/uwsgi; scgi_temp_path $1/tmp/scgi;
  $2
}
CONF
}

# keyward's config for the HTTP benchmarks: one `http` resource on 127.0.0.1:$1 in front of the
# HTTPS API on localhost:$2 (verify-full against $T/ca.pem, a bearer token injected).
api_keyward_yaml() {
  cat <<YAML
admin: null
log: { level: warn }
resources:
  - name: api
    protocol: http
    listen: 127.0.0.1:$1
    upstream: https://localhost:$2
    tls: { ca: $T/ca.pem }
    auth: { type: bearer, token: bench-token }
YAML
}
