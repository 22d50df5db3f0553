#!/bin/bash
# Seventh session: call1.sh cut to what the branch needs (device time ran short after failed
# starts): the split kernel's gpu cases, an A/B of two rounds, the sanitizers, the cluster probe.
#   run(command="bash docs/perf/2026-12-07-s7/call2.sh $OUT",
#       carry=[".device-carry/kernels.tar.xz", ".device-branch/select-split.tar.xz"])
OUT=$1
M=/tmp/next-main; mkdir -p $M
[[ -d $M/.device ]] || tar -xJf .device-carry/kernels.tar.xz -C $M || exit 1
export LD_LIBRARY_PATH=$M/.device/lib
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/device.txt
B=/tmp/branch; mkdir -p $B
tar -xJf .device-branch/select-split.tar.xz -C $B || exit 1
T=$B/select-split/kernels_gpu_tests
timeout 100 $T "[select]" 2>&1 | tail -12 | tee $OUT/split-tests.txt
timeout 120 scripts/gpu-check ab $OUT split '^BM_Select(Ada|AdaProtectTop|AdaCold|TopB)/' \
  $B/select-split/bench_kernels 2 2>&1 | tail -24
S=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck; do
  timeout 80 $S --tool $tool --error-exitcode 3 --print-limit 20 $T "[select][sanitize]" \
    >$OUT/split-$tool.log 2>&1; echo "$tool rc=$?"; tail -n 3 $OUT/split-$tool.log
done
nvcc -O2 -std=c++17 -arch=sm_90 -o /tmp/cluster_probe docs/perf/2026-12-07-s7/cluster_probe.cu &&
  timeout 30 /tmp/cluster_probe 2>&1 | tee $OUT/cluster_probe.txt
