#!/bin/bash
# The eighth session's second call: branch compact-fresh-first (Compact's fresh
# blocks ahead of the in-place ones where the caller says none is in place).
#   run(command="bash docs/perf/2026-12-07-s8/call2.sh $OUT", kind="nvidia-h200",
#       carry=[".device-carry/kernels.tar.xz", ".device-branch/compact-fresh-first.tar.xz",
#              ".device-branch/compact-lane-rows.tar.xz"])
# (lanes: the branch plus docs/perf/2026-12-07-s3-h100/c15/v1-lane-rows.patch, a warp's
# rows found 32 probes a step; its bench_kernels only.)
# 1. Compact against main's pack and lanes, alternating, two rounds, full-precision times (csv),
#    with the copy and the gather floor in every round.
# 2. The branch's Compact gpu cases, eviction_gpu_tests, memcheck and racecheck on
#    Compact's [sanitize] cases.
# 3. On an H200 only: call.sh (Select, issue #18's figures, gather floor, stamps).
OUT=$1
M=/tmp/s8-main B=/tmp/s8-branch; mkdir -p $M $B
[[ -d $M/.device ]] || tar -xJf .device-carry/kernels.tar.xz -C $M || exit 1
tar -xJf .device-branch/compact-fresh-first.tar.xz -C $B || exit 1
tar -xJf .device-branch/compact-lane-rows.tar.xz -C $B || exit 1
export LD_LIBRARY_PATH=$M/.device/lib
BR=$B/compact-fresh-first
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/device.txt
F='^BM_(Compact|CopyBandwidth|GatherFloor/batch:8/len:32768/token_major:0)'
for r in 1 2; do
  for build in main branch lanes; do
    bin=$M/.device/bin/bench_kernels; [[ $build == branch ]] && bin=$BR/bench_kernels
    [[ $build == lanes ]] && bin=$B/compact-lane-rows/bench_kernels
    timeout 60 $bin --benchmark_filter="$F" --benchmark_min_time=0.2 --benchmark_format=csv \
      2>/dev/null | awk -F, -v b=$build -v r=$r '/^"BM_/ {gsub(/"|\/manual_time/, "", $1); print b, r, $1, $3}'
  done
done | tee $OUT/ab_compact.txt
awk '{s[$3" "$1]+=$4; n[$3" "$1]++} END {for (k in s) printf "%-60s %.2f\n", k, s[k]/n[k]}' \
  $OUT/ab_compact.txt | sort | tee $OUT/ab_compact_means.txt
timeout 120 $BR/kernels_gpu_tests "gpu::Compact*" 2>&1 | tail -3 | tee $OUT/compact_tests.txt
S=compute-sanitizer; command -v $S >/dev/null || S=/usr/local/cuda/bin/compute-sanitizer
for tool in memcheck racecheck; do
  timeout 100 $S --tool $tool --error-exitcode 3 --print-limit 20 $BR/kernels_gpu_tests \
    "gpu::Compact*[sanitize]" > $OUT/sanitize-$tool.txt 2>&1; echo "$tool rc=$?"
  tail -n 3 $OUT/sanitize-$tool.txt
done
timeout 90 $BR/eviction_gpu_tests 2>&1 | tail -3 | tee $OUT/eviction_tests.txt
if grep -q H200 $OUT/device.txt; then mkdir -p $OUT/s8 && bash docs/perf/2026-12-07-s8/call.sh $OUT/s8; fi
