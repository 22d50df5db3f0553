#!/bin/bash
# 2026-12-07 session 3, second call: compute-sanitizer on exp13's Compact (= branch land's Compact), then where the
# balanced division's time goes against even splits (main's decode, bench_kernels_main), full and head-wise.
OUT=$1
mkdir -p /tmp/x && tar -xJf .device-carry/exp/exp13.tar.xz -C /tmp/x
export LD_LIBRARY_PATH=/tmp/x/lib
B=/tmp/x/bin; S=/usr/local/cuda/bin/compute-sanitizer
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/device.txt
for tool in memcheck racecheck; do
  echo "== $tool compact (exp13)"; timeout 60 $S --tool $tool --error-exitcode 3 --print-limit 20 $B/kernels_gpu_tests "gpu::Compact*[sanitize]" 2>&1 | tail -2
done 2>&1 | tee -a $OUT/checks.txt
for r in 1 2; do
timeout 120 $B/bench_kernels_main --benchmark_filter='^BM_DecodeAttention(|Uniform20|Headwise20|Balanced|BalancedHeadwise20)/batch:(8/len:32768|1/len:131072)|^BM_DecodeAttentionSplits/batch:8/len:32768/splits:(4|12)|^BM_DecodeAttentionSplits/batch:1/len:131072/splits:(32|48)' --benchmark_min_time=0.2 2>&1 | grep '^BM_' | awk -v r=$r '{print r, $1, $2, $3}' | tee -a $OUT/decode.txt
done
