#!/bin/bash
# For a later session (not run): where the one-wave tail and the head-wise gap go, with main's bench_kernels.
# 1. The full 8x32K cache at 4, 8, 12, 16 and 32 even splits: per-SM active cycles (average against maximum)
#    and DRAM throughput of the pass, to weigh the tail against the blocks' restarts.
# 2. Head-wise 20% against uniform 20% at 8x32K with ncu's cache control off (--cache-control none), as the
#    benchmark runs them: the benchmark's gap (2.5-3 us) is larger than the kernels' with flushed caches (1 us).
# Usage, from a pack whose bin/ holds bench_kernels: bash c20-next.sh $OUT
OUT=$1; B=${B:-/tmp/x/bin}
M=gpu__time_duration.sum,sm__cycles_active.avg,sm__cycles_active.max,sm__cycles_active.min,dram__throughput.avg.pct_of_peak_sustained_elapsed,launch__grid_size
for s in 4 8 12 16 32; do
  echo "== full 8x32K, $s splits"
  timeout 60 /usr/local/cuda/bin/ncu --clock-control none --kernel-name regex:'MmaKernel|MergeKernel' --launch-skip 40 \
    --launch-count 2 --metrics $M $B/bench_kernels --benchmark_filter="^BM_DecodeAttentionSplits/batch:8/len:32768/splits:$s/" \
    --benchmark_min_time=0.05 2>&1 | grep -E '^\s+[a-z_]+__|^  [A-Za-z].*Kernel' | cut -c1-160
done 2>&1 | tee $OUT/ncu_splits.txt
for b in DecodeAttentionUniform20 DecodeAttentionHeadwise20; do
  echo "== $b 8x32K, caches as the benchmark leaves them"
  timeout 60 /usr/local/cuda/bin/ncu --clock-control none --cache-control none --kernel-name regex:'MmaKernel|MergeKernel' \
    --launch-skip 40 --launch-count 4 --metrics $M,lts__t_sector_hit_rate.pct $B/bench_kernels \
    --benchmark_filter="^BM_$b/batch:8/len:32768/" --benchmark_min_time=0.05 2>&1 | grep -E '^\s+[a-z_]+__|^  [A-Za-z].*Kernel' | cut -c1-160
done 2>&1 | tee $OUT/ncu_headwise_warm.txt
