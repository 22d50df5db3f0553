// SPDX-License-Identifier: Apache-2.0
#include "kernels/gather_kv.h"

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
  const int64_t row_bytes = static_cast<int64_t>(cache.head_dim) * SizeOf(cache.dtype);
  // Rows out in the model dtype (fp8 pages' dequantized and rounded to it).
  const auto gather_row = [&](int64_t slot, KvPart part, void* out, int64_t row) {
    LoadKvRowInModelDtype(cache, slot, part, static_cast<char*>(out) + row * row_bytes);
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
