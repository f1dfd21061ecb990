#!/usr/bin/env bash
# Two dsrun nodes in two Linux network namespaces joined by a veth pair: the rendezvous and the
# Gloo collectives cross a real (virtual) link, not loopback. Proves a 2-node job trains, and
# that when node 1 dies or becomes unreachable, node 0 stops within comms.timeout_s and names
# the rank and the collective.
#
# Usage: two_host_netns_test.sh DSRUN SOURCE_DIR
# Needs root and `ip` with netns support; otherwise prints "SKIP: ..." and exits 77.
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 DSRUN SOURCE_DIR" >&2
  exit 2
fi
DSRUN=$1
CONFIG=$2/examples/demo.json
[[ -x $DSRUN ]] || { echo "FAIL: $DSRUN is not an executable" >&2; exit 1; }
[[ -f $CONFIG ]] || { echo "FAIL: $CONFIG does not exist" >&2; exit 1; }

skip() {
  echo "SKIP: $*"
  exit 77
}

# Each node must take its place from the command line, not from a surrounding launcher.
unset RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE LOCAL_SIZE MASTER_ADDR MASTER_PORT
for v in $(compgen -e | grep '^SLURM_' || true); do unset "$v"; done

[[ $(id -u) -eq 0 ]] || skip "needs root to create network namespaces (running as uid $(id -u))"
command -v ip >/dev/null || skip "the 'ip' command (iproute2) is not installed"

NS_A=dstrainA$$
NS_B=dstrainB$$
VETH_A=dsvA$$ # interface names: 15 characters at most
VETH_B=dsvB$$
SUBNET=10.201.$(($$ % 254 + 1))
IP_A=$SUBNET.1
IP_B=$SUBNET.2
TIMEOUT_S=5 # comms.timeout_s
TMP=$(mktemp -d)

cleanup() {
  local ns
  for ns in "$NS_A" "$NS_B"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  done
  local jobs_left
  mapfile -t jobs_left < <(jobs -p) # our node subshells, still unreaped, so the pids are ours
  if [[ ${#jobs_left[@]} -gt 0 ]]; then
    kill -9 "${jobs_left[@]}" 2>/dev/null || true
    wait "${jobs_left[@]}" 2>/dev/null || true
  fi
  for ns in "$NS_A" "$NS_B"; do
    ip netns del "$ns" 2>/dev/null || true # takes its end of the veth pair with it
  done
  ip link del "$VETH_A" 2>/dev/null || true # in case setup stopped before moving it
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- the two hosts

ip netns add "$NS_A" 2>"$TMP/err" || skip "cannot create a network namespace: $(cat "$TMP/err")"
ip netns add "$NS_B" 2>"$TMP/err" || skip "cannot create a network namespace: $(cat "$TMP/err")"
ip link add "$VETH_A" type veth peer name "$VETH_B" 2>"$TMP/err" ||
  skip "cannot create a veth pair: $(cat "$TMP/err")"
{
  ip link set "$VETH_A" netns "$NS_A" &&
    ip link set "$VETH_B" netns "$NS_B" &&
    ip -n "$NS_A" addr add "$IP_A/24" dev "$VETH_A" &&
    ip -n "$NS_B" addr add "$IP_B/24" dev "$VETH_B" &&
    ip -n "$NS_A" link set lo up &&
    ip -n "$NS_B" link set lo up &&
    ip -n "$NS_A" link set "$VETH_A" up &&
    ip -n "$NS_B" link set "$VETH_B" up
} 2>"$TMP/err" || skip "cannot configure the veth pair: $(cat "$TMP/err")"

# Both namespaces share the machine's hostname, which resolves to 127.0.0.1 here: dsrun must
# bind Gloo to the address that routes to the master, not to what the hostname resolves to.

# ---- helpers

now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }

# Each node has its own output directory; the checkpoints of a run live where both nodes see them,
# as on a cluster's shared filesystem (a save is one directory that every rank writes into).
# start_node NS NODE_RANK PORT MAX_STEPS LOG: starts dsrun in the background, in a subshell that
# stays outside NS (`|| exit` keeps bash from exec'ing into dsrun) and whose stderr takes the
# shell's "Killed" notice when NS's processes are killed; the subshell's pid in $!.
start_node() {
  local ns=$1 rank=$2 port=$3 steps=$4 log=$5
  : >"$TMP/$log"
  (ip netns exec "$ns" "$DSRUN" --device cpu --config "$CONFIG" \
    --nnodes 2 --node-rank "$rank" --nproc-per-node 1 \
    --master-addr "$IP_A" --master-port "$port" --max-steps "$steps" \
    --set model.n_layer=1 model.d_model=32 model.n_head=2 model.seq_len=32 \
    train_micro_batch_size_per_gpu=4 zero_optimization.stage=2 \
    "comms.timeout_s=$TIMEOUT_S" steps_per_print=5 trainer.eval_interval=0 \
    "trainer.output_dir=$TMP/$log.out" "checkpoint.save_dir=$TMP/${log%%.*}.checkpoints" \
    >>"$TMP/$log" 2>&1 || exit $?) 2>/dev/null &
}

# wait_exit PID LIMIT_S: the exit code of PID, or 124 if it still runs after LIMIT_S seconds.
wait_exit() {
  local pid=$1 deadline=$(($(now_ms) + $2 * 1000))
  while kill -0 "$pid" 2>/dev/null; do
    [[ $(now_ms) -lt $deadline ]] || return 124
    sleep 0.1
  done
  local rc=0
  wait "$pid" || rc=$?
  return "$rc"
}

FAILED=0
fail() {
  echo "FAIL: $1"
  shift
  local log
  for log in "$@"; do
    echo "---- $log:"
    cat "$TMP/$log"
  done
  echo "----"
  FAILED=1
}

# expect LOG REGEX WHAT: LOG has a line matching the extended REGEX.
expect() {
  grep -Eq -- "$2" "$TMP/$1" || fail "$1 should have a line matching /$2/ ($3)" "$1"
}

# ---- run 1: two nodes train together
# (Limits: 50 s here plus 2 x 85 s below stay under the ctest TIMEOUT of 240 s, whose kill
# would skip the cleanup.)

t0=$(now_ms)
start_node "$NS_A" 0 29500 10 run1.node0
node0=$!
start_node "$NS_B" 1 29500 10 run1.node1
node1=$!
rc0=0 && wait_exit "$node0" 45 || rc0=$?
rc1=0 && wait_exit "$node1" 5 || rc1=$?
t1=$(now_ms)
echo "run 1: 2 nodes over $VETH_A <-> $VETH_B trained 10 steps in $(secs $((t1 - t0))) s" \
  "(exit codes $rc0, $rc1)"
if [[ $rc0 -ne 0 || $rc1 -ne 0 ]]; then
  fail "run 1: both nodes should exit 0, got node 0: $rc0, node 1: $rc1" run1.node0 run1.node1
else
  expect run1.node0 '^\[rank 0\] model: .*ZeRO stage 2 over 2 ranks$' "the model spans both nodes"
  expect run1.node0 '^\[rank 0\] step 10/10 \| loss [0-9]+\.[0-9]+ ' "a loss line at step 10"
  expect run1.node0 '^\[rank 0\] trained 10 steps .*: loss [0-9.]+ -> [0-9.]+$' "the summary"
fi

# ---- run 2 and 3: node 1 goes away mid-training; node 0 must stop and say why

# start_training PORT TAG: both nodes, far more steps than they will reach; returns once node 0
# has printed step 5, which it can only reach in lockstep with node 1.
start_training() {
  local port=$1 tag=$2 deadline=$(($(now_ms) + 20000))
  start_node "$NS_A" 0 "$port" 100000 "$tag.node0"
  node0=$!
  start_node "$NS_B" 1 "$port" 100000 "$tag.node1"
  node1=$!
  local why=""
  until grep -q '^\[rank 0\] step 5/100000 ' "$TMP/$tag.node0"; do
    kill -0 "$node0" 2>/dev/null || why="node 0 exited"
    kill -0 "$node1" 2>/dev/null || why="${why:+$why, }node 1 exited"
    [[ $(now_ms) -lt $deadline ]] || why="20 s passed"
    if [[ -n $why ]]; then
      fail "$tag: node 0 should reach step 5 in lockstep with node 1, but $why first" \
        "$tag.node0" "$tag.node1"
      return 1
    fi
    sleep 0.1
  done
}

# expect_node0_stops TAG T_KILL: node 0 exits non-zero well within the limit and names the
# collective that failed; prints how long it took.
expect_node0_stops() {
  local tag=$1 t_kill=$2 rc=0
  wait_exit "$node0" 60 || rc=$?
  local took=$(($(now_ms) - t_kill))
  wait_exit "$node1" 5 || true
  echo "$tag: node 0 exited with code $rc $(secs "$took") s after node 1 went away"
  grep -E '^\[rank 0\] dsrun: rank 0: ' "$TMP/$tag.node0" | sed "s/^/$tag: node 0 said: /" || true
  if [[ $rc -eq 0 || $rc -eq 124 ]]; then
    fail "$tag: node 0 should exit non-zero within 60 s of losing node 1, got $rc after $(secs "$took") s" \
      "$tag.node0" "$tag.node1"
    return 1
  fi
  expect "$tag.node0" '^\[rank 0\] dsrun: rank 0: [a-z_]+ of [0-9.]+ [KMG]?i?B across ranks 0, 1 \(gloo\) of .* (failed|timed out after 5 s)' \
    "rank 0 names the collective it lost"
  expect "$tag.node0" '^dsrun: rank 0 \(local 0, pid [0-9]+\) exited with code [1-9][0-9]*$' \
    "the launcher reports its rank's exit"
}

# Run 2: every process of node 1 is killed; its kernel closes the connections.
if start_training 29501 run2; then
  t_kill=$(now_ms)
  ip netns pids "$NS_B" | xargs -r kill -9
  expect_node0_stops run2 "$t_kill" &&
    expect run2.node0 '^\[rank 0\] dsrun: rank 0: .* failed; rank 1 has been silent for [0-9]+ s \(dead, stopped or unreachable\)' \
      "the failure names rank 1 as silent (its heartbeats stopped)"
fi

# Run 3: node 1 becomes unreachable (link cut, then killed): no FIN or RST ever arrives, as when
# a host loses power, so only the collective timeout can end node 0.
if start_training 29502 run3; then
  t_kill=$(now_ms)
  ip -n "$NS_A" link set "$VETH_A" down
  ip netns pids "$NS_B" | xargs -r kill -9
  expect_node0_stops run3 "$t_kill" && expect run3.node0 \
    '^\[rank 0\] dsrun: rank 0: .* timed out after 5 s; rank 1 has been silent for [0-9]+ s \(dead, stopped or unreachable\)' \
    "the timeout names rank 1 as silent"
fi

if [[ $FAILED -ne 0 ]]; then exit 1; fi
echo "PASS"
