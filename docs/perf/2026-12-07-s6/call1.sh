#!/bin/bash
# The sixth session's first call (pack of the commit that adds the *ColdL2 benchmarks):
#   run(command="bash docs/perf/2026-12-07-s6/call1.sh $OUT", carry=[".device-carry"])
# 1. Where head-wise decode's 2 us over uniform come from (the fifth session's next-call.sh,
#    splits 8 and 16 added): the uniform 20% cache at the head-wise cache's split counts and
#    the head-wise cache at uniform's, two alternating rounds, warm caches.
# 2. Compact's floor and the layout question: BM_GatherFloor in the pool's layout and a
#    token-major one, beside BM_CompactTo20Percent and BM_CopyBandwidth, two rounds.
# 3. Issue #18's figures (scripts/gpu-check figures), now with the decode comparisons also
#    taken with L2 emptied before every call on both sides (*ColdL2, sdpa*_cold).
OUT=$1
M=/tmp/next-main; mkdir -p $M
[[ -d $M/.device ]] || tar -xJf .device-carry/kernels.tar.xz -C $M || exit 1
export LD_LIBRARY_PATH=$M/.device/lib
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/device.txt
F='^BM_DecodeAttention(Uniform20|Headwise20)(Splits)?/batch:8/len:32768/(splits:(4|8|12|16)/)?manual_time'
for r in 1 2; do
  timeout 60 $M/.device/bin/bench_kernels --benchmark_filter="$F" --benchmark_min_time=0.2 2>&1 |
    awk -v r=$r '/^BM_/ {print r, $1, $2, $3}'
done | tee $OUT/headwise_splits.txt
G='^BM_(GatherFloor/batch:8/len:32768/token_major:(0|1)|CompactTo20Percent/batch:8/len:32768|CopyBandwidth)/'
for r in 1 2; do
  timeout 60 $M/.device/bin/bench_kernels --benchmark_filter="$G" --benchmark_min_time=0.2 \
    --benchmark_counters_tabular=true 2>&1 | awk -v r=$r '/^BM_/ {print r, $0}'
done | tee $OUT/gather_floor.txt
mkdir -p $OUT/figures && cp $OUT/device.txt $OUT/figures/
timeout 330 scripts/gpu-check figures $OUT/figures 2>&1 | tail -40
