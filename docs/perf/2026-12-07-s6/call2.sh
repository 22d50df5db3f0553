#!/bin/bash
# The sixth session's second call, asked of an H200 (an H100 came): issue #18's figures (scripts/gpu-check figures),
# whose H200 figures predate four changes (L2's prefetch hint, WindowScores' whole-row copies
# and reversed pass 3, the merge under the pass's tail). WindowScores' targets name the H200.
OUT=$1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/device.txt
grep -q H200 $OUT/device.txt || echo "not an H200: the figures are the H100's again"
mkdir -p $OUT/figures && cp $OUT/device.txt $OUT/figures/
timeout 280 scripts/gpu-check figures $OUT/figures 2>&1 | tail -32
