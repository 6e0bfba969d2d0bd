#!/usr/bin/env bash
# tessera-cluster.sh -- a local 3-node tessera control cluster for benchmarks.
#
# Nodes n1..n3 listen on 127.0.0.21, .22, .23 (API TESSERA_API_PORT, Raft peers
# TESSERA_PEER_PORT, the same ports on each IP). n1 bootstraps the cluster; n2 and n3
# join with single-use tokens from `tessera token create --role control`. Everything a
# node has (profile, data dir, log, pid) lives under TESSERA_CLUSTER_DIR/nI/.
#
# Usage: TESSERA_CLUSTER_DIR=DIR bash bench/tessera-cluster.sh COMMAND
#   start        write the profiles, start n1 (bootstrap), then n2 and n3 (join); wait
#                until GET /api/v1/members shows 3 voters and a leader
#   kill-leader  find the leader through /api/v1/members and `kill -9` it (remembered in
#                DIR/killed); returns at once, like the etcd side of the baseline, and
#                prints nothing (the baseline's probe output stays one line)
#   restore      restart the killed node with the same profile and data dir (it rejoins
#                from its own data, no token); wait until it is ready and the cluster
#                again has 3 voters and a leader
#   stop         SIGTERM every node (SIGKILL after TESSERA_STOP_TIMEOUT), remove pid files
#   url [leader|follower]  API URL of the leader (default) or of one follower
#   urls         the three API URLs, comma-separated
#   token        the admin token (the value for `Authorization: Bearer ...`)
#   bin          the tessera binary that `start` would use
#   status       GET /api/v1/members from every live node
#
# Environment (defaults in brackets):
#   TESSERA_CLUSTER_DIR  (required) state directory, created by `start`
#   TESSERA_BIN          binary [REPO/target/x86_64-unknown-linux-gnu/release/tessera, then
#                        $CARGO_TARGET_DIR/..., then /var/cache/tessera/target/...]
#   TESSERA_IPS ["127.0.0.21 127.0.0.22 127.0.0.23"]  TESSERA_API_PORT [7400]
#   TESSERA_PEER_PORT [7401]   TESSERA_SET [] extra `--set KEY=VALUE` words for every node,
#                        space-separated, e.g. "control.heartbeat_ms=50 log.level=warn"
#   TESSERA_START_TIMEOUT [60] seconds for start/restore   TESSERA_STOP_TIMEOUT [10]
#
# Nodes are started in the caller's process group and detached from its stdio (logs
# go to DIR/nI/node.log as JSON lines, the startup banner to DIR/nI/node.out); `stop` is
# what ends them. A node's pid is only
# trusted while /proc/PID/cmdline still names its directory (no stray kills after pid
# reuse, zombies count as dead).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
DIR=${TESSERA_CLUSTER_DIR:?set TESSERA_CLUSTER_DIR to the cluster state directory}
read -ra IPS <<<"${TESSERA_IPS:-127.0.0.21 127.0.0.22 127.0.0.23}"
API_PORT=${TESSERA_API_PORT:-7400}
PEER_PORT=${TESSERA_PEER_PORT:-7401}
read -ra EXTRA_SET <<<"${TESSERA_SET:-}"
START_TIMEOUT=${TESSERA_START_TIMEOUT:-60}
STOP_TIMEOUT=${TESSERA_STOP_TIMEOUT:-10}
PY=$(command -v /usr/bin/python3 || command -v python3) || { echo "tessera-cluster: python3 is required" >&2; exit 1; }
[ ${#IPS[@]} = 3 ] || { echo "tessera-cluster: TESSERA_IPS must name 3 addresses" >&2; exit 2; }
export no_proxy=127.0.0.1,localhost NO_PROXY=127.0.0.1,localhost
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY

log() { echo "[$(date +%H:%M:%S)] tessera-cluster: $*" >&2; }
event() { echo "$(date +%H:%M:%S.%3N) $*" >>"$DIR/events.log"; [ "${QUIET:-0}" = 1 ] || log "$*"; }
ms_now() { echo $(($(date +%s%N) / 1000000)); }
# A failure is also an event, so that the bench's report says why (the baseline discards
# the restore command's output).
die() {
  echo "tessera-cluster: $*" >&2
  if [ -d "${DIR:-}" ]; then echo "$(date +%H:%M:%S.%3N) FAILED: $*" >>"$DIR/events.log"; fi
  exit 1
}

resolve_bin() {
  local rel=x86_64-unknown-linux-gnu/release/tessera c
  if [ -n "${TESSERA_BIN:-}" ]; then
    [ -x "$TESSERA_BIN" ] || die "TESSERA_BIN=$TESSERA_BIN is not an executable file"
    realpath "$TESSERA_BIN"; return
  fi
  for c in "$REPO/target/$rel" ${CARGO_TARGET_DIR:+"$CARGO_TARGET_DIR/$rel"} "/var/cache/tessera/target/$rel"; do
    if [ -x "$c" ]; then realpath "$c"; return; fi
  done
  die "no tessera binary: set TESSERA_BIN (looked in $REPO/target/$rel${CARGO_TARGET_DIR:+, $CARGO_TARGET_DIR/$rel}, /var/cache/tessera/target/$rel)"
}

ip_of() { echo "${IPS[$(($1 - 1))]}"; }
api_url() { echo "http://$(ip_of "$1"):$API_PORT"; }
ndir() { echo "$DIR/n$1"; }

node_pid() {  # i -> pid of the live node process, or nothing
  local f pid
  f="$(ndir "$1")/pid"
  [ -f "$f" ] || return 0
  pid=$(<"$f")
  [ -n "$pid" ] || return 0
  # `bash DIR/nI/run.sh` until it execs, then `tessera ... --profile DIR/nI/profile.toml`
  if { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -- "$(ndir "$1")/"; then echo "$pid"; fi
}

admin_token() {
  local f
  f="$(ndir 1)/data/admin.token"
  [ -s "$f" ] || die "no admin token at $f (was the cluster started?)"
  tr -d '[:space:]' <"$f"
}

curl_api() {  # i path [curl args...]
  local i=$1 p=$2; shift 2
  curl -sS -m "${CURL_TIMEOUT:-2}" -H "Authorization: Bearer $(admin_token)" "$@" "$(api_url "$i")$p"
}

members_json() {  # i -> /api/v1/members of node i (fails if it does not answer 200)
  curl_api "$1" /api/v1/members --fail
}

# Reads a members document on stdin; prints "voters leader_name leader_api" (leader "-" if none).
members_summary() {
  "$PY" -c '
import json, sys
m = json.load(sys.stdin)
voters = [x for x in m.get("members", []) if x.get("role") == "voter"]
lead = [x for x in m.get("members", []) if m.get("leader") is not None and x.get("id") == m.get("leader")]
print(len(voters), lead[0]["name"] if lead else "-", lead[0]["api"] if lead else "-")
'
}

# Waits until node i answers /readyz 200 and its members view has 3 voters and a leader.
wait_cluster() {  # i timeout_s what
  local i=$1 deadline=$((SECONDS + $2)) s voters lname lapi
  while :; do
    [ -n "$(node_pid "$i")" ] || { tail -20 "$(ndir "$i")/node.log" >&2; die "n$i exited while waiting for: $3"; }
    if curl -s -m 2 -o /dev/null -w '%{http_code}' "$(api_url "$i")/readyz" 2>/dev/null | grep -qx 200 &&
       s=$(members_json "$i" 2>/dev/null | members_summary 2>/dev/null); then
      read -r voters lname lapi <<<"$s"
      if [ "$voters" = 3 ] && [ "$lname" != - ]; then echo "$lname $lapi"; return 0; fi
    fi
    if [ $SECONDS -ge $deadline ]; then
      for i in 1 2 3; do echo "===== n$i =====" >&2; tail -15 "$(ndir "$i")/node.log" >&2 2>/dev/null || true; done
      die "timed out after ${2}s waiting for: $3"
    fi
    sleep 0.2
  done
}

spawn() {  # i: start node i from its run line (same profile and data dir every time)
  local i=$1 d
  d=$(ndir "$i")
  rm -f "$d/data/listeners.json"
  bash "$d/run.sh" </dev/null >>"$d/node.out" 2>>"$d/node.log" &
  local pid=$! n=0
  echo "$pid" >"$d/pid"
  # Until it execs run.sh the job is a copy of this script, whose command line does not
  # name the node's directory: wait for the exec (2 s at most), or node_pid would take a
  # node that is starting for one that exited (seen: "n1 exited during bootstrap" while
  # n1 went on to start, and restores that failed the same way).
  while [ $n -lt 100 ] && [ -z "$(node_pid "$i")" ] && [ -e "/proc/$pid" ]; do
    sleep 0.02
    n=$((n + 1))
  done
}

write_node() {  # i membership_toml
  local i=$1 d ip s
  d=$(ndir "$i") ip=$(ip_of "$i")
  mkdir -p "$d/data"
  chmod 700 "$d/data"
  cat >"$d/profile.toml" <<EOF
# written by bench/tessera-cluster.sh
node_name = "bench-n$i"
roles = ["control"]
data_dir = "$d/data"
zone = "bench-z$i"

[control]
listen = "$ip:$API_PORT"
peer_listen = "$ip:$PEER_PORT"
$2
EOF
  {
    echo "# written by bench/tessera-cluster.sh: how n$i is started (and restarted)"
    printf 'exec %q run --log-format json --profile %q' "$BIN" "$d/profile.toml"
    for s in "${EXTRA_SET[@]}"; do printf ' --set %q' "$s"; done
    echo
  } >"$d/run.sh"
}

port_busy() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

cmd_start() {
  local i p
  for i in 1 2 3; do
    [ -z "$(node_pid "$i")" ] || die "n$i is already running (pid $(node_pid "$i")); run stop first"
    for p in "$API_PORT" "$PEER_PORT"; do
      if port_busy "$(ip_of "$i")" "$p"; then die "$(ip_of "$i"):$p is already in use"; fi
    done
  done
  BIN=$(resolve_bin)
  [ ! -e "$DIR/n1" ] || die "$DIR/n1 exists; start wants a fresh TESSERA_CLUSTER_DIR"
  mkdir -p "$DIR"
  : >"$DIR/events.log"
  event "binary $BIN ($("$BIN" --version 2>/dev/null | head -1))"
  write_node 1 "bootstrap = true"
  spawn 1
  local deadline=$((SECONDS + START_TIMEOUT))
  until [ -s "$(ndir 1)/data/admin.token" ] &&
        curl -s -m 2 -o /dev/null -w '%{http_code}' "$(api_url 1)/readyz" 2>/dev/null | grep -qx 200; do
    [ -n "$(node_pid 1)" ] || { tail -20 "$(ndir 1)/node.log" >&2; die "n1 exited during bootstrap"; }
    [ $SECONDS -lt $deadline ] || { tail -20 "$(ndir 1)/node.log" >&2; die "n1 not ready within ${START_TIMEOUT}s"; }
    sleep 0.2
  done
  event "n1 bootstrapped at $(api_url 1) (pid $(node_pid 1))"
  local tok
  for i in 2 3; do
    tok=$("$BIN" token create --role control --ttl 10m --server "$(api_url 1)" --token "$(admin_token)" 2>>"$DIR/token.log") ||
      { cat "$DIR/token.log" >&2; die "token create failed"; }
    write_node "$i" "join = [\"$(api_url 1)\"]
join_token = \"$tok\""
  done
  spawn 2
  spawn 3
  local s
  s=$(wait_cluster 1 "$START_TIMEOUT" "3 voters and a leader")
  for i in 2 3; do wait_cluster "$i" "$START_TIMEOUT" "n$i ready" >/dev/null; done
  event "cluster up: 3 voters, leader ${s% *} (${s#* }); pids $(node_pid 1) $(node_pid 2) $(node_pid 3)"
}

live_members() {  # -> members JSON from the first live node that knows a leader
  local i j
  for i in 1 2 3; do
    [ -n "$(node_pid "$i")" ] || continue
    if j=$(members_json "$i" 2>/dev/null) && [ "$(members_summary <<<"$j" | cut -d' ' -f2)" != - ]; then
      echo "$j"; return 0
    fi
  done
  return 1
}

leader_index() {  # -> 1..3
  local j name
  j=$(live_members) || die "no live node knows a leader"
  name=$(members_summary <<<"$j" | cut -d' ' -f2)
  case $name in bench-n[123]) echo "${name#bench-n}" ;; *) die "leader '$name' is not a bench node" ;; esac
}

cmd_kill_leader() {
  local L pid
  [ ! -s "$DIR/killed" ] || die "n$(<"$DIR/killed") is still down; restore it first"
  L=$(leader_index)
  pid=$(node_pid "$L")
  [ -n "$pid" ] || die "leader n$L has no live process"
  kill -9 "$pid"
  echo "$L" >"$DIR/killed"
  QUIET=1 event "kill -9 leader n$L (pid $pid, $(api_url "$L"))"
}

cmd_restore() {
  local i t0 s
  [ -s "$DIR/killed" ] || die "no killed node to restore"
  i=$(<"$DIR/killed")
  BIN=$(resolve_bin)
  t0=$(ms_now)
  while [ -n "$(node_pid "$i")" ]; do
    [ $(($(ms_now) - t0)) -lt 5000 ] || die "n$i (pid $(node_pid "$i")) is still alive"
    sleep 0.1
  done
  local before="" j
  if j=$(live_members 2>/dev/null); then before=$(members_summary <<<"$j" | cut -d' ' -f2); fi
  spawn "$i"
  s=$(wait_cluster "$i" "$START_TIMEOUT" "restarted n$i ready with 3 voters and a leader")
  rm -f "$DIR/killed"
  event "restored n$i (pid $(node_pid "$i")) in $(($(ms_now) - t0)) ms; leader before the restart: ${before:-?}, now ${s% *}"
}

cmd_stop() {
  local i p pid pids=() deadline
  for i in 1 2 3; do
    pid=$(node_pid "$i")
    if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; pids+=("$i:$pid"); fi
  done
  deadline=$((SECONDS + STOP_TIMEOUT))
  for p in "${pids[@]}"; do
    i=${p%%:*}
    while [ -n "$(node_pid "$i")" ] && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if [ -n "$(node_pid "$i")" ]; then
      log "n$i did not stop within ${STOP_TIMEOUT}s; SIGKILL"
      kill -9 "${p#*:}" 2>/dev/null || true
    fi
  done
  for i in 1 2 3; do rm -f "$(ndir "$i")/pid"; done
  [ ${#pids[@]} = 0 ] || [ ! -d "$DIR" ] || event "stopped ${pids[*]}"
}

cmd_url() {
  local which=${1:-leader} L
  L=$(leader_index)
  case $which in
    leader) api_url "$L" ;;
    follower) api_url $((L % 3 + 1)) ;;
    *) die "url: leader or follower, not '$which'" ;;
  esac
}

cmd_status() {
  local i
  for i in 1 2 3; do
    printf 'n%s %s pid=%s: ' "$i" "$(api_url "$i")" "$(node_pid "$i")"
    members_json "$i" 2>&1 || true
    echo
  done
}

case ${1:-} in
  start) cmd_start ;;
  kill-leader) cmd_kill_leader ;;
  restore) cmd_restore ;;
  stop) cmd_stop ;;
  url) cmd_url "${2:-leader}" ;;
  urls) echo "$(api_url 1),$(api_url 2),$(api_url 3)" ;;
  token) admin_token ;;
  bin) resolve_bin ;;
  status) cmd_status ;;
  *) echo "usage: TESSERA_CLUSTER_DIR=DIR $0 start|kill-leader|restore|stop|url [leader|follower]|urls|token|bin|status" >&2; exit 2 ;;
esac
