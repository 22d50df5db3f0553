#!/bin/bash
# DecodeAttention with the merge in the pass (2026-12-07): new tests, sanitizers, A/B against head.
OUT=$1
mkdir -p /tmp/x && tar -xJf .device-carry/lib.tar.xz -C /tmp/x && tar -xJf .device-carry/exp/exp4.tar.xz -C /tmp/x
export LD_LIBRARY_PATH=/tmp/x/.device/lib
B=/tmp/x/bin; S=/usr/local/cuda/bin/compute-sanitizer
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/device.txt
mkdir -p $OUT/logs
t() { local name=$1; shift; local t0=$(date +%s); timeout "$@" > $OUT/logs/$name.log 2>&1; echo "== $name rc=$? $(( $(date +%s) - t0 ))s: $(tail -n 3 $OUT/logs/$name.log | tr '\n' ' ' | cut -c1-220)"; }
t decode-tests 240 $B/kernels_gpu_tests "gpu::DecodeAttention*"
t memcheck 150 $S --tool memcheck --error-exitcode 3 --print-limit 20 $B/kernels_gpu_tests "gpu::DecodeAttention equals ref: the sanitizer's subset"
t racecheck 150 $S --tool racecheck --error-exitcode 3 --print-limit 20 $B/kernels_gpu_tests "gpu::DecodeAttention equals ref: the sanitizer's subset"
#t runtime-tests 200 $B/runtime_gpu_tests
F='^BM_CopyBandwidth|^BM_DecodeAttention(Memset)?/|^BM_ReadDecodePages/batch:(8/len:32768|1/len:131072)/|^BM_DecodeAttentionHeadwise20/batch:(8/len:32768|1/len:131072)/|^BM_DecodeAttentionFp8/batch:8/len:32768/|^BM_DecodeAttentionBalanced/batch:(8/len:32768|1/len:131072)/waves:1/|^BM_DecodeAttentionServing/pool_gib:0/splits:0/'
for r in 1 2; do for v in bench_kernels_old bench_kernels; do
  $B/$v --benchmark_filter="$F" --benchmark_min_time=0.2 2>&1 | grep '^BM_' | awk -v v=$v -v r=$r '{print v, r, $1, $2, $3}'
done; done > $OUT/ab.txt
awk '{sub("/manual_time","",$3); k=$3; s[$1" "k]+=$4; n[$1" "k]++; keys[k]=1} END {for (k in keys) {printf "%-58s", k; split("bench_kernels_old bench_kernels", vs, " "); for (i=1;i<=2;i++) if (n[vs[i]" "k]) printf " %s=%.2f", (i==1?"old":"new"), s[vs[i]" "k]/n[vs[i]" "k]; printf "\n"}}' $OUT/ab.txt | sort
t torch 300 python3 bench/torch_baselines.py --out $OUT/torch_baselines.json
grep -E "sdpa|copy" $OUT/logs/torch.log
tar -czf $OUT/logs.tgz -C $OUT logs && rm -rf $OUT/logs
