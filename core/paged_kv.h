// SPDX-License-Identifier: Apache-2.0
// File: core/paged_kv.h
//
// PagedKV is the view of a pool's memory that kernels work on: plain pointers and
// sizes, no ownership. Page p starts at `data + p * page_bytes`; within it K is
// [page_size][head_dim] and V follows with the same shape, head_dim contiguous.
// Beside the K/V, `positions` holds each slot's original token position (int32,
// indexed by flat slot id = page * page_size + offset), so recency windows, sinks
// and H2O keep working after compaction moved tokens to other slots. fp8 pages
// (kv_dtype kFP8E4M3) store 1-byte elements, and `scales` holds each slot's K and
// V scale the same way (float, [slot][2]): every kernel that moves a token moves
// its scales with it, as it moves its position.
//
// The index math is HEADPAGE_HOST_DEVICE and shared by the CPU reference and the
// CUDA kernels. Plain C++: .cu files include it.
#ifndef HEADPAGE_CORE_PAGED_KV_H_
#define HEADPAGE_CORE_PAGED_KV_H_

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

#if defined(__CUDACC__)
#define HEADPAGE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HEADPAGE_HOST_DEVICE inline
#endif

namespace headpage {

// Page ids in the allocator; kernels see them as int32 (block tables are int32).
using PageId = uint32_t;
inline constexpr PageId kNoPage = 0xffffffffu;

// Where a view's bytes live. The eviction engine picks its executor by it: the
// host executor runs the CPU kernels, the CUDA executor the GPU ones.
enum class MemoryKind : uint8_t { kHost, kDevice };

struct PagedKV {
  void* data = nullptr;          // [num_pages][2][page_size][head_dim] of the stored element
  int32_t* positions = nullptr;  // [num_pages * page_size]
  float* scales = nullptr;       // fp8 only: [num_pages * page_size][2], K then V; else null
  int32_t num_pages = 0;
  int32_t page_size = 0;
  int32_t head_dim = 0;
  DType dtype = DType::kBF16;    // the model's (queries, outputs); also the stored element for kAuto
  KvDType kv_dtype = KvDType::kAuto;
  MemoryKind memory = MemoryKind::kHost;  // data, positions and scales alike

  HEADPAGE_HOST_DEVICE bool fp8() const { return kv_dtype == KvDType::kFP8E4M3; }

  HEADPAGE_HOST_DEVICE int64_t num_slots() const {
    return static_cast<int64_t>(num_pages) * page_size;
  }
  // Stored elements (not bytes, unless fp8) from the start of `data`.
  HEADPAGE_HOST_DEVICE int64_t page_elements() const {
    return 2 * static_cast<int64_t>(page_size) * head_dim;
  }
  HEADPAGE_HOST_DEVICE int64_t KeyOffset(int64_t slot) const {
    const int64_t page = slot / page_size;
    return page * page_elements() + (slot - page * page_size) * head_dim;
  }
  HEADPAGE_HOST_DEVICE int64_t ValueOffset(int64_t slot) const {
    return KeyOffset(slot) + static_cast<int64_t>(page_size) * head_dim;
  }
};

// Slot id of logical index `i` of a stream whose block table is `pages`.
HEADPAGE_HOST_DEVICE int64_t SlotOf(const int32_t* pages, int64_t i, int32_t page_size) {
  return static_cast<int64_t>(pages[i / page_size]) * page_size + i % page_size;
}

HEADPAGE_HOST_DEVICE int64_t PagesFor(int64_t tokens, int32_t page_size) {
  return (tokens + page_size - 1) / page_size;
}

}  // namespace headpage

#endif  // HEADPAGE_CORE_PAGED_KV_H_
