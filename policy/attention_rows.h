// SPDX-License-Identifier: Apache-2.0
// File: policy/attention_rows.h
//
// Not API: the softmax machinery the attention scorers (scores_attention.cc)
// share. ForEachAttentionRow hands each query row's softmax over the keys it
// sees to a callback; keys are packed once per call (PackKeys), and the working
// memory is kept per thread (Scratch). The exp and the packing live in
// attention_rows.cc; the logits kernel and the row loop are here because the
// loop is a template over its callback, which each scorer inlines.
//
// Every attention scorer needs, per query row, softmax(q k^T / sqrt(d)) over
// the keys the row sees. That is a matrix product plus one exp per logit: for
// SnapKV on one Llama-3-8B layer at 8192 keys, 8 KV heads x 128 query rows x
// 8192 keys x d = 128 (1.1 G multiply-adds) and 8.4 M exps. Both run four
// lanes at a time on the baseline ISA (SSE2 on x86-64: the library is built
// without -march, so wider vectors and FMA are not available). The product
// dominates; at two SSE arithmetic instructions per four multiply-adds it is
// bound by the FP ports, which the kernel below keeps busy.
//
// The logits are bit-identical to the textbook loop
//   float dot = 0; for (e = 0; e < d; ++e) dot += q[e] * k[e]; logit = dot / sqrt(d)
// because the vectors run across keys (one key per lane), not across e: each
// lane performs exactly that sequence of roundings, nothing is reassociated.
// What differs from a scalar softmax is only rounding: exp within 1 ulp
// instead of 0.5 (ExpNonPositive) and the order of each row's sum.
#ifndef HEADPAGE_POLICY_ATTENTION_ROWS_H_
#define HEADPAGE_POLICY_ATTENTION_ROWS_H_

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "policy/types.h"

namespace headpage::policy::internal {

// Four floats in one register: SSE on x86-64 (part of its baseline ABI), NEON
// on arm64. GCC's and Clang's vector extensions give lane-wise + - * / and
// comparisons with one code path for every target.
typedef float V4 __attribute__((vector_size(16)));
typedef int32_t V4i __attribute__((vector_size(16)));
constexpr int32_t kLanes = 4;

inline V4 Splat(float x) { return V4{x, x, x, x}; }
// Unaligned load and store; memcpy compiles to a single movups.
inline V4 Load(const float* p) {
  V4 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void Store(float* p, V4 v) { std::memcpy(p, &v, sizeof(v)); }

inline int32_t CeilDiv(int32_t a, int32_t b) { return (a + b - 1) / b; }

// Keys as the logits kernel reads them: panels of kPanel consecutive keys,
// each panel [head_dim][kPanel] floats. The kernel walks one panel front to
// back (4 KiB at d = 128: it stays in L1 while every query row of a chunk uses
// it, where a plain transpose [d][n] would stride by n and thrash the cache
// sets) and loads the kPanel keys' element e with two vector loads. f16 and
// bf16 are widened here, once per call; widening is exact, so the scores do
// not depend on the storage dtype. The last panel is padded with zero keys,
// whose logits are computed and never read.
constexpr int32_t kPanelVecs = 2;
constexpr int32_t kPanel = kPanelVecs * kLanes;

// The stream's keys packed into `storage` (resized to whole panels).
const float* PackKeys(const StreamKeys& keys, std::vector<float>* storage);

// A float view of `count` elements of `dtype`: f32 is read in place, f16 and
// bf16 are widened once into `storage`. Exact, like PackKeys. (Queries are
// small next to the keys: [group][rows][d] against [n][d].)
const float* AsFloat(const void* data, size_t count, DType dtype, std::vector<float>* storage);

// How many keys a query at `position` sees. Positions ascend with the slot, so
// the visible keys are exactly the slot prefix [0, VisibleKeys).
int32_t VisibleKeys(const StreamKeys& keys, int32_t position);

// Working memory of the attention scorers, kept per thread between calls. At
// 8192 keys and d = 128 a call needs ~5 MiB (4 MiB of packed keys, a chunk of
// logits);
// allocating that per call costs page faults on the same order as the
// arithmetic. thread_local keeps the scorers safe to run on several threads at
// once (nothing in here carries meaning from one call to the next), and
// TrimIfLarge() frees what a very long stream grew, so that it is not pinned
// for the thread's lifetime.
struct Scratch {
  std::vector<float> packed_keys;  // PackKeys
  std::vector<float> logits;       // ForEachAttentionRow: [kChunkRows][panels * kPanel]
  std::vector<float> q_splat;      // ForEachAttentionRow: [kChunkRows][d][kLanes]
  std::vector<float> queries;      // queries widened to float
  std::vector<float> rows;         // TOVA: each KV head's last query rows, gathered
  std::vector<int32_t> visible;    // keys seen per query row
  std::vector<float> head_sum;     // [n] attention summed over one q head's rows
  std::vector<float> total;        // [n] the result before it is written out

  static constexpr size_t kRetainedBytes = size_t{32} << 20;

  void TrimIfLarge() {
    const size_t bytes =
        sizeof(float) * (packed_keys.capacity() + logits.capacity() + q_splat.capacity() +
                         queries.capacity() + rows.capacity() + head_sum.capacity() +
                         total.capacity()) +
        sizeof(int32_t) * visible.capacity();
    if (bytes > kRetainedBytes) *this = Scratch();
  }
};

Scratch& ThreadScratch();

// The logits kernel computes kRows query rows against one panel of keys:
// kRows x kPanel / kLanes = 8 vector accumulators stay in registers (x86-64
// has 16), each key vector loaded is used kRows times and each query element
// kPanel times, so the loop is bound by the multiplies and adds, not by loads.
// (4 x 12 and 6 x 8 tiles measured no faster.) The query elements come
// pre-broadcast ([e][r][kLanes] per block of rows), so the inner loop is only
// loads, multiplies and adds: a broadcast in the loop is a shuffle competing
// with the adds for a port.
constexpr int32_t kRows = 4;

// out[r][col + c] = (q[r] . key c of `panel`) / sqrt_d for r < kRows and
// c < kPanel. Each lane sums q[r][e] * k[e] for e = 0, 1, ..., d - 1 starting
// from 0: bit for bit the scalar dot product.
inline void LogitsTile(const float* q_splat, const float* panel, int32_t d, V4 sqrt_d,
                       float* const out[kRows], size_t col) {
  V4 acc[kRows][kPanelVecs] = {};
  for (int32_t e = 0; e < d; ++e) {
    V4 k[kPanelVecs];
    for (int32_t v = 0; v < kPanelVecs; ++v) k[v] = Load(panel + e * kPanel + v * kLanes);
    for (int32_t r = 0; r < kRows; ++r) {
      const V4 qe = Load(q_splat + (e * kRows + r) * kLanes);
      for (int32_t v = 0; v < kPanelVecs; ++v) acc[r][v] += qe * k[v];
    }
  }
  for (int32_t r = 0; r < kRows; ++r) {
    for (int32_t v = 0; v < kPanelVecs; ++v) Store(out[r] + col + v * kLanes, acc[r][v] / sqrt_d);
  }
}

// row[j] = exp(row[j] - max) for j < visible (>= 1), where max is the largest
// of them; returns their sum (>= 1, since the max contributes exp(0)).
float ExpRow(float* row, int32_t visible);

// Query rows are processed kChunkRows at a time. Within a chunk each panel of
// keys is loaded once and used by every row block; the chunk's broadcast
// queries (32 KiB at d = 128) and the panel (4 KiB) fit in L1, which 32 rows
// per chunk did not (20% slower). The chunk's logits ([kChunkRows][n] floats,
// 512 KiB at 8192 keys) stay in L2 between the product and the softmax, and
// the memory is bounded whatever the number of rows (H2O may pass every
// prompt row).
constexpr int32_t kChunkRows = 16;
static_assert(kChunkRows % kRows == 0, "chunks hold whole row blocks");

// For each query row i < num_rows of q ([num_rows][d] floats) that sees a key
// (visible[i] > 0 keys, a slot prefix), calls sink(i, e, visible[i], sum)
// where e[j] = exp(logit_ij - max_j logit_ij) for j < visible[i] and sum is
// their sum: the row's attention is e[j] / sum. `e` is valid only during the
// call. A block of rows stops at the last panel any of its rows sees, so a
// causal (triangular) set of rows costs about half a full product.
template <class Sink>
void ForEachAttentionRow(const float* packed_keys, int32_t num_keys, int32_t d, const float* q,
                         const int32_t* visible, int32_t num_rows, Scratch* scratch, Sink&& sink) {
  const size_t ld = static_cast<size_t>(CeilDiv(num_keys, kPanel)) * kPanel;
  scratch->logits.resize(kChunkRows * ld);
  scratch->q_splat.resize(static_cast<size_t>(kChunkRows) * d * kLanes);
  const V4 sqrt_d = Splat(std::sqrt(static_cast<float>(d)));

  for (int32_t first = 0; first < num_rows; first += kChunkRows) {
    const int32_t rows = std::min(kChunkRows, num_rows - first);
    const int32_t blocks = CeilDiv(rows, kRows);
    // Rows past `rows` in the last block are zero queries, computed and ignored.
    float* row_logits[kChunkRows];
    for (int32_t i = 0; i < blocks * kRows; ++i) row_logits[i] = scratch->logits.data() + i * ld;
    float* q_splat = scratch->q_splat.data();
    for (int32_t b = 0; b < blocks; ++b) {
      for (int32_t e = 0; e < d; ++e) {
        for (int32_t r = 0; r < kRows; ++r) {
          const int32_t i = b * kRows + r;
          const float x = i < rows ? q[static_cast<size_t>(first + i) * d + e] : 0.0f;
          Store(q_splat + ((static_cast<size_t>(b) * d + e) * kRows + r) * kLanes, Splat(x));
        }
      }
    }
    int32_t block_panels[kChunkRows / kRows];  // panels holding a key the block sees
    int32_t chunk_panels = 0;
    for (int32_t b = 0; b < blocks; ++b) {
      int32_t seen = 0;
      for (int32_t i = b * kRows; i < std::min(rows, (b + 1) * kRows); ++i) {
        seen = std::max(seen, visible[first + i]);
      }
      block_panels[b] = CeilDiv(seen, kPanel);
      chunk_panels = std::max(chunk_panels, block_panels[b]);
    }
    for (int32_t p = 0; p < chunk_panels; ++p) {
      const float* panel = packed_keys + static_cast<size_t>(p) * d * kPanel;
      for (int32_t b = 0; b < blocks; ++b) {
        if (p >= block_panels[b]) continue;
        LogitsTile(q_splat + static_cast<size_t>(b) * d * kRows * kLanes, panel, d, sqrt_d,
                   row_logits + b * kRows, static_cast<size_t>(p) * kPanel);
      }
    }
    for (int32_t i = 0; i < rows; ++i) {
      const int32_t seen = visible[first + i];
      if (seen == 0) continue;  // a query that sees no key contributes nothing
      const float sum = ExpRow(row_logits[i], seen);
      sink(first + i, static_cast<const float*>(row_logits[i]), seen, sum);
    }
  }
}

}  // namespace headpage::policy::internal

#endif  // HEADPAGE_POLICY_ATTENTION_ROWS_H_
