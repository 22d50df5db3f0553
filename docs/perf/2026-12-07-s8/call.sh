#!/bin/bash
# The eighth session's call:
#   run(command="bash docs/perf/2026-12-07-s8/call.sh $OUT", kind="nvidia-h200",
#       carry=[".device-carry/kernels.tar.xz", ".device-branch/decode-stamps.tar.xz"])
# 1. Select over uniform scores (the figure) and over trace-like ones
#    (BM_SelectAdaTraceLike), every shape, three interleaved repetitions.
# 2. On an H200 only: issue #18's figures, Compact's gather floor, and the decode
#    stamps (the H100's ran in this session's first call): ../2026-12-07-s7/next-call.sh.
OUT=$1
M=/tmp/s8-main; mkdir -p $M
[[ -d $M/.device ]] || tar -xJf .device-carry/kernels.tar.xz -C $M || exit 1
export LD_LIBRARY_PATH=$M/.device/lib
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/device.txt
timeout 150 $M/.device/bin/bench_kernels --benchmark_filter='^BM_SelectAda(TraceLike)?/' \
  --benchmark_repetitions=3 --benchmark_enable_random_interleaving=true \
  --benchmark_min_time=0.2 --benchmark_counters_tabular=true 2>&1 | grep -E '^BM_|^Bench' \
  | tee $OUT/select.txt
# The seventh session's next-call.sh has the H200's steps.
if grep -q H200 $OUT/device.txt; then bash docs/perf/2026-12-07-s7/next-call.sh $OUT; fi
