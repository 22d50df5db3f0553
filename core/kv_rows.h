// SPDX-License-Identifier: Apache-2.0
// File: core/kv_rows.h
//
// The host's reads and writes of one slot of a PagedKV, whatever the pages
// store: a K or V row as floats (fp8 rows dequantized with the slot's scale,
// quantized on the way in), and the move of a whole slot (both rows, their
// scales, the position). The CPU references go through these, so a reference
// written for 16-bit pages reads fp8 pages the way the GPU does. Plain C++.
#ifndef HEADPAGE_CORE_KV_ROWS_H_
#define HEADPAGE_CORE_KV_ROWS_H_

#include <cstdint>
#include <cstring>

#include "core/dtype.h"
#include "core/paged_kv.h"

namespace headpage {

enum class KvPart : uint8_t { kKey = 0, kValue = 1 };

// Bytes of one stored element of `cache`: the model dtype's, 1 for fp8.
inline size_t KvElementBytes(const PagedKV& cache) {
  return KvElementBytes(cache.dtype, cache.kv_dtype);
}

// Byte address of the K or V row of `slot`.
inline char* KvRowBytes(const PagedKV& cache, int64_t slot, KvPart part) {
  const int64_t offset = part == KvPart::kKey ? cache.KeyOffset(slot) : cache.ValueOffset(slot);
  return static_cast<char*>(cache.data) + offset * static_cast<int64_t>(KvElementBytes(cache));
}

// The scale of the K or V row of `slot` (fp8 pages only).
inline float& KvRowScale(const PagedKV& cache, int64_t slot, KvPart part) {
  return cache.scales[2 * slot + static_cast<int>(part)];
}

// Element `d` of the K or V row of `slot`, as float (dequantized for fp8).
inline float LoadKvElement(const PagedKV& cache, int64_t slot, KvPart part, int32_t d) {
  const char* row = KvRowBytes(cache, slot, part);
  if (cache.fp8()) {
    return fp8_e4m3::FromBits(static_cast<uint8_t>(row[d])).ToFloat() *
           KvRowScale(cache, slot, part);
  }
  return LoadAsFloat(row, static_cast<size_t>(d), cache.dtype);
}

// The K or V row of `slot` into out[0..head_dim).
inline void LoadKvRow(const PagedKV& cache, int64_t slot, KvPart part, float* out) {
  for (int32_t d = 0; d < cache.head_dim; ++d) out[d] = LoadKvElement(cache, slot, part, d);
}

// The K or V row of `slot` into `out` (head_dim elements of the model dtype):
// copied from 16-bit pages, and from fp8 pages each element dequantized and
// rounded to the model dtype, the way the GPU's gathers and scorers read them.
inline void LoadKvRowInModelDtype(const PagedKV& cache, int64_t slot, KvPart part, void* out) {
  if (!cache.fp8()) {
    std::memcpy(out, KvRowBytes(cache, slot, part),
                static_cast<size_t>(cache.head_dim) * SizeOf(cache.dtype));
    return;
  }
  for (int32_t d = 0; d < cache.head_dim; ++d) {
    StoreFromFloat(out, static_cast<size_t>(d), cache.dtype, LoadKvElement(cache, slot, part, d));
  }
}

// Stores `row` (head_dim elements of the model dtype, as given to WriteKV) as the
// K or V row of `slot`: copied for 16-bit pages, quantized with a new scale for
// fp8 (QuantizeRowFp8 of the row's float values). `scratch` holds head_dim
// floats.
inline void StoreKvRow(const PagedKV& cache, int64_t slot, KvPart part, const void* row,
                       float* scratch) {
  char* dst = KvRowBytes(cache, slot, part);
  if (!cache.fp8()) {
    std::memcpy(dst, row, static_cast<size_t>(cache.head_dim) * SizeOf(cache.dtype));
    return;
  }
  for (int32_t d = 0; d < cache.head_dim; ++d) scratch[d] = LoadAsFloat(row, d, cache.dtype);
  KvRowScale(cache, slot, part) = QuantizeRowFp8(scratch, static_cast<size_t>(cache.head_dim),
                                                 reinterpret_cast<fp8_e4m3*>(dst));
}

// Copies everything `from` holds to `to`: both rows as stored (no
// requantization), their scales, and the position.
inline void CopyKvSlot(const PagedKV& cache, int64_t from, int64_t to) {
  const size_t row_bytes = static_cast<size_t>(cache.head_dim) * KvElementBytes(cache);
  std::memmove(KvRowBytes(cache, to, KvPart::kKey), KvRowBytes(cache, from, KvPart::kKey),
               row_bytes);
  std::memmove(KvRowBytes(cache, to, KvPart::kValue), KvRowBytes(cache, from, KvPart::kValue),
               row_bytes);
  if (cache.fp8()) {
    KvRowScale(cache, to, KvPart::kKey) = KvRowScale(cache, from, KvPart::kKey);
    KvRowScale(cache, to, KvPart::kValue) = KvRowScale(cache, from, KvPart::kValue);
  }
  cache.positions[to] = cache.positions[from];
}

}  // namespace headpage

#endif  // HEADPAGE_CORE_KV_ROWS_H_
