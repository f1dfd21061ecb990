#!/usr/bin/env bash
# Unpacks the Debian -dev packages the GPU machine lacks (it cannot install anything) into
# .deps/root (git-ignored), for bench/gpu/run.sh to carry: liburing, xxhash, Gloo's headers.
# Run on the build machine (Debian 12, apt reachable).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEPS="$ROOT/.deps"
mkdir -p "$DEPS/debs" "$DEPS/root"
cd "$DEPS/debs"
apt-get download liburing-dev liburing2 libxxhash-dev libxxhash0 libgloo-dev
for f in *.deb; do dpkg -x "$f" "$DEPS/root"; done
cd "$ROOT" && rm -rf "$DEPS/debs"  # out of it first: pip below needs a working directory
echo "unpacked into $DEPS/root/usr ($(du -sh "$DEPS/root" | cut -f1)); carry .deps in device runs"
# transformers and tokenizers for the Llama peer (bench/gpu/llama_peer.py), as wheels for the GPU
# machine's Python 3.12 (run.sh hf-install puts them in /tmp/hf). Its numpy, torch and the
# Hugging Face download client (hf_xet) are left out: the image has the first two, and nothing
# is downloaded there.
PY="${DSTRAIN_PYTHON:-$ROOT/.venv/bin/python}"
rm -rf "$DEPS/hf" && mkdir -p "$DEPS/hf"
"$PY" -m pip download -q --disable-pip-version-check -d "$DEPS/hf" --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  "$(grep -E '^transformers==' "$ROOT/requirements.txt")" "$(grep -E '^tokenizers==' "$ROOT/requirements.txt")"
rm -f "$DEPS"/hf/numpy-*.whl "$DEPS"/hf/hf_xet-*.whl
echo "wheels for the Llama peer in $DEPS/hf ($(du -sh "$DEPS/hf" | cut -f1))"
