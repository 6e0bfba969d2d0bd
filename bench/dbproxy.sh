#!/usr/bin/env bash
# dbproxy.sh -- tessera's DB proxy next to direct MariaDB (and haproxy in TCP mode, a
# plain L4 hop) in one run: sysbench oltp_point_select and oltp_read_write.
#
# Drives the shared baseline (/work/shared/bench/mysql-proxy-baseline.sh, read-only; it
# apt-installs mariadb-server, sysbench, haproxy when missing) with tessera as its
# extra target: PROXY_CMD (started once the baseline's MariaDB is up) runs
# bench/dbproxy-target.sh: a control node, a data source `sbtest` whose one shard is that
# MariaDB, and a DB proxy process on PROXY_HOST:PROXY_PORT. Every statement is parsed
# and routed (a one-shard database takes them all); sysbench uses server-side prepared
# statements (DB_PS_MODE=auto), as against MariaDB directly.
#
# Usage (from the repo root, as root):
#   bash bench/dbproxy.sh
#   DURATION=5 ROUNDS=1 WARMUP=1 bash bench/dbproxy.sh      # quick check
#   SAVE=1 bash bench/dbproxy.sh     # also write bench/results/dbproxy-<date>.txt
# Environment: everything the baseline reads (DURATION, THREADS, ROUNDS, TESTS, WARMUP,
# TABLES, TABLE_SIZE, DB_PS_MODE, PORT, ...), plus TESSERA_BIN (see
# bench/tessera-cluster.sh), PROXY_PORT [19310], WORKERS [1] (the proxy's worker_threads; 1 = current-thread scheduler; on 2 cores one beats two, measured 26.1k vs 22.2k point selects/s),
# PIN [0]: 1 = sysbench and MariaDB on CPU 0, the proxies (haproxy and tessera, with its
# control node) on CPU 1, as when the proxy runs on a host of its own: direct runs then
# get one core, and every proxy's CPU no longer competes with the database's. Unpinned
# (the default) all of them share both cores.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BASELINE=${BASELINE:-/work/shared/bench/mysql-proxy-baseline.sh}
SAVE=${SAVE:-0}
export PROXY_HOST=127.0.0.1 PROXY_PORT=${PROXY_PORT:-19310} PROXY_NAME=tessera
TESSERA_BIN=$(TESSERA_CLUSTER_DIR=/nonexistent bash "$HERE/tessera-cluster.sh" bin)
export TESSERA_BIN WORKERS=${WORKERS:-1}
export PROXY_CMD="bash $HERE/dbproxy-target.sh"
PIN=${PIN:-0}
RUN=(bash "$BASELINE")
if [ "$PIN" = 1 ]; then
  [ "$(nproc)" -ge 2 ] || { echo "PIN=1 needs 2 CPUs" >&2; exit 1; }
  PROXY_CMD="taskset -c 1 $PROXY_CMD"
  RUN=(taskset -c 0 bash "$BASELINE")
  # The baseline starts haproxy itself (on CPU 0, inherited): move it to CPU 1 as soon
  # as it exists. Bounded: 120 s, then the watcher gives up.
  ( for _ in $(seq 1 600); do
      pid=$(pgrep -x haproxy | head -1) && { taskset -apc 1 "$pid" >/dev/null; exit 0; }
      sleep 0.2
    done ) &
  PINNER=$!
  trap 'kill $PINNER 2>/dev/null || true' EXIT
fi
if [ "$SAVE" = 1 ]; then
  mkdir -p "$HERE/results"
  out="$HERE/results/dbproxy-$(date -u +%Y%m%d-%H%M)$([ "$PIN" = 1 ] && echo -pinned).txt"
  { echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), tessera $("$TESSERA_BIN" --version | head -1), PIN=$PIN"
    "${RUN[@]}"; } 2>&1 | tee "$out"
else
  "${RUN[@]}"
fi
