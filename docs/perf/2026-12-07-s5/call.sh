#!/bin/bash
# 2026-12-07, fifth session. Device machines were scarce (five starts failed, each
# costing 90-180 s of the 30 minutes), so the fourth session's three prepared calls
# became one, most valuable first, each step writing into $OUT as it goes:
#   run(command="bash docs/perf/2026-12-07-s5/call.sh $OUT",
#       carry=[".device-carry/kernels.tar.xz", ".device-serving-carry"])
#   1. main's kernels_gpu_tests and eviction_gpu_tests (cfd93ad's pack: daee6e3's shared
#      LaunchWithAttributes, 8e34761's and fae08bc's cleared errors have not run on a GPU);
#   2. compute-sanitizer memcheck on Select's and DecodeAttention's sanitize subsets,
#      racecheck on Select's;
#   3. the serving engine's GPU tests (49f1628's pack: the refusal of a policy the GPU does
#      not run, the merge's overlapped launch inside torch's CUDA graphs);
#   4. on an H200, with time left, issue #18's figures.
OUT=$1
T0=$SECONDS
left() { echo $((560 - (SECONDS - T0))); }
mkdir -p .device-carry && cp .device-serving-carry/*.tar.xz .device-carry/ || exit 1
M=/tmp/s5-main; mkdir -p $M
tar -xJf .device-carry/kernels.tar.xz -C $M || exit 1
MB=$M/.device/bin; S=/usr/local/cuda/bin/compute-sanitizer
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/device.txt
{ echo "== main: kernels_gpu_tests"; LD_LIBRARY_PATH=$M/.device/lib timeout 200 $MB/kernels_gpu_tests 2>&1 | tail -3
  echo "== main: eviction_gpu_tests"; LD_LIBRARY_PATH=$M/.device/lib timeout 90 $MB/eviction_gpu_tests 2>&1 | tail -3
  echo "== t=$((SECONDS - T0)) s"
} | tee $OUT/tests.txt
{ for spec in "memcheck [select][sanitize]" "racecheck [select][sanitize]" "memcheck gpu::DecodeAttention*[sanitize]"; do
    set -- $spec
    echo "== $1 $2"
    LD_LIBRARY_PATH=$M/.device/lib timeout 75 $S --tool $1 --error-exitcode 3 --print-limit 20 \
      $MB/kernels_gpu_tests "$2" 2>&1 | tail -2
  done
  echo "== t=$((SECONDS - T0)) s"
} | tee $OUT/sanitize.txt
echo "== serving tests, $(left) s left" | tee $OUT/serving.txt
set -o pipefail
timeout $(( $(left) - 20 )) scripts/gpu-check serving $OUT/serving 2>&1 | tee -a $OUT/serving.txt
echo "== t=$((SECONDS - T0)) s" | tee -a $OUT/serving.txt
if grep -q H200 $OUT/device.txt && (( $(left) > 200 )); then
  mkdir -p $OUT/figures && cp $OUT/device.txt $OUT/figures/
  timeout $(( $(left) - 10 )) scripts/gpu-check figures $OUT/figures 2>&1 | tail -30
fi
