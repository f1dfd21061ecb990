#!/usr/bin/env bash
# The seed's three scenarios on one node, from a Hugging Face model folder and a dataset: a
# DeepSpeed config as it stands in a repository (no model, no data, no step count; see
# examples/configs.md), the model by --model_name, the data by --dataset_path, one epoch unless
# --epochs or --max-steps says otherwise. Resumes from the latest checkpoint and restarts the
# ranks up to 3 times, as launch_single_node.sh does.
#   examples/launch_hf_model.sh bert-base  MODEL_DIR DATA [more dsrun flags...]
#   examples/launch_hf_model.sh llama-1b   MODEL_DIR DATA --epochs 2
#   examples/launch_hf_model.sh llama-large MODEL_DIR DATA --set model.activation_checkpointing=true
# DATA: llm.c token shards (a directory or glob; tools/prepare_data.py makes them from .jsonl,
# .txt or .parquet with the folder's tokenizer.json). A folder of a known shape without weights:
# tools/make_model_folder.py.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 bert-base|llama-1b|llama-large MODEL_DIR DATA [dsrun flags...]" >&2
  exit 2
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
case "$1" in
  bert-base) CONFIG="$HERE/scenario_bert_base.json" ;;
  llama-1b) CONFIG="$HERE/scenario_llama_1b.json" ;;
  llama-large) CONFIG="$HERE/scenario_llama_large.json" ;;
  *)
    echo "$0: unknown scenario '$1' (bert-base, llama-1b or llama-large)" >&2
    exit 2
    ;;
esac
MODEL="$2"
DATA="$3"
shift 3
exec "$HERE/launch_single_node.sh" "$CONFIG" --model_name "$MODEL" --dataset_path "$DATA" "$@"
