#!/usr/bin/env bash
# Several nodes without a scheduler: run this on every node with the same MASTER_ADDR (node 0's
# address) and its own NODE_RANK. Each node starts one rank per GPU; they meet at
# MASTER_ADDR:MASTER_PORT. (With a DeepSpeed hostfile: dsrun --hostfile hosts --config ...)
#   NNODES=4 NODE_RANK=0 MASTER_ADDR=10.0.0.1 examples/launch_multi_node.sh [config.json]
set -euo pipefail
CONFIG=${1:-examples/multi_node.json}
shift || true
DSRUN=${DSRUN:-build/dsrun}
: "${NNODES:?set NNODES, the number of nodes}"
: "${NODE_RANK:?set NODE_RANK, the index of this node, from 0}"
: "${MASTER_ADDR:?set MASTER_ADDR, the address of node 0, reachable from every node}"
MASTER_PORT=${MASTER_PORT:-29500}
GPUS=${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
# Gloo and NCCL pick the interface that routes to MASTER_ADDR; name one to override:
#   export GLOO_SOCKET_IFNAME=eth0 NCCL_SOCKET_IFNAME=eth0
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
exec "$DSRUN" --nnodes "$NNODES" --node-rank "$NODE_RANK" --master-addr "$MASTER_ADDR" \
  --master-port "$MASTER_PORT" --nproc-per-node "$GPUS" --config "$CONFIG" \
  --resume latest --resume-if-any "$@"
