// SPDX-License-Identifier: Apache-2.0
// File: blockmgr/block_manager_internal.h
//
// Not API: what the translation units of BlockManager (block_manager*.cc)
// share. The class is split across files by operation; these are the helpers
// more than one of them needs.
#ifndef HEADPAGE_BLOCKMGR_BLOCK_MANAGER_INTERNAL_H_
#define HEADPAGE_BLOCKMGR_BLOCK_MANAGER_INTERNAL_H_

#include <cstdint>
#include <limits>

namespace headpage::blockmgr_internal {

// Slot ids, positions and CSR entries are int32 on the device side.
inline constexpr int64_t kMaxInt32 = std::numeric_limits<int32_t>::max();

// Live tokens in page j of a stream of `len` tokens with `num_pages` pages:
// every page is full but the last.
inline int64_t PageFill(int64_t len, int64_t num_pages, int64_t j, int64_t page_size) {
  return j + 1 < num_pages ? page_size : len - j * page_size;
}

}  // namespace headpage::blockmgr_internal

#endif  // HEADPAGE_BLOCKMGR_BLOCK_MANAGER_INTERNAL_H_
