// SPDX-License-Identifier: Apache-2.0
// File: kernels/scatter_args.h
//
// ScatterInt32 writes a list of (index, value) pairs into an int32 array: the
// one kernel that brings device-resident block tables up to date from what a
// step changed (new page ids, new lengths) after one packed upload. Plain C++:
// .cu files include it.
#ifndef HEADPAGE_KERNELS_SCATTER_ARGS_H_
#define HEADPAGE_KERNELS_SCATTER_ARGS_H_

#include <cstdint>

#include "kernels/gpu_launch.h"

namespace headpage {

struct ScatterInt32Args {
  int32_t* dst = nullptr;
  int64_t dst_size = 0;             // elements of dst
  const int32_t* pairs = nullptr;   // [count][2]: index into dst, then the value
  int32_t count = 0;                // pairs; later pairs win where indices repeat (ref), any (gpu)
};

namespace gpu::internal {
// scatter.cu; gpu::ScatterInt32 (scatter.h) validates, then calls it.
LaunchResult LaunchScatterInt32(const ScatterInt32Args& args, GpuStream stream);
}  // namespace gpu::internal

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_SCATTER_ARGS_H_
