// SPDX-License-Identifier: Apache-2.0
// File: tests/kernels/paged_case.h
//
// The one random-case generator of the kernel tests: a host pool holding
// streams of given lengths behind shuffled page ids, with random K/V of any
// dtype (stored as is, or quantized to fp8 pages with a scale per row) and
// strictly ascending positions. The CPU tests check ref:: against the
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
#include "core/kv_rows.h"
#include "core/paged_kv.h"

namespace headpage::testing {

// Stream lengths the issue asks every kernel to survive, for a page size.
inline std::vector<int32_t> EdgeLengths(int32_t page_size) {
  return {0, 1, page_size - 1, page_size, page_size + 1, 3 * page_size + 5};
}

// What pages store, as a kernel test sweeps it: every model dtype's own, and
// fp8 over f16 and bf16 (kEveryPageKind).
struct PageKind {
  DType dtype;
  KvDType kv_dtype;
};
inline constexpr PageKind kEveryPageKind[] = {{DType::kF32, KvDType::kAuto},
                                              {DType::kF16, KvDType::kAuto},
                                              {DType::kBF16, KvDType::kAuto},
                                              {DType::kF16, KvDType::kFP8E4M3},
                                              {DType::kBF16, KvDType::kFP8E4M3}};

struct PagedCaseSpec {
  int32_t page_size = 16;
  int32_t head_dim = 128;
  DType dtype = DType::kBF16;
  std::vector<int32_t> lens;  // one per stream
  int32_t spare_pages = 3;    // free pages mixed in between the streams' pages
  float value_scale = 1.0f;   // K/V elements uniform in [-scale, scale]
  // kFP8E4M3: each K/V row is drawn in `dtype` (f16 or bf16), then quantized
  // as WriteKV stores it (core/kv_rows.h StoreKvRow).
  KvDType kv_dtype = KvDType::kAuto;
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
    const size_t num_slots = static_cast<size_t>(num_pages) * spec.page_size;
    const bool fp8 = spec.kv_dtype == KvDType::kFP8E4M3;
    data_.assign(elements * KvElementBytes(spec.dtype, spec.kv_dtype), 0);
    positions_.assign(num_slots, -7);
    // Every slot starts as NaN (fp8: NaN bytes and NaN scales): a kernel that
    // reads a slot beyond a stream's length, or a spare page, spreads NaN into
    // what it computes.
    if (fp8) {
      std::fill(data_.begin(), data_.end(), fp8_e4m3::FromFloat(NAN).bits);
      scales_.assign(2 * num_slots, NAN);
    } else {
      for (size_t i = 0; i < elements; ++i) StoreFromFloat(data_.data(), i, spec.dtype, NAN);
    }

    std::vector<int32_t> ids(static_cast<size_t>(num_pages));
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng_);
    page_ids_.assign(ids.begin(), ids.begin() + indptr_.back());

    std::uniform_real_distribution<float> value(-spec.value_scale, spec.value_scale);
    std::uniform_int_distribution<int32_t> gap(1, 3);
    // fp8: a token's rows in the model dtype, then quantized into the slot.
    const size_t row_bytes = static_cast<size_t>(spec.head_dim) * SizeOf(spec.dtype);
    std::vector<uint8_t> key_row(fp8 ? row_bytes : 0), value_row(fp8 ? row_bytes : 0);
    std::vector<float> scratch(fp8 ? spec.head_dim : 0);
    for (size_t s = 0; s < spec.lens.size(); ++s) {
      int32_t position = gap(rng_) - 1;
      for (int32_t i = 0; i < spec.lens[s]; ++i) {
        const int64_t slot = Slot(s, i);
        for (int32_t e = 0; e < spec.head_dim; ++e) {
          // The draws in the same order for every kv_dtype.
          const float k = value(rng_);
          const float v = value(rng_);
          if (fp8) {
            StoreFromFloat(key_row.data(), static_cast<size_t>(e), spec.dtype, k);
            StoreFromFloat(value_row.data(), static_cast<size_t>(e), spec.dtype, v);
          } else {
            StoreFromFloat(data_.data(), static_cast<size_t>(view().KeyOffset(slot) + e),
                           spec.dtype, k);
            StoreFromFloat(data_.data(), static_cast<size_t>(view().ValueOffset(slot) + e),
                           spec.dtype, v);
          }
        }
        if (fp8) {
          StoreKvRow(view(), slot, KvPart::kKey, key_row.data(), scratch.data());
          StoreKvRow(view(), slot, KvPart::kValue, value_row.data(), scratch.data());
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
    v.kv_dtype = spec_.kv_dtype;
    v.scales = scales_.empty() ? nullptr : scales_.data();
    return v;
  }
  const PagedCaseSpec& spec() const { return spec_; }
  int32_t num_streams() const { return static_cast<int32_t>(spec_.lens.size()); }
  int32_t num_pages() const { return num_pages_; }
  std::vector<uint8_t>& data() { return data_; }
  std::vector<int32_t>& positions() { return positions_; }
  // fp8 pages' scales ([slot][2], K then V); empty for kAuto.
  std::vector<float>& scales() { return scales_; }
  // CSR block tables, one row per stream (BlockManager::BlockTable's layout).
  const std::vector<int32_t>& indptr() const { return indptr_; }
  const std::vector<int32_t>& page_ids() const { return page_ids_; }
  const std::vector<int32_t>& lens() const { return spec_.lens; }

  int64_t Slot(size_t stream, int32_t i) const {
    return SlotOf(page_ids_.data() + indptr_[stream], i, spec_.page_size);
  }
  // The dense view: logical token i of a stream (fp8: dequantized, in float).
  float Key(size_t stream, int32_t i, int32_t e) {
    return LoadKvElement(view(), Slot(stream, i), KvPart::kKey, e);
  }
  float Value(size_t stream, int32_t i, int32_t e) {
    return LoadKvElement(view(), Slot(stream, i), KvPart::kValue, e);
  }
  int32_t Position(size_t stream, int32_t i) const {
    return positions_[static_cast<size_t>(Slot(stream, i))];
  }

  // Moves every page to a fresh random id (bytes, positions, scales and block
  // tables alike): the same logical content behind other page ids.
  void RelabelPages(uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<int32_t> to(static_cast<size_t>(num_pages_));
    std::iota(to.begin(), to.end(), 0);
    std::shuffle(to.begin(), to.end(), rng);
    const size_t page_bytes = static_cast<size_t>(2) * spec_.page_size * spec_.head_dim *
                              KvElementBytes(spec_.dtype, spec_.kv_dtype);
    const size_t page_scales = scales_.empty() ? 0 : static_cast<size_t>(2) * spec_.page_size;
    std::vector<uint8_t> data(data_.size());
    std::vector<int32_t> positions(positions_.size());
    std::vector<float> scales(scales_.size());
    for (int32_t p = 0; p < num_pages_; ++p) {
      std::memcpy(data.data() + to[p] * page_bytes, data_.data() + p * page_bytes, page_bytes);
      std::memcpy(positions.data() + static_cast<size_t>(to[p]) * spec_.page_size,
                  positions_.data() + static_cast<size_t>(p) * spec_.page_size,
                  spec_.page_size * sizeof(int32_t));
      std::copy_n(scales_.begin() + p * page_scales, page_scales,
                  scales.begin() + to[p] * page_scales);
    }
    for (int32_t& id : page_ids_) id = to[id];
    data_.swap(data);
    positions_.swap(positions);
    scales_.swap(scales);
  }

  std::mt19937_64& rng() { return rng_; }

 private:
  PagedCaseSpec spec_;
  std::mt19937_64 rng_;
  int32_t num_pages_ = 0;
  std::vector<uint8_t> data_;
  std::vector<int32_t> positions_;
  std::vector<float> scales_;  // fp8 only
  std::vector<int32_t> indptr_;
  std::vector<int32_t> page_ids_;
};

// Whether two float arrays hold the same bits: scales compared so, NaN (the
// case's untouched slots) and infinity included.
inline bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

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
