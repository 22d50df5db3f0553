#!/bin/bash
# Prepared 2026-12-07 (fourth session, which had no device time left), for the next session's first call:
#   run(command="bash docs/perf/2026-12-07-s4/next-call.sh $OUT", carry=[".device-carry"])
# .device-carry must hold kernels.tar.xz (`scripts/gpu-check pack` of main at 1a38752 or later) and
# exp/pdlcheck.tar.xz (bin/bench_kernels, bin/kernels_gpu_tests of the decode-pdl-check branch). Most
# important first; every step writes into $OUT as it goes. About 8 minutes on an H100.
#  1. main's kernels_gpu_tests (every case) and eviction_gpu_tests: Select launches through the shared
#     LaunchWithAttributes since daee6e3, and the CUDA-graph replay case poisons the partials (98d8494);
#     neither has run on a GPU.
#  2. compute-sanitizer memcheck and racecheck on Select's and DecodeAttention's sanitizer subsets.
#  3. decode-pdl-check against main: its DecodeAttention gpu cases, then BM_DecodeAttentionChecked and
#     BM_DecodeAttention in three alternating rounds (the checked call's pass under the check's tail).
#  4. c20-next.sh's Nsight Compute diagnostic (docs/perf/2026-12-07-s3-h100/), main's bench_kernels.
# The Python serving tests (the merge's overlapped launch inside torch's CUDA graphs) are a second call:
#   scripts/gpu-check pack-serving here, then run(command="scripts/gpu-check serving $OUT",
#   carry=[".device-carry"]).
OUT=$1
M=/tmp/next-main; P=/tmp/next-pdl
mkdir -p $M $P
tar -xJf .device-carry/kernels.tar.xz -C $M || exit 1
tar -xJf .device-carry/exp/pdlcheck.tar.xz -C $P || exit 1
export LD_LIBRARY_PATH=$M/.device/lib
MB=$M/.device/bin; PB=$P/bin; S=/usr/local/cuda/bin/compute-sanitizer
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/device.txt

{ echo "== main: kernels_gpu_tests"; timeout 240 $MB/kernels_gpu_tests 2>&1 | tail -3
  echo "== main: eviction_gpu_tests"; timeout 120 $MB/eviction_gpu_tests 2>&1 | tail -3
} | tee $OUT/tests.txt

for tool in memcheck racecheck; do
  for subset in "[select][sanitize]" "gpu::DecodeAttention*[sanitize]"; do
    echo "== $tool $subset"
    timeout 120 $S --tool $tool --error-exitcode 3 --print-limit 20 $MB/kernels_gpu_tests "$subset" 2>&1 | tail -2
  done
done | tee $OUT/sanitize.txt

{ echo "== decode-pdl-check: DecodeAttention gpu cases"; timeout 150 $PB/kernels_gpu_tests "gpu::DecodeAttention*" 2>&1 | tail -2
  for tool in memcheck racecheck; do
    echo "== decode-pdl-check: $tool, DecodeAttention's checked tables"
    timeout 90 $S --tool $tool --error-exitcode 3 --print-limit 20 $PB/kernels_gpu_tests \
      "gpu::DecodeAttention checks its tables on the device as ref does, writing nothing" 2>&1 | tail -2
  done
} | tee $OUT/pdlcheck-tests.txt
F='^BM_DecodeAttention(Checked|)/batch:(8/len:32768|1/len:131072|1/len:32768|8/len:8192)/'
for r in 1 2 3; do for v in $MB/bench_kernels $PB/bench_kernels; do
  timeout 60 $v --benchmark_filter="$F" --benchmark_min_time=0.2 2>&1 | grep '^BM_' |
    awk -v v=$([[ $v == $MB/* ]] && echo main || echo pdlcheck) -v r=$r '{print v, r, $1, $2, $3}'
done; done | tee $OUT/ab_pdlcheck.txt
awk '{sub("/manual_time","",$3); s[$3" "$1]+=$4; n[$3" "$1]++} END {for (k in s) printf "%-60s %.2f\n", k, s[k]/n[k]}' \
  $OUT/ab_pdlcheck.txt | sort | tee $OUT/ab_pdlcheck_means.txt

B=$MB bash docs/perf/2026-12-07-s3-h100/c20-next.sh $OUT
