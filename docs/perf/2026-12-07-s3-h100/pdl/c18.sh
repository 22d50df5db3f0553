#!/bin/bash
# 2026-12-07 session 3, fourth call: DecodeAttention's merge as a programmatic dependent launch of the pass (branch
# decode-pdl) against land: gpu cases, A/B, sanitizers, then issue #18's figures from the pdl binary.
OUT=$1
mkdir -p /tmp/x && tar -xJf .device-carry/exp/pdl.tar.xz -C /tmp/x
export LD_LIBRARY_PATH=/tmp/x/lib
B=/tmp/x/bin; S=/usr/local/cuda/bin/compute-sanitizer
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/device.txt
echo "== decode tests (pdl)" >> $OUT/checks.txt; timeout 150 $B/kernels_gpu_tests "gpu::DecodeAttention*" 2>&1 | tail -2 | tee -a $OUT/checks.txt
F='^BM_DecodeAttention(|Uniform20|Headwise20|Fp8)/batch:(8/len:32768|1/len:131072|1/len:32768|8/len:8192|32/len:4096)/|^BM_DecodeAttentionServing|^BM_DecodeAttentionSplits/batch:1/len:131072/splits:(32|99)/|^BM_DecodeAttentionBalancedHeadwise20/batch:8/len:32768/waves:1'
for r in 1 2 3; do for v in bench_kernels_land bench_kernels; do
  timeout 90 $B/$v --benchmark_filter="$F" --benchmark_min_time=0.2 2>&1 | grep '^BM_' | awk -v v=$v -v r=$r '{print v, r, $1, $2, $3}'
done; done | tee -a $OUT/ab_decode.txt > /dev/null
awk '{sub("/manual_time","",$3); k=$3; s[$1" "k]+=$4; n[$1" "k]++; keys[k]=1} END {for (k in keys) printf "%-64s land=%.2f pdl=%.2f\n", k, s["bench_kernels_land "k]/n["bench_kernels_land "k], s["bench_kernels "k]/n["bench_kernels "k]}' $OUT/ab_decode.txt | sort | tee $OUT/ab_decode_means.txt
for tool in memcheck racecheck; do
  echo "== $tool decode"; timeout 90 $S --tool $tool --error-exitcode 3 --print-limit 20 $B/kernels_gpu_tests "gpu::DecodeAttention*[sanitize]" 2>&1 | tail -2
done 2>&1 | tee -a $OUT/checks.txt
at="batch:(8/len:32768|1/len:131072)/"
timeout 150 $B/bench_kernels --benchmark_repetitions=3 \
  --benchmark_filter="BM_CopyBandwidth|BM_(DecodeAttention|ReadDecodePages|DecodeAttentionHeadwise20|DecodeAttentionUniform20|DecodeAttentionFp8|WindowScores|SelectAda|CompactTo20Percent)/$at" \
  --benchmark_out="$OUT/bench_kernels.json" --benchmark_out_format=json \
  --benchmark_counters_tabular=true 2>&1 | grep -v -E '_(mean|stddev|cv) ' > /tmp/bench_kernels.txt
PYTHONUNBUFFERED=1 timeout 150 python3 bench/torch_baselines.py --out "$OUT/torch_baselines.json" > /tmp/torch_baselines.txt 2>&1
python3 bench/kernel_report.py "$OUT/bench_kernels.json" "$OUT/torch_baselines.json" --device "$OUT/device.txt" | tee "$OUT/report.md"
