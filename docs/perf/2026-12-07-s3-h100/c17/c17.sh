#!/bin/bash
# 2026-12-07 session 3, third call: branch land's binaries (land.tar.xz): every kernels gpu case, sanitizers on Compact
# and WindowScores, issue #18's figures (any device), then Nsight Compute on DecodeAttention's head-wise 20% against
# uniform 20% and the balanced division (per-SM active cycles: the tail).
OUT=$1
mkdir -p /tmp/x && tar -xJf .device-carry/exp/land.tar.xz -C /tmp/x
export LD_LIBRARY_PATH=/tmp/x/lib
B=/tmp/x/bin; S=/usr/local/cuda/bin/compute-sanitizer
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/device.txt
echo "== all kernels_gpu_tests (land)" >> $OUT/checks.txt; timeout 150 $B/kernels_gpu_tests 2>&1 | tail -2 | tee -a $OUT/checks.txt
for tool in memcheck racecheck; do
  echo "== $tool compact"; timeout 60 $S --tool $tool --error-exitcode 3 --print-limit 20 $B/kernels_gpu_tests "gpu::Compact*[sanitize]" 2>&1 | tail -2
  echo "== $tool window_scores"; timeout 60 $S --tool $tool --error-exitcode 3 --print-limit 20 $B/kernels_gpu_tests "[window_scores][sanitize]" 2>&1 | tail -2
done 2>&1 | tee -a $OUT/checks.txt
at="batch:(8/len:32768|1/len:131072)/"
timeout 150 $B/bench_kernels --benchmark_repetitions=3 \
  --benchmark_filter="BM_CopyBandwidth|BM_(DecodeAttention|ReadDecodePages|DecodeAttentionHeadwise20|DecodeAttentionUniform20|DecodeAttentionFp8|WindowScores|SelectAda|CompactTo20Percent)/$at" \
  --benchmark_out="$OUT/bench_kernels.json" --benchmark_out_format=json \
  --benchmark_counters_tabular=true 2>&1 | grep -v -E '_(mean|stddev|cv) ' > /tmp/bench_kernels.txt
PYTHONUNBUFFERED=1 timeout 150 python3 bench/torch_baselines.py --out "$OUT/torch_baselines.json" > /tmp/torch_baselines.txt 2>&1
python3 bench/kernel_report.py "$OUT/bench_kernels.json" "$OUT/torch_baselines.json" --device "$OUT/device.txt" | tee "$OUT/report.md"
M=gpu__time_duration.sum,sm__cycles_active.avg,sm__cycles_active.max,sm__cycles_active.min,sm__cycles_elapsed.max,dram__throughput.avg.pct_of_peak_sustained_elapsed,launch__grid_size
for b in 'DecodeAttentionUniform20/batch:8/len:32768' 'DecodeAttentionHeadwise20/batch:8/len:32768' \
         'DecodeAttentionHeadwise20Splits/batch:8/len:32768/splits:4' 'DecodeAttentionBalancedHeadwise20/batch:8/len:32768/waves:1' \
         'DecodeAttentionUniform20/batch:1/len:131072' 'DecodeAttentionHeadwise20/batch:1/len:131072'; do
  echo "== $b"
  timeout 60 /usr/local/cuda/bin/ncu --clock-control none --kernel-name regex:'MmaKernel|MergeKernel' --launch-skip 40 --launch-count 3 --metrics $M \
    $B/bench_kernels --benchmark_filter="^BM_$b/" --benchmark_min_time=0.05 2>&1 | grep -E '^\s+[a-z_]+__|^  [A-Za-z].*Kernel|==PROF==|ERR' | cut -c1-160
done 2>&1 | tee $OUT/ncu_decode.txt
