#!/usr/bin/env bash
# dstrain's one entry point: installs what is missing, configures, builds, and runs.
#   ./build.sh build   install missing Debian packages and the .venv, configure, build (Release)
#   ./build.sh demo    build, then run the main job (see below)
#   ./build.sh test    build, then run the test suite through ctest (label 'slow' excluded;
#                      DSTRAIN_TEST_LABELS=all runs everything)
# Environment:
#   DSTRAIN_NO_INSTALL=1      never install anything (machines that cannot, like the GPU box)
#   Torch_DIR / CMAKE_PREFIX_PATH   a LibTorch of your own; then no torch is installed
#   DSTRAIN_DEPS_PREFIX=DIR   extra prefix with unpacked -dev packages (liburing, xxhash, gloo)
#   DSTRAIN_BUILD_DIR=DIR     build directory (default build/)
#   DSTRAIN_JOBS=N            parallel compile jobs (default: nproc)
#   DSTRAIN_PYTHON=PATH       the Python with torch, h5py, safetensors, tensorboard for tests
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD="${DSTRAIN_BUILD_DIR:-$ROOT/build}"
VENV="$ROOT/.venv"
LOGS="$BUILD/logs"
JOBS="${DSTRAIN_JOBS:-$(nproc 2>/dev/null || echo 2)}"

# Debian packages: the toolchain, then the libraries of cmake/Dependencies.cmake, then the
# tools the tests and benchmarks compare against.
DEBIAN_PACKAGES=(
  build-essential cmake pkg-config python3 python3-venv ca-certificates
  libgloo-dev libhdf5-dev libzstd-dev liburing-dev libcli11-dev nlohmann-json3-dev
  libxxhash-dev libgtest-dev libgmock-dev libbenchmark-dev
  fio hdf5-tools clang libclang-rt-14-dev ccache ninja-build
)

say() { printf 'build.sh: %s\n' "$*"; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

user_gave_torch() {
  [[ -n "${Torch_DIR:-}" || "${CMAKE_PREFIX_PATH:-}" == *torch* ]]
}

# ---- Debian packages: apt-get update once, then only what is missing.
install_debian_packages() {
  local missing=() pkg
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$pkg")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  if [[ -n "${DSTRAIN_NO_INSTALL:-}" ]]; then
    say "DSTRAIN_NO_INSTALL is set; not installing: ${missing[*]}"
    return 0
  fi
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
  [[ $(id -u) -eq 0 ]] || die "missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}"
  mkdir -p "$LOGS"
  say "installing Debian packages: ${missing[*]}"
  if ! apt-get update >"$LOGS/apt.log" 2>&1; then
    die "apt-get update failed (Debian package registry unreachable?); see $LOGS/apt.log"
  fi
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      "${missing[@]}" >>"$LOGS/apt.log" 2>&1; then
    die "could not install Debian packages ${missing[*]} from the Debian registry; see $LOGS/apt.log"
  fi
}

# ---- The Python environment: torch (LibTorch comes from its wheel) and the readers users have.
# Rebuilt only when absent or when requirements.txt changed.
setup_venv() {
  local stamp="$VENV/.dstrain-requirements" want
  want="$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)"
  if [[ -x "$VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  if [[ -n "${DSTRAIN_NO_INSTALL:-}" ]]; then
    say "DSTRAIN_NO_INSTALL is set; not creating $VENV"
    return 0
  fi
  mkdir -p "$LOGS"
  say "setting up $VENV from requirements.txt (torch is large: a few minutes)"
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV" >"$LOGS/pip.log" 2>&1 ||
    die "python3 -m venv failed; see $LOGS/pip.log"
  if ! "$VENV/bin/pip" install --disable-pip-version-check -r "$ROOT/requirements.txt" \
      >>"$LOGS/pip.log" 2>&1; then
    local pkg
    pkg="$(grep -oE "(No matching distribution found for|Could not find a version that satisfies the requirement) [^ ]+" \
      "$LOGS/pip.log" | tail -1 | awk '{print $NF}')"
    [[ -n "$pkg" ]] || pkg="$(grep -oE '^Collecting [^ ]+' "$LOGS/pip.log" | tail -1 | awk '{print $2}')"
    die "could not install '${pkg:-the requirements}' from PyPI (network or registry problem); see $LOGS/pip.log"
  fi
  echo "$want" >"$stamp"
}

configure() {
  local args=(-S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release)
  command -v ninja >/dev/null && [[ ! -f "$BUILD/CMakeCache.txt" ]] && args+=(-G Ninja)
  [[ -n "${DSTRAIN_DEPS_PREFIX:-}" ]] && args+=("-DDSTRAIN_DEPS_PREFIX=$DSTRAIN_DEPS_PREFIX")
  if [[ -n "${DSTRAIN_PYTHON:-}" ]]; then
    args+=("-DDSTRAIN_PYTHON=$DSTRAIN_PYTHON")
  elif [[ -x "$VENV/bin/python" ]]; then
    args+=("-DDSTRAIN_PYTHON=$VENV/bin/python")
  fi
  if [[ -f "$BUILD/CMakeCache.txt" ]]; then
    return 0  # the generated build re-runs cmake itself when a CMakeLists.txt changes
  fi
  mkdir -p "$LOGS"
  say "configuring $BUILD"
  if ! cmake "${args[@]}" >"$LOGS/cmake.log" 2>&1; then
    rm -f "$BUILD/CMakeCache.txt"  # so the next run configures again
    tail -n 30 "$LOGS/cmake.log" >&2
    die "cmake failed; full log in $LOGS/cmake.log"
  fi
  grep '^-- dstrain:' "$LOGS/cmake.log" | sed 's/^-- /build.sh: /' || true
}

build() {
  install_debian_packages
  user_gave_torch || setup_venv
  configure
  say "building ($JOBS jobs)${DSTRAIN_BUILD_TARGETS:+: $DSTRAIN_BUILD_TARGETS}"
  local start=$SECONDS
  # DSTRAIN_BUILD_TARGETS (e.g. "dsrun dsckpt"): only these, for quick runs elsewhere.
  # shellcheck disable=SC2086  # a list of target names
  cmake --build "$BUILD" -j "$JOBS" ${DSTRAIN_BUILD_TARGETS:+--target $DSTRAIN_BUILD_TARGETS}
  say "the build took $((SECONDS - start)) s$(command -v ccache >/dev/null &&
    printf '; ccache, all builds so far: %s' "$(ccache --print-stats 2>/dev/null |
      awk -F'\t' '$1 == "direct_cache_hit" || $1 == "preprocessed_cache_hit" {h += $2}
                  $1 == "cache_miss" {m = $2} END {printf "%d hits, %d misses", h, m}')")"
}

run_tests() {
  local label_args=(-LE slow)
  [[ "${DSTRAIN_TEST_LABELS:-}" == "all" ]] && label_args=()
  [[ -n "${DSTRAIN_TEST_LABELS:-}" && "${DSTRAIN_TEST_LABELS}" != "all" ]] &&
    label_args=(-L "$DSTRAIN_TEST_LABELS")
  cd "$BUILD"
  local start=$SECONDS rc=0
  ctest --output-on-failure -j "$JOBS" "${label_args[@]}" || rc=$?
  say "ctest took $((SECONDS - start)) s; the slowest tests (seconds, from CTestCostData.txt):"
  # Lines "name runs seconds" up to the '---' that starts the failed list.
  awk '/^---/ {exit} NF == 3 {printf "  %8.1f  %s\n", $3, $1}' \
    Testing/Temporary/CTestCostData.txt 2>/dev/null | sort -rn | head -n 15 || true
  return "$rc"
}

run_demo() {
  rm -rf "$ROOT/build/demo"  # the demo's own output: metrics, events, checkpoints
  say "demo: training the built-in GPT (demo preset, 0.8M parameters) on the embedded corpus,"
  say "      saving a checkpoint every 100 steps"
  say "  $BUILD/dsrun --config examples/demo.json"
  (cd "$ROOT" && "$BUILD/dsrun" --config examples/demo.json)
  say ""
  say "demo: resuming from the latest checkpoint for 100 more steps"
  say "  $BUILD/dsrun --config examples/demo.json --resume latest --max-steps 400"
  (cd "$ROOT" && "$BUILD/dsrun" --config examples/demo.json --resume latest --max-steps 400)
  say ""
  say "  $BUILD/dsckpt list build/demo/checkpoints"
  (cd "$ROOT" && "$BUILD/dsckpt" list build/demo/checkpoints)
  say ""
  say "next:"
  say "  TensorBoard:  tensorboard --logdir build/demo   (or read build/demo/metrics.jsonl)"
  say "  bf16:         $BUILD/dsrun --config examples/demo.json --set bf16.enabled=true trainer.output_dir=build/demo-bf16"
  say "  2 ranks:      $BUILD/dsrun --nproc-per-node 2 --config examples/demo.json --set zero_optimization.stage=2 trainer.output_dir=build/demo-zero2"
  say "  (a run in build/demo again resumes it, --resume latest, or starts over beside it, --fresh-start)"
  say "  ZeRO stages:  $BUILD/dsrun bench --config examples/demo.json --nproc-per-node 2"
  say "  bigger model: $BUILD/dsrun --config examples/demo.json --set model.preset=gpt2-124m --dry-run"
  say "  your model:   examples/custom_model/main.cc (build/examples/bigram_lm)"
  say "  your disk:    $BUILD/dsckpt bench io --dir /your/checkpoint/disk --size 4G"
}

case "${1:-build}" in
  build) build ;;
  # The demo needs only the two programs, not the tests and fuzzers (a first run on 2 cores).
  demo) DSTRAIN_BUILD_TARGETS="${DSTRAIN_BUILD_TARGETS:-dsrun dsckpt}" build && run_demo ;;
  test) build && run_tests ;;
  -h|--help|help) usage ;;
  *) usage ;;
esac
