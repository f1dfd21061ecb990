#!/usr/bin/env bash
# Builds dstrain on the GPU machine (Ubuntu 24.04, its own torch at /opt/torch, nothing to
# install) and runs the named steps, writing logs under $OUT (or /tmp/dstrain-gpu).
#   bench/gpu/run.sh build gpu-tests demo unit-tests
# Steps:
#   build       configure and build everything (no installs; liburing, xxhash and Gloo's
#               headers come from .deps/root/usr, carried from the build machine)
#   gpu-tests   ctest -L gpu (needs the GPU)
#   unit-tests  ctest -LE 'slow|gpu|fuzz' (proves the suite on this toolchain)
#   demo        dsrun on examples/demo.json in bf16 and fp32 on CUDA; prints tokens/s
#   zero-bench  dsrun bench: ZeRO stages 0-3 (and offload) for GPT-2 124M on one GPU
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
BUILD="${DSTRAIN_BUILD_DIR:-$ROOT/build}"

step() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }

for s in "$@"; do
  case "$s" in
    build)
      step build
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
      if ! "$ROOT/build.sh" build >"$OUT/build.log" 2>&1; then
        # Build what can be built, to see every error of this toolchain at once.
        cmake --build "$BUILD" -j "$DSTRAIN_JOBS" -- -k 0 >"$OUT/build-k0.log" 2>&1 || true
        grep -E 'error:' "$OUT/build-k0.log" | sort -u | head -40
        echo "build failed; the log is $OUT/build.log"
        exit 1
      fi
      grep -E '^build.sh' "$OUT/build.log"
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
    zero-bench)
      # ZeRO stages on one GPU (world 1: what partitioning costs and saves without peers), for
      # GPT-2 124M in bf16, then the same with optimizer (and stage 3 parameter) offload.
      step zero-bench
      common=(--config "$ROOT/examples/demo.json" --nproc-per-node 1 --steps 10 --warmup 3 --json
        --set model.preset=gpt2-124m train_micro_batch_size_per_gpu=8 bf16.enabled=true
        "trainer.output_dir=$BUILD/zero-bench")
      "$BUILD/dsrun" bench "${common[@]}" --stages 0,1,2,3 2>&1 | grep -v '^\[rank' |
        tee "$OUT/zero-bench.log"
      "$BUILD/dsrun" bench "${common[@]}" --stages 2,3 --set zero_optimization.offload_optimizer.device=cpu \
        zero_optimization.offload_param.device=cpu 2>&1 | grep -v '^\[rank' | tee "$OUT/zero-bench-offload.log"
      ;;
    *) echo "unknown step $s" >&2; exit 2 ;;
  esac
done
