// SPDX-License-Identifier: Apache-2.0
#include "kernels/write_kv.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "core/kv_rows.h"
#include "core/status.h"
#include "kernels/gpu_status.h"
#include "kernels/validate_common.h"

namespace headpage {

absl::Status Validate(const WriteKVArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(ValidatePagedKV(args.cache, "WriteKV"));
  if (args.num_tokens < 0 || args.num_kv_heads <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("WriteKV: num_tokens ", args.num_tokens,
                                                   ", num_kv_heads ", args.num_kv_heads));
  }
  if (args.num_tokens > 0 && args.slot_stride < args.num_kv_heads) {
    return absl::InvalidArgumentError(absl::StrCat("WriteKV: slot_stride ", args.slot_stride,
                                                   " is below num_kv_heads ", args.num_kv_heads));
  }
  if (args.num_tokens > 0 && (args.keys == nullptr || args.values == nullptr ||
                              args.slot_mapping == nullptr || args.positions == nullptr)) {
    return absl::InvalidArgumentError("WriteKV: keys, values, slot_mapping or positions is null");
  }
  if (!IsKernelAligned(args.keys) || !IsKernelAligned(args.values)) {
    return absl::InvalidArgumentError(
        absl::StrCat("WriteKV: keys and values must be ", kKernelAlignment, "-byte aligned"));
  }
  return absl::OkStatus();
}

namespace ref {

absl::Status WriteKV(const WriteKVArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  const PagedKV& cache = args.cache;
  for (int32_t t = 0; t < args.num_tokens; ++t) {
    for (int32_t h = 0; h < args.num_kv_heads; ++h) {
      const int32_t slot = args.slot_mapping[static_cast<int64_t>(t) * args.slot_stride + h];
      if (slot < -1 || slot >= cache.num_slots()) {
        return absl::OutOfRangeError(absl::StrCat("WriteKV: slot of token ", t, ", head ", h, " = ",
                                                  slot, " is outside [-1, ", cache.num_slots(), ")"));
      }
    }
  }
  // fp8 pages quantize each row with a new scale (core/kv_rows.h StoreKvRow);
  // other pages take the row's bytes as they are.
  const size_t row_elements = static_cast<size_t>(cache.head_dim);
  const size_t row_bytes = row_elements * SizeOf(cache.dtype);
  const auto* keys = static_cast<const char*>(args.keys);
  const auto* values = static_cast<const char*>(args.values);
  std::vector<float> scratch(cache.fp8() ? row_elements : 0);
  for (int32_t t = 0; t < args.num_tokens; ++t) {
    for (int32_t h = 0; h < args.num_kv_heads; ++h) {
      const int32_t slot = args.slot_mapping[static_cast<int64_t>(t) * args.slot_stride + h];
      if (slot < 0) continue;
      const size_t src = (static_cast<size_t>(t) * args.num_kv_heads + h) * row_bytes;
      StoreKvRow(cache, slot, KvPart::kKey, keys + src, scratch.data());
      StoreKvRow(cache, slot, KvPart::kValue, values + src, scratch.data());
      cache.positions[slot] = args.positions[t];
    }
  }
  return absl::OkStatus();
}

}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace gpu {

absl::Status WriteKV(const WriteKVArgs& args, GpuStream stream) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  HEADPAGE_RETURN_IF_ERROR(ValidateGpuHeadDim(args.cache, "WriteKV"));
  if (args.num_tokens == 0) return absl::OkStatus();
  return LaunchStatus(internal::LaunchWriteKV(args, stream), "WriteKV", args.cache.dtype,
                      args.cache.head_dim);
}

}  // namespace gpu
#endif

}  // namespace headpage
