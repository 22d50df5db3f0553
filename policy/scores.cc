// SPDX-License-Identifier: Apache-2.0
#include "policy/scores.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace headpage::policy {
namespace {

// ---------------------------------------------------------------------------
// Validation. Every public function validates all of its inputs before it
// writes anything, so a failed call leaves the output untouched.

absl::Status ValidateDType(DType dtype, const char* what) {
  if (SizeOf(dtype) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": unknown dtype value ", static_cast<int>(dtype)));
  }
  return absl::OkStatus();
}

// Checks the parts of `keys` every scorer needs: the count and the positions.
// Slot order must be position order: visibility (VisibleKeys) relies on it.
absl::Status ValidateKeyPositions(const StreamKeys& keys) {
  if (keys.num_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("keys: num_tokens must be >= 0, got ", keys.num_tokens));
  }
  if (keys.num_tokens > 0 && keys.positions == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("keys: positions is null for ", keys.num_tokens, " tokens"));
  }
  for (int32_t j = 1; j < keys.num_tokens; ++j) {
    if (keys.positions[j] <= keys.positions[j - 1]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "keys: positions must be strictly ascending, slot ", j, " holds ", keys.positions[j],
          " after ", keys.positions[j - 1]));
    }
  }
  return absl::OkStatus();
}

// Checks everything a scorer that reads the key vectors needs.
absl::Status ValidateKeys(const StreamKeys& keys) {
  HEADPAGE_RETURN_IF_ERROR(ValidateKeyPositions(keys));
  if (keys.head_dim < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("keys: head_dim must be >= 1, got ", keys.head_dim));
  }
  HEADPAGE_RETURN_IF_ERROR(ValidateDType(keys.dtype, "keys"));
  if (keys.num_tokens > 0 && keys.data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("keys: data is null for ", keys.num_tokens, " tokens"));
  }
  return absl::OkStatus();
}

// Checks `queries` on their own, then against the keys they attend to.
absl::Status ValidateQueries(const GroupQueries& queries, const StreamKeys& keys) {
  if (queries.group_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("queries: group_size must be >= 1, got ", queries.group_size));
  }
  if (queries.num_queries < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("queries: num_queries must be >= 0, got ", queries.num_queries));
  }
  if (queries.head_dim < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("queries: head_dim must be >= 1, got ", queries.head_dim));
  }
  HEADPAGE_RETURN_IF_ERROR(ValidateDType(queries.dtype, "queries"));
  if (queries.num_queries > 0 && queries.data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("queries: data is null for ", queries.num_queries, " queries"));
  }
  if (queries.num_queries > 0 && queries.positions == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("queries: positions is null for ", queries.num_queries, " queries"));
  }
  if (queries.head_dim != keys.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat("head_dim mismatch: keys have ", keys.head_dim,
                                                   ", queries have ", queries.head_dim));
  }
  return absl::OkStatus();
}

absl::Status ValidateReduce(GroupReduce reduce) {
  switch (reduce) {
    case GroupReduce::kMean:
    case GroupReduce::kMax:
      return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown GroupReduce value ", static_cast<int>(reduce)));
}

absl::Status ValidatePooling(Pooling pooling) {
  switch (pooling) {
    case Pooling::kNone:
    case Pooling::kAvg:
    case Pooling::kMax:
      return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown Pooling value ", static_cast<int>(pooling)));
}

// `what` holds one float per token (or per row entry): its size must be exact,
// since a caller passing a stale buffer would otherwise get silently partial
// scores.
absl::Status ValidateSize(size_t actual, int64_t expected, const char* what) {
  if (static_cast<int64_t>(actual) != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": size ", actual, ", expected ", expected));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Numerics.
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

int32_t CeilDiv(int32_t a, int32_t b) { return (a + b - 1) / b; }

// exp(x) per lane for x <= 0 (a softmax argument once the row max is
// subtracted): within 1 ulp of the exact value for every float in [-104, 0],
// denormal results included (std::exp is within 0.5 ulp; the difference, ~6e-8
// relative, is far inside the scorers' 1e-6), 0 below -104 where float's exp
// rounds to 0 anyway, and NaN stays NaN. Cephes' expf: x = n ln2 + r with
// |r| <= ln2 / 2, exp(r) from a polynomial, then scaled by 2^n. About three
// times the throughput of std::exp per element, which matters at one exp per
// logit.
//
// kFullRange = false requires -87 <= x <= 0, where 2^n is a normal float: it
// skips the clamp and the split scale below, and gives the same result bit for
// bit (both scalings are exact until the one final rounding).
template <bool kFullRange>
inline V4 ExpNonPositive(V4 x) {
  if constexpr (kFullRange) {
    const V4 lowest = Splat(-104.0f);
    x = x < lowest ? lowest : x;  // NaN compares false and passes through
  }
  // n = round(x log2(e)): adding 1.5 * 2^23 rounds to an integer held in the
  // low bits of the significand, so n is also the bit difference.
  const V4 round = Splat(12582912.0f);
  const V4 t = x * Splat(1.44269504088896341f) + round;
  const V4i n = (V4i)t - (V4i)round;
  const V4 nf = t - round;
  // r = x - n ln2 with ln2 split in two (Cody-Waite): n * 0.693359375 is exact.
  const V4 r = (x - nf * Splat(0.693359375f)) - nf * Splat(-2.12194440e-4f);
  // exp(r) = 1 + r + r^2 p(r), p of degree 5 evaluated in Estrin's scheme
  // (shorter dependency chains than Horner's, so more exps overlap).
  const V4 r2 = r * r;
  const V4 p01 = Splat(1.6666665459e-1f) * r + Splat(5.0000001201e-1f);
  const V4 p23 = Splat(8.3334519073e-3f) * r + Splat(4.1665795894e-2f);
  const V4 p45 = Splat(1.9875691500e-4f) * r + Splat(1.3981999507e-3f);
  const V4 p = (p45 * r2 + p23) * r2 + p01;
  const V4 exp_r = (p * r2 + r) + Splat(1.0f);
  if constexpr (!kFullRange) {
    return exp_r * (V4)((n + 127) << 23);
  } else {
    // 2^n as two factors: n goes down to -150, below the smallest normal
    // exponent (-126). The first product is exact, the second rounds once,
    // into the denormals where it must, as the correctly rounded exp would.
    const V4i n1 = n >> 1;
    const V4i n2 = n - n1;
    return exp_r * (V4)((n1 + 127) << 23) * (V4)((n2 + 127) << 23);
  }
}

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

inline float Widen(float x) { return x; }
inline float Widen(f16 x) { return x.ToFloat(); }
inline float Widen(bf16 x) { return x.ToFloat(); }

template <class T>
void PackKeysAs(const T* keys, int32_t n, int32_t d, float* packed) {
  for (int32_t first = 0; first < n; first += kPanel) {
    const T* block = keys + static_cast<size_t>(first) * d;
    float* panel = packed + static_cast<size_t>(first) * d;
    // e outer, so that the stores are contiguous: 2x faster than walking each
    // key's row and scattering it down the panel.
    if (first + kPanel <= n) {
      for (int32_t e = 0; e < d; ++e) {
        for (int32_t c = 0; c < kPanel; ++c) panel[e * kPanel + c] = Widen(block[c * d + e]);
      }
    } else {
      for (int32_t e = 0; e < d; ++e) {
        for (int32_t c = 0; c < kPanel; ++c) {
          panel[e * kPanel + c] = first + c < n ? Widen(block[c * d + e]) : 0.0f;
        }
      }
    }
  }
}

// The stream's keys packed into `storage` (resized to whole panels).
const float* PackKeys(const StreamKeys& keys, std::vector<float>* storage) {
  const int32_t n = keys.num_tokens;
  const int32_t d = keys.head_dim;
  storage->resize(static_cast<size_t>(CeilDiv(n, kPanel)) * kPanel * d);
  switch (keys.dtype) {
    case DType::kF32:
      PackKeysAs(static_cast<const float*>(keys.data), n, d, storage->data());
      break;
    case DType::kF16:
      PackKeysAs(static_cast<const f16*>(keys.data), n, d, storage->data());
      break;
    case DType::kBF16:
      PackKeysAs(static_cast<const bf16*>(keys.data), n, d, storage->data());
      break;
  }
  return storage->data();
}

// A float view of `count` elements of `dtype`: f32 is read in place, f16 and
// bf16 are widened once into `storage`. Exact, like PackKeys. (Queries are
// small next to the keys: [group][rows][d] against [n][d].)
const float* AsFloat(const void* data, size_t count, DType dtype, std::vector<float>* storage) {
  if (dtype == DType::kF32) return static_cast<const float*>(data);
  storage->resize(count);
  for (size_t i = 0; i < count; ++i) (*storage)[i] = LoadAsFloat(data, i, dtype);
  return storage->data();
}

// How many keys a query at `position` sees. Positions ascend with the slot, so
// the visible keys are exactly the slot prefix [0, VisibleKeys).
int32_t VisibleKeys(const StreamKeys& keys, int32_t position) {
  if (keys.num_tokens == 0) return 0;
  return static_cast<int32_t>(
      std::upper_bound(keys.positions, keys.positions + keys.num_tokens, position) -
      keys.positions);
}

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

Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

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

// row[j] = exp(row[j] - max) for j < visible; returns their sum. The sum is
// kept per lane and then added across: not the sequential order, which the
// scorers' tolerances allow.
template <bool kFullRange>
float ExpRowFrom(float* row, int32_t visible, float max) {
  const int32_t body = visible - visible % kLanes;
  const V4 shift = Splat(max);
  V4 lane_sum = {};
  for (int32_t j = 0; j < body; j += kLanes) {
    const V4 e = ExpNonPositive<kFullRange>(Load(row + j) - shift);
    Store(row + j, e);
    lane_sum += e;
  }
  float sum = (lane_sum[0] + lane_sum[1]) + (lane_sum[2] + lane_sum[3]);
  if (body < visible) {
    // The last 1..3 entries go through the same exp, padded with exp(0).
    float tail[kLanes] = {max, max, max, max};
    std::copy(row + body, row + visible, tail);
    const V4 e = ExpNonPositive<kFullRange>(Load(tail) - shift);
    for (int32_t j = body; j < visible; ++j) {
      row[j] = e[j - body];
      sum += row[j];
    }
  }
  return sum;
}

// row[j] = exp(row[j] - max) for j < visible (>= 1), where max is the largest
// of them; returns their sum (>= 1, since the max contributes exp(0)).
float ExpRow(float* row, int32_t visible) {
  const int32_t body = visible - visible % kLanes;
  V4 lane_max = Splat(-std::numeric_limits<float>::infinity());
  V4 lane_min = Splat(std::numeric_limits<float>::infinity());
  for (int32_t j = 0; j < body; j += kLanes) {
    const V4 x = Load(row + j);
    lane_max = x > lane_max ? x : lane_max;
    lane_min = x < lane_min ? x : lane_min;
  }
  float max = std::max(std::max(lane_max[0], lane_max[1]), std::max(lane_max[2], lane_max[3]));
  float min = std::min(std::min(lane_min[0], lane_min[1]), std::min(lane_min[2], lane_min[3]));
  for (int32_t j = body; j < visible; ++j) {
    max = std::max(max, row[j]);
    min = std::min(min, row[j]);
  }
  // Rows whose logits span less than 87 (nearly all: softmax weights below
  // e^-87 ~ 1.6e-38 are rare) take the faster exp; the results are the same.
  return min - max >= -87.0f ? ExpRowFrom<false>(row, visible, max)
                             : ExpRowFrom<true>(row, visible, max);
}

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

// reduced[j] = reduce_g( sum_r A[g][r][j] ): the attention key j receives from
// every query row of q head g, then reduced over the group. Written, not added
// (to scratch->total, [n]). The whole group is reduced per call (max of the
// sums, not sum of the maxes).
void ReducedAttentionSum(const StreamKeys& keys, const GroupQueries& queries, GroupReduce reduce,
                         Scratch* scratch) {
  const int32_t n = keys.num_tokens;
  const int32_t d = keys.head_dim;
  const int32_t w = queries.num_queries;
  std::vector<float>& reduced = scratch->total;
  std::vector<float>& head_sum = scratch->head_sum;
  reduced.assign(n, 0.0f);
  if (n == 0 || w == 0) return;

  const float* k = PackKeys(keys, &scratch->packed_keys);
  const float* q = AsFloat(queries.data, static_cast<size_t>(queries.group_size) * w * d,
                           queries.dtype, &scratch->queries);
  scratch->visible.resize(w);
  for (int32_t r = 0; r < w; ++r) scratch->visible[r] = VisibleKeys(keys, queries.positions[r]);

  for (int32_t g = 0; g < queries.group_size; ++g) {
    head_sum.assign(n, 0.0f);
    float* sum_of_rows = head_sum.data();
    ForEachAttentionRow(k, n, d, q + static_cast<size_t>(g) * w * d, scratch->visible.data(), w,
                        scratch, [&](int32_t, const float* e, int32_t seen, float sum) {
                          for (int32_t j = 0; j < seen; ++j) sum_of_rows[j] += e[j] / sum;
                        });
    if (reduce == GroupReduce::kMax) {
      // Sums are >= 0, so the first head's sum may start the max.
      for (int32_t j = 0; j < n; ++j) {
        reduced[j] = g == 0 ? head_sum[j] : std::max(reduced[j], head_sum[j]);
      }
    } else {
      for (int32_t j = 0; j < n; ++j) reduced[j] += head_sum[j];
    }
  }
  if (reduce == GroupReduce::kMean) {
    for (float& v : reduced) v /= static_cast<float>(queries.group_size);
  }
}

// out[j] = pool over in[j - k/2, j + k/2], stride 1, as PyTorch's avg_pool1d
// (count_include_pad=True: zeros outside [0, n), always divided by k, so edge
// scores are damped) and max_pool1d (-inf outside, which never wins because
// in[j] itself is always inside the window). `out` must not alias `in`.
void Pool1d(const float* in, int32_t n, int32_t kernel_size, Pooling pooling, float* out) {
  const int64_t half = kernel_size / 2;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t lo = std::max<int64_t>(0, j - half);
    const int64_t hi = std::min<int64_t>(n - 1, j + half);
    if (pooling == Pooling::kMax) {
      float m = in[lo];
      for (int64_t i = lo + 1; i <= hi; ++i) m = std::max(m, in[i]);
      out[j] = m;
    } else if (pooling == Pooling::kAvg) {
      float sum = 0.0f;
      for (int64_t i = lo; i <= hi; ++i) sum += in[i];
      out[j] = sum / static_cast<float>(kernel_size);
    } else {
      out[j] = in[j];
    }
  }
}

// One stream of splitmix64 (Steele et al.): fully specified, so RandomScores
// gives the same values on every platform (std:: distributions do not).
uint64_t SplitMix64Next(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

absl::Status SnapKVScores(const StreamKeys& keys, const GroupQueries& window,
                          const SnapKVOptions& options, absl::Span<float> scores) {
  HEADPAGE_RETURN_IF_ERROR(ValidateKeys(keys));
  HEADPAGE_RETURN_IF_ERROR(ValidateQueries(window, keys));
  if (options.kernel_size < 1 || options.kernel_size % 2 == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kernel_size must be odd and positive (1 disables pooling), got ", options.kernel_size));
  }
  HEADPAGE_RETURN_IF_ERROR(ValidatePooling(options.pooling));
  HEADPAGE_RETURN_IF_ERROR(ValidateReduce(options.reduce));
  HEADPAGE_RETURN_IF_ERROR(ValidateSize(scores.size(), keys.num_tokens, "scores"));

  Scratch& scratch = ThreadScratch();
  ReducedAttentionSum(keys, window, options.reduce, &scratch);
  const std::vector<float>& reduced = scratch.total;

  // The window starts at its lowest query position; the keys before it (a slot
  // prefix) are the candidates that get pooled. Pooling stops at the window so
  // that the window's own (large, recent) scores do not leak into the prefix
  // edge: SnapKV pools only the L - w prefix columns. No queries: no window.
  int32_t window_start = std::numeric_limits<int32_t>::max();
  for (int32_t r = 0; r < window.num_queries; ++r) {
    window_start = std::min(window_start, window.positions[r]);
  }
  const int32_t prefix =
      keys.num_tokens == 0
          ? 0
          : static_cast<int32_t>(std::lower_bound(keys.positions, keys.positions + keys.num_tokens,
                                                  window_start) -
                                 keys.positions);
  Pool1d(reduced.data(), prefix, options.kernel_size, options.pooling, scores.data());
  std::copy(reduced.begin() + prefix, reduced.end(), scores.begin() + prefix);
  scratch.TrimIfLarge();
  return absl::OkStatus();
}

absl::Status AccumulateAttention(const StreamKeys& keys, const GroupQueries& queries,
                                 GroupReduce reduce, absl::Span<float> scores) {
  HEADPAGE_RETURN_IF_ERROR(ValidateKeys(keys));
  HEADPAGE_RETURN_IF_ERROR(ValidateQueries(queries, keys));
  HEADPAGE_RETURN_IF_ERROR(ValidateReduce(reduce));
  HEADPAGE_RETURN_IF_ERROR(ValidateSize(scores.size(), keys.num_tokens, "scores"));

  Scratch& scratch = ThreadScratch();
  ReducedAttentionSum(keys, queries, reduce, &scratch);
  for (int32_t j = 0; j < keys.num_tokens; ++j) scores[j] += scratch.total[j];
  scratch.TrimIfLarge();
  return absl::OkStatus();
}

absl::Status RecencyScores(const StreamKeys& keys, absl::Span<float> scores) {
  // Only positions are read, so a positions-only StreamKeys is enough.
  HEADPAGE_RETURN_IF_ERROR(ValidateKeyPositions(keys));
  HEADPAGE_RETURN_IF_ERROR(ValidateSize(scores.size(), keys.num_tokens, "scores"));
  // NOTE: positions above 2^24 round in float, so very distant neighbours may
  // tie; the order is never inverted (rounding is monotone).
  for (int32_t j = 0; j < keys.num_tokens; ++j) scores[j] = static_cast<float>(keys.positions[j]);
  return absl::OkStatus();
}

absl::Status TovaScores(absl::Span<const StreamKeys> layer_keys,
                        absl::Span<const GroupQueries> last_queries, absl::Span<float> scores) {
  if (layer_keys.empty()) {
    return absl::InvalidArgumentError("TOVA: layer_keys is empty (a layer has >= 1 KV head)");
  }
  if (last_queries.size() != layer_keys.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("TOVA: ", layer_keys.size(), " KV heads of keys but ", last_queries.size(),
                     " query groups"));
  }
  // Per head: the row holding its last query (highest position, first on ties).
  std::vector<int32_t> last_row(layer_keys.size());
  for (size_t h = 0; h < layer_keys.size(); ++h) {
    HEADPAGE_RETURN_IF_ERROR(ValidateKeys(layer_keys[h]));
    HEADPAGE_RETURN_IF_ERROR(ValidateQueries(last_queries[h], layer_keys[h]));
    const GroupQueries& q = last_queries[h];
    if (q.num_queries == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("TOVA: KV head ", h, " has no query (TOVA scores the last one)"));
    }
    int32_t best = 0;
    for (int32_t r = 1; r < q.num_queries; ++r) {
      if (q.positions[r] > q.positions[best]) best = r;
    }
    last_row[h] = best;
    // Every q head's last query is the same token's: differing positions mean
    // the caller mixed up the groups.
    const int32_t position = q.positions[best];
    const int32_t first = last_queries[0].positions[last_row[0]];
    if (position != first) {
      return absl::InvalidArgumentError(absl::StrCat(
          "TOVA: the last query is at position ", position, " for KV head ", h, " but at ",
          first, " for KV head 0"));
    }
  }
  // TOVA keeps one token set per layer, so the heads must hold the same one.
  const StreamKeys& head0 = layer_keys[0];
  for (size_t h = 1; h < layer_keys.size(); ++h) {
    const StreamKeys& kh = layer_keys[h];
    if (kh.num_tokens != head0.num_tokens ||
        !std::equal(kh.positions, kh.positions + kh.num_tokens, head0.positions)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "TOVA: KV head ", h, " holds different positions from KV head 0 (", kh.num_tokens,
          " vs ", head0.num_tokens, " tokens); TOVA keeps one token set per layer"));
    }
  }
  HEADPAGE_RETURN_IF_ERROR(ValidateSize(scores.size(), head0.num_tokens, "scores"));

  const int32_t n = head0.num_tokens;
  Scratch& scratch = ThreadScratch();
  std::vector<float>& total = scratch.total;
  total.assign(n, 0.0f);
  int64_t num_q_heads = 0;
  for (size_t h = 0; h < layer_keys.size(); ++h) {
    const StreamKeys& keys = layer_keys[h];
    const GroupQueries& q = last_queries[h];
    const int32_t d = keys.head_dim;
    num_q_heads += q.group_size;
    const int32_t seen = VisibleKeys(keys, q.positions[last_row[h]]);
    if (seen == 0) continue;  // the last query sees no key: nothing to add
    // The last row of each q head, [group_size][d] as float.
    scratch.rows.resize(static_cast<size_t>(q.group_size) * d);
    for (int32_t g = 0; g < q.group_size; ++g) {
      const size_t row = (static_cast<size_t>(g) * q.num_queries + last_row[h]) * d;
      for (int32_t c = 0; c < d; ++c) {
        scratch.rows[static_cast<size_t>(g) * d + c] = LoadAsFloat(q.data, row + c, q.dtype);
      }
    }
    scratch.visible.assign(q.group_size, seen);
    const float* k = PackKeys(keys, &scratch.packed_keys);
    ForEachAttentionRow(k, n, d, scratch.rows.data(), scratch.visible.data(), q.group_size,
                        &scratch, [&](int32_t, const float* e, int32_t, float sum) {
                          for (int32_t j = 0; j < seen; ++j) total[j] += e[j] / sum;
                        });
  }
  for (int32_t j = 0; j < n; ++j) scores[j] = total[j] / static_cast<float>(num_q_heads);
  scratch.TrimIfLarge();
  return absl::OkStatus();
}

absl::Status KeyNormScores(const StreamKeys& keys, absl::Span<float> scores) {
  HEADPAGE_RETURN_IF_ERROR(ValidateKeys(keys));
  HEADPAGE_RETURN_IF_ERROR(ValidateSize(scores.size(), keys.num_tokens, "scores"));
  const size_t d = static_cast<size_t>(keys.head_dim);
  for (int32_t j = 0; j < keys.num_tokens; ++j) {
    float sum_sq = 0.0f;
    for (size_t c = 0; c < d; ++c) {
      const float x = LoadAsFloat(keys.data, j * d + c, keys.dtype);
      sum_sq += x * x;
    }
    scores[j] = -std::sqrt(sum_sq);
  }
  return absl::OkStatus();
}

void RandomScores(uint64_t seed, absl::Span<float> scores) {
  uint64_t state = seed;
  for (float& s : scores) {
    // The top 24 bits fill a float's significand exactly: k / 2^24 < 1.
    s = static_cast<float>(SplitMix64Next(&state) >> 40) * 0x1p-24f;
  }
}

absl::Status LastQueryAttention(const StreamKeys& keys, const GroupQueries& query,
                                absl::Span<float> rows) {
  HEADPAGE_RETURN_IF_ERROR(ValidateKeys(keys));
  HEADPAGE_RETURN_IF_ERROR(ValidateQueries(query, keys));
  if (query.num_queries != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LastQueryAttention needs exactly one query (num_queries == 1), got ", query.num_queries));
  }
  const int64_t n = keys.num_tokens;
  HEADPAGE_RETURN_IF_ERROR(ValidateSize(rows.size(), query.group_size * n, "rows"));

  const int32_t seen = VisibleKeys(keys, query.positions[0]);
  if (seen == 0) {  // the query sees no key: all rows are zero
    std::fill(rows.begin(), rows.end(), 0.0f);
    return absl::OkStatus();
  }
  const int32_t d = keys.head_dim;
  Scratch& scratch = ThreadScratch();
  const float* k = PackKeys(keys, &scratch.packed_keys);
  const float* q = AsFloat(query.data, static_cast<size_t>(query.group_size) * d, query.dtype,
                           &scratch.queries);
  scratch.visible.assign(query.group_size, seen);
  ForEachAttentionRow(k, keys.num_tokens, d, q, scratch.visible.data(), query.group_size, &scratch,
                      [&](int32_t g, const float* e, int32_t, float sum) {
                        float* row = rows.data() + g * n;
                        for (int32_t j = 0; j < seen; ++j) row[j] = e[j] / sum;
                        std::fill(row + seen, row + n, 0.0f);  // keys the query cannot see
                      });
  scratch.TrimIfLarge();
  return absl::OkStatus();
}

}  // namespace headpage::policy
