#!/bin/bash
# For the next session's first call (prepared 2026-12-07, fifth session, whose device time
# ran out). Pack first: `scripts/gpu-check pack` at the commit that has
# BM_DecodeAttentionUniform20Splits, then
#   run(command="bash docs/perf/2026-12-07-s5/next-call.sh $OUT", carry=[".device-carry"])
# 1. Where head-wise decode's 2 us over uniform come from: the uniform 20% cache forced to the
#    head-wise cache's 12 splits, beside its own 4, and the head-wise cache at both, in three
#    alternating rounds (warm caches, as the benchmark leaves them). If uniform at 12 loses the
#    same 2 us, the split count is the cause; if not, the lengths are.
# 2. Compact's floor and the layout question: BM_GatherFloor (Compact's survivors moved by a bare
#    gather, a token a warp step) with the pool's layout (V rows half a page after K) and a
#    token-major one (V right after K), beside BM_CompactTo20Percent and BM_CopyBandwidth, three
#    rounds. token_major:1 well above token_major:0 would make K and V side by side worth a new
#    page layout; equal, and the layout is not what holds Compact below 0.85 of copy.
# 3. On an H200, issue #18's figures (the H200's last predate L2's prefetch hint, the whole-row
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
G='^BM_(GatherFloor/batch:8/len:32768/token_major:(0|1)|CompactTo20Percent/batch:8/len:32768|CopyBandwidth)/'
for r in 1 2 3; do
  timeout 90 $M/.device/bin/bench_kernels --benchmark_filter="$G" --benchmark_min_time=0.3 \
    --benchmark_counters_tabular=true 2>&1 | awk -v r=$r '/^BM_/ {print r, $0}'
done | tee $OUT/gather_floor.txt
if grep -q H200 $OUT/device.txt; then
  mkdir -p $OUT/figures && cp $OUT/device.txt $OUT/figures/
  timeout 300 scripts/gpu-check figures $OUT/figures 2>&1 | tail -30
fi
