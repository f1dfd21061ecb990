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
rm -rf "$DEPS/debs"
echo "unpacked into $DEPS/root/usr ($(du -sh "$DEPS/root" | cut -f1)); carry .deps in device runs"
