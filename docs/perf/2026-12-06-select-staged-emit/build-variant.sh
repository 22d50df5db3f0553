#!/bin/bash
# mk.sh NAME: build kernels lib in /work/main/build, link select-only bench and test into /tmp/exp2/NAME
set -e
N=$1; D=/tmp/exp2/$N; mkdir -p $D
cd /work/main/build
make -j2 headpage_kernels 2>&1 | grep -E "error|warning" | head -20 || true
make -j2 bench_kernels kernels_gpu_tests 2>&1 | grep -E "error" | head || true
L=$(sed -e 's/^.*-o bench_kernels//' bench/CMakeFiles/bench_kernels.dir/link.txt)
(cd bench && /usr/bin/c++ -O3 CMakeFiles/bench_kernels.dir/kernels/select_bench.cc.o CMakeFiles/bench_kernels.dir/kernels/launch_ahead.cu.o -o $D/sel_bench $L)
L2=$(sed -e 's/^.*-o kernels_gpu_tests//' tests/CMakeFiles/kernels_gpu_tests.dir/link.txt)
(cd tests && /usr/bin/c++ -O3 CMakeFiles/kernels_gpu_tests.dir/kernels/select_gpu_test.cc.o CMakeFiles/headpage_test_main.dir/testing/main.cc.o -o $D/sel_tests $L2)
strip $D/sel_bench $D/sel_tests
ls -la $D
