#!/usr/bin/env bash
# Builds dstrain on the GPU machine (Ubuntu 24.04, its own torch at /opt/torch, nothing to
# install) and runs the named steps, writing logs under $OUT (or /tmp/dstrain-gpu).
#   bench/gpu/run.sh build gpu-tests demo unit-tests
# Steps:
#   build       configure and build everything (no installs; liburing, xxhash and Gloo's
#               headers come from .deps/root/usr, carried from the build machine)
#   build-tools the same for dsrun, dsckpt and the gpu tests only (quicker: for benchmark runs)
#   gpu-tests   ctest -L gpu (needs the GPU)
#   unit-tests  ctest -LE 'slow|gpu|fuzz' (proves the suite on this toolchain)
#   demo        dsrun on examples/demo.json in bf16 and fp32 on CUDA; prints tokens/s
#   zero-bench  dsrun bench: ZeRO stages 0-3 (and offload) for GPT-2 124M on one GPU
#   offload-bench  only the offload rows of zero-bench
#   adam-bench  dsrun bench adam: the offload CPU Adam against torch's CPU AdamW (124M elements)
#   ds-install  DeepSpeed's wheels (.deps/deepspeed, from ../shared/wheels/deepspeed) into /tmp/ds
#   offload-peer  dsrun bench against DeepSpeed (bench/gpu/ds_peer.py) with the optimizer (stage
#               2) and everything (stage 3) offloaded, GPT-2 124M and 1.3B
#   restart-1.3b  time from launch to the first resumed step, dsrun against DeepSpeed (1.3B)
#   large-model examples/large_model_stage3.json (13B, ZeRO-3, full offload) for a few steps, the
#               optimizer on the CPU and then on NVMe (LARGE_SET scales it)
#   capacity    the largest GPT that trains on this GPU per ZeRO/offload setting, dsrun and
#               DeepSpeed (CAPACITY_SETTINGS, CAPACITY_D, CAPACITY_START)
#   hf-install  transformers and tokenizers (.deps/hf, from fetch_deps.sh) into /tmp/hf
#   llama-1b    a Llama-3.2-1B-shaped model at sequence 2048: dsrun --model_name against the same
#               model in transformers, PyTorch eager and torch.compile (bench/gpu/llama_peer.py)
#   peer-124m   GPT-2 124M: dsrun against the same model in PyTorch eager and torch.compile,
#               at micro-batch 8 and 16 (PEER_BATCHES)
#   peer-1.3b   the same for the ~1.3B model (gpt-1.3b at seq 1024), at micro-batch 4 and 16
#   ckpt-1.3b   the ~1.3B model's full training state: dsrun's save (stall, durable) with and
#               without checkpoint.device_staging, against torch.save and DCP
#               (bench/gpu/ckpt_peer.py)
#   mgpu        several GPUs (NCCL): ZeRO stages, TP 2 and PP 2 against one GPU, and the 1.3B
#               model's tokens/s on 1 and N GPUs (run with kind nvidia-h100-x2 or larger)
#   mgpu-ckpt   several GPUs: the 1.3B model's state saved by every rank at once, resumed on
#               another GPU count, and a run with one rank killed (--max-restarts) against one
#               without (MGPU_N ranks, default every GPU; MGPU_MODEL: the model's --set items)
#   save-bench-16g  `dsckpt bench save` of 16 GB: save and load against the disk's direct-write
#               and direct-read bound (our io bench: no fio there)
#   pack        every log under $OUT into $OUT/logs.tgz (the device returns at most 8 files)
# Make .deps once on the build machine: bench/gpu/fetch_deps.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${OUT:-/tmp/dstrain-gpu}"
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export DSTRAIN_NO_INSTALL=1
export Torch_DIR="${Torch_DIR:-/opt/torch/.venv/lib/python3.12/site-packages/torch/share/cmake/Torch}"
export DSTRAIN_PYTHON="${DSTRAIN_PYTHON:-/opt/torch/.venv/bin/python3}"
[[ -d "$ROOT/.deps/root/usr" ]] && export DSTRAIN_DEPS_PREFIX="$ROOT/.deps/root/usr" &&
  export LD_LIBRARY_PATH="$ROOT/.deps/root/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
export DSTRAIN_JOBS="${DSTRAIN_JOBS:-$(nproc)}"
# nvcc for our own kernels, where the image has it but not on PATH.
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then export CUDACXX=/usr/local/cuda/bin/nvcc; fi
BUILD="${DSTRAIN_BUILD_DIR:-$ROOT/build}"
SCRATCH="${DSTRAIN_SCRATCH:-$ROOT/bench-scratch}"  # checkpoints of the benchmarks (not $OUT)
PY="$DSTRAIN_PYTHON"

step() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }
# The step of the checkpoint `latest` names in the save directory $1 ("step-00000006" or
# "step-00000006.1" -> 6); fails when there is none.
latest_step() {
  local tag
  tag=$(cat "$1/latest" 2>/dev/null) || return 1
  tag=${tag#step-}
  echo $((10#${tag%%.*}))
}

for s in "$@"; do
  case "$s" in
    build | build-tools)
      step "$s"
      [[ "$s" == build-tools ]] && export DSTRAIN_BUILD_TARGETS="dsrun dsckpt gpu_test"
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
      if ! "$ROOT/build.sh" build >"$OUT/build.log" 2>&1; then
        # Build what can be built, to see every error of this toolchain at once.
        cmake --build "$BUILD" -j "$DSTRAIN_JOBS" -- -k 0 >"$OUT/build-k0.log" 2>&1 || true
        grep -E 'error:' "$OUT/build-k0.log" | sort -u | head -40
        echo "build failed; the log is $OUT/build.log"
        exit 1
      fi
      grep -E '^build.sh|own kernels' "$OUT/build.log"
      ;;
    gpu-tests)
      step gpu-tests
      (cd "$BUILD" && ctest -L gpu --output-on-failure -V 2>&1 | tee "$OUT/gpu-tests.log" |
        grep -E 'RUN|OK|FAIL|SKIP|demo bf16|Passed|Failed|tests passed' || true)
      ;;
    unit-tests)
      step unit-tests
      (cd "$BUILD" && ctest -LE 'slow|gpu|fuzz' -j "$DSTRAIN_JOBS" --output-on-failure 2>&1 |
        tee "$OUT/unit-tests.log" | tail -25)
      ;;
    demo)
      step demo
      for p in bf16 fp32; do
        rm -rf "$BUILD/demo-$p"
        "$BUILD/dsrun" --config "$ROOT/examples/demo.json" --device cuda --set "$p.enabled=true" \
          --set "trainer.output_dir=$BUILD/demo-$p" 2>&1 | tee "$OUT/demo-$p.log" | tail -4
      done
      ;;
    zero-bench | offload-bench)
      # ZeRO stages on one GPU (world 1: what partitioning costs and saves without peers), for
      # GPT-2 124M in bf16, then the same with optimizer (and stage 3 parameter) offload.
      step zero-bench
      common=(--config "$ROOT/examples/demo.json" --nproc-per-node 1 --steps 10 --warmup 3 --json
        --set model.preset=gpt2-124m train_micro_batch_size_per_gpu=8 bf16.enabled=true
        "trainer.output_dir=$BUILD/zero-bench")
      [[ "$s" == zero-bench ]] && "$BUILD/dsrun" bench "${common[@]}" --stages 0,1,2,3 2>&1 |
        grep -v '^\[rank' | tee "$OUT/zero-bench.log"
      "$BUILD/dsrun" bench "${common[@]}" --stages 2,3 --offload optimizer,all 2>&1 |
        grep -v '^\[rank' | tee "$OUT/zero-bench-offload.log"
      ;;
    offload-peer)
      # dsrun bench and DeepSpeed (bench/gpu/ds_peer.py) on the same GPT, card and settings, in
      # bf16 at micro-batch 8: stage 2 with the optimizer offloaded and stage 3 with parameters
      # too, for GPT-2 124M and the 1.3B model (OFFLOAD_PRESETS). Needs DeepSpeed's wheels
      # installed at $DS_PATH (default /tmp/ds; see ds-install). Logs: $OUT/offload-<preset>-*.log.
      for preset in ${OFFLOAD_PRESETS:-gpt2-124m gpt-1.3b}; do
        step "offload-peer $preset"
        "$BUILD/dsrun" bench --config "$ROOT/examples/demo.json" --nproc-per-node 1 --stages 2,3 \
          --offload optimizer,all --steps 10 --warmup 3 --json --set "model.preset=$preset" \
          model.seq_len=1024 train_micro_batch_size_per_gpu=8 bf16.enabled=true \
          checkpoint.enabled=false "trainer.output_dir=$SCRATCH/offload" 2>&1 |
          grep -v '^\[rank' | tee "$OUT/offload-$preset-dsrun.log" || echo "dsrun bench failed"
        for c in "2 optimizer" "3 all"; do
          set -- $c
          PYTHONPATH="${DS_PATH:-/tmp/ds}" "$PY" "$ROOT/bench/gpu/ds_peer.py" --preset "$preset" \
            --micro-batch 8 --stage "$1" --offload "$2" --steps 10 --warmup 3 --json 2>&1 |
            grep -v -E '^\[|^W[0-9]|INFO' | tee "$OUT/offload-$preset-ds-stage$1-$2.log" ||
            echo "ds_peer stage $1 $2 failed"
        done
      done
      ;;
    restart-1.3b)
      # Time to the first resumed step: the 1.3B model's state (stage 1, bf16) saved, the page
      # cache dropped where the machine lets us, then a fresh process from launch to its first
      # step done (the process's wall time: dsrun ends right after it), against DeepSpeed doing
      # the same with its own checkpoint (ds_peer.py --save, then --resume). Logs:
      # $OUT/restart-*.log.
      step restart-1.3b
      # DeepSpeed JIT-builds its FusedAdam here; its arch parser fails on the image's "9.0a"
      # entries, so it gets the card's own capability.
      TORCH_CUDA_ARCH_LIST="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1)"
      export TORCH_CUDA_ARCH_LIST
      r="$SCRATCH/restart" && rm -rf "$r" && mkdir -p "$r"
      rcfg=(--config "$ROOT/examples/demo.json" --set model.preset=gpt-1.3b model.seq_len=1024
        train_micro_batch_size_per_gpu=4 bf16.enabled=true zero_optimization.stage=1
        steps_per_print=1 trainer.eval_interval=0 "trainer.output_dir=$r/dsrun")
      "$BUILD/dsrun" "${rcfg[@]}" --max-steps 3 2>&1 | grep -E 'durable|rror' |
        tee "$OUT/restart-dsrun-save.log"
      [[ "${RESTART_PEER:-1}" == 1 ]] &&
      PYTHONPATH="${DS_PATH:-/tmp/ds}" "$PY" "$ROOT/bench/gpu/ds_peer.py" --preset gpt-1.3b \
        --micro-batch 4 --stage 1 --steps 2 --warmup 1 --save "$r/ds" --json 2>&1 |
        tail -3 | tee "$OUT/restart-ds-save.log"
      sync; (echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null && echo "page cache dropped" ||
        echo "page cache NOT dropped (not permitted here)"
      t0=$(date +%s.%N)
      "$BUILD/dsrun" "${rcfg[@]}" --resume latest --max-steps 4 --set checkpoint.enabled=false \
        2>&1 | grep -E 'resumed from|step 4/|rror' | tee "$OUT/restart-dsrun.log"
      echo "dsrun: launch to first resumed step done and exit: $(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN{printf "%.2f", a-b}') s" |
        tee -a "$OUT/restart-dsrun.log"
      [[ "${RESTART_PEER:-1}" == 1 ]] || { rm -rf "$r"; continue; }
      sync; (echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null || true
      t0=$(date +%s.%N)
      PYTHONPATH="${DS_PATH:-/tmp/ds}" "$PY" "$ROOT/bench/gpu/ds_peer.py" --preset gpt-1.3b \
        --micro-batch 4 --stage 1 --resume "$r/ds" --t0 "$t0" --json 2>&1 | tail -4 |
        tee "$OUT/restart-ds.log"
      echo "DeepSpeed: launch to exit: $(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN{printf "%.2f", a-b}') s" | tee -a "$OUT/restart-ds.log"
      rm -rf "$r"
      ;;
    capacity)
      # The largest GPT along the 1.3B shape (d_model CAPACITY_D, default 2048; heads of 128;
      # seq 1024; micro-batch 1; bf16; activation checkpointing) that trains 2 steps on this
      # GPU, per setting of CAPACITY_SETTINGS ("stage:offload" items; offload none, optimizer,
      # all, nvme or nvme-all), for dsrun and for DeepSpeed (ds_peer.py; not for nvme: DeepSpeed's
      # NVMe offload needs its async_io op, built against libaio). Layers double from
      # CAPACITY_START (default 24) while the run trains, then bisect. Each probe's JSON and
      # the verdicts go to $OUT/capacity-<who>-<setting>.log; dsrun's --dry-run advice for the
      # largest that trained is in capacity-dryrun-<setting>.log.
      d=${CAPACITY_D:-2048}
      probe() {  # who stage offload layers -> exit 0 when it trained
        local who=$1 st=$2 off=$3 L=$4 log="$OUT/capacity-$1-$2-$3.log"
        echo "--- $who stage $st offload $off n_layer $L (d_model $d)" >>"$log"
        if [[ $who == dsrun ]]; then
          timeout 900 "$BUILD/dsrun" bench --config "$ROOT/examples/demo.json" --nproc-per-node 1 \
            --stages "$st" --offload "$off" --steps 2 --warmup 1 --json --nvme-path "$SCRATCH" \
            --set model.preset=null "model.n_layer=$L" "model.d_model=$d" \
            "model.n_head=$((d / 128))" model.seq_len=1024 model.vocab=50257 \
            train_micro_batch_size_per_gpu=1 bf16.enabled=true model.activation_checkpointing=true \
            checkpoint.enabled=false "trainer.output_dir=$SCRATCH/capacity" 2>&1 |
            grep -E '^\{"bench"|rror|memory' >>"$log"
          tail -1 "$log" | grep -q '"rows":\[{'
        else
          PYTHONPATH="${DS_PATH:-/tmp/ds}" timeout 900 "$PY" "$ROOT/bench/gpu/ds_peer.py" \
            --preset gpt-1.3b --n-layer "$L" --d-model "$d" --micro-batch 1 --stage "$st" \
            --offload "$off" --steps 2 --warmup 1 --activation-checkpointing --json 2>&1 |
            grep -E '^\{"bench"|Error' >>"$log"
          tail -1 "$log" | grep -q '"tokens_per_s"'
        fi
      }
      for setting in ${CAPACITY_SETTINGS:-0:none 2:optimizer 3:all}; do
        st=${setting%%:*} off=${setting##*:}
        for who in dsrun ds; do
          [[ $who == ds && $off == nvme* ]] && continue
          step "capacity $who stage $st offload $off"
          lo=0 hi=0 L=${CAPACITY_START:-24}
          while probe "$who" "$st" "$off" "$L"; do lo=$L; L=$((L * 2)); [[ $L -gt 512 ]] && break; done
          hi=$L
          while [[ $((hi - lo)) -gt $(( (lo / 8) > 1 ? lo / 8 : 1 )) ]]; do
            L=$(((lo + hi) / 2))
            if probe "$who" "$st" "$off" "$L"; then lo=$L; else hi=$L; fi
          done
          echo "capacity $who stage $st offload $off: largest n_layer that trained $lo (d_model $d)" |
            tee -a "$OUT/capacity-summary.log"
          if [[ $who == dsrun && $lo -gt 0 ]]; then
            "$BUILD/dsrun" --config "$ROOT/examples/demo.json" --dry-run --set model.preset=null \
              "model.n_layer=$lo" "model.d_model=$d" "model.n_head=$((d / 128))" model.seq_len=1024 \
              model.vocab=50257 train_micro_batch_size_per_gpu=1 bf16.enabled=true \
              model.activation_checkpointing=true "zero_optimization.stage=$st" \
              >"$OUT/capacity-dryrun-$st-$off.log" 2>&1 || true
          fi
        done
      done
      rm -rf "${SCRATCH:?}/capacity"
      ;;
    large-model)
      # The seed's third scenario as written (examples/large_model_stage3.json: 13B, ZeRO-3,
      # optimizer and parameters offloaded to the CPU) on this one GPU, for LARGE_STEPS (default
      # 3) steps on the built-in corpus and 1 micro batch a step, then the same with the optimizer
      # on NVMe under $SCRATCH, then with the parameters there too (LARGE_OFFLOADS: which of
      # cpu, nvme, nvme-all). LARGE_SET: more --set items (e.g. model.n_layer=20 to scale it
      # down to what this card and host hold). Logs: $OUT/large-model-*.log.
      for opt in ${LARGE_OFFLOADS:-cpu nvme nvme-all}; do
        step "large-model offload $opt"
        param=cpu
        [[ $opt == nvme-all ]] && param=nvme
        # shellcheck disable=SC2086  # LARGE_SET holds several items
        timeout 1200 "$BUILD/dsrun" --config "$ROOT/examples/large_model_stage3.json" \
          --max-steps "${LARGE_STEPS:-3}" --set data.path=builtin gradient_accumulation_steps=1 \
          steps_per_print=1 trainer.eval_interval=0 checkpoint.enabled=false \
          "trainer.output_dir=$SCRATCH/large" "zero_optimization.offload_optimizer.device=${opt%-all}" \
          "zero_optimization.offload_optimizer.nvme_path=$SCRATCH" \
          "zero_optimization.offload_param.device=$param" \
          "zero_optimization.offload_param.nvme_path=$SCRATCH" ${LARGE_SET:-} 2>&1 |
          tee "$OUT/large-model-$opt.log" | grep -E 'model:|step [0-9]+/|trained|rror|memory' || true
      done
      rm -rf "${SCRATCH:?}/large"
      ;;
    hf-install)
      # transformers and tokenizers (.deps/hf, made by fetch_deps.sh) into /tmp/hf for the peers.
      step hf-install
      "$PY" -m pip install -q --no-index --no-deps --target /tmp/hf "$ROOT"/.deps/hf/*.whl 2>&1 |
        grep -v -E 'already exists|WARNING: Target' || true
      PYTHONPATH=/tmp/hf "$PY" -c 'import transformers; print("transformers", transformers.__version__)'
      ;;
    llama-1b)
      # A Llama-3.2-1B-shaped model (random weights from the config.json llama_peer.py writes) at
      # sequence 2048 (LLAMA_SEQ), bf16: the same model in transformers with PyTorch eager and
      # torch.compile (bench/gpu/llama_peer.py; needs hf-install), then dsrun --model_name on the
      # folder, per micro-batch of LLAMA_BATCHES (default 4). Logs: $OUT/llama-1b-mb<B>-*.log,
      # profile-llama-1b-mb<B>.txt (dsrun's 3 profiled steps).
      dir="$SCRATCH/llama-3.2-1b-shape"
      "$PY" "$ROOT/bench/gpu/llama_peer.py" --shape llama-3.2-1b --write-config "$dir"
      for mb in ${LLAMA_BATCHES:-4}; do
        step "llama-1b micro-batch $mb"
        log="$OUT/llama-1b-mb$mb"
        PYTHONPATH=/tmp/hf "$PY" "$ROOT/bench/gpu/llama_peer.py" --shape llama-3.2-1b \
          --seq-len "${LLAMA_SEQ:-2048}" --micro-batch "$mb" --modes "${PEER_MODES:-eager,compile}" \
          --steps 20 --warmup 5 --json 2>&1 | grep -v -E 'Warning|warn\(' | tee "$log-peer.log" ||
          echo "[llama-1b mb=$mb] llama_peer.py failed" | tee -a "$log-peer.log"
        "$BUILD/dsrun" bench --config "$ROOT/examples/demo.json" --nproc-per-node 1 --stages 0 \
          --steps 20 --warmup 5 --json --model_name "$dir" --set "model.seq_len=${LLAMA_SEQ:-2048}" \
          "train_micro_batch_size_per_gpu=$mb" bf16.enabled=true checkpoint.enabled=false \
          "trainer.output_dir=$SCRATCH/llama-out" --profile "$SCRATCH/profile" 2>&1 |
          grep -E -v '^\[rank [0-9]+\] (step [0-9]|\[)' | tee "$log-dsrun.log" ||
          echo "[llama-1b mb=$mb] dsrun bench failed" | tee -a "$log-dsrun.log"
        for p in "$SCRATCH"/profile/*.txt; do
          [[ -f "$p" ]] && cat "$p" >>"$OUT/profile-llama-1b-mb$mb.txt"
        done
        [[ -f "$OUT/profile-llama-1b-mb$mb.txt" ]] && head -n 30 "$OUT/profile-llama-1b-mb$mb.txt"
        rm -rf "${SCRATCH:?}/llama-out" "${SCRATCH:?}/profile"
      done
      ;;
    ds-install)
      # DeepSpeed's wheels (carried in .deps/deepspeed from ../shared/wheels/deepspeed) into
      # $DS_PATH, for the peers above.
      step ds-install
      "$PY" -m pip install --quiet --no-index --no-deps --target "${DS_PATH:-/tmp/ds}" \
        "$ROOT"/.deps/deepspeed/*.whl 2>&1 | tail -3
      PYTHONPATH="${DS_PATH:-/tmp/ds}" "$PY" -c 'import deepspeed; print("deepspeed", deepspeed.__version__)'
      ;;
    adam-bench)
      step adam-bench
      "$BUILD/dsrun" bench adam --elements 124439808 --json 2>&1 | tee "$OUT/adam-bench.log"
      ;;
    peer-124m | peer-1.3b)
      # Same model, batch and sequence in both; dsrun's bf16 is DeepSpeed's (bf16 weights, fp32
      # master), the peer's is autocast over fp32 weights with the vocabulary padded to 50304 as
      # nanoGPT does (what a PyTorch user writes; PEER_ARGS=--no-pad-vocab keeps 50257). For each
      # micro-batch of PEER_BATCHES (default 124M: "8 16", 1.3B: "4 16"), the peer runs its
      # PEER_MODES, then dsrun with trainer.cuda_graphs auto and false (PEER_GRAPHS), each
      # profiling 3 more steps. Logs: $OUT/<step>-mb<B>-peer.log, <step>-mb<B>-dsrun-graphs-<g>.log,
      # profile-<step>-mb<B>.txt, trace-<step>-mb<B>.json.gz (the eager run's Chrome trace). A
      # batch that does not fit is a row that says so (the peer's "error", dsrun's "failed"), not
      # the end of the step.
      if [[ "$s" == peer-124m ]]; then preset=gpt2-124m batches="8 16"
      else preset=gpt-1.3b batches="4 16"; fi
      for mb in ${PEER_BATCHES:-$batches}; do
        step "$s micro-batch $mb"
        log="$OUT/$s-mb$mb"
        # shellcheck disable=SC2086  # PEER_ARGS holds several items
        "$PY" "$ROOT/bench/gpu/gpt_peer.py" --preset "$preset" --seq-len 1024 --micro-batch "$mb" \
          --modes "${PEER_MODES:-eager,compile}" --steps 20 --warmup 5 --json ${PEER_ARGS:-} 2>&1 |
          tee "$log-peer.log" || echo "[$s mb=$mb] gpt_peer.py failed" | tee -a "$log-peer.log"
        for graphs in ${PEER_GRAPHS:-auto false}; do
          "$BUILD/dsrun" bench --config "$ROOT/examples/demo.json" --nproc-per-node 1 --stages 0 \
            --steps 20 --warmup 5 --json --set "model.preset=$preset" model.seq_len=1024 \
            "train_micro_batch_size_per_gpu=$mb" bf16.enabled=true checkpoint.enabled=false \
            "trainer.cuda_graphs=$graphs" "trainer.output_dir=$SCRATCH/$s" \
            --profile "$SCRATCH/profile" 2>&1 | grep -E -v '^\[rank [0-9]+\] (step [0-9]|\[)' |
            tee "$log-dsrun-graphs-$graphs.log" ||  # keeps "steps replay as CUDA graphs" and such
            echo "[$s mb=$mb graphs=$graphs] dsrun bench failed" |
            tee -a "$log-dsrun-graphs-$graphs.log"
          prof="$OUT/profile-$s-mb$mb.txt"
          for p in "$SCRATCH"/profile/*.txt; do
            if [[ -f "$p" ]]; then { echo "--- $s mb=$mb graphs=$graphs"; cat "$p"; } >>"$prof"; fi
          done
          for t in "$SCRATCH"/profile/*.trace.json; do  # the eager run's Chrome trace
            [[ -f "$t" && "$graphs" == false ]] || continue
            gzip -c "$t" >"$OUT/trace-$s-mb$mb.json.gz"
          done
          if [[ -f "$prof" ]]; then tail -n 34 "$prof"; fi
          rm -rf "${SCRATCH:?}/$s" "${SCRATCH:?}/profile"
        done
      done
      ;;
    ckpt-1.3b)
      # dsrun's save is measured once per checkpoint.device_staging value in CKPT_STAGING
      # (default "auto false"): auto stages the state (fp32 master and both moments, 14.7 GiB at
      # 1.3B) in a second GPU buffer, false copies it to the host directly, so the two logs,
      # ckpt-dsrun-staging-<value>.log, give the stall with and without that GPU memory (and
      # each run's peak). CKPT_CODEC (default bytegroup+zstd), CKPT_CHUNK (checkpoint.chunk_bytes,
      # default 4MiB), CKPT_RESUME=0 (no load) and CKPT_PEERS (default all of ckpt_peer.py's but
      # the process-based async one; none: no peer) keep a call within the device's time;
      # CKPT_SET: more --set items for dsrun.
      step ckpt-1.3b
      mkdir -p "$SCRATCH" && df -h "$SCRATCH" | tee "$OUT/ckpt-disk.log"
      for staging in ${CKPT_STAGING:-auto false}; do
        # shellcheck disable=SC2086  # CKPT_SET holds several items
        "$BUILD/dsrun" bench --config "$ROOT/examples/demo.json" --nproc-per-node 1 --stages 0 \
          --steps 3 --warmup 2 --json --set model.preset=gpt-1.3b model.seq_len=1024 \
          train_micro_batch_size_per_gpu=4 bf16.enabled=true checkpoint.keep_last=1 \
          "checkpoint.codec=${CKPT_CODEC:-bytegroup+zstd}" "checkpoint.device_staging=$staging" \
          "checkpoint.chunk_bytes=${CKPT_CHUNK:-4MiB}" ${CKPT_SET:-} \
          "trainer.output_dir=$SCRATCH/dsrun" 2>&1 | tee "$OUT/ckpt-dsrun-staging-$staging.log" |
          grep -E -v '^\[rank [0-9]+\] (step|\[)' ||  # keeps the staging and checkpoint lines
          echo "[ckpt-1.3b staging=$staging] dsrun bench failed" |
          tee -a "$OUT/ckpt-dsrun-staging-$staging.log"
        # The load: the last checkpoint resumed for one step (CKPT_RESUME=0 skips); the
        # "resumed from" line gives the read's time and rate.
        if [[ "${CKPT_RESUME:-1}" == 1 ]] && saved=$(latest_step "$SCRATCH/dsrun/checkpoints"); then
          # shellcheck disable=SC2086  # CKPT_SET holds several items
          "$BUILD/dsrun" --config "$ROOT/examples/demo.json" --resume latest \
            --max-steps $((saved + 1)) --set model.preset=gpt-1.3b model.seq_len=1024 \
            train_micro_batch_size_per_gpu=4 bf16.enabled=true checkpoint.save_interval_steps=0 \
            trainer.eval_interval=0 tensorboard.enabled=false ${CKPT_SET:-} \
            "trainer.output_dir=$SCRATCH/dsrun" 2>&1 | grep -E 'resumed from|rror' |
            tee -a "$OUT/ckpt-dsrun-staging-$staging.log" || echo "resume failed"
        fi
        rm -rf "${SCRATCH:?}/dsrun"
      done
      [[ "${CKPT_PEERS:-}" == none ]] ||
        "$PY" "$ROOT/bench/gpu/ckpt_peer.py" --preset gpt-1.3b --seq-len 1024 --dir "$SCRATCH/peer" \
          --peers "${CKPT_PEERS:-torch_save,dcp,dcp_async}" --json 2>&1 | tee "$OUT/ckpt-peer.log"
      rm -rf "${SCRATCH:?}"
      ;;
    mgpu)
      # Several GPUs (issue 13), NCCL: every ZeRO stage on N GPUs, TP 2 and PP 2, each against
      # one GPU reading the same samples (the "trained ... loss a -> b" lines; MGPU_SMALL=0
      # skips), then the 1.3B model's tokens/s at stages 1 and 3 on N GPUs and at stage 1 on
      # one, and PyTorch FSDP2 on the same (bench/gpu/fsdp_peer.py; MGPU_SCALING=0 skips both).
      step mgpu
      n=$(nvidia-smi -L | wc -l)
      small() {  # small <micro batch> <label> dsrun-args...
        local micro=$1 label=$2
        shift 2
        "$BUILD/dsrun" --device cuda --config "$ROOT/examples/demo.json" --max-steps 20 "$@" \
          --set model.n_layer=4 model.n_head=8 model.d_model=256 model.seq_len=256 \
          "train_micro_batch_size_per_gpu=$micro" gradient_accumulation_steps=2 \
          steps_per_print=20 checkpoint.enabled=false tensorboard.enabled=false \
          trainer.eval_interval=0 "trainer.output_dir=$SCRATCH/m" 2>&1 |
          grep -E 'trained|rror' | sed "s/^/[$label] /" | tee -a "$OUT/mgpu.log" ||
          echo "[$label] failed" | tee -a "$OUT/mgpu.log"
        rm -rf "${SCRATCH:?}/m"
      }
      [[ "${MGPU_SMALL:-1}" == 0 ]] || {
      small 8 "1 gpu, micro 8" --nproc-per-node 1
      small $((8 * n)) "1 gpu, micro $((8 * n))" --nproc-per-node 1
      for stage in 0 1 2 3; do
        small 8 "$n gpus, stage $stage" --nproc-per-node "$n" --set "zero_optimization.stage=$stage"
      done
      small 8 "2 gpus, TP 2" --nproc-per-node 2 --set tensor_parallel.autotp_size=2
      small 8 "2 gpus, PP 2" --nproc-per-node 2 --set pipeline.stages=2
      }
      [[ "${MGPU_SCALING:-1}" == 0 ]] && continue
      # The last row: stage 1 with overlap_comm (its buckets reduced during backward); the
      # others keep each stage's default (DeepSpeed's: on at stage 3 only).
      for run in "1 1 -" "$n 1,3 -" "$n 1 zero_optimization.overlap_comm=true"; do
        read -r gpus stages extra <<<"$run"
        [[ "$extra" == - ]] && extra=steps_per_print=1000000000
        "$BUILD/dsrun" bench --config "$ROOT/examples/demo.json" --nproc-per-node "$gpus" \
          --stages "$stages" --steps 5 --warmup 2 --json --set model.preset=gpt-1.3b \
          model.seq_len=1024 train_micro_batch_size_per_gpu=4 bf16.enabled=true \
          checkpoint.enabled=false "trainer.output_dir=$SCRATCH/scale" "$extra" 2>&1 |
          grep -v '^\[rank' | tee -a "$OUT/mgpu-scaling.log" || echo "scaling on $gpus GPU(s) failed"
        rm -rf "${SCRATCH:?}/scale"
      done
      for run in "1 true" "$n false" "$n true"; do
        read -r gpus reshard <<<"$run"
        "$PY" -m torch.distributed.run --standalone --nproc-per-node "$gpus" \
          "$ROOT/bench/gpu/fsdp_peer.py" --preset gpt-1.3b --seq-len 1024 --micro-batch 4 \
          --reshard "$reshard" --json 2>&1 | grep -E '^fsdp2|^\{|rror' |
          tee -a "$OUT/mgpu-fsdp.log" || echo "fsdp2 on $gpus GPU(s) failed"
      done
      ;;
    mgpu-ckpt)
      # Issue 13's checkpoint runs, all on N ranks (MGPU_N; on a machine without GPUs the ranks
      # run on the CPU, which tries the script with a small MGPU_MODEL):
      # 1. the model's full state saved by every rank at once, at stages 1 and 3 (dsrun bench:
      #    stall, durable, stored bytes against the disk's direct-write bound, measured after);
      # 2. the last of those checkpoints (stage 3, N ranks) resumed on 1 rank and on N/2: the
      #    "resumed from" line says the layouts, the bytes read, the time and the rate;
      # 3. one rank killed with SIGKILL twice in a run with --max-restarts 2 that must finish,
      #    and its last checkpoint against the same run without a kill (dsckpt diff).
      step mgpu-ckpt
      n=${MGPU_N:-$(nvidia-smi -L | wc -l)}
      # shellcheck disable=SC2206  # MGPU_MODEL holds several items
      model=(${MGPU_MODEL:-model.preset=gpt-1.3b model.seq_len=1024 train_micro_batch_size_per_gpu=4 bf16.enabled=true})
      cfg=(--config "$ROOT/examples/demo.json")
      quiet() { grep -E -v '^\[rank [0-9]+\] (step [0-9]|\[)' | tee -a "$OUT/mgpu-ckpt.log"; }
      for stage in 1 3; do  # stage 3's checkpoint stays for the resumes
        rm -rf "${SCRATCH:?}/mc"
        "$BUILD/dsrun" bench "${cfg[@]}" --nproc-per-node "$n" --stages "$stage" --steps 3 \
          --warmup 2 --json --set "${model[@]}" checkpoint.keep_last=1 tensorboard.enabled=false \
          "trainer.output_dir=$SCRATCH/mc" 2>&1 | quiet || echo "saving on $n ranks failed" | quiet
      done
      if saved=$(latest_step "$SCRATCH/mc/checkpoints"); then
        for m in $(printf '%s\n' 1 $((n / 2)) | sort -un); do
          [[ $m -lt $n ]] || continue
          "$BUILD/dsrun" "${cfg[@]}" --nproc-per-node "$m" --resume latest \
            --max-steps $((saved + 2)) --set "${model[@]}" zero_optimization.stage=3 \
            checkpoint.save_interval_steps=0 checkpoint.keep_last=1 tensorboard.enabled=false \
            trainer.eval_interval=0 "trainer.output_dir=$SCRATCH/mc" 2>&1 |
            grep -E 'resumed from|trained|rror' | sed "s/^/[resume on $m] /" | quiet ||
            echo "[resume on $m] failed" | quiet
        done
      fi
      rm -rf "${SCRATCH:?}/mc"
      small=(--nproc-per-node "$n" --max-steps 200 --set checkpoint.save_interval_steps=10
        zero_optimization.stage=2 model.n_layer=2 model.d_model=64 tensorboard.enabled=false
        trainer.eval_interval=0 steps_per_print=1)
      "$BUILD/dsrun" "${cfg[@]}" "${small[@]}" "trainer.output_dir=$SCRATCH/clean" \
        >"$OUT/mgpu-kill-clean.log" 2>&1 || echo "[kill] the run without a kill failed" | quiet
      kill_rank1() {  # the rank process whose environment says RANK=1
        local p
        for p in $(pgrep -P "$1"); do
          if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx RANK=1; then kill -9 "$p"; fi
        done
      }
      wait_for() {  # wait_for <pattern> <log>: at most a minute
        local _
        for _ in $(seq 1 1200); do grep -q "$1" "$2" && return 0; sleep 0.05; done
        return 1
      }
      log="$OUT/mgpu-kill.log"
      "$BUILD/dsrun" "${cfg[@]}" "${small[@]}" "trainer.output_dir=$SCRATCH/faulty" \
        --max-restarts 2 >"$log" 2>&1 &
      launcher=$!
      wait_for 'rank 0\] step 15/' "$log" && kill_rank1 "$launcher"
      wait_for 'resumed from' "$log" && wait_for 'rank 0\] step 35/' "$log" && kill_rank1 "$launcher"
      if wait "$launcher"; then rc=0; else rc=$?; fi
      { echo "exit status $rc"; grep -E 'restart [0-9]+ of|resumed from|trained' "$log"; } |
        sed 's/^/[kill] /' | quiet
      "$BUILD/dsckpt" diff --ignore-blobs "$SCRATCH/clean/checkpoints/step-00000200" \
        "$SCRATCH/faulty/checkpoints/step-00000200" 2>&1 | tail -n 3 | sed 's/^/[kill] diff: /' | quiet
      rm -rf "${SCRATCH:?}/clean" "${SCRATCH:?}/faulty"
      ;;
    save-bench-16g)
      # The save pipeline alone on 16 GB of synthetic state from host memory: load against the
      # disk's direct-read bound (our io bench, as there is no fio there).
      step save-bench-16g
      mkdir -p "$SCRATCH"
      "$BUILD/dsckpt" bench save --dir "$SCRATCH" --size 16G --repeat 1 --json 2>&1 |
        tee "$OUT/save-bench-16g.log"
      rm -rf "${SCRATCH:?}"
      ;;
    pack)
      # Last: every log under $OUT in one logs.tgz (the device returns at most 8 files).
      (cd "$OUT" && tar czf /tmp/dstrain-logs.tgz --exclude=logs.tgz . &&
        find . -mindepth 1 -delete && mv /tmp/dstrain-logs.tgz logs.tgz)
      ;;
    *) echo "unknown step $s" >&2; exit 2 ;;
  esac
done
