// SPDX-License-Identifier: Apache-2.0
#include "kernels/scatter.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace headpage {

absl::Status Validate(const ScatterInt32Args& args) {
  if (args.count < 0 || args.dst_size < 0) {
    return absl::InvalidArgumentError(absl::StrCat("ScatterInt32: count ", args.count,
                                                   " and dst_size ", args.dst_size, " must be >= 0"));
  }
  if (args.count > 0 && (args.dst == nullptr || args.pairs == nullptr)) {
    return absl::InvalidArgumentError("ScatterInt32: dst or pairs is null");
  }
  // The GPU reads a pair as one 8-byte vector.
  if (reinterpret_cast<uintptr_t>(args.pairs) % 8 != 0) {
    return absl::InvalidArgumentError("ScatterInt32: pairs must be 8-byte aligned");
  }
  return absl::OkStatus();
}

namespace ref {

absl::Status ScatterInt32(const ScatterInt32Args& args) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  for (int32_t i = 0; i < args.count; ++i) {
    const int32_t index = args.pairs[2 * i];
    if (index < 0 || index >= args.dst_size) {
      return absl::OutOfRangeError(absl::StrCat("ScatterInt32: pair ", i, "'s index ", index,
                                                " is outside [0, ", args.dst_size, ")"));
    }
  }
  for (int32_t i = 0; i < args.count; ++i) args.dst[args.pairs[2 * i]] = args.pairs[2 * i + 1];
  return absl::OkStatus();
}

}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace gpu {

absl::Status ScatterInt32(const ScatterInt32Args& args, GpuStream stream) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  if (args.count == 0) return absl::OkStatus();
  const LaunchResult result = internal::LaunchScatterInt32(args, stream);
  if (result.ok()) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("ScatterInt32: ", result.cuda_message));
}

}  // namespace gpu
#endif

}  // namespace headpage
