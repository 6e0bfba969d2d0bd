# control-node.sh -- sourced by the bench targets: starts a one-node control plane with
# its data under $W (127.0.0.1:17400, peer 17401) in the background, waits until it
# answers and has written its admin token, and exports TESSERA_SERVER and TESSERA_TOKEN
# for the `tessera` commands that follow. Needs $TESSERA_BIN and $W.
cat >"$W/control.toml" <<TOML
node_name = "bench-ctl"
roles = ["control"]
data_dir = "$W/control"
[control]
bootstrap = true
listen = "127.0.0.1:17400"
peer_listen = "127.0.0.1:17401"
TOML
"$TESSERA_BIN" run --profile "$W/control.toml" >"$W/control.log" 2>&1 &
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:17400/readyz >/dev/null 2>&1 && [ -s "$W/control/admin.token" ] && break
  sleep 0.1
done
export TESSERA_SERVER=http://127.0.0.1:17400 TESSERA_TOKEN
TESSERA_TOKEN=$(cat "$W/control/admin.token")
