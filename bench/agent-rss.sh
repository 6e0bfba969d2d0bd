#!/usr/bin/env bash
# agent-rss.sh -- the agent's idle memory: a one-node control plane and an agent in its
# own process running the demo's two echo instances (src/cli/demo.yaml), left idle for
# IDLE seconds (default 30); then the agent's VmRSS and its split from /proc/PID/smaps_rollup: private (anon,
# what the agent costs) and shared clean (the binary's code pages, shared with every
# other tessera process on the machine and reclaimable).
# With OWN_COPY=1 the agent runs from a copy of the binary, so none of its code pages are
# already in the page cache from the control node's process: as on a workload machine
# that runs the agent alone (the kernel maps up to 16 neighbouring cached pages on each
# code page fault, so a warm cache inflates the resident set).
# With COLD=1 (root) the page cache is dropped before the agent starts, so its code comes
# from disk as after a reboot (read-ahead then decides how much more is mapped).
# The binary's functions are laid out by scripts/link-order.txt (build.rs); after a
# dependency or toolchain change, `scripts/link-order.sh check` says if it is still current.
# Usage: TESSERA_BIN=path [OWN_COPY=1] [COLD=1] bench/agent-rss.sh [IDLE]
set -euo pipefail
N=2
IDLE=${1:-30}
TESSERA_BIN=${TESSERA_BIN:-${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/tessera}
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
source "$(dirname "$0")/control-node.sh"
source "$(dirname "$0")/agent-node.sh"
AGENT_BIN=$TESSERA_BIN
if [ "${OWN_COPY:-0}" = 1 ]; then
  AGENT_BIN=$W/tessera-agent
  cp "$TESSERA_BIN" "$AGENT_BIN"
fi
if [ "${COLD:-0}" = 1 ]; then
  sync
  echo 3 >/proc/sys/vm/drop_caches
fi
"$AGENT_BIN" run --profile "$W/agent.toml" >"$W/agent.log" 2>&1 &
agent=$!
"$TESSERA_BIN" apply -f "$(dirname "$0")/../src/cli/demo.yaml" >/dev/null
for _ in $(seq 1 100); do
  ready=$(curl -sf -H "Authorization: Bearer $TESSERA_TOKEN" "$TESSERA_SERVER/api/v1/instances" |
    python3 -c 'import sys,json; print(sum(1 for i in json.load(sys.stdin)["items"] if (i.get("status") or {}).get("ready")))')
  [ "$ready" = "$N" ] && break
  sleep 0.3
done
echo "agent pid $agent, $ready/$N instances ready; idle for ${IDLE}s"
sleep "$IDLE"
kb() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$agent/${2:-smaps_rollup}"; }
printf 'machine: %s, %s cores\n' "$(uname -m)" "$(nproc)"
printf 'VmRSS         %6d KiB\n' "$(kb VmRSS status)"
printf 'Private_Dirty %6d KiB  (anonymous: heap, stacks; what the agent costs)\n' "$(kb Private_Dirty)"
printf 'Shared_Clean  %6d KiB  (the binary'"'"'s code pages, shared and reclaimable)\n' "$(kb Shared_Clean)"
printf 'Pss           %6d KiB\n' "$(kb Pss)"
printf 'RssAnon       %6d KiB\n' "$(kb RssAnon status)"
printf 'RssFile       %6d KiB  (own copy of the binary: %s, cold cache: %s)\n' "$(kb RssFile status)" "${OWN_COPY:-0}" "${COLD:-0}"
printf 'Threads       %6d\n' "$(kb Threads status)"
