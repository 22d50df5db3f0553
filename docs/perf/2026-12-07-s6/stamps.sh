#!/bin/bash
# Branch decode-stamps' diagnostic (the sixth session's, not for main): every pass and merge
# block's start, end and SM on the global timer, uniform 20%, head-wise 20% and full 8x32K at
# several split counts; CSVs under OUT/stamps and stamps_summary.py's summary.
#   bash docs/perf/2026-12-07-s6/stamps.sh OUT   (with .device-branch/decode-stamps.tar.xz carried
#   and LD_LIBRARY_PATH set to main's pack's lib/)
OUT=$1
D=/tmp/stamps; mkdir -p $D $OUT/stamps
tar -xJf .device-branch/decode-stamps.tar.xz -C $D || exit 1
HEADPAGE_STAMPS_DIR=$OUT/stamps timeout 120 $D/decode-stamps/bench_kernels \
  --benchmark_filter='^BM_DecodeStamps' --benchmark_min_time=0.2 --benchmark_counters_tabular=true \
  2>&1 | grep -E '^BM_|^Bench' | tee $OUT/stamps.txt
python3 docs/perf/2026-12-07-s6/stamps_summary.py $OUT/stamps | tee $OUT/stamps_summary.txt
