#!/usr/bin/env bash
# gateway-target.sh -- started by the HTTP proxy baseline as PROXY_CMD (see gateway.sh):
# a control node, an estate routing every slot to $BACKEND_ADDR, and a gateway process
# on $GW_IP:$GW_PORT in the foreground (the baseline stops the whole process group).
set -euo pipefail
: "${TESSERA_BIN:?}" "${BACKEND_ADDR:?}" "${GW_PORT:?}" "${GW_IP:?}"
# The baseline stops this script with SIGTERM and, half a second later, SIGKILL, which
# leaves no time for the EXIT trap; so first remove what earlier runs left (a directory no
# running process names: every process of a run has it in its command line).
for old in /tmp/tessera-gw-bench.*; do
  [ -d "$old" ] && ! pgrep -f -- "$old/" >/dev/null && rm -rf "$old"
done
W=$(mktemp -d /tmp/tessera-gw-bench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT
trap 'exit 143' TERM INT
# shellcheck source=bench/control-node.sh
. "$(dirname "${BASH_SOURCE[0]}")/control-node.sh"
"$TESSERA_BIN" apply -f - >/dev/null <<YAML
apiVersion: tessera.io/v1
kind: Region
metadata: {name: hangzhou}
---
apiVersion: tessera.io/v1
kind: Zone
metadata: {name: hz-a}
spec: {region: hangzhou}
---
apiVersion: tessera.io/v1
kind: Zone
metadata: {name: hz-b}
spec: {region: hangzhou}
---
apiVersion: tessera.io/v1
kind: Unit
metadata: {name: rz00}
spec: {type: RZone, zone: hz-a, standbyZone: hz-b, slots: ["00-49"]}
---
apiVersion: tessera.io/v1
kind: Unit
metadata: {name: rz01}
spec: {type: RZone, zone: hz-b, standbyZone: hz-a, slots: ["50-99"]}
---
apiVersion: tessera.io/v1
kind: ShardMap
metadata: {name: default}
spec: {slots: {"00-49": rz00, "50-99": rz01}}
---
apiVersion: tessera.io/v1
kind: App
metadata: {name: echo}
spec:
  mode: external
  endpoints:
    - {address: "$BACKEND_ADDR", unit: rz00}
    - {address: "$BACKEND_ADDR", unit: rz01}
---
apiVersion: tessera.io/v1
kind: TrafficRule
metadata: {name: echo}
spec: {app: echo, routingKey: {source: query, name: uid}}
YAML
join=$("$TESSERA_BIN" token create --role gateway | grep -o 'tsr1\.[^ ]*' | head -1)
cat >"$W/gateway.toml" <<TOML
node_name = "bench-gw"
roles = ["gateway"]
data_dir = "$W/gateway"
zone = "hz-a"
worker_threads = ${WORKERS:-1}
[gateway]
listen = "$GW_IP:$GW_PORT"
admin_listen = "127.0.0.1:17403"
control = ["http://127.0.0.1:17400"]
join_token = "$join"
access_log = false
TOML
# PIN=1: the baseline pins nginx and haproxy to CPU 0 and wrk to CPU 1; the gateway too.
pin=(); [ "${PIN:-0}" != 1 ] || pin=(taskset -c 0)
# GW_WRAP: a command to run the gateway under, for profiling (valgrind --tool=callgrind ...).
# shellcheck disable=SC2086
"${pin[@]}" ${GW_WRAP:-} "$TESSERA_BIN" run --profile "$W/gateway.toml" 2>"$W/gateway.log"
