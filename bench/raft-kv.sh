#!/usr/bin/env bash
# raft-kv.sh -- tessera's 3-node replicated KV store next to a 3-member etcd, in one run.
#
# Drives the shared baseline (/work/shared/bench/raft-kv-baseline.sh, read-only) with
# tessera as its second target ("other" = tessera):
#   1. starts a 3-node tessera control cluster with bench/tessera-cluster.sh
#      (127.0.0.21-.23, ports 7400/7401; n1 bootstraps, n2 and n3 join with tokens) and
#      waits for 3 voters and a leader;
#   2. points the load at the tessera leader's API (KV_URL; LOAD_TARGET=follower picks a
#      follower, like the baseline does for etcd), lists all three API URLs for the
#      failover probe (KV_FAILOVER_URLS) and hands the baseline the cluster's
#      kill-leader/restore commands;
#   3. runs a patched copy of the baseline: it starts etcd and runs the same load
#      against both targets, interleaved, then the leader-failover probe on both.
#
# The KV_AUTH patch: every tessera request needs `Authorization: Bearer <admin token>`
# and the baseline sends no such header. This script copies the baseline into its temp
# dir and patches the copy with sed so that the value of KV_AUTH is sent as the
# Authorization header on requests to the KV_URL target only:
#   - wrk's Lua generator adds it when KVB_AUTH is set, and run_wrk sets KVB_AUTH only
#     for target "$KV_NAME" (etcd runs get an empty KVB_AUTH);
#   - the python probe (populate, readiness, failover) adds it only for URLs listed in
#     KV_URL/KV_FAILOVER_URLS (never etcd's 127.0.0.1:BASE_PORT.. URLs).
# etcd must not get the header: even with auth disabled, etcd 3.4's gateway answers
# 401 "etcdserver: invalid auth token" to any request that carries one. Every patch
# first checks that its anchor line occurs exactly once in the baseline and the result
# is checked again afterwards; if the baseline changes, this script stops and says
# which anchor is gone instead of benchmarking with a half-applied patch.
#
# Usage (from the repo root, as root: the baseline apt-installs etcd-server,
# etcd-client, wrk, curl, python3 when missing):
#   bash bench/raft-kv.sh
#   DURATION=2 ROUNDS=1 WARMUP=1 FAILOVER_ROUNDS=1 GRPC_CHECK=0 bash bench/raft-kv.sh   # quick check
#   SAVE=1 bash bench/raft-kv.sh        # also write bench/results/raft-kv-<date>.txt (+ .tsv)
#
# Environment (defaults in brackets), besides everything the baseline reads (DURATION,
# ROUNDS, TESTS, WARMUP, KV_KEYS, KV_VALUE_SIZE, FAILOVER_ROUNDS, GRPC_CHECK, LOAD_TARGET,
# BASE_PORT, ETCD_*; see the baseline's header):
#   TESSERA_BIN  [target/x86_64-unknown-linux-gnu/release/tessera in the repo, then
#                $CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/tessera, then
#                /var/cache/tessera/target/...]; never built by this script
#   TESSERA_SET  [] extra `--set KEY=VALUE` words for every tessera node (space-separated)
#   TESSERA_IPS, TESSERA_API_PORT, TESSERA_PEER_PORT: see bench/tessera-cluster.sh
#   BASELINE     [/work/shared/bench/raft-kv-baseline.sh]
#   SAVE [0]     1 = save the whole output to bench/results/raft-kv-<date>.txt and the
#                per-run TSV to raft-kv-<date>.tsv (+ .tsv.failover)
#   PATCH_ONLY [0] 1 = only show the KV_AUTH patch (diff against the baseline) and exit
#   KEEP [0]     1 = keep the temp dir (tessera node logs, profiles, events) after the run
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BASELINE=${BASELINE:-/work/shared/bench/raft-kv-baseline.sh}
SAVE=${SAVE:-0}
KEEP=${KEEP:-0}
LOAD_TARGET=${LOAD_TARGET:-leader}
CLUSTER="$HERE/tessera-cluster.sh"

log() { echo "[$(date +%H:%M:%S)] raft-kv: $*" >&2; }
die() { echo "raft-kv: $*" >&2; exit 1; }

[ -r "$BASELINE" ] || die "baseline script $BASELINE is not readable"
case $LOAD_TARGET in leader | follower) ;; *) die "LOAD_TARGET must be leader or follower" ;; esac
if ! command -v curl >/dev/null || [ ! -x /usr/bin/python3 ]; then   # the cluster script needs them before the baseline runs
  [ "$(id -u)" = 0 ] || die "curl and python3 are needed (apt-get install curl python3)"
  log "installing curl python3"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl python3 >/dev/null
fi

W=$(mktemp -d /tmp/tessera-raft-kv.XXXXXX)
export TESSERA_CLUSTER_DIR="$W/cluster"
cleanup() {
  local rc=$?
  bash "$CLUSTER" stop 2>/dev/null || true
  if [ "$KEEP" = 1 ]; then log "kept $W"; else rm -rf "$W"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

TESSERA_BIN=$(bash "$CLUSTER" bin)
export TESSERA_BIN

# ---------------------------------------------------------------- patch the baseline copy
B="$W/raft-kv-baseline.sh"
cp "$BASELINE" "$B"
anchor_once() {  # regex what
  local n
  n=$(grep -c -- "$1" "$B" || true)
  [ "$n" = 1 ] || die "the baseline changed: expected exactly 1 line matching '$1' ($2), found $n; update the KV_AUTH patch in $0"
}
patch_after() {  # regex what snippet-file: insert the snippet after the anchor line
  anchor_once "$1" "$2"
  sed -i "\\|$1|r $3" "$B"
}
patch_subst() {  # regex replacement what
  anchor_once "$1" "$3"
  sed -i "s|$1|$2|" "$B"
}
cat >"$W/patch-env.sh" <<'EOF'
# ---- patched in by tessera bench/raft-kv.sh: optional Authorization header (KV_AUTH) for the KV_URL target only
KV_AUTH=${KV_AUTH:-}
export KV_AUTH KVB_AUTH_URLS="$KV_URL,$KV_FAILOVER_URLS"
kvb_auth_for() { if [ -n "$KV_AUTH" ] && [ -n "$KV_URL" ] && [ "$1" = "$KV_NAME" ]; then printf '%s' "$KV_AUTH"; fi; }
# ---- end of patch
EOF
cat >"$W/patch-lua.lua" <<'EOF'
local kvb_auth = os.getenv("KVB_AUTH") or ""  -- patched in by tessera bench/raft-kv.sh (KV_AUTH)
if kvb_auth ~= "" then headers["Authorization"] = kvb_auth end
EOF
cat >"$W/patch-py.py" <<'EOF'
def _kvb_headers(url):  # patched in by tessera bench/raft-kv.sh (KV_AUTH): only KV_URL/KV_FAILOVER_URLS get it
    h = {"Content-Type": os.environ.get("KV_CONTENT_TYPE", "application/json")}
    auth = os.environ.get("KV_AUTH", "")
    if auth and url.rstrip("/") in [u.rstrip("/") for u in os.environ.get("KVB_AUTH_URLS", "").split(",") if u]:
        h["Authorization"] = auth
    return h
EOF
# The anchors and the inserted code are literal text of the baseline: no expansion here.
# shellcheck disable=SC2016
patch_after '^RAW_OUT=\${RAW_OUT:-}$' "environment block" "$W/patch-env.sh"
patch_after '^local headers = { \["Content-Type"\] = os\.getenv("KV_CONTENT_TYPE") or "application/json" }$' \
  "wrk Lua headers" "$W/patch-lua.lua"
# shellcheck disable=SC2016
patch_subst '^  out=\$(KVB_MODE=\$mode KVB_METHOD=' '  out=$(KVB_AUTH=$(kvb_auth_for "$t") KVB_MODE=$mode KVB_METHOD=' "run_wrk's wrk call"
patch_after '^import base64, http\.client, os, subprocess, sys, threading, time, urllib\.parse$' \
  "kvtool.py imports" "$W/patch-py.py"
patch_subst 'headers={"Content-Type": os\.environ\.get("KV_CONTENT_TYPE", "application/json")})$' \
  'headers=_kvb_headers(url))' "kvtool.py request headers"
# The result: each piece present exactly as often as intended, and still valid bash.
# shellcheck disable=SC2016
for check in '^kvb_auth_for() {:1' 'KVB_AUTH=\$(kvb_auth_for "\$t") KVB_MODE=:1' 'headers\["Authorization"\] = kvb_auth:1' \
             '^def _kvb_headers(url)::1' 'headers=_kvb_headers(url))$:1' 'os\.environ\.get("KV_CONTENT_TYPE", "application/json")})$:0'; do
  n=$(grep -c -- "${check%:*}" "$B" || true)
  [ "$n" = "${check##*:}" ] || die "KV_AUTH patch check failed: '${check%:*}' occurs $n times, want ${check##*:}"
done
bash -n "$B" || die "patched baseline is not valid bash"
if [ "${PATCH_ONLY:-0}" = 1 ]; then diff -u "$BASELINE" "$B" || true; exit 0; fi

# ---------------------------------------------------------------- run
run() {
  local rc=0 kv_url urls token cpu
  cpu=$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -1)
  echo "# machine: nproc=$(nproc) cpu=\"${cpu:-unknown}\" kernel=$(uname -srm) mem=$(awk '/^MemTotal/ {printf "%.1fGiB", $2 / 1048576}' /proc/meminfo) loadavg=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# tessera: $TESSERA_BIN ($("$TESSERA_BIN" --version | head -1)), 3 control nodes, defaults heartbeat 100ms election 400-800ms${TESSERA_SET:+, --set $TESSERA_SET}"
  echo "# baseline: $BASELINE sha256=$(sha256sum "$BASELINE" | cut -c1-16) (copy patched for KV_AUTH, see bench/README.md)"
  log "starting the tessera cluster in $TESSERA_CLUSTER_DIR"
  bash "$CLUSTER" start
  kv_url=$(bash "$CLUSTER" url "$LOAD_TARGET")
  urls=$(bash "$CLUSTER" urls)
  token=$(bash "$CLUSTER" token)
  if [ -z "$kv_url" ] || [ -z "$token" ]; then die "the tessera cluster gave no $LOAD_TARGET URL or no admin token"; fi
  echo "# tessera load target: $kv_url ($LOAD_TARGET); failover probe URLs: $urls"
  local q_dir q_cluster
  q_dir=$(printf %q "$TESSERA_CLUSTER_DIR") q_cluster=$(printf %q "$CLUSTER")
  KV_URL=$kv_url KV_NAME=tessera \
  KV_PUT_METHOD=PUT KV_PUT_PATH='/api/v1/kv/{key}' KV_PUT_BODY='{value}' \
  KV_GET_METHOD=GET KV_GET_PATH='/api/v1/kv/{key}' KV_GET_BODY='' \
  KV_START_CMD='' \
  KV_KILL_LEADER_CMD="TESSERA_CLUSTER_DIR=$q_dir bash $q_cluster kill-leader" \
  KV_RESTORE_CMD="TESSERA_CLUSTER_DIR=$q_dir bash $q_cluster restore" \
  KV_FAILOVER_URLS=$urls KV_AUTH="Bearer $token" LOAD_TARGET=$LOAD_TARGET \
    bash "$B" || rc=$?
  echo
  echo "# tessera cluster events:"
  sed 's/^/#   /' "$TESSERA_CLUSTER_DIR/events.log"
  echo "# tessera node logs (WARN/ERROR lines):"
  local i f
  for i in 1 2 3; do
    f="$TESSERA_CLUSTER_DIR/n$i/node.log"
    echo "#   n$i: $(grep -c '"level":"WARN"' "$f" || true) WARN, $(grep -c '"level":"ERROR"' "$f" || true) ERROR, $(grep -vc '^{' "$f" || true) non-JSON lines; most frequent:"
    grep -E '"level":"(WARN|ERROR)"' "$f" | sed -E 's/^\{"timestamp":"[^"]*",//; s/"(node_id|target)":[^,}]*,?//g' |
      cut -c1-200 | sort | uniq -c | sort -rn | head -5 | sed 's/^/#      /' || true
  done
  return "$rc"
}

if [ "$SAVE" = 1 ]; then
  mkdir -p "$HERE/results"
  OUT="$HERE/results/raft-kv-$(date +%Y%m%d-%H%M%S).txt"
  export RAW_OUT="${OUT%.txt}.tsv"
  exec > >(tee "$OUT") 2>&1
  log "saving the output to $OUT, the per-run TSV to $RAW_OUT (+ .failover)"
fi
run
