#!/bin/bash
# For the next session: what this session's calls left undone (the split branch and push-hits
# were measured by call2.sh and c2-h100/commands.txt).
#   run(command="bash docs/perf/2026-12-07-s7/next-call.sh $OUT", kind="nvidia-h200",
#       carry=[".device-carry/kernels.tar.xz", ".device-branch/decode-stamps.tar.xz"])
# 1. On an H200: issue #18's figures (its targets name the H200, whose last figures predate
#    four decode and WindowScores changes and Select's hits by one barrier), then Compact's
#    gather floor, never measured there.
# 2. Decode stamps (branch decode-stamps): where each wave of decode blocks costs ~1.2 us.
OUT=$1
M=/tmp/next-main; mkdir -p $M
[[ -d $M/.device ]] || tar -xJf .device-carry/kernels.tar.xz -C $M || exit 1
export LD_LIBRARY_PATH=$M/.device/lib
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/device.txt
if grep -q H200 $OUT/device.txt; then
  mkdir -p $OUT/figures && cp $OUT/device.txt $OUT/figures/
  timeout 280 scripts/gpu-check figures $OUT/figures 2>&1 | tail -32
  G='^BM_(GatherFloor/batch:8/len:32768/token_major:(0|1)|CompactTo20Percent/batch:8/len:32768|CopyBandwidth)/'
  for r in 1 2; do
    timeout 60 $M/.device/bin/bench_kernels --benchmark_filter="$G" --benchmark_min_time=0.2 \
      --benchmark_counters_tabular=true 2>&1 | awk -v r=$r '/^BM_/ {print r, $0}'
  done | tee $OUT/gather_floor.txt
fi
bash docs/perf/2026-12-07-s6/stamps.sh $OUT
