#!/usr/bin/env bash
# One node, every GPU on it: dsrun starts one rank per GPU with torchrun's variables, resumes
# from the latest checkpoint when there is one, and restarts all ranks (from the latest
# checkpoint) if one dies, up to 3 times.
#   examples/launch_single_node.sh [config.json] [more dsrun flags...]
set -euo pipefail
CONFIG=${1:-examples/single_node.json}
shift || true
DSRUN=${DSRUN:-build/dsrun}
GPUS=${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
if [[ $GPUS -lt 1 ]]; then
  echo "no GPU found: set GPUS=N, or train on the CPU with: $DSRUN --device cpu --config $CONFIG" >&2
  exit 2
fi
exec "$DSRUN" --nproc-per-node "$GPUS" --config "$CONFIG" \
  --resume latest --resume-if-any --max-restarts 3 "$@"
