// SPDX-License-Identifier: Apache-2.0
// File: tests/kernels/paged_case.h
//
// The one random-case generator of the kernel tests: a host pool holding
// streams of given lengths behind shuffled page ids, with random K/V of any
// dtype and strictly ascending positions. The CPU tests check ref:: against the
// dense view it also provides (Key/Value/Position by logical index) and
// relabel its pages to prove page-id invariance; the GPU tests upload the very
// same bytes and compare gpu:: with ref::.
#ifndef HEADPAGE_TESTS_KERNELS_PAGED_CASE_H_
#define HEADPAGE_TESTS_KERNELS_PAGED_CASE_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/paged_kv.h"

namespace headpage::testing {

// Stream lengths the issue asks every kernel to survive, for a page size.
inline std::vector<int32_t> EdgeLengths(int32_t page_size) {
  return {0, 1, page_size - 1, page_size, page_size + 1, 3 * page_size + 5};
}

struct PagedCaseSpec {
  int32_t page_size = 16;
  int32_t head_dim = 128;
  DType dtype = DType::kBF16;
  std::vector<int32_t> lens;  // one per stream
  int32_t spare_pages = 3;    // free pages mixed in between the streams' pages
  float value_scale = 1.0f;   // K/V elements uniform in [-scale, scale]
};

class PagedCase {
 public:
  PagedCase(const PagedCaseSpec& spec, uint64_t seed) : spec_(spec), rng_(seed) {
    int32_t num_pages = spec.spare_pages;
    indptr_.push_back(0);
    for (int32_t len : spec.lens) {
      num_pages += static_cast<int32_t>(PagesFor(len, spec.page_size));
      indptr_.push_back(indptr_.back() + static_cast<int32_t>(PagesFor(len, spec.page_size)));
    }
    num_pages = std::max(num_pages, 1);
    const size_t elements = static_cast<size_t>(num_pages) * 2 * spec.page_size * spec.head_dim;
    data_.assign(elements * SizeOf(spec.dtype), 0);
    positions_.assign(static_cast<size_t>(num_pages) * spec.page_size, -7);
    // Every slot starts as NaN: a kernel that reads a slot beyond a stream's
    // length, or a spare page, spreads NaN into what it computes.
    for (size_t i = 0; i < elements; ++i) StoreFromFloat(data_.data(), i, spec.dtype, NAN);

    std::vector<int32_t> ids(static_cast<size_t>(num_pages));
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng_);
    page_ids_.assign(ids.begin(), ids.begin() + indptr_.back());

    std::uniform_real_distribution<float> value(-spec.value_scale, spec.value_scale);
    std::uniform_int_distribution<int32_t> gap(1, 3);
    for (size_t s = 0; s < spec.lens.size(); ++s) {
      int32_t position = gap(rng_) - 1;
      for (int32_t i = 0; i < spec.lens[s]; ++i) {
        const int64_t slot = Slot(s, i);
        for (int32_t e = 0; e < spec.head_dim; ++e) {
          StoreFromFloat(data_.data(), static_cast<size_t>(view().KeyOffset(slot) + e),
                         spec.dtype, value(rng_));
          StoreFromFloat(data_.data(), static_cast<size_t>(view().ValueOffset(slot) + e),
                         spec.dtype, value(rng_));
        }
        positions_[static_cast<size_t>(slot)] = position;
        position += gap(rng_);
      }
    }
    num_pages_ = num_pages;
  }

  // The host pool (pointers into this object).
  PagedKV view() {
    PagedKV v;
    v.data = data_.data();
    v.positions = positions_.data();
    v.num_pages = static_cast<int32_t>(positions_.size() / spec_.page_size);
    v.page_size = spec_.page_size;
    v.head_dim = spec_.head_dim;
    v.dtype = spec_.dtype;
    return v;
  }
  const PagedCaseSpec& spec() const { return spec_; }
  int32_t num_streams() const { return static_cast<int32_t>(spec_.lens.size()); }
  int32_t num_pages() const { return num_pages_; }
  std::vector<uint8_t>& data() { return data_; }
  std::vector<int32_t>& positions() { return positions_; }
  // CSR block tables, one row per stream (BlockManager::BlockTable's layout).
  const std::vector<int32_t>& indptr() const { return indptr_; }
  const std::vector<int32_t>& page_ids() const { return page_ids_; }
  const std::vector<int32_t>& lens() const { return spec_.lens; }

  int64_t Slot(size_t stream, int32_t i) const {
    return SlotOf(page_ids_.data() + indptr_[stream], i, spec_.page_size);
  }
  // The dense view: logical token i of a stream.
  float Key(size_t stream, int32_t i, int32_t e) {
    return LoadAsFloat(data_.data(), static_cast<size_t>(view().KeyOffset(Slot(stream, i)) + e),
                       spec_.dtype);
  }
  float Value(size_t stream, int32_t i, int32_t e) {
    return LoadAsFloat(data_.data(),
                       static_cast<size_t>(view().ValueOffset(Slot(stream, i)) + e), spec_.dtype);
  }
  int32_t Position(size_t stream, int32_t i) const {
    return positions_[static_cast<size_t>(Slot(stream, i))];
  }

  // Moves every page to a fresh random id (bytes, positions and block tables
  // alike): the same logical content behind other page ids.
  void RelabelPages(uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<int32_t> to(static_cast<size_t>(num_pages_));
    std::iota(to.begin(), to.end(), 0);
    std::shuffle(to.begin(), to.end(), rng);
    const size_t page_bytes =
        static_cast<size_t>(2) * spec_.page_size * spec_.head_dim * SizeOf(spec_.dtype);
    std::vector<uint8_t> data(data_.size());
    std::vector<int32_t> positions(positions_.size());
    for (int32_t p = 0; p < num_pages_; ++p) {
      std::memcpy(data.data() + to[p] * page_bytes, data_.data() + p * page_bytes, page_bytes);
      std::memcpy(positions.data() + static_cast<size_t>(to[p]) * spec_.page_size,
                  positions_.data() + static_cast<size_t>(p) * spec_.page_size,
                  spec_.page_size * sizeof(int32_t));
    }
    for (int32_t& id : page_ids_) id = to[id];
    data_.swap(data);
    positions_.swap(positions);
  }

  std::mt19937_64& rng() { return rng_; }

 private:
  PagedCaseSpec spec_;
  std::mt19937_64 rng_;
  int32_t num_pages_ = 0;
  std::vector<uint8_t> data_;
  std::vector<int32_t> positions_;
  std::vector<int32_t> indptr_;
  std::vector<int32_t> page_ids_;
};

// Random dense rows of `dtype` (queries, new K/V), as bytes.
inline std::vector<uint8_t> RandomRows(size_t elements, DType dtype, float scale,
                                       std::mt19937_64& rng) {
  std::vector<uint8_t> bytes(elements * SizeOf(dtype));
  std::uniform_real_distribution<float> value(-scale, scale);
  for (size_t i = 0; i < elements; ++i) StoreFromFloat(bytes.data(), i, dtype, value(rng));
  return bytes;
}

}  // namespace headpage::testing

#endif  // HEADPAGE_TESTS_KERNELS_PAGED_CASE_H_
