// SPDX-License-Identifier: Apache-2.0
#include "kernels/gpu_status.h"

#include "absl/strings/str_cat.h"

namespace headpage {

absl::Status LaunchStatus(const LaunchResult& result, const char* op, DType dtype,
                          int32_t head_dim) {
  switch (result.kind) {
    case LaunchResult::Kind::kOk:
      return absl::OkStatus();
    case LaunchResult::Kind::kUnsupportedDType:
      return absl::UnimplementedError(
          absl::StrCat(op, ": dtype ", DTypeName(dtype), " is not compiled into the CUDA kernel"));
    case LaunchResult::Kind::kUnsupportedHeadDim:
      return absl::UnimplementedError(
          absl::StrCat(op, ": head_dim ", head_dim, " is not compiled into the CUDA kernel"));
    case LaunchResult::Kind::kCudaError:
      return absl::InternalError(absl::StrCat(op, ": CUDA error ", result.cuda_error, " (",
                                              result.cuda_message ? result.cuda_message : "?",
                                              ")"));
  }
  return absl::InternalError(absl::StrCat(op, ": unknown launch result"));
}

}  // namespace headpage
