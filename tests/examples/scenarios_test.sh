#!/usr/bin/env bash
# The seed's three scenarios (examples/scenario_*.json, DeepSpeed configs with no model, data or
# step count) dry-run from Hugging Face folders that tools/make_model_folder.py writes: a
# BERT-base folder at ZeRO 2 in fp16, a Llama-3.2-1B folder at ZeRO 1 with no optimizer section
# (AdamW with the warning naming its values), a Llama-2-13B folder at ZeRO 3 with parameters and
# optimizer on the CPU; each on 8 ranks, through the launch script's flags (--model_name,
# --dataset_path). The 13B folder split (examples/llama_split.json: TP 2 x PP 4). And the launch
# script refuses an unknown scenario.
#   tests/examples/scenarios_test.sh PYTHON SRC_DIR BUILD_DIR
# Exit 0 on success, 1 on failure, 77 (skip) without dsrun or a Python with `tokenizers`.
set -euo pipefail
PYTHON="$1"
SRC="$2"
BUILD="$3"
if [[ ! -x "$BUILD/dsrun" ]]; then
  echo "SKIP: $BUILD/dsrun is not built"
  exit 77
fi
if ! "$PYTHON" -c 'import tokenizers' 2>/dev/null; then
  echo "SKIP: $PYTHON cannot import tokenizers"
  exit 77
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
fail() {
  echo "FAIL: $*"
  exit 1
}

"$PYTHON" "$SRC/tools/make_model_folder.py" bert-base "$WORK/bert"
"$PYTHON" "$SRC/tools/make_model_folder.py" llama-3.2-1b "$WORK/llama-1b"
"$PYTHON" "$SRC/tools/make_model_folder.py" llama-2-13b "$WORK/llama-13b"
mkdir -p "$WORK/data"

# dry_run NAME CONFIG FOLDER EXPECTED...: dsrun --dry-run exits 0 and prints every EXPECTED.
dry_run() {
  local name="$1" config="$2" folder="$3"
  shift 3
  local out="$WORK/$name.out"
  if ! "$BUILD/dsrun" --config "$SRC/examples/$config" --model_name "$folder" \
    --dataset_path "$WORK/data" --nproc-per-node 8 --dry-run >"$out" 2>&1; then
    cat "$out"
    fail "$name: dsrun --dry-run failed"
  fi
  for want in "$@"; do
    grep -q -F -- "$want" "$out" || { cat "$out"; fail "$name: no '$want' in the dry run"; }
  done
  echo "ok: $name"
}
dry_run bert-base scenario_bert_base.json "$WORK/bert" "BertForMaskedLM from $WORK/bert" \
  "109514298 parameters, fp16" "the config resolves"
dry_run llama-1b scenario_llama_1b.json "$WORK/llama-1b" "LlamaForCausalLM from $WORK/llama-1b" \
  "1235814400 parameters, bf16" "AdamW" "5e-05" "the config resolves"
dry_run llama-large scenario_llama_large.json "$WORK/llama-13b" \
  "LlamaForCausalLM from $WORK/llama-13b" "13015864320 parameters, bf16" \
  "stage 3 + offload_optimizer cpu + offload_param cpu" "the config resolves"
# The 13B Llama split instead: TP 2 x PP 4 on 8 ranks at ZeRO 1; the rank holding the most
# (the first stage: 10 layers, each halved, and embed_tokens) and only what the layout runs.
dry_run llama-split llama_split.json "$WORK/llama-13b" \
  "TP 2 x PP 4: the rank holding the most, 1749918720 parameters" \
  "stage 1 + offload_optimizer cpu" "the config resolves"
if grep -q -E '^  stage [23]' "$WORK/llama-split.out"; then
  cat "$WORK/llama-split.out"
  fail "llama-split: the advice weighs ZeRO stages a pipeline cannot run"
fi

if "$SRC/examples/launch_hf_model.sh" gpt-5 "$WORK/bert" "$WORK/data" >"$WORK/bad.out" 2>&1; then
  fail "launch_hf_model.sh accepted an unknown scenario"
fi
grep -q "unknown scenario 'gpt-5'" "$WORK/bad.out" || { cat "$WORK/bad.out"; fail "launch message"; }
echo "PASS: the three scenarios dry-run from Hugging Face folders"
