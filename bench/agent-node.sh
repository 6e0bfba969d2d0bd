# agent-node.sh -- sourced after control-node.sh (agent-rss.sh, scripts/link-order.sh):
# asks the control plane for an agent join token and writes $W/agent.toml, an agent on
# 127.0.0.1:17402 with its data under $W/agent that stops its workloads when it exits.
# Needs $W, $TESSERA_SERVER and $TESSERA_TOKEN.
join=$(curl -sf -X POST -H "Authorization: Bearer $TESSERA_TOKEN" -d '{"role":"agent"}' \
  "$TESSERA_SERVER/api/v1/tokens" | python3 -c 'import sys,json; print(json.load(sys.stdin)["token"])')
cat >"$W/agent.toml" <<TOML
node_name = "bench-agent"
roles = ["agent"]
data_dir = "$W/agent"
[agent]
listen = "127.0.0.1:17402"
control = ["$TESSERA_SERVER"]
join_token = "$join"
stop_workloads_on_exit = true
TOML
