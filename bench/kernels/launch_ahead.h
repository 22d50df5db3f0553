// SPDX-License-Identifier: Apache-2.0
// File: bench/kernels/launch_ahead.h
//
// A kernel that holds a stream for a while, queued before a timed region's
// start event, so that the host has queued the region's launches before the
// GPU reaches it: the events then time the GPU's work alone, not the host's
// launch latency (the way nvbench times kernels). gpu_bench_util.h's
// TimeWithEvents queues one per iteration, and, for a cold-L2 benchmark, a
// read of a buffer larger than L2 before it.
#ifndef HEADPAGE_BENCH_KERNELS_LAUNCH_AHEAD_H_
#define HEADPAGE_BENCH_KERNELS_LAUNCH_AHEAD_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace headpage::bench {

// Queues on `stream` one thread that spins for `nanoseconds` of the GPU's
// global timer.
cudaError_t HoldStream(int64_t nanoseconds, cudaStream_t stream);

// Queues on `stream` a read of a 256 MiB buffer (allocated on the first call,
// on the current device), so that L2 (50-60 MiB on Hopper) holds its lines and
// nothing of what the GPU read or wrote before. It reads and does not write,
// so the lines it leaves are clean: the timed work after it pays no
// write-backs for them, only for its own writes.
cudaError_t EvictL2(cudaStream_t stream);

}  // namespace headpage::bench

#endif  // HEADPAGE_BENCH_KERNELS_LAUNCH_AHEAD_H_
