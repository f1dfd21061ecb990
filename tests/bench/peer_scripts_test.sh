#!/usr/bin/env bash
# Smoke test of the PyTorch peer benchmarks (bench/gpu/gpt_peer.py, ckpt_peer.py, llama_peer.py,
# and fsdp_peer.py on 2 CPU ranks with Gloo) on the CPU with the tiny preset: each runs end to end and its last
# line is the JSON the benchmark report reads. No timing is asserted; a mode or peer that errors fails the test.
# gpt_peer.py also runs with its vocabulary padded (tiny's 256 is already a multiple of the
# default 64, so --pad-vocab-to 96: 288 rows) and with --no-pad-vocab after it: the padded size
# is reported and the FLOPs per token, counted on the real vocabulary, do not move.
#   tests/bench/peer_scripts_test.sh PYTHON SRC_DIR
# Exit 0 on success, 1 on failure, 77 (skip) when PYTHON has no torch.
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 PYTHON SRC_DIR" >&2
  exit 2
fi
PYTHON="$1"
SRC="$2"

if ! "$PYTHON" -c 'import torch' 2>/dev/null; then
  echo "SKIP: $PYTHON cannot import torch"
  exit 77
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Runs one script, keeping its stdout for the check; on failure shows its output and exits 1.
run() {
  local name="$1"
  shift
  if ! "$PYTHON" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"; then
    echo "FAIL: $name exited non-zero; its output:"
    cat "$WORK/$name.out" "$WORK/$name.err"
    exit 1
  fi
  cat "$WORK/$name.out"
}

gpt_args=("$SRC/bench/gpu/gpt_peer.py" --preset tiny --seq-len 32 --micro-batch 2 --device cpu
  --steps 2 --warmup 1 --modes eager --json)
run gpt "${gpt_args[@]}"
run gpt-padded "${gpt_args[@]}" --pad-vocab-to 96
run gpt-unpadded "${gpt_args[@]}" --pad-vocab-to 96 --no-pad-vocab
run ckpt "$SRC/bench/gpu/ckpt_peer.py" --preset tiny --seq-len 32 --device cpu \
  --dir "$WORK/ckpt" --peers torch_save,dcp,dcp_async --json
run fsdp -m torch.distributed.run --standalone --nproc-per-node 2 "$SRC/bench/gpu/fsdp_peer.py" \
  --preset tiny --seq-len 32 --micro-batch 2 --steps 2 --warmup 1 --json

# The Llama peer (bench/gpu/llama_peer.py) where this Python has transformers: the tiny shape in
# eager mode (tiny-llama), and the config.json it writes for dsrun.
if "$PYTHON" -c 'import transformers' 2>/dev/null; then
  run llama "$SRC/bench/gpu/llama_peer.py" --shape tiny-llama --seq-len 32 --micro-batch 2 \
    --device cpu --steps 2 --warmup 1 --modes eager --json
  run llama-config "$SRC/bench/gpu/llama_peer.py" --shape tiny-llama --write-config "$WORK/llama"
  "$PYTHON" - "$WORK/llama.out" "$WORK/llama/config.json" <<'EOF3'
import json
import sys
doc = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
rows = doc.get("rows", [])
if [r.get("mode") for r in rows] != ["eager"] or "error" in rows[0]:
    sys.exit(f"FAIL: llama_peer.py: rows {rows}")
r = rows[0]
if not (r["tokens_per_s"] > 0 and r["params"] > 0 and r["flops_per_token"] >= 6 * r["params"]):
    sys.exit(f"FAIL: llama_peer.py: row {r}")
cfg = json.load(open(sys.argv[2]))
if cfg.get("architectures") != ["LlamaForCausalLM"] or cfg.get("vocab_size") != 256:
    sys.exit(f"FAIL: llama_peer.py --write-config: {cfg}")
EOF3
else
  echo "llama_peer.py: not run ($PYTHON has no transformers)"
fi

# DeepSpeed's peer (bench/gpu/ds_peer.py) where this Python has DeepSpeed (PYTHONPATH may name
# it): stage 2 on the CPU (DS_ACCELERATOR=cpu, Gloo), a save, then a resume timed to its first
# step. Without DeepSpeed it says so and the rest of the test stands.
if "$PYTHON" -c 'import deepspeed' 2>/dev/null; then
  ds_args=("$SRC/bench/gpu/ds_peer.py" --preset tiny --seq-len 32 --micro-batch 2 --stage 2
    --device cpu --json)
  DS_ACCELERATOR=cpu run ds "${ds_args[@]}" --steps 2 --warmup 1 --save "$WORK/ds"
  DS_ACCELERATOR=cpu run ds-resume "${ds_args[@]}" --resume "$WORK/ds" --t0 "$(date +%s.%N)"
  "$PYTHON" - "$WORK/ds.out" "$WORK/ds-resume.out" <<'EOF2'
import json
import sys
train = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
resume = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
if not (train.get("tokens_per_s", 0) > 0 and "save_s" in train):
    sys.exit(f"FAIL: ds_peer.py: {train}")
if not (resume.get("first_step_done_s", 0) >= resume.get("load_s", -1) >= 0):
    sys.exit(f"FAIL: ds_peer.py --resume: {resume}")
EOF2
else
  echo "ds_peer.py: not run ($PYTHON has no deepspeed; PYTHONPATH may name one)"
fi

# The checks name the script, the row and the key, so a failure says what to look at.
"$PYTHON" - "$WORK/gpt.out" "$WORK/ckpt.out" "$WORK/fsdp.out" "$WORK/gpt-padded.out" \
  "$WORK/gpt-unpadded.out" <<'EOF'
import json
import sys


def last_json(path, name):
    lines = open(path).read().strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError) as e:
        sys.exit(f"FAIL: {name}: the last line of stdout is not JSON ({e})")


def check_rows(name, doc, top_keys, row_keys, want_rows):
    missing = [k for k in top_keys if k not in doc]
    if missing:
        sys.exit(f"FAIL: {name}: the JSON lacks {missing}")
    rows = doc["rows"]
    if [r.get(row_keys[0]) for r in rows] != want_rows:
        sys.exit(f"FAIL: {name}: rows are {[r.get(row_keys[0]) for r in rows]}, "
                 f"expected {want_rows}")
    for r in rows:
        if "error" in r:
            sys.exit(f"FAIL: {name}: {r[row_keys[0]]} failed: {r['error']}")
        missing = [k for k in row_keys if k not in r]
        if missing:
            sys.exit(f"FAIL: {name}: row {r[row_keys[0]]} lacks {missing}")
    return rows


gpt_keys = ["bench", "preset", "device", "torch", "gpu", "micro_batch", "seq_len", "params",
            "vocab", "vocab_padded", "flops_per_token", "rows"]
gpt_runs = {}
for path, name, want_padded in [(sys.argv[1], "gpt_peer.py", 256),
                                (sys.argv[4], "gpt_peer.py --pad-vocab-to 96", 288),
                                (sys.argv[5], "gpt_peer.py --pad-vocab-to 96 --no-pad-vocab", 256)]:
    gpt = last_json(path, name)
    rows = check_rows(name, gpt, gpt_keys, ["mode", "step_ms", "tokens_per_s", "mfu", "peak_bytes"],
                      ["eager"])
    if not rows[0]["tokens_per_s"] > 0:
        sys.exit(f"FAIL: {name}: eager tokens_per_s is {rows[0]['tokens_per_s']}")
    if (gpt["vocab"], gpt["vocab_padded"]) != (256, want_padded):
        sys.exit(f"FAIL: {name}: vocab {gpt['vocab']} padded to {gpt['vocab_padded']}, "
                 f"expected 256 padded to {want_padded}")
    gpt_runs[name] = gpt
counted = {(g["params"], g["flops_per_token"]) for g in gpt_runs.values()}
if len(counted) != 1:
    sys.exit(f"FAIL: gpt_peer.py: padding changed the counted parameters or FLOPs per token: "
             f"{sorted(counted)}")

ckpt = last_json(sys.argv[2], "ckpt_peer.py")
rows = check_rows("ckpt_peer.py", ckpt,
                  ["bench", "preset", "device", "torch", "state_bytes", "d2h_bps", "rows"],
                  ["peer", "stall_s", "durable_s", "stored_bytes", "load_s"],
                  ["torch_save", "dcp", "dcp_async"])
for r in rows:
    if not r["durable_s"] > 0:
        sys.exit(f"FAIL: ckpt_peer.py: {r['peer']} durable_s is {r['durable_s']}")
    if not r["stored_bytes"] >= ckpt["state_bytes"]:
        sys.exit(f"FAIL: ckpt_peer.py: {r['peer']} stored {r['stored_bytes']} bytes, "
                 f"less than the state's {ckpt['state_bytes']}")
fsdp = last_json(sys.argv[3], "fsdp_peer.py")
missing = [k for k in ["peer", "gpus", "step_ms", "tokens_per_s", "tokens_per_s_per_gpu", "mfu"]
           if k not in fsdp]
if missing or fsdp.get("gpus") != 2 or not fsdp.get("tokens_per_s", 0) > 0:
    sys.exit(f"FAIL: fsdp_peer.py: JSON {fsdp} (missing {missing}, want 2 ranks, tokens/s > 0)")
print("PASS: gpt_peer.py, ckpt_peer.py, llama_peer.py and fsdp_peer.py ran on the CPU and wrote the expected "
      "JSON")
EOF
