#!/bin/bash
# For the next session's first call (prepared 2026-12-07, fifth session, whose device time
# ran out). Pack first: `scripts/gpu-check pack` at the commit that has
# BM_DecodeAttentionUniform20Splits, then
#   run(command="bash docs/perf/2026-12-07-s5/next-call.sh $OUT", carry=[".device-carry"])
# 1. Where head-wise decode's 2 us over uniform come from: the uniform 20% cache forced to the
#    head-wise cache's 12 splits, beside its own 4, and the head-wise cache at both, in three
#    alternating rounds (warm caches, as the benchmark leaves them). If uniform at 12 loses the
#    same 2 us, the split count is the cause; if not, the lengths are.
# 2. On an H200, issue #18's figures (the H200's last predate L2's prefetch hint, the whole-row
#    copies and the reversed pass 3 of WindowScores, and the merge under the pass's tail).
OUT=$1
M=/tmp/next-main; mkdir -p $M
[[ -d $M/.device ]] || tar -xJf .device-carry/kernels.tar.xz -C $M || exit 1
export LD_LIBRARY_PATH=$M/.device/lib
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/device.txt
F='^BM_DecodeAttention(Uniform20|Headwise20)(Splits)?/batch:8/len:32768/(splits:(4|12)/)?manual_time'
for r in 1 2 3; do
  timeout 90 $M/.device/bin/bench_kernels --benchmark_filter="$F" --benchmark_min_time=0.3 2>&1 |
    awk -v r=$r '/^BM_/ {print r, $1, $2, $3}'
done | tee $OUT/headwise_splits.txt
if grep -q H200 $OUT/device.txt; then
  mkdir -p $OUT/figures && cp $OUT/device.txt $OUT/figures/
  timeout 300 scripts/gpu-check figures $OUT/figures 2>&1 | tail -30
fi
