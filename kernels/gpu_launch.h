// SPDX-License-Identifier: Apache-2.0
// File: kernels/gpu_launch.h
//
// What the CUDA side of every op shares with its host wrapper. A .cu file may
// not include Abseil (DESIGN.md), so a launcher reports a plain LaunchResult and
// the op's .cc turns it into an absl::Status (gpu_status.h). Plain C++.
#ifndef HEADPAGE_KERNELS_GPU_LAUNCH_H_
#define HEADPAGE_KERNELS_GPU_LAUNCH_H_

#include <cstdint>

// cudaStream_t is `struct CUstream_st*`; naming the struct here lets headers
// that every build includes take a stream without the CUDA headers.
struct CUstream_st;

namespace headpage {

using GpuStream = CUstream_st*;  // a cudaStream_t; nullptr is the legacy default stream

struct LaunchResult {
  enum class Kind : uint8_t { kOk, kUnsupportedDType, kUnsupportedHeadDim, kCudaError };
  Kind kind = Kind::kOk;
  int cuda_error = 0;                  // the cudaError_t, for kCudaError
  const char* cuda_message = nullptr;  // cudaGetErrorString's static text, for kCudaError

  bool ok() const { return kind == Kind::kOk; }
};

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_GPU_LAUNCH_H_
