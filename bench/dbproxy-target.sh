#!/usr/bin/env bash
# dbproxy-target.sh -- started by the MySQL proxy baseline as PROXY_CMD (see dbproxy.sh):
# a control node, a data source whose one shard is the baseline's MariaDB
# ($BACKEND_HOST:$BACKEND_PORT, database sbtest), and a DB proxy process on
# $PROXY_HOST:$PROXY_PORT in the foreground (the baseline stops the whole process group).
set -euo pipefail
: "${TESSERA_BIN:?}" "${BACKEND_HOST:?}" "${BACKEND_PORT:?}" "${BACKEND_USER:?}" "${BACKEND_PASSWORD:?}"
: "${PROXY_HOST:?}" "${PROXY_PORT:?}"
W=$(mktemp -d /tmp/tessera-dbproxy-bench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT
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
kind: Unit
metadata: {name: rz00}
spec: {type: RZone, zone: hz-a, slots: ["00-99"]}
---
apiVersion: tessera.io/v1
kind: DataSource
metadata: {name: sbtest}
spec:
  database: sbtest
  shardKey: id
  user: $BACKEND_USER
  password: $BACKEND_PASSWORD
  proxyUsers: [{name: ${PROXY_USER:-sbtest}, password: ${PROXY_PASSWORD:-sbtest}}]
  shards:
    - {unit: rz00, primary: "$BACKEND_HOST:$BACKEND_PORT"}
YAML
join=$("$TESSERA_BIN" token create --role dbproxy | grep -o 'tsr1\.[^ ]*' | head -1)
cat >"$W/dbproxy.toml" <<TOML
node_name = "bench-dbp"
roles = ["dbproxy"]
data_dir = "$W/dbproxy"
worker_threads = ${WORKERS:-1}
[dbproxy]
listen = "$PROXY_HOST:$PROXY_PORT"
admin_listen = "127.0.0.1:17404"
control = ["http://127.0.0.1:17400"]
join_token = "$join"
max_backend_connections = 1024
TOML
"$TESSERA_BIN" run --profile "$W/dbproxy.toml" 2>"$W/dbproxy.log"
