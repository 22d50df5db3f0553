#!/bin/bash
# Select variants (session 2026-12-06b): tests, A/B, stamps, sanitizers.
OUT=$1
mkdir -p /tmp/x && tar -xJf .device-carry/lib.tar.xz -C /tmp/x && tar -xJf .device-carry/exp/exp2.tar.xz -C /tmp/x
export LD_LIBRARY_PATH=/tmp/x/.device/lib
E=/tmp/x; S=/usr/local/cuda/bin/compute-sanitizer
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/device.txt
t() { local name=$1; shift; local t0=$(date +%s); timeout "$@" > $OUT/$name.log 2>&1; echo "== $name rc=$? $(( $(date +%s) - t0 ))s: $(tail -n 3 $OUT/$name.log | tr '\n' ' ' | cut -c1-240)"; }
t base-tests 120 $E/base/sel_tests "[select]"
t SEAPLC-tests 120 $E/SEAPLC/sel_tests "[select]"
t SEAPL-tests 120 $E/SEAPL/sel_tests "[select]"
F='^BM_SelectAda|^BM_SelectTopB/batch:8/len:32768'
ab() { for v in base S SE SEA SEP SEAP SEAPL SEAPLC; do
  $E/$v/sel_bench --benchmark_filter="$F" --benchmark_min_time=0.1 2>&1 | grep '^BM_' | awk -v v=$v -v r=$1 '{print v, r, $1, $2, $3}'
done; }
ab 1 | tee $OUT/ab1.txt
summ() {
  awk '/^STAMP/ {s[$3]+=$4; n[$3]++; if ($4>m[$3]) m[$3]=$4} /^TIME/ {t0[$2]=$3; t1[$2]=$4}
   END { for (k=1;k<40;k++) if (n[k]) printf "stage %2d n=%2d mean=%6.0f max=%6d\n", k, n[k], s[k]/n[k], m[k];
     mn=1e30; mx=0; mn1=1e30; mx1=0; d=0; dm=0; c=0;
     for (b in t0) { if (t0[b]<mn) mn=t0[b]; if (t0[b]>mx) mx=t0[b]; if (t1[b]>mx1) mx1=t1[b]; if (t1[b]<mn1) mn1=t1[b]; d+=t1[b]-t0[b]; if (t1[b]-t0[b]>dm) dm=t1[b]-t0[b]; c++ }
     printf "ctas=%d start_spread_ns=%d end_spread_ns=%d span_ns=%d cta_mean_ns=%.0f cta_max_ns=%d\n", c, mx-mn, mx1-mn1, mx1-mn, d/c, dm }' $1
}
for v in basestamp SEAPLCstamp; do
  $E/$v/sel_bench --benchmark_filter='^BM_SelectAda/batch:8/len:32768' --benchmark_min_time=0.2 > $OUT/$v.txt 2>&1
  echo "== $v"; summ $OUT/$v.txt | tee $OUT/$v-summary.txt | paste -sd' ' | cut -c1-1500
done
t SEAPLC-memcheck 150 $S --tool memcheck --error-exitcode 3 --print-limit 20 $E/SEAPLC/sel_tests "[select][sanitize]"
t SEAPLC-racecheck 150 $S --tool racecheck --error-exitcode 3 --print-limit 20 $E/SEAPLC/sel_tests "[select][sanitize]"
ab 2 | tee $OUT/ab2.txt
for v in SE SEA SEP; do t $v-tests 100 $E/$v/sel_tests "[select]"; done
