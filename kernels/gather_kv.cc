// SPDX-License-Identifier: Apache-2.0
#include "kernels/gather_kv.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/kv_rows.h"
#include "core/status.h"
#include "kernels/validate_common.h"

namespace headpage {

absl::Status Validate(const GatherKVArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(ValidatePagedKV(args.cache, "GatherKV"));
  if (args.num_rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat("GatherKV: num_rows ", args.num_rows));
  }
  if (args.num_rows > 0 && (args.indptr == nullptr || args.lens == nullptr)) {
    return absl::InvalidArgumentError("GatherKV: indptr or lens is null");
  }
  if (args.num_page_ids < 0 || (args.num_page_ids > 0 && args.page_ids == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat("GatherKV: ", args.num_page_ids,
                                                   " page ids at ",
                                                   args.page_ids == nullptr ? "null" : "an array"));
  }
  return absl::OkStatus();
}

namespace ref {

absl::Status GatherKV(const GatherKVArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  const PagedKV& cache = args.cache;
  HEADPAGE_RETURN_IF_ERROR(
      CheckBlockTables(cache, args.num_rows, BlockTableOf(args), "GatherKV"));
  const size_t row_bytes = static_cast<size_t>(cache.head_dim) * SizeOf(cache.dtype);
  // A row out in the model dtype: as stored, or (fp8 pages) each element
  // dequantized and rounded to the model dtype.
  const auto gather_row = [&](int64_t slot, KvPart part, void* out, int64_t row) {
    char* dst = static_cast<char*>(out) + row * static_cast<int64_t>(row_bytes);
    if (!cache.fp8()) {
      std::memcpy(dst, KvRowBytes(cache, slot, part), row_bytes);
      return;
    }
    for (int32_t d = 0; d < cache.head_dim; ++d) {
      StoreFromFloat(dst, static_cast<size_t>(d), cache.dtype, LoadKvElement(cache, slot, part, d));
    }
  };
  int64_t out = 0;
  for (int32_t r = 0; r < args.num_rows; ++r) {
    const int32_t* pages = args.page_ids + args.indptr[r];
    for (int32_t i = 0; i < args.lens[r]; ++i, ++out) {
      const int64_t slot = SlotOf(pages, i, cache.page_size);
      if (args.keys != nullptr) gather_row(slot, KvPart::kKey, args.keys, out);
      if (args.values != nullptr) gather_row(slot, KvPart::kValue, args.values, out);
      if (args.positions != nullptr) args.positions[out] = cache.positions[slot];
    }
  }
  return absl::OkStatus();
}

}  // namespace ref
}  // namespace headpage
