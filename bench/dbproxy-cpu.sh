#!/usr/bin/env bash
# dbproxy-cpu.sh -- where a proxied query's CPU goes: haproxy in TCP mode (a plain L4
# relay that parses nothing) and tessera's DB proxy (MySQL protocol, every statement
# parsed and routed), each in front of the same MariaDB, under the same sysbench
# oltp_point_select load. For each proxy and round: queries/s, and CPU microseconds per
# query of the proxy and of mariadbd (utime+stime from /proc/PID/stat around the run).
# sysbench, MariaDB and the proxy share the machine's cores; a proxy that costs less CPU
# per query leaves more for the other two, which is what its throughput ratio measures.
#
# Usage (from the repo root, as root; needs mariadb-server, sysbench, haproxy):
#   bash bench/dbproxy-cpu.sh
#   DURATION=8 ROUNDS=2 bash bench/dbproxy-cpu.sh
# Environment: TESSERA_BIN (see bench/tessera-cluster.sh), DURATION [8], ROUNDS [2],
# THREADS [8], BASE_PORT [19406].
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DURATION=${DURATION:-8} ROUNDS=${ROUNDS:-2} THREADS=${THREADS:-8} BASE_PORT=${BASE_PORT:-19406}
TESSERA_BIN=$(TESSERA_CLUSTER_DIR=/nonexistent bash "$HERE/tessera-cluster.sh" bin)
DB_PORT=$BASE_PORT HA_PORT=$((BASE_PORT + 1)) TS_PORT=$((BASE_PORT + 4))
T=$(mktemp -d /tmp/dbproxy-cpu.XXXXXX)
PIDS=()
cleanup() {
  # Not under `set -e`: a process that is already gone must not end the cleanup early
  # (it did: a proxy that failed to start left the gateway and its control node running).
  set +e
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -TERM -- "-$p" 2>/dev/null; kill -TERM "$p" 2>/dev/null; done
  sleep 1
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -KILL -- "-$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
for cmd in mariadbd mariadb-install-db sysbench haproxy; do
  command -v "$cmd" >/dev/null || { echo "needs $cmd (apt-get install mariadb-server sysbench haproxy)" >&2; exit 1; }
done
mkdir -p "$T/data"
mariadb-install-db --user=root --datadir="$T/data" --auth-root-authentication-method=normal >"$T/install.log" 2>&1
setsid mariadbd --user=root --datadir="$T/data" --bind-address=127.0.0.1 --port="$DB_PORT" \
  --socket="$T/mysqld.sock" --pid-file="$T/mysqld.pid" --log-error="$T/mysqld.err" \
  --skip-name-resolve --skip-log-bin --max-connections=1000 --innodb-buffer-pool-size=256M \
  >"$T/mysqld.out" 2>&1 & PIDS+=($!)
for _ in $(seq 1 100); do
  mariadb-admin --socket="$T/mysqld.sock" -uroot ping >/dev/null 2>&1 && break
  sleep 0.3
done
mariadb --socket="$T/mysqld.sock" -uroot -e "
  CREATE DATABASE sbtest;
  CREATE USER 'sbtest'@'%' IDENTIFIED BY 'sbtest';
  GRANT ALL ON sbtest.* TO 'sbtest'@'%';"
db_pid=$(cat "$T/mysqld.pid")
cat >"$T/haproxy.cfg" <<EOF
global
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
listen mysql
  bind 127.0.0.1:$HA_PORT
  server db 127.0.0.1:$DB_PORT
EOF
setsid haproxy -db -f "$T/haproxy.cfg" >"$T/haproxy.log" 2>&1 & PIDS+=($!)
BACKEND_HOST=127.0.0.1 BACKEND_PORT=$DB_PORT BACKEND_USER=sbtest BACKEND_PASSWORD=sbtest \
  PROXY_HOST=127.0.0.1 PROXY_PORT=$TS_PORT WORKERS=1 TESSERA_BIN=$TESSERA_BIN \
  setsid bash "$HERE/dbproxy-target.sh" >"$T/tessera.log" 2>&1 & PIDS+=($!)
SB=(--db-driver=mysql --mysql-user=sbtest --mysql-password=sbtest --mysql-db=sbtest
    --tables=2 --table-size=20000 --db-ps-mode=auto)
sysbench oltp_point_select "${SB[@]}" --mysql-host=127.0.0.1 --mysql-port="$DB_PORT" prepare >"$T/prepare.log" 2>&1
for _ in $(seq 1 150); do
  sysbench oltp_point_select "${SB[@]}" --mysql-host=127.0.0.1 --mysql-port="$TS_PORT" --time=1 --threads=1 run >/dev/null 2>&1 && break
  sleep 0.2
done
ha_pid=$(pgrep -f "haproxy -db -f $T/haproxy.cfg" | head -1)
ts_pid=$(pgrep -f -- "run --profile /tmp/tessera-dbproxy-bench.*/dbproxy.toml" | head -1)
[ -n "$ts_pid" ] || { echo "the DB proxy did not come up; see $T/tessera.log" >&2; cat "$T/tessera.log" >&2; exit 1; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
echo "# dbproxy-cpu $(date -u +%FT%TZ) nproc=$(nproc) cpu=\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\" tessera: $("$TESSERA_BIN" --version | head -1)"
echo "# sysbench oltp_point_select --threads=$THREADS --time=$DURATION, 2 tables x 20000 rows, server-side prepared statements; $(mariadbd --version | awk '{print $3}'); unpinned; CPU from /proc (CLK_TCK=$hz)"
for round in $(seq 1 "$ROUNDS"); do
  for name in direct haproxy tessera; do
    case $name in
      direct) port=$DB_PORT pid= ;;
      haproxy) port=$HA_PORT pid=$ha_pid ;;
      tessera) port=$TS_PORT pid=$ts_pid ;;
    esac
    d0=$(ticks "$db_pid"); p0=0; [ -n "$pid" ] && p0=$(ticks "$pid")
    out=$(sysbench oltp_point_select "${SB[@]}" --mysql-host=127.0.0.1 --mysql-port="$port" \
      --threads="$THREADS" --time="$DURATION" run)
    d1=$(ticks "$db_pid"); p1=0; [ -n "$pid" ] && p1=$(ticks "$pid")
    q=$(echo "$out" | awk '/queries:/ {print $2; exit}')
    qps=$(echo "$out" | awk -F'[()]' '/queries:/ {print $2; exit}' | awk '{printf "%.0f", $1}')
    awk -v n="$name" -v r="$round" -v q="$q" -v qps="$qps" -v p="$((p1 - p0))" -v d="$((d1 - d0))" -v hz="$hz" \
      'BEGIN { printf "round %s %-8s %7d q/s  proxy %6.2f us/query  mariadbd %6.2f us/query\n", r, n, qps, (p * 1e6 / hz) / q, (d * 1e6 / hz) / q }'
  done
done
