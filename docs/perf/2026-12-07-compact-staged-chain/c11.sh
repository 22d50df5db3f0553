#!/bin/bash
# 2026-12-07: Compact with the next slab's index chain resolved a step per group (branch compact-staged-chain)
# against main (632c4bd): the Compact gpu cases, memcheck and racecheck on the first, A/B of the Compact benchmarks.
OUT=$1
mkdir -p /tmp/x && tar -xJf .device-carry/exp/exp11.tar.xz -C /tmp/x
export LD_LIBRARY_PATH=/tmp/x/lib
B=/tmp/x/bin; S=/usr/local/cuda/bin/compute-sanitizer
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/device.txt
timeout 60 $B/kernels_gpu_tests "gpu::Compact*" 2>&1 | tail -2
for tool in memcheck racecheck; do timeout 40 $S --tool $tool --error-exitcode 3 --print-limit 20 $B/kernels_gpu_tests "gpu::Compact equals ref::Compact, fresh and in place" 2>&1 | tail -2; done
F='^BM_CopyBandwidth|^BM_Compact'
for r in 1 2 3; do for v in bench_kernels_main bench_kernels; do
  timeout 30 $B/$v --benchmark_filter="$F" --benchmark_min_time=0.2 2>&1 | grep '^BM_' | awk -v v=$v -v r=$r '{print v, r, $1, $2, $3}'
done; done > $OUT/ab.txt
awk '{sub("/manual_time","",$3); k=$3; s[$1" "k]+=$4; n[$1" "k]++; keys[k]=1} END {for (k in keys) {printf "%-50s", k; split("bench_kernels_main bench_kernels", vs, " "); for (i=1;i<=2;i++) if (n[vs[i]" "k]) printf " %s=%.2f", (i==1?"main":"new"), s[vs[i]" "k]/n[vs[i]" "k]; printf "\n"}}' $OUT/ab.txt | sort
