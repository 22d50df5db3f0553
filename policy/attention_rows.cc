// SPDX-License-Identifier: Apache-2.0
// The out-of-line half of attention_rows.h: the vector exp and the row
// softmax, key packing and widening, and the per-thread scratch.
#include "policy/attention_rows.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace headpage::policy::internal {
namespace {

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

}  // namespace

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

const float* AsFloat(const void* data, size_t count, DType dtype, std::vector<float>* storage) {
  if (dtype == DType::kF32) return static_cast<const float*>(data);
  storage->resize(count);
  for (size_t i = 0; i < count; ++i) (*storage)[i] = LoadAsFloat(data, i, dtype);
  return storage->data();
}

int32_t VisibleKeys(const StreamKeys& keys, int32_t position) {
  if (keys.num_tokens == 0) return 0;
  return static_cast<int32_t>(
      std::upper_bound(keys.positions, keys.positions + keys.num_tokens, position) -
      keys.positions);
}

Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

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

}  // namespace headpage::policy::internal
