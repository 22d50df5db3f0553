// SPDX-License-Identifier: Apache-2.0
// File: kernels/gpu_status.h
//
// Turns a launcher's LaunchResult into the Status the gpu:: functions return.
#ifndef HEADPAGE_KERNELS_GPU_STATUS_H_
#define HEADPAGE_KERNELS_GPU_STATUS_H_

#include "absl/status/status.h"
#include "core/dtype.h"
#include "kernels/gpu_launch.h"

namespace headpage {

// Unimplemented for a dtype or head_dim the op's dispatch does not compile in
// (Validate() normally catches these first; the dispatch switch is the last
// word), Internal with CUDA's own message for a failed launch.
[[nodiscard]] absl::Status LaunchStatus(const LaunchResult& result, const char* op, DType dtype,
                                        int32_t head_dim);

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_GPU_STATUS_H_
