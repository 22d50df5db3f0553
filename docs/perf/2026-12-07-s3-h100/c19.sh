#!/bin/bash
# 2026-12-07 session 3, fifth call: the decode pass launched under the tail of the tables' check (decode-pdl-check)
# against main (fb37c31).
OUT=$1
mkdir -p /tmp/x && tar -xJf .device-carry/exp/pdlcheck.tar.xz -C /tmp/x
export LD_LIBRARY_PATH=/tmp/x/lib
B=/tmp/x/bin
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/device.txt
echo "== decode tests" >> $OUT/checks.txt; timeout 100 $B/kernels_gpu_tests "gpu::DecodeAttention*" 2>&1 | tail -2 | tee -a $OUT/checks.txt
F='^BM_DecodeAttention(Checked|)/batch:(8/len:32768|1/len:131072|1/len:32768)/'
for r in 1 2; do for v in bench_kernels_main bench_kernels; do
  timeout 40 $B/$v --benchmark_filter="$F" --benchmark_min_time=0.2 2>&1 | grep '^BM_' | awk -v v=$v -v r=$r '{print v, r, $1, $2, $3}'
done; done | tee -a $OUT/ab.txt
