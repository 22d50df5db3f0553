#!/bin/bash
# The ninth session's call:
#   run(command="bash docs/perf/2026-12-08-s9/call.sh $OUT", kind="nvidia-h200",
#       carry=[".device-carry/kernels.tar.xz", ".device-branch/decode-claims.tar.xz"])
# In order of need, each step under its own time limit:
# 1. Branch decode-claims (16-bit and fp8 pages claim chunks): the DecodeAttention gpu cases
#    (the quick ones first, all of them after the A/B).
# 2. DecodeAttention A/B, two alternating rounds at 8x32K and 1x128K: main's pack; the
#    branch's claimed pass with the counters' memset each call ("claims",
#    HEADPAGE_BENCH_WORKSPACE_MEMSET=1); the same without it ("claims-zeroed": the workspace
#    zeroed once, DecodeAttentionArgs::workspace_zeroed); the branch's fixed ranges ("static",
#    DecodeAttentionArgs::deterministic, HEADPAGE_BENCH_DETERMINISTIC=1).
# 3. Compact with 1 (main's), 2 and 4 waves of fresh blocks, beside its gather floor.
# 4. Issue #18's figures from main's pack (SDPA and PyTorch's baselines beside them).
# 5. The other shapes, one round; split counts by hand, one round.
# 6. memcheck and racecheck on the branch's DecodeAttention [sanitize] cases.
OUT=$1
M=/tmp/s9-main; B=/tmp/s9-branch; mkdir -p $M $B
[[ -d $M/.device ]] || tar -xJf .device-carry/kernels.tar.xz -C $M || exit 1
[[ -d $B/decode-claims ]] || tar -xJf .device-branch/decode-claims.tar.xz -C $B || exit 1
export LD_LIBRARY_PATH=$M/.device/lib
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/device.txt
T=$B/decode-claims/kernels_gpu_tests
timeout 120 $T 'gpu::DecodeAttention*[sanitize],gpu::DecodeAttention'"'"'s claimed*,gpu::DecodeAttention equals ref on a 32K*' \
  2>&1 | tail -4 | tee $OUT/branch_tests_quick.txt
# bench BUILD FILTER MIN_TIME: one run of BUILD's bench_kernels, "build name us" lines.
bench() {
  local b=$1 bin=$B/decode-claims/bench_kernels envs=""
  [[ $b == main ]] && bin=$M/.device/bin/bench_kernels
  [[ $b == claims ]] && envs="HEADPAGE_BENCH_WORKSPACE_MEMSET=1"
  [[ $b == static ]] && envs="HEADPAGE_BENCH_DETERMINISTIC=1"
  env $envs timeout 90 $bin --benchmark_filter="$2" --benchmark_min_time=$3 \
    --benchmark_format=csv 2>/dev/null | awk -F, -v b=$b '/^"BM_/ {gsub("\"", "", $1); print b, $1, $3}'
}
F='^BM_(DecodeAttention|DecodeAttentionHeadwise20|DecodeAttentionUniform20|DecodeAttentionFp8|ReadDecodePages)/batch:(8/len:32768|1/len:131072)/'
for b in main claims claims-zeroed static; do bench $b "$F" 0.3 | sed "s/^/1 /"; done | tee $OUT/ab.txt
# 3. Compact with 1 (main's), 2 and 4 waves of fresh blocks (HEADPAGE_COMPACT_WAVES), beside its
#    gather floor, one round, between the A/B's two; its gpu cases at 2 and 4 waves.
C='^BM_(CompactTo20Percent/batch:8/len:32768|GatherFloor/batch:8/len:32768/token_major:0)/'
for r in 1; do
  for w in 1 2 4; do
    HEADPAGE_COMPACT_WAVES=$w timeout 60 $B/decode-claims/bench_kernels --benchmark_filter="$C" \
      --benchmark_min_time=0.3 --benchmark_format=csv 2>/dev/null \
      | awk -F, -v w=$w -v r=$r '/^"BM_/ {gsub("\"", "", $1); print r, "waves" w, $1, $3}'
  done
done | tee $OUT/compact_waves.txt
for w in 2 4; do
  HEADPAGE_COMPACT_WAVES=$w timeout 60 $T 'gpu::Compact*' 2>&1 | tail -2 | sed "s/^/waves$w /"
done | tee $OUT/compact_waves_tests.txt
for b in main claims claims-zeroed static; do bench $b "$F" 0.3 | sed "s/^/2 /"; done | tee -a $OUT/ab.txt
awk '{k=$3" "$2; s[k]+=$4; n[k]++} END {for (k in s) printf "%-80s %.2f\n", k, s[k]/n[k]}' $OUT/ab.txt \
  | sort | tee $OUT/ab_means.txt
timeout 200 $T 'gpu::DecodeAttention*' 2>&1 | tail -4 | tee $OUT/branch_tests.txt
mkdir -p $OUT/figures && cp $OUT/device.txt $OUT/figures/
timeout 240 scripts/gpu-check figures $OUT/figures 2>&1 | tail -34
O='^BM_((DecodeAttention|DecodeAttentionHeadwise20)/batch:(8/len:8192|32/len:4096|1/len:32768)/|DecodeAttentionServing|DecodeStepServing)'
S='^BM_DecodeAttention(Headwise20)?Splits/batch:(8/len:32768|1/len:131072)/'
for b in main claims-zeroed; do bench $b "$O" 0.2; bench $b "$S" 0.2; done | tee $OUT/others_splits.txt
CS=/usr/local/cuda/bin/compute-sanitizer
for tool in memcheck racecheck; do
  timeout 100 $CS --tool $tool --error-exitcode 9 $T 'gpu::DecodeAttention*[sanitize]' 2>&1 | tail -3 \
    | tee $OUT/branch_$tool.txt
done
