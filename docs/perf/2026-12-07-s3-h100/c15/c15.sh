#!/bin/bash
# 2026-12-07 session 3: Compact slot (exp13's bench_kernels_slot, = land's Compact) against v1 (warp-found rows) and
# v2 (v1 + one wave, in-place rows first per block). Tests and sanitizers on v2's kernels_gpu_tests. On an H200,
# issue #18's figures from v2's bench_kernels.
OUT=$1
mkdir -p /tmp/x && tar -xJf .device-carry/exp/exp15.tar.xz -C /tmp/x
export LD_LIBRARY_PATH=/tmp/x/lib
B=/tmp/x/bin; S=/usr/local/cuda/bin/compute-sanitizer
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/device.txt
echo "== compact tests (v2)" >> $OUT/checks.txt; timeout 90 $B/kernels_gpu_tests "gpu::Compact*" 2>&1 | tail -2 | tee -a $OUT/checks.txt
ab() {  # ab ROUNDS FILTER FILE
  local vs="bench_kernels_slot bench_kernels_v1 bench_kernels_v2"
  for r in $(seq $1); do for v in $vs; do
    timeout 60 $B/$v --benchmark_filter="$2" --benchmark_min_time=0.2 2>&1 | grep '^BM_' | awk -v v=$v -v r=$r '{print v, r, $1, $2, $3}'
  done; done | tee -a $OUT/$3 > /dev/null
  awk '{sub("/manual_time","",$3); k=$3; s[$1" "k]+=$4; n[$1" "k]++; keys[k]=1} END {for (k in keys) {printf "%-52s", k; split("bench_kernels_slot bench_kernels_v1 bench_kernels_v2", vs, " "); split("slot v1 v2", names, " "); for (i=1;i<=3;i++) if (n[vs[i]" "k]) printf " %s=%.2f", names[i], s[vs[i]" "k]/n[vs[i]" "k]; printf "\n"}}' $OUT/$3 | sort
}
ab 3 '^BM_CopyBandwidth|^BM_Compact' ab_compact.txt
for tool in memcheck racecheck; do
  echo "== $tool compact (v2)"; timeout 60 $S --tool $tool --error-exitcode 3 --print-limit 20 $B/kernels_gpu_tests "gpu::Compact*[sanitize]" 2>&1 | tail -2
done 2>&1 | tee -a $OUT/checks.txt
echo "== all kernels_gpu_tests (v2)" >> $OUT/checks.txt; timeout 150 $B/kernels_gpu_tests 2>&1 | tail -2 | tee -a $OUT/checks.txt
if grep -q H200 $OUT/device.txt; then
  at="batch:(8/len:32768|1/len:131072)/"
  timeout 150 $B/bench_kernels_v2 --benchmark_repetitions=3 \
    --benchmark_filter="BM_CopyBandwidth|BM_(DecodeAttention|ReadDecodePages|DecodeAttentionHeadwise20|DecodeAttentionFp8|WindowScores|SelectAda|CompactTo20Percent)/$at" \
    --benchmark_out="$OUT/bench_kernels.json" --benchmark_out_format=json \
    --benchmark_counters_tabular=true 2>&1 | grep -v -E '_(mean|stddev|cv) ' > /tmp/bench_kernels.txt
  PYTHONUNBUFFERED=1 timeout 150 python3 bench/torch_baselines.py --out "$OUT/torch_baselines.json" > /tmp/torch_baselines.txt 2>&1
  python3 bench/kernel_report.py "$OUT/bench_kernels.json" "$OUT/torch_baselines.json" --device "$OUT/device.txt" | tee "$OUT/report.md"
fi
