// SPDX-License-Identifier: Apache-2.0
#include <cstdlib>
#include <limits>
#include <new>

#include "absl/strings/str_cat.h"
#include "allocator/arena.h"
#include "core/status.h"

namespace headpage {

absl::Status ValidateArenaSize(const CacheGeometry& geometry, int64_t num_pages) {
  HEADPAGE_RETURN_IF_ERROR(Validate(geometry));
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  if (num_pages < 1 || num_pages > kMax) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_pages must be in [1, ", kMax, "], got ", num_pages));
  }
  // Slot ids (page * page_size + offset) are int32 in slot mappings.
  if (num_pages * geometry.page_size > kMax) {
    return absl::InvalidArgumentError(
        absl::StrCat(num_pages, " pages of ", geometry.page_size,
                     " tokens exceed the int32 slot id range; use fewer or smaller pages"));
  }
  return absl::OkStatus();
}

void HostArena::FreeDeleter::operator()(void* p) const { std::free(p); }

absl::StatusOr<HostArena> HostArena::Create(const CacheGeometry& geometry, int64_t num_pages) {
  HEADPAGE_RETURN_IF_ERROR(ValidateArenaSize(geometry, num_pages));
  HostArena arena;
  arena.page_bytes_ = geometry.page_bytes();
  arena.kv_bytes_ = arena.page_bytes_ * static_cast<size_t>(num_pages);
  // aligned_alloc wants a size that is a multiple of the alignment.
  const size_t rounded = (arena.kv_bytes_ + kAlignment - 1) / kAlignment * kAlignment;
  arena.kv_.reset(std::aligned_alloc(kAlignment, rounded));
  const size_t num_slots = static_cast<size_t>(num_pages) * geometry.page_size;
  arena.positions_.reset(new (std::nothrow) int32_t[num_slots]);
  if (geometry.fp8()) arena.scales_.reset(new (std::nothrow) float[2 * num_slots]());
  if (arena.kv_ == nullptr || arena.positions_ == nullptr ||
      (geometry.fp8() && arena.scales_ == nullptr)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", rounded, " bytes of host memory for the KV arena (and ",
                     num_slots * (sizeof(int32_t) + (geometry.fp8() ? 2 * sizeof(float) : 0)),
                     " for its positions and scales)"));
  }
  std::fill_n(arena.positions_.get(), num_slots, -1);
  arena.view_.data = arena.kv_.get();
  arena.view_.positions = arena.positions_.get();
  arena.view_.scales = arena.scales_.get();
  arena.view_.num_pages = static_cast<int32_t>(num_pages);
  arena.view_.page_size = geometry.page_size;
  arena.view_.head_dim = geometry.head_dim;
  arena.view_.dtype = geometry.dtype;
  arena.view_.kv_dtype = geometry.kv_dtype;
  return arena;
}

void* HostArena::KeyPage(PageId page) const {
  return static_cast<char*>(kv_.get()) + static_cast<size_t>(page) * page_bytes_;
}

void* HostArena::ValuePage(PageId page) const {
  return static_cast<char*>(KeyPage(page)) + page_bytes_ / 2;
}

}  // namespace headpage
