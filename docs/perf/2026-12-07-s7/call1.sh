#!/bin/bash
# Seventh session, first call.
#   run(command="bash docs/perf/2026-12-07-s7/call1.sh $OUT",
#       carry=[".device-carry/kernels.tar.xz", ".device-branch/select-split.tar.xz",
#              ".device-branch/decode-stamps.tar.xz"])
# (naming the files: .device-branch also holds select-push-hits.tar.xz, and all three with the
# repository would pass the 64 MiB a call carries)
# (.device-branch: select-split.tar.xz, branch select-split-streams' bench_kernels and
# kernels_gpu_tests, stripped; decode-stamps.tar.xz from the sixth session.)
# 1. Where 16-CTA clusters land (cluster_probe.cu).
# 2. Branch select-split-streams: kAda's streams split over 2-8 CTAs of 512 threads
#    (AdaSplitKernel, 8x8x32K on 128 multiprocessors): every Select gpu case, memcheck and
#    racecheck on [select][sanitize], then Select main against the branch, three rounds.
# 3. On an H200: issue #18's figures (its targets name the H200) and Compact's gather floor.
# 4. Decode stamps (branch decode-stamps).
OUT=$1
M=/tmp/next-main; mkdir -p $M
[[ -d $M/.device ]] || tar -xJf .device-carry/kernels.tar.xz -C $M || exit 1
export LD_LIBRARY_PATH=$M/.device/lib
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/device.txt
nvcc -O2 -std=c++17 -arch=sm_90 -o /tmp/cluster_probe docs/perf/2026-12-07-s7/cluster_probe.cu &&
  timeout 60 /tmp/cluster_probe 2>&1 | tee $OUT/cluster_probe.txt
B=/tmp/branch; mkdir -p $B
tar -xJf .device-branch/select-split.tar.xz -C $B || exit 1
T=$B/select-split/kernels_gpu_tests
timeout 150 $T "[select]" 2>&1 | tail -12 | tee $OUT/split-tests.txt
S=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck; do
  timeout 150 $S --tool $tool --error-exitcode 3 --print-limit 20 $T "[select][sanitize]" \
    >$OUT/split-$tool.log 2>&1; echo "$tool rc=$?"; tail -n 3 $OUT/split-$tool.log
done
timeout 240 scripts/gpu-check ab $OUT split '^BM_Select(Ada|AdaProtectTop|AdaCold|TopB)/' \
  $B/select-split/bench_kernels 3 2>&1 | tail -24
if grep -q H200 $OUT/device.txt && (( SECONDS < 250 )); then
  mkdir -p $OUT/figures && cp $OUT/device.txt $OUT/figures/
  timeout 280 scripts/gpu-check figures $OUT/figures 2>&1 | tail -32
  G='^BM_(GatherFloor/batch:8/len:32768/token_major:(0|1)|CompactTo20Percent/batch:8/len:32768|CopyBandwidth)/'
  for r in 1 2; do
    timeout 60 $M/.device/bin/bench_kernels --benchmark_filter="$G" --benchmark_min_time=0.2 \
      --benchmark_counters_tabular=true 2>&1 | awk -v r=$r '/^BM_/ {print r, $0}'
  done | tee $OUT/gather_floor.txt
fi
(( SECONDS < 470 )) || { echo "no time left for the stamps"; exit 0; }
D=/tmp/stamps; mkdir -p $D $OUT/stamps
tar -xJf .device-branch/decode-stamps.tar.xz -C $D || exit 1
HEADPAGE_STAMPS_DIR=$OUT/stamps timeout 120 $D/decode-stamps/bench_kernels \
  --benchmark_filter='^BM_DecodeStamps' --benchmark_min_time=0.2 --benchmark_counters_tabular=true \
  2>&1 | grep -E '^BM_|^Bench' | tee $OUT/stamps.txt
python3 docs/perf/2026-12-07-s6/stamps_summary.py $OUT/stamps | tee $OUT/stamps_summary.txt
