#!/bin/bash
# Select: emit staged with __syncwarp (E), + shifted sources (SE2), + warp walk (SEL).
OUT=$1
mkdir -p /tmp/x && tar -xJf .device-carry/lib.tar.xz -C /tmp/x && tar -xJf .device-carry/exp/exp2.tar.xz -C /tmp/x
export LD_LIBRARY_PATH=/tmp/x/.device/lib
E=/tmp/x; S=/usr/local/cuda/bin/compute-sanitizer
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/device.txt
mkdir -p $OUT/logs
t() { local name=$1; shift; local t0=$(date +%s); timeout "$@" > $OUT/logs/$name.log 2>&1; echo "== $name rc=$? $(( $(date +%s) - t0 ))s: $(tail -n 3 $OUT/logs/$name.log | tr '\n' ' ' | cut -c1-200)"; }
for v in base EB EBT E SE2 SEL; do t $v-tests 100 $E/$v/sel_tests "[select]"; done
for v in EBT EB; do
t $v-memcheck 150 $S --tool memcheck --error-exitcode 3 --print-limit 20 $E/$v/sel_tests "[select][sanitize]"
t $v-racecheck 150 $S --tool racecheck --error-exitcode 3 --print-limit 20 $E/$v/sel_tests "[select][sanitize]"
done
F='^BM_SelectAda|^BM_SelectTopB/batch:8/len:32768'
for r in 1 2; do for v in base E EB EBT SE2 SEL; do
  $E/$v/sel_bench --benchmark_filter="$F" --benchmark_min_time=0.1 2>&1 | grep '^BM_' | awk -v v=$v -v r=$r '{print v, r, $1, $2, $3}'
done; done > $OUT/ab.txt
awk '{sub("/manual_time","",$3); k=$3; v=$1; s[v" "k]+=$4; n[v" "k]++; keys[k]=1} END {for (k in keys) {printf "%-45s", k; split("base E EB EBT SE2 SEL", vs, " "); for (i=1;i<=6;i++) printf " %s=%.1f", vs[i], s[vs[i]" "k]/n[vs[i]" "k]; printf "\n"}}' $OUT/ab.txt | sort
summ() {
  awk '/^STAMP/ {s[$3]+=$4; n[$3]++; if ($4>m[$3]) m[$3]=$4} /^TIME/ {t0[$2]=$3; t1[$2]=$4}
   END { for (k=1;k<40;k++) if (n[k]) printf "%d:%.0f ", k, s[k]/n[k];
     mn=1e30; mx=0; mn1=1e30; mx1=0; d=0; dm=0; c=0;
     for (b in t0) { if (t0[b]<mn) mn=t0[b]; if (t0[b]>mx) mx=t0[b]; if (t1[b]>mx1) mx1=t1[b]; if (t1[b]<mn1) mn1=t1[b]; d+=t1[b]-t0[b]; if (t1[b]-t0[b]>dm) dm=t1[b]-t0[b]; c++ }
     printf "\nctas=%d start_spread_ns=%d end_spread_ns=%d span_ns=%d cta_mean_ns=%.0f cta_max_ns=%d\n", c, mx-mn, mx1-mn1, mx1-mn, d/c, dm }' $1
}
$E/Estamp/sel_bench --benchmark_filter='^BM_SelectAda/batch:8/len:32768' --benchmark_min_time=0.2 > $OUT/Estamp.txt 2>&1
echo "== Estamp"; summ $OUT/Estamp.txt
$E/EBstamp/sel_bench --benchmark_filter='^BM_SelectAda/batch:8/len:32768' --benchmark_min_time=0.2 > $OUT/EBstamp.txt 2>&1
echo "== EBstamp"; summ $OUT/EBstamp.txt
tar -czf $OUT/logs.tgz -C $OUT logs && rm -rf $OUT/logs
