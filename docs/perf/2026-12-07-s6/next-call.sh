#!/bin/bash
# For the next session's first call (prepared 2026-12-07, sixth session, whose device time
# ran out): branch select-push-hits (its bench_kernels and kernels_gpu_tests, built from that
# branch's commit, are in .device-branch/select-push-hits.tar.xz; main's pack of a64420b in
# .device-carry/).
#   run(command="bash docs/perf/2026-12-07-s6/next-call.sh $OUT",
#       carry=[".device-carry/kernels.tar.xz", ".device-branch"])
# (.device-branch also holds decode-stamps.tar.xz, branch decode-stamps' bench_kernels, for step 4.
# The repository's 48 MB, kernels.tar.xz's 5 MB and .device-branch's 10 MB just fit the 64 MiB a
# call carries; the wheels' site.tar.xz, for the serving runs only, stays behind.)
# 1. The branch's Select gpu cases against the CPU reference, then compute-sanitizer memcheck
#    and racecheck on [select][sanitize] (its cluster's hits are now remote atomics on every
#    peer's shared memory before one cluster barrier, where each CTA read its peers' counts
#    between two barriers).
# 2. Select, main against the branch, three alternating rounds (scripts/gpu-check ab).
#    (Steps 1-2 take about two minutes; step 3 about two and a half.)
OUT=$1
B=/tmp/branch; mkdir -p $B
tar -xJf .device-branch/select-push-hits.tar.xz -C $B || exit 1
M=/tmp/next-main; mkdir -p $M
[[ -d $M/.device ]] || tar -xJf .device-carry/kernels.tar.xz -C $M || exit 1
export LD_LIBRARY_PATH=$M/.device/lib
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/device.txt
T=$B/select-push-hits/kernels_gpu_tests
timeout 120 $T "[select]" 2>&1 | tail -3 | tee $OUT/branch-tests.txt
S=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck; do
  timeout 200 $S --tool $tool --error-exitcode 3 --print-limit 20 $T "[select][sanitize]" \
    >$OUT/branch-$tool.log 2>&1; echo "$tool rc=$?"; tail -n 3 $OUT/branch-$tool.log
done
timeout 200 scripts/gpu-check ab $OUT push-hits '^BM_Select(Ada|AdaProtectTop|AdaCold|TopB)/' \
  $B/select-push-hits/bench_kernels 3 2>&1 | tail -20
# 3. On an H200, issue #18's figures: its last H200 figures predate four changes (L2's
#    prefetch hint, WindowScores' whole-row copies and reversed pass 3, the merge under the
#    pass's tail), and WindowScores' targets and fp8's 1.8x (1.797x there) name the H200.
if grep -q H200 $OUT/device.txt; then
  mkdir -p $OUT/figures && cp $OUT/device.txt $OUT/figures/
  timeout 280 scripts/gpu-check figures $OUT/figures 2>&1 | tail -32
fi
# 4. Where each wave of decode blocks costs ~1.2 us (branch decode-stamps, a diagnostic only):
#    every pass and merge block's start, end and SM on the global timer, uniform 20%,
#    head-wise 20% and full 8x32K at several split counts; CSVs and a summary.
bash docs/perf/2026-12-07-s6/stamps.sh $OUT
