#!/bin/bash
# Prepared 2026-12-07 (fourth session, which had no device time left), for the next session's first
# calls, back to back (the machine is given back after 30 s idle):
#   run(command="bash docs/perf/2026-12-07-s4/next-call.sh $OUT checks", carry=[".device-carry"])
#   run(command="bash docs/perf/2026-12-07-s4/next-call.sh $OUT ab", carry=[".device-carry"])
# .device-carry holds kernels.tar.xz (`scripts/gpu-check pack` of main at cfd93ad), and exp/pdlcheck.tar.xz
# and exp/wsrev.tar.xz: bin/bench_kernels and bin/kernels_gpu_tests of the branches decode-pdl-check
# (b0195a8) and window-scores-reversed (3237bcb), which use kernels.tar.xz's lib/. Each step writes into
# $OUT as it goes, so a call cut off at 600 s still returns what ran.
#   checks: main's kernels_gpu_tests (every case) and eviction_gpu_tests, then compute-sanitizer on
#     Select's and DecodeAttention's subsets: Select launches through the shared LaunchWithAttributes
#     since daee6e3, a reported CUDA error is cleared since 8e34761 and fae08bc, and the CUDA-graph
#     replay case poisons the partials since 98d8494; none has run on a GPU. Then each branch's gpu
#     cases and sanitizers.
#   ab: decode-pdl-check against main (BM_DecodeAttentionChecked and BM_DecodeAttention: a checked
#     call's pass launched under the tail of the tables' check), window-scores-reversed against main
#     (pass 3 takes its tasks in the reverse of pass 1's order, so that its first blocks read from L2 the
#     keys pass 1 read last), three alternating rounds each; bench_flashinfer (main's kernels beside
#     FlashInfer 0.7.4's tensor-core decode, exp/flashinfer.tar.xz), two rounds; then
#     ../2026-12-07-s3-h100/c20-next.sh (Nsight Compute: the full cache's split sweep, head-wise against
#     uniform 20% with warm caches).
# The serving engine's GPU tests (the merge's overlapped launch captured in torch's CUDA graphs) are a
# third call. Its pack (pack-serving of the same commit: serving.tar.xz, site.tar.xz) waits in
# .device-serving-carry/, apart, since the working tree (46 MiB) and both packs together pass the
# device tool's 64 MiB:
#   run(command="mkdir -p .device-carry && cp .device-serving-carry/*.tar.xz .device-carry/ &&
#       scripts/gpu-check serving $OUT", carry=[".device-serving-carry"])
OUT=$1; PHASE=${2:-checks}
M=/tmp/next-main; P=/tmp/next-pdl; W=/tmp/next-wsrev
mkdir -p $M $P $W
[[ -d $M/.device ]] || tar -xJf .device-carry/kernels.tar.xz -C $M || exit 1
[[ -d $P/bin ]] || tar -xJf .device-carry/exp/pdlcheck.tar.xz -C $P || exit 1
[[ -d $W/bin ]] || tar -xJf .device-carry/exp/wsrev.tar.xz -C $W || exit 1
F_BIN=/tmp/next-flashinfer/bin; mkdir -p /tmp/next-flashinfer
[[ -d $F_BIN ]] || tar -xJf .device-carry/exp/flashinfer.tar.xz -C /tmp/next-flashinfer || exit 1
export LD_LIBRARY_PATH=$M/.device/lib
MB=$M/.device/bin; S=/usr/local/cuda/bin/compute-sanitizer
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/device.txt

sanitize() {  # sanitize BINARY SUBSET...: memcheck and racecheck on each subset
  local binary=$1; shift
  for tool in memcheck racecheck; do for subset in "$@"; do
    echo "== $tool $subset"
    timeout 120 $S --tool $tool --error-exitcode 3 --print-limit 20 $binary "$subset" 2>&1 | tail -2
  done; done
}

if [[ $PHASE == checks ]]; then
  { echo "== main: kernels_gpu_tests"; timeout 240 $MB/kernels_gpu_tests 2>&1 | tail -3
    echo "== main: eviction_gpu_tests"; timeout 120 $MB/eviction_gpu_tests 2>&1 | tail -3
  } | tee $OUT/tests.txt
  sanitize $MB/kernels_gpu_tests "[select][sanitize]" "gpu::DecodeAttention*[sanitize]" | tee $OUT/sanitize.txt
  { echo "== decode-pdl-check: DecodeAttention gpu cases"
    timeout 150 $P/bin/kernels_gpu_tests "gpu::DecodeAttention*" 2>&1 | tail -2
    sanitize $P/bin/kernels_gpu_tests "gpu::DecodeAttention checks its tables on the device as ref does*"
    echo "== window-scores-reversed: WindowScores gpu cases"
    timeout 150 $W/bin/kernels_gpu_tests "[window_scores]" 2>&1 | tail -2
    sanitize $W/bin/kernels_gpu_tests "[window_scores][sanitize]"
  } | tee $OUT/branch-tests.txt
else
  scripts/gpu-check ab $OUT pdlcheck \
    '^BM_DecodeAttention(Checked|)/batch:(8/len:32768|1/len:131072|1/len:32768|8/len:8192)/' \
    $P/bin/bench_kernels
  scripts/gpu-check ab $OUT wsrev '^BM_WindowScores(WarpMma|)/batch:(8/len:32768|1/len:131072|8/len:8192)/' \
    $W/bin/bench_kernels
  # FlashInfer 0.7.4's tensor-core decode against the kernels as they are now: the page's only side by
  # side ran on an H200 on 2026-12-04, before the pass took tokens as the tiles' rows.
  F='^BM_(HeadpageDecode(Headwise20)?|FlashInferTensorCore(Headwise20|Headwise|DenseHND))/batch:(8/len:32768|1/len:131072)/'
  for r in 1 2; do
    timeout 150 $F_BIN/bench_flashinfer --benchmark_filter="$F" --benchmark_min_time=0.2 \
      --benchmark_counters_tabular=true 2>&1 | grep -E '^BM_|^Benchmark' | awk -v r=$r '{print r, $0}'
  done | tee $OUT/flashinfer.txt
  B=$MB bash docs/perf/2026-12-07-s3-h100/c20-next.sh $OUT
  # On an H200, issue #18's figures of main's kernels (the last H200 figures predate four changes).
  if grep -q H200 $OUT/device.txt; then
    mkdir -p $OUT/figures && cp $OUT/device.txt $OUT/figures/
    timeout 240 scripts/gpu-check figures $OUT/figures 2>&1 | tail -30
  fi
fi
