#!/bin/bash
# Builds what call.sh carries, here (no GPU needed), from a clean main:
#   bash docs/perf/2026-12-08-s9/prepare.sh
# 1. main's kernel pack: scripts/gpu-check pack (.device-carry/kernels.tar.xz).
# 2. The claimed-chunks branch: main plus decode-claims.patch in a clone under /tmp, its
#    bench_kernels and kernels_gpu_tests stripped into .device-branch/decode-claims.tar.xz.
# Then, on a GPU machine:
#   run(command="bash docs/perf/2026-12-08-s9/call.sh $OUT", kind="nvidia-h200",
#       carry=[".device-carry/kernels.tar.xz", ".device-branch/decode-claims.tar.xz"])
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$ROOT"
scripts/gpu-check pack
CLONE=/tmp/decode-claims-build
rm -rf "$CLONE"
git clone -q "$ROOT" "$CLONE"
cd "$CLONE"
git apply "$ROOT/docs/perf/2026-12-08-s9/decode-claims.patch"
# shellcheck source=/dev/null
source scripts/lib.sh
hp_install_deps
hp_configure_release
cmake --build build -j"$(nproc)" --target bench_kernels kernels_gpu_tests
STAGE=/tmp/decode-claims-stage
rm -rf "$STAGE" && mkdir -p "$STAGE/decode-claims" "$ROOT/.device-branch"
cp build/bench/bench_kernels build/tests/kernels_gpu_tests "$STAGE/decode-claims/"
strip "$STAGE/decode-claims/"*
tar -cJf "$ROOT/.device-branch/decode-claims.tar.xz" -C "$STAGE" decode-claims
ls -la "$ROOT/.device-branch/decode-claims.tar.xz"
