// SPDX-License-Identifier: Apache-2.0
// File: kernels/gather_kv_args.h
//
// GatherKV copies the tokens of some streams out of the pool into dense arrays,
// in slot order: what a policy scorer on the host reads (the eviction engine),
// and what attention tests compare against. Outputs are in the model dtype
// (cache.dtype) whatever the pages store: an fp8 page's element comes out
// dequantized (its byte's value times its row's scale) and rounded to it.
// Plain C++: .cu files include it.
#ifndef HEADPAGE_KERNELS_GATHER_KV_ARGS_H_
#define HEADPAGE_KERNELS_GATHER_KV_ARGS_H_

#include <cstdint>

#include "core/paged_kv.h"

namespace headpage {

struct GatherKVArgs {
  PagedKV cache;
  int32_t num_rows = 0;
  const int32_t* indptr = nullptr;    // [num_rows + 1] into page_ids (CSR block tables)
  const int32_t* page_ids = nullptr;  // [num_page_ids]
  int32_t num_page_ids = 0;           // indptr from 0, ascending, ending inside it
  const int32_t* lens = nullptr;      // [num_rows] tokens of each row
  // Outputs, row after row: row r's tokens start at out_offset[r] = sum of lens
  // of the rows before it. Any of the three may be null to skip it.
  void* keys = nullptr;               // [sum lens][head_dim] of cache.dtype
  void* values = nullptr;             // [sum lens][head_dim] of cache.dtype
  int32_t* positions = nullptr;       // [sum lens]
};

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_GATHER_KV_ARGS_H_
