#!/bin/bash
# 2026-12-07: branch merge-and-rows (DecodeAttention merge in the pass + WindowScores whole-row copies)
# against main (b24fc52): gpu tests, sanitizers, A/B, then the branch's figures with PyTorch's baselines.
OUT=$1
mkdir -p /tmp/x && tar -xJf .device-carry/exp/exp8.tar.xz -C /tmp/x
export LD_LIBRARY_PATH=/tmp/x/lib
B=/tmp/x/bin; S=/usr/local/cuda/bin/compute-sanitizer
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/device.txt
mkdir -p $OUT/logs
T0=$(date +%s)
t() { local name=$1; shift; local t0=$(date +%s); timeout "$@" > $OUT/logs/$name.log 2>&1; echo "== $name rc=$? $(( $(date +%s) - t0 ))s: $(tail -n 3 $OUT/logs/$name.log | tr '\n' ' ' | cut -c1-220)"; }
t decode-tests 200 $B/kernels_gpu_tests "gpu::DecodeAttention*"
t window-tests 120 $B/kernels_gpu_tests "[window_scores]"
t racecheck-decode 90 $S --tool racecheck --error-exitcode 3 --print-limit 20 $B/kernels_gpu_tests "gpu::DecodeAttention equals ref: the sanitizer's subset"
t racecheck-window 60 $S --tool racecheck --error-exitcode 3 --print-limit 20 $B/kernels_gpu_tests "[window_scores][sanitize]"
t memcheck-decode 60 $S --tool memcheck --error-exitcode 3 --print-limit 20 $B/kernels_gpu_tests "gpu::DecodeAttention equals ref: the sanitizer's subset"
t memcheck-window 50 $S --tool memcheck --error-exitcode 3 --print-limit 20 $B/kernels_gpu_tests "[window_scores][sanitize]"
echo "tests done at $(( $(date +%s) - T0 ))s"
F='^BM_CopyBandwidth|^BM_DecodeAttention(Memset)?/|^BM_ReadDecodePages/batch:(8/len:32768|1/len:131072)/|^BM_DecodeAttentionHeadwise20/batch:(8/len:32768|1/len:131072)/|^BM_DecodeAttentionFp8/batch:8/len:32768/|^BM_DecodeAttentionBalanced/batch:(8/len:32768|1/len:131072)/waves:1/|^BM_DecodeAttentionServing/pool_gib:0/splits:0/|^BM_WindowScores/batch:(8/len:32768|1/len:131072)/'
for r in 1 2; do for v in bench_kernels_main bench_kernels; do
  extra=(); [[ $r == 2 && $v == bench_kernels ]] && extra=(--benchmark_out=$OUT/bench_kernels.json --benchmark_out_format=json)
  timeout 100 $B/$v --benchmark_filter="$F" --benchmark_min_time=0.2 "${extra[@]}" 2>&1 | grep '^BM_' | awk -v v=$v -v r=$r '{print v, r, $1, $2, $3}'
  echo "  round $r $v at $(( $(date +%s) - T0 ))s" >&2
done; done > $OUT/ab.txt
awk '{sub("/manual_time","",$3); k=$3; s[$1" "k]+=$4; n[$1" "k]++; keys[k]=1} END {for (k in keys) {printf "%-58s", k; split("bench_kernels_main bench_kernels", vs, " "); for (i=1;i<=2;i++) if (n[vs[i]" "k]) printf " %s=%.4f", (i==1?"main":"new"), s[vs[i]" "k]/n[vs[i]" "k]; printf "\n"}}' $OUT/ab.txt | sort
echo "ab done at $(( $(date +%s) - T0 ))s"
timeout 150 python3 bench/torch_baselines.py --out $OUT/torch_baselines.json > $OUT/logs/torch.log 2>&1
grep -E "sdpa|snapkv|copy|matmul" $OUT/logs/torch.log | head -20
python3 bench/kernel_report.py $OUT/bench_kernels.json $OUT/torch_baselines.json --device $OUT/device.txt > $OUT/report.md 2>&1
cat $OUT/report.md | head -40
echo "all done at $(( $(date +%s) - T0 ))s"
tar -czf $OUT/logs.tgz -C $OUT logs && rm -rf $OUT/logs
