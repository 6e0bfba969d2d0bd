#!/usr/bin/env bash
# gateway-cpu.sh -- where a proxied request's CPU goes: nginx's reverse proxy and
# tessera's gateway, each in front of the same nginx backend, pinned as the baseline's
# PIN=1 does (backend and proxy on core 0, wrk on core 1). For each proxy and round:
# requests/s, and CPU microseconds per request of the proxy process and of the backend's
# worker (utime+stime from /proc/PID/stat around a wrk run), and context switches per
# request of each (voluntary+preempted, all threads). With SYSCALLS=1 it also
# counts the proxy's system calls per request over one extra run (strace -c; the run is
# slower under strace, the ratio per request is what counts).
#
# Usage (from the repo root, as root; needs nginx, wrk, curl, strace for SYSCALLS=1):
#   bash bench/gateway-cpu.sh
#   DURATION=8 ROUNDS=2 SYSCALLS=1 bash bench/gateway-cpu.sh
# Environment: TESSERA_BIN (see bench/tessera-cluster.sh), DURATION [8], ROUNDS [2],
# CONNECTIONS [64], SYSCALLS [0], BASE_PORT [18180], SAME_HEADERS [0]: 1 makes nginx add
# to each proxied request the five headers the gateway adds (x-forwarded-for,
# x-forwarded-proto, x-tessera-unit, -zone, -slot), so the backend parses the same request.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DURATION=${DURATION:-8} ROUNDS=${ROUNDS:-2} CONNECTIONS=${CONNECTIONS:-64}
SYSCALLS=${SYSCALLS:-0} BASE_PORT=${BASE_PORT:-18180} SAME_HEADERS=${SAME_HEADERS:-0}
TESSERA_BIN=$(TESSERA_CLUSTER_DIR=/nonexistent bash "$HERE/tessera-cluster.sh" bin)
BACKEND_PORT=$BASE_PORT NGINX_PORT=$((BASE_PORT + 1)) GW_PORT=$((BASE_PORT + 10))
T=$(mktemp -d /tmp/gateway-cpu.XXXXXX)
PIDS=()
cleanup() {
  # Not under `set -e`: a process that is already gone must not end the cleanup early
  # (it did: a proxy that failed to start left the gateway and its control node running).
  set +e
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -TERM -- "-$p" 2>/dev/null; kill -TERM "$p" 2>/dev/null; done
  sleep 0.5
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -KILL -- "-$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$T/tmp"
common="daemon off;
worker_processes 1;
error_log $T/error.log warn;
events { worker_connections 8192; }"
http_common="access_log off;
  client_body_temp_path $T/tmp/cb; proxy_temp_path $T/tmp/pt; fastcgi_temp_path $T/tmp/ft;
  uwsgi_temp_path $T/tmp/ut; scgi_temp_path $T/tmp/st;
  keepalive_requests 100000000; keepalive_timeout 120s;"
cat >"$T/backend.conf" <<EOF
$common
pid $T/backend.pid;
http { $http_common
  server { listen 127.0.0.1:$BACKEND_PORT reuseport backlog=4096;
    location / { default_type text/plain; return 200 'ok'; } } }
EOF
extra_headers=""
if [ "$SAME_HEADERS" = 1 ]; then
  extra_headers='proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Tessera-Unit rz00; proxy_set_header X-Tessera-Zone hz-a; proxy_set_header X-Tessera-Slot 07;'
fi
cat >"$T/proxy.conf" <<EOF
$common
pid $T/proxy.pid;
http { $http_common
  upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 256; keepalive_requests 100000000; }
  server { listen 127.0.0.1:$NGINX_PORT backlog=4096;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
      $extra_headers } } }
EOF
setsid taskset -c 0 nginx -p "$T" -c "$T/backend.conf" -e "$T/backend.err" & PIDS+=($!)
setsid taskset -c 0 nginx -p "$T" -c "$T/proxy.conf" -e "$T/proxy.err" & PIDS+=($!)
BACKEND_ADDR=127.0.0.1:$BACKEND_PORT GW_PORT=$GW_PORT GW_IP=127.0.0.1 WORKERS=1 TESSERA_BIN=$TESSERA_BIN \
  setsid bash "$HERE/gateway-target.sh" >"$T/gateway.log" 2>&1 & PIDS+=($!)
url_nginx="http://127.0.0.1:$NGINX_PORT/"
url_tessera="http://127.0.0.1:$GW_PORT/?uid=2088000000000007"
for _ in $(seq 1 150); do
  curl -sf "$url_tessera" >/dev/null 2>&1 && curl -sf "$url_nginx" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -sf "$url_tessera" >/dev/null || { echo "the gateway did not come up; see $T/gateway.log" >&2; cat "$T/gateway.log" >&2; exit 1; }
curl -sf "$url_nginx" >/dev/null || { echo "nginx did not come up (installed? port $NGINX_PORT or $BACKEND_PORT free?)" >&2; cat "$T"/*.err >&2 2>/dev/null; exit 1; }
worker_of() { pgrep -P "$(cat "$1")" | head -1; }
backend=$(worker_of "$T/backend.pid")
nginx_proxy=$(worker_of "$T/proxy.pid")
# By its profile, not the binary's name (TESSERA_BIN may be any copy of it).
gateway=$(pgrep -f -- "run --profile /tmp/tessera-gw-bench.*/gateway.toml" | head -1)
[ -n "$gateway" ] || { echo "the gateway process was not found; see $T/gateway.log" >&2; exit 1; }
taskset -p -c 0 "$gateway" >/dev/null
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Context switches of all of a process's threads: voluntary (it waited) and not (preempted).
switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ {v += $2} /^nonvoluntary_ctxt_switches/ {n += $2} END {print v, n}'; }
hz=$(getconf CLK_TCK)
echo "# gateway-cpu $(date -u +%FT%TZ) nproc=$(nproc) cpu=\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\" tessera: $("$TESSERA_BIN" --version | head -1)"
echo "# wrk -t1 -c$CONNECTIONS -d${DURATION}s on core 1; backend nginx worker, nginx proxy and the gateway on core 0; CPU from /proc (CLK_TCK=$hz); SAME_HEADERS=$SAME_HEADERS"
for round in $(seq 1 "$ROUNDS"); do
  for name in nginx tessera; do
    if [ "$name" = nginx ]; then pid=$nginx_proxy url=$url_nginx; else pid=$gateway url=$url_tessera; fi
    taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d2s "$url" >/dev/null
    b0=$(ticks "$backend") p0=$(ticks "$pid") bs0=$(switches "$backend") ps0=$(switches "$pid")
    out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "$url")
    b1=$(ticks "$backend") p1=$(ticks "$pid") bs1=$(switches "$backend") ps1=$(switches "$pid")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    awk -v n="$name" -v r="$round" -v q="$reqs" -v rps="$rps" -v b=$((b1 - b0)) -v p=$((p1 - p0)) -v hz="$hz" \
      -v ps0="$ps0" -v ps1="$ps1" -v bs0="$bs0" -v bs1="$bs1" \
      'BEGIN { split(ps0, a); split(ps1, c); split(bs0, d); split(bs1, e)
        printf "round %d %-8s %9.0f req/s  proxy %6.2f us/req  backend %6.2f us/req  switches/req proxy %.3f+%.3f backend %.3f+%.3f\n",
          r, n, rps, p * 1e6 / hz / q, b * 1e6 / hz / q, (c[1] - a[1]) / q, (c[2] - a[2]) / q, (e[1] - d[1]) / q, (e[2] - d[2]) / q }'
  done
done
if [ "$SYSCALLS" = 1 ]; then
  for name in nginx tessera; do
    if [ "$name" = nginx ]; then pid=$nginx_proxy url=$url_nginx; else pid=$gateway url=$url_tessera; fi
    timeout $((DURATION + 3)) strace -c -f -p "$pid" -o "$T/strace-$name.txt" 2>/dev/null & s=$!
    sleep 0.5
    out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "$url")
    wait "$s" || true
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    printf 'syscalls %-8s' "$name"
    awk -v q="$reqs" 'NR > 2 && $NF != "total" && $4 ~ /^[0-9]+$/ && $4 / q >= 0.01 { printf "  %s %.3f", $NF, $4 / q } END { print "  (per request)" }' "$T/strace-$name.txt"
  done
fi
