#!/bin/bash
# 2026-12-07, fifth session, second call: main after the two branches the first calls
# measured were merged (c8881e5: a checked DecodeAttention's pass launched under the tail
# of the tables' check; 9912573: WindowScores' pass 3 in the reverse of pass 1's order).
# The branches' own gpu cases had not run; these run on main's pack (`scripts/gpu-check
# pack` and pack-serving of the same commit):
#   run(command="bash docs/perf/2026-12-07-s5/call2.sh $OUT",
#       carry=[".device-carry/kernels.tar.xz", ".device-serving-carry"])
OUT=$1
T0=$SECONDS
left() { echo $((300 - (SECONDS - T0))); }
mkdir -p .device-carry && cp .device-serving-carry/*.tar.xz .device-carry/ || exit 1
M=/tmp/s5-main; mkdir -p $M
tar -xJf .device-carry/kernels.tar.xz -C $M || exit 1
MB=$M/.device/bin; S=/usr/local/cuda/bin/compute-sanitizer
export LD_LIBRARY_PATH=$M/.device/lib
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/device.txt
{ echo "== kernels_gpu_tests"; timeout 200 $MB/kernels_gpu_tests 2>&1 | tail -3
  echo "== eviction_gpu_tests"; timeout 90 $MB/eviction_gpu_tests 2>&1 | tail -3
  echo "== t=$((SECONDS - T0)) s"
} | tee $OUT/tests.txt
{ for spec in "memcheck [window_scores][sanitize]" "racecheck [window_scores][sanitize]" \
              "memcheck gpu::DecodeAttention*[sanitize]" \
              "memcheck gpu::DecodeAttention checks its tables on the device as ref does*" \
              "racecheck gpu::DecodeAttention checks its tables on the device as ref does*"; do
    tool=${spec%% *}; subset=${spec#* }
    echo "== $tool $subset"
    timeout 60 $S --tool $tool --error-exitcode 3 --print-limit 20 $MB/kernels_gpu_tests "$subset" 2>&1 | tail -2
  done
  echo "== t=$((SECONDS - T0)) s"
} | tee $OUT/sanitize.txt
# The two changes' benchmarks once, on main's pack (their A/Bs ran in the first session call).
timeout 60 $MB/bench_kernels --benchmark_filter='^BM_(WindowScores|DecodeAttentionChecked)/batch:(8/len:32768|1/len:131072|8/len:8192|1/len:32768)/' \
  --benchmark_min_time=0.2 2>&1 | grep -E '^BM_' | tee $OUT/bench.txt
echo "== serving tests, $(left) s left" | tee $OUT/serving.txt
set -o pipefail
timeout $(( $(left) - 10 )) scripts/gpu-check serving $OUT/serving 2>&1 | tee -a $OUT/serving.txt
echo "== rc=$? t=$((SECONDS - T0)) s" | tee -a $OUT/serving.txt
