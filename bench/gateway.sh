#!/usr/bin/env bash
# gateway.sh -- tessera's gateway next to nginx and haproxy, proxying to the same backend,
# in one run, with unit routing on.
#
# Drives the shared baseline (/work/shared/bench/http-proxy-baseline.sh, read-only; it
# apt-installs nginx, haproxy, wrk when missing) with tessera as its extra target:
#   - PROXY_CMD (started by the baseline once its nginx backend is up) runs
#     bench/gateway-target.sh: a control node and a separate gateway process (zone hz-a,
#     enrolled with a join token), and an estate whose app `echo` has the baseline's
#     backend as the endpoint of both units rz00 (hz-a) and rz01;
#   - PROXY_URL carries the routing key as a query parameter (`?uid=2088000000000007`,
#     the rule's routingKey is `{source: query, name: uid}`), because the baseline's wrk
#     sends no custom header: every request is matched, keyed, mapped slot 07 -> rz00 ->
#     hz-a, and answered with x-tessera-unit/zone, exactly as with the default header.
# The gateway runs with `worker_threads = $WORKERS` (default 1) and no access log, as
# nginx and haproxy run with WORKERS workers and `access_log off`.
#
# Usage (from the repo root, as root):
#   bash bench/gateway.sh
#   DURATION=3 ROUNDS=1 WARMUP=1 bash bench/gateway.sh      # quick check
#   SAVE=1 bash bench/gateway.sh     # also write bench/results/gateway-<date>.txt
# Environment: everything the baseline reads (DURATION, CONNECTIONS, THREADS, ROUNDS,
# WARMUP, BASE_PORT, WORKERS, PIN), plus TESSERA_BIN (see bench/tessera-cluster.sh),
# GW_PORT [18090], GW_IP [127.0.0.1], BASELINE.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BASELINE=${BASELINE:-/work/shared/bench/http-proxy-baseline.sh}
SAVE=${SAVE:-0}
export GW_PORT=${GW_PORT:-18090} GW_IP=${GW_IP:-127.0.0.1} WORKERS=${WORKERS:-1}
TESSERA_BIN=$(TESSERA_CLUSTER_DIR=/nonexistent bash "$HERE/tessera-cluster.sh" bin)
export TESSERA_BIN
export PROXY_CMD="bash $HERE/gateway-target.sh"
export PROXY_URL="http://$GW_IP:$GW_PORT/?uid=2088000000000007"
export PROXY_NAME=tessera
if [ "$SAVE" = 1 ]; then
  mkdir -p "$HERE/results"
  out="$HERE/results/gateway-$(date -u +%Y%m%d-%H%M).txt"
  { echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), tessera $("$TESSERA_BIN" --version | head -1)"
    bash "$BASELINE"; } 2>&1 | tee "$out"
else
  bash "$BASELINE"
fi
