#!/usr/bin/env bash
# snapshot-memory.sh -- peak memory of control nodes while Raft snapshots are built,
# sent and installed on a store of a given size.
#
# A 3-node cluster (bench/tessera-cluster.sh) with frequent snapshots
# (control.snapshot_logs=SNAP_LOGS) is loaded with KEYS distinct keys of VALUE bytes
# through the leader (wrk, CONNS connections). One follower is stopped (SIGKILL) before
# the load and started again after it: its log is purged meanwhile, so it catches up by
# installing the leader's snapshot. Reported per node: VmHWM (peak resident memory) and
# the size of the current snapshot file, plus the time the stopped follower took to
# catch up.
#
# Usage (from the repo root):
#   bash bench/snapshot-memory.sh
#   TESSERA_BIN=/tmp/tessera-old bash bench/snapshot-memory.sh   # another build
# Environment: KEYS [20000] VALUE [4096] CONNS [8] SNAP_LOGS [2000]
#   TESSERA_CLUSTER_DIR [a fresh temp dir] and the rest of bench/tessera-cluster.sh's.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KEYS=${KEYS:-20000}
VALUE=${VALUE:-4096}
CONNS=${CONNS:-8}
SNAP_LOGS=${SNAP_LOGS:-2000}
export TESSERA_CLUSTER_DIR=${TESSERA_CLUSTER_DIR:-$(mktemp -d /tmp/tessera-snapmem.XXXXXX)}
export TESSERA_SET="control.snapshot_logs=$SNAP_LOGS ${TESSERA_SET:-}"
CLUSTER="$HERE/tessera-cluster.sh"
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 2; }

cleanup() { bash "$CLUSTER" stop >/dev/null 2>&1 || true; }
trap cleanup EXIT

bash "$CLUSTER" start >/dev/null
BIN=$(bash "$CLUSTER" bin)
TOKEN=$(bash "$CLUSTER" token)
LEADER=$(bash "$CLUSTER" url leader)
FOLLOWER=$(bash "$CLUSTER" url follower)
echo "binary: $BIN ($("$BIN" --version))"
echo "machine: $(nproc) CPUs, $(awk '/MemTotal/ {print int($2/1024)" MiB"}' /proc/meminfo), $(uname -r)"
echo "store: $KEYS keys x $VALUE bytes through $LEADER; snapshot every $SNAP_LOGS entries"

# The follower's node directory and pid.
node_of() {
  local url=$1
  for d in "$TESSERA_CLUSTER_DIR"/n*; do
    if grep -q "${url#http://}" "$d/profile.toml" 2>/dev/null; then echo "$d"; return; fi
  done
}
FDIR=$(node_of "$FOLLOWER")
FPID=$(cat "$FDIR/pid")
kill -9 "$FPID"
echo "stopped follower $FOLLOWER (pid $FPID)"

LUA=$(mktemp /tmp/snapmem.XXXXXX.lua)
cat >"$LUA" <<EOF
local n = 0
local keys = $KEYS
local value = string.rep("v", $VALUE)
local thread_id = 0
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  n = 0
end
function request()
  n = n + 1
  local k = (id * 100000000) + n
  return wrk.format("PUT", "/api/v1/kv/bench/snap/" .. k, {["Authorization"] = "Bearer $TOKEN"}, value)
end
EOF
# Threads and connections write disjoint keys; stop once about KEYS were written.
SECS=$(( KEYS / 1000 + 5 ))
echo "loading for ${SECS}s ..."
wrk -t2 -c"$CONNS" -d"${SECS}s" -s "$LUA" "$LEADER" | grep -E "Requests/sec|requests in|Non-2xx" || true
rm -f "$LUA"

# Restart the follower (as tessera-cluster.sh starts nodes): it installs a snapshot.
LAST=$(curl -s -H "Authorization: Bearer $TOKEN" -X PUT -d last "$LEADER/api/v1/kv/bench/snap/last" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["revision"])')
t0=$(date +%s.%N)
bash "$FDIR/run.sh" </dev/null >>"$FDIR/node.out" 2>>"$FDIR/node.log" &
echo $! >"$FDIR/pid"
# Caught up: a stale (local) read on the follower sees the last write's revision.
caught=no
for _ in $(seq 1 1200); do
  rev=$(curl -s -H "Authorization: Bearer $TOKEN" "$FOLLOWER/api/v1/kv/bench/snap/last?consistency=stale" 2>/dev/null |
    python3 -c 'import json,sys
try:
    v=json.load(sys.stdin); print(v["revision"] if "kv" in v else 0)
except Exception: print(0)' 2>/dev/null || echo 0)
  if [ "${rev:-0}" -ge "$LAST" ] 2>/dev/null; then caught=yes; break; fi
  sleep 0.1
done
t1=$(date +%s.%N)
echo "restarted follower caught up (revision $LAST): $caught after $(python3 -c "print(round($t1-$t0,2))") s"
grep -h "Installed snapshot" "$FDIR/node.log" | tail -1 | cut -c1-220 || echo "(no snapshot install logged)"

printf '%-28s %12s %12s %14s\n' node VmHWM_MiB VmRSS_MiB snapshot_MiB
for d in "$TESSERA_CLUSTER_DIR"/n*; do
  pid=$(cat "$d/pid" 2>/dev/null || true)
  [ -n "$pid" ] && [ -r "/proc/$pid/status" ] || continue
  hwm=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$pid/status")
  rss=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$pid/status")
  snap=$(du -sm "$d"/data/control/snapshots 2>/dev/null | cut -f1)
  role=member; [ "$d" = "$FDIR" ] && role="member (restarted)"
  printf '%-28s %12s %12s %14s\n' "$(basename "$d") $role" "$hwm" "$rss" "${snap:-?}"
done
