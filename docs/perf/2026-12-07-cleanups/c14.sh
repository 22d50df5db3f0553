#!/bin/bash
# 2026-12-07 session 2: main's kernels (bench_kernels_main, 632c4bd's) against exp12 (compact-staged-chain +
# window-issue-once + select-load-once; bench_kernels) and exp13 (exp12 + compact-slot-derived;
# bench_kernels_slot), from the pack exp13.tar.xz (notes.txt says what it holds). Most important first; every
# step writes into $OUT as it goes.
OUT=$1
mkdir -p /tmp/x && tar -xJf .device-carry/exp/exp13.tar.xz -C /tmp/x
export LD_LIBRARY_PATH=/tmp/x/lib
B=/tmp/x/bin; S=/usr/local/cuda/bin/compute-sanitizer
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/device.txt
echo "== compact tests" >> $OUT/checks.txt; timeout 90 $B/kernels_gpu_tests "gpu::Compact*" 2>&1 | tail -2 | tee -a $OUT/checks.txt
# kernels_gpu_tests is built from the newest variant packed; an older one's tests, where packed, check its Compact
[[ -x $B/kernels_gpu_tests_exp12 ]] && { echo "== compact tests, exp12" >> $OUT/checks.txt; timeout 90 $B/kernels_gpu_tests_exp12 "gpu::Compact*" 2>&1 | tail -2 | tee -a $OUT/checks.txt; }
ab() {  # ab ROUNDS FILTER FILE: alternating rounds of main's bench_kernels, exp12's and (if packed)
        # bench_kernels_slot (exp12 + docs/perf/2026-12-07-compact-staged-chain/slot-derived.patch)
  local vs="bench_kernels_main bench_kernels"
  [[ -x $B/bench_kernels_slot ]] && vs="$vs bench_kernels_slot"
  for r in $(seq $1); do for v in $vs; do
    timeout 60 $B/$v --benchmark_filter="$2" --benchmark_min_time=0.2 2>&1 | grep '^BM_' | awk -v v=$v -v r=$r '{print v, r, $1, $2, $3}'
  done; done | tee -a $OUT/$3 > /dev/null
  awk '{sub("/manual_time","",$3); k=$3; s[$1" "k]+=$4; n[$1" "k]++; keys[k]=1} END {for (k in keys) {printf "%-58s", k; split("bench_kernels_main bench_kernels bench_kernels_slot", vs, " "); split("main exp12 slot", names, " "); for (i=1;i<=3;i++) if (n[vs[i]" "k]) printf " %s=%.2f", names[i], s[vs[i]" "k]/n[vs[i]" "k]; printf "\n"}}' $OUT/$3 | sort
}
ab 3 '^BM_CopyBandwidth|^BM_Compact' ab_compact.txt
echo "== window_scores tests" >> $OUT/checks.txt; timeout 90 $B/kernels_gpu_tests "[window_scores]" 2>&1 | tail -2 | tee -a $OUT/checks.txt
echo "== select tests" >> $OUT/checks.txt; timeout 90 $B/kernels_gpu_tests "[select]" 2>&1 | tail -2 | tee -a $OUT/checks.txt
for tool in memcheck racecheck; do
  echo "== $tool compact"; timeout 40 $S --tool $tool --error-exitcode 3 --print-limit 20 $B/kernels_gpu_tests "gpu::Compact equals ref::Compact, fresh and in place" 2>&1 | tail -2
done 2>&1 | tee -a $OUT/checks.txt
ab 2 '^BM_SelectAda/batch:(8/len:32768|1/len:131072)|^BM_SelectAdaUnaligned|^BM_SelectTopB/batch:8/len:32768|^BM_WindowScores/batch:(8/len:32768|1/len:131072)' ab_ws_select.txt
for tool in memcheck racecheck; do
  echo "== $tool select"; timeout 60 $S --tool $tool --error-exitcode 3 --print-limit 20 $B/kernels_gpu_tests "[select][sanitize]" 2>&1 | tail -2
  echo "== $tool window_scores"; timeout 60 $S --tool $tool --error-exitcode 3 --print-limit 20 $B/kernels_gpu_tests "[window_scores][sanitize]" 2>&1 | tail -2
done 2>&1 | tee -a $OUT/checks.txt
# head-wise 20% against uniform 20%, its split counts and the balanced division (main's decode code)
timeout 60 $B/bench_kernels_main --benchmark_filter='^BM_DecodeAttention(Headwise20|Uniform20|BalancedHeadwise20|Headwise20Splits)/batch:(8/len:32768|1/len:131072)' --benchmark_min_time=0.2 2>&1 | grep '^BM_' | awk '{print $1, $2, $3}' | tee $OUT/headwise.txt
if grep -q H200 $OUT/device.txt; then
  at="batch:(8/len:32768|1/len:131072)/"
  timeout 150 $B/bench_kernels --benchmark_repetitions=3 \
    --benchmark_filter="BM_CopyBandwidth|BM_(DecodeAttention|ReadDecodePages|DecodeAttentionHeadwise20|DecodeAttentionFp8|WindowScores|SelectAda|CompactTo20Percent)/$at" \
    --benchmark_out="$OUT/bench_kernels.json" --benchmark_out_format=json \
    --benchmark_counters_tabular=true 2>&1 | grep -v -E '_(mean|stddev|cv) ' > /tmp/bench_kernels.txt
  PYTHONUNBUFFERED=1 timeout 150 python3 bench/torch_baselines.py --out "$OUT/torch_baselines.json" > /tmp/torch_baselines.txt 2>&1
  python3 bench/kernel_report.py "$OUT/bench_kernels.json" "$OUT/torch_baselines.json" --device "$OUT/device.txt" | tee "$OUT/report.md"
fi
