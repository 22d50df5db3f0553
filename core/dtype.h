// SPDX-License-Identifier: Apache-2.0
// File: core/dtype.h
//
// The cache dtypes on the host. `f16` and `bf16` are 16-bit storage types whose
// conversions from float round to nearest even, bit for bit as CUDA's
// __float2half_rn and __float2bfloat16_rn do, so bytes written on the host and on
// the device are interchangeable (a .cu file reinterpret_casts them to __half and
// __nv_bfloat16). Arithmetic happens in float.
//
// KvDType says how pages store K and V: in the model's dtype (`kAuto`, vLLM's
// word for it), or as fp8 e4m3 with one float scale per token and stream
// (`kFP8E4M3`; docs/architecture.md "fp8 pages" says why per token). The fp8
// conversions here are bit for bit CUDA's __nv_cvt_float_to_fp8(x, __NV_SATFINITE,
// __NV_E4M3) and its inverse, so a page quantized on the host reads the same on
// the device.
//
// This header is plain C++ (no Abseil), so .cu files may include it.
#ifndef HEADPAGE_CORE_DTYPE_H_
#define HEADPAGE_CORE_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

namespace headpage {

enum class DType : uint8_t { kF32 = 0, kF16 = 1, kBF16 = 2 };

// Bytes per element; 0 for a value outside the enum (which Validate() rejects).
constexpr size_t SizeOf(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 4;
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
  }
  return 0;
}

constexpr const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
  }
  return "unknown";
}

// How pages store K and V (PagedKV::kv_dtype, CacheGeometry::kv_dtype).
enum class KvDType : uint8_t { kAuto = 0, kFP8E4M3 = 1 };

constexpr const char* KvDTypeName(KvDType kv_dtype) {
  switch (kv_dtype) {
    case KvDType::kAuto: return "auto";
    case KvDType::kFP8E4M3: return "fp8_e4m3";
  }
  return "unknown";
}

constexpr bool IsKnown(KvDType kv_dtype) {
  return kv_dtype == KvDType::kAuto || kv_dtype == KvDType::kFP8E4M3;
}

// Bytes of one stored K or V element: the model dtype's, or 1 for fp8.
constexpr size_t KvElementBytes(DType dtype, KvDType kv_dtype) {
  return kv_dtype == KvDType::kFP8E4M3 ? 1 : SizeOf(dtype);
}

inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float BitsToFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// IEEE binary16.
struct f16 {
  uint16_t bits = 0;

  static f16 FromBits(uint16_t b) { return f16{b}; }

  // Round to nearest even. NaN becomes 0x7fff, as CUDA's host conversion gives.
  static f16 FromFloat(float f) {
    const uint32_t u = FloatBits(f);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return f16{0x7fff};                          // NaN
    if (abs >= 0x477ff000u) return f16{static_cast<uint16_t>(sign | 0x7c00u)};  // rounds to inf
    if (abs >= 0x38800000u) {  // normal half: exponent rebias by 112
      const uint32_t mant_round = abs + 0x0fffu + ((abs >> 13) & 1u);
      return f16{static_cast<uint16_t>(sign | ((mant_round - 0x38000000u) >> 13))};
    }
    if (abs < 0x33000000u) return f16{static_cast<uint16_t>(sign)};  // below half the smallest subnormal
    // Subnormal half: shift the full significand into place, rounding to nearest even.
    const uint32_t exp = abs >> 23;
    const uint32_t mant = (abs & 0x007fffffu) | 0x00800000u;
    const uint32_t shift = 126u - exp;  // 14..24
    uint32_t half = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (half & 1u))) ++half;
    return f16{static_cast<uint16_t>(sign | half)};
  }

  float ToFloat() const {
    const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
    const uint32_t exp = (bits >> 10) & 0x1fu;
    uint32_t mant = bits & 0x3ffu;
    if (exp == 0x1f) return BitsToFloat(sign | 0x7f800000u | (mant << 13));
    if (exp != 0) return BitsToFloat(sign | ((exp + 112u) << 23) | (mant << 13));
    if (mant == 0) return BitsToFloat(sign);
    // Subnormal: normalize.
    int e = -1;
    do {
      mant <<= 1;
      ++e;
    } while ((mant & 0x400u) == 0);
    return BitsToFloat(sign | ((112u - e) << 23) | ((mant & 0x3ffu) << 13));
  }
};

// bfloat16: the top 16 bits of a float.
struct bf16 {
  uint16_t bits = 0;

  static bf16 FromBits(uint16_t b) { return bf16{b}; }

  // Round to nearest even. NaN becomes 0x7fff, as CUDA's host conversion gives.
  static bf16 FromFloat(float f) {
    const uint32_t u = FloatBits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{0x7fff};
    return bf16{static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
  }

  float ToFloat() const { return BitsToFloat(static_cast<uint32_t>(bits) << 16); }
};

static_assert(sizeof(f16) == 2 && sizeof(bf16) == 2, "16-bit storage types");

// fp8 e4m3 ("fn": no infinities): 1 sign, 4 exponent (bias 7), 3 mantissa bits;
// the largest finite value is 448, the smallest subnormal 2^-9, and 0x7f / 0xff
// are NaN.
struct fp8_e4m3 {
  uint8_t bits = 0;

  static constexpr float kMax = 448.0f;

  static fp8_e4m3 FromBits(uint8_t b) { return fp8_e4m3{b}; }

  // Round to nearest even, saturating: beyond +-448 (infinities included) gives
  // +-448, NaN gives 0x7f.
  static fp8_e4m3 FromFloat(float f) {
    const uint32_t u = FloatBits(f);
    const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
    const uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return fp8_e4m3{0x7f};                    // NaN
    if (abs >= 0x43e00000u) return fp8_e4m3{static_cast<uint8_t>(sign | 0x7eu)};  // >= 448
    if (abs >= 0x3c800000u) {  // >= 2^-6: a normal e4m3, exponent rebias by 120
      const uint32_t rounded = abs + 0x7ffffu + ((abs >> 20) & 1u);
      // Below 448 the rounding reaches at most 448 itself (0x7e).
      return fp8_e4m3{static_cast<uint8_t>(sign | ((rounded >> 20) - (120u << 3)))};
    }
    // Subnormal (or, rounding up, the smallest normal): |f| * 2^9 is exact;
    // round it to an integer, nearest even, in 0..8.
    const float scaled = BitsToFloat(abs) * 512.0f;
    uint32_t q = static_cast<uint32_t>(scaled);
    const float rem = scaled - static_cast<float>(q);
    if (rem > 0.5f || (rem == 0.5f && (q & 1u))) ++q;
    return fp8_e4m3{static_cast<uint8_t>(sign | q)};
  }

  float ToFloat() const {
    const uint32_t exp = (bits >> 3) & 0xfu;
    const uint32_t mant = bits & 0x7u;
    const float sign = (bits & 0x80u) ? -1.0f : 1.0f;
    if (exp == 0xfu && mant == 0x7u) return BitsToFloat(0x7fc00000u);  // NaN
    if (exp == 0) return sign * static_cast<float>(mant) * (1.0f / 512.0f);
    return sign * BitsToFloat(((exp + 120u) << 23) | (mant << 20));
  }
};

static_assert(sizeof(fp8_e4m3) == 1, "8-bit storage type");

// The per-token quantization of fp8 pages: a row x of n floats is stored as
// q_i = fp8(x_i * min(448 / amax, FLT_MAX)) with scale = amax / 448,
// amax = max_i |x_i|, and reads back as q_i * scale. A row of zeros has scale
// 0; a row so small that 448 / amax overflows keeps its zeros zero (0 * inf
// would be NaN). The device computes the same divisions, minimum and product
// per element (kernels/write_kv.cu), so the bytes agree. Returns the scale.
inline float QuantizeRowFp8(const float* x, size_t n, fp8_e4m3* q) {
  float amax = 0.0f;
  for (size_t i = 0; i < n; ++i) {
    const float a = x[i] < 0.0f ? -x[i] : x[i];
    amax = a > amax ? a : amax;  // a NaN element is skipped here and stored as NaN
  }
  constexpr float kFloatMax = std::numeric_limits<float>::max();
  float inv = amax > 0.0f ? fp8_e4m3::kMax / amax : 0.0f;
  inv = inv < kFloatMax ? inv : kFloatMax;
  for (size_t i = 0; i < n; ++i) q[i] = fp8_e4m3::FromFloat(x[i] * inv);
  return amax / fp8_e4m3::kMax;
}

// Reads element i of an array of `dtype` as float.
inline float LoadAsFloat(const void* data, size_t i, DType dtype) {
  switch (dtype) {
    case DType::kF32: return static_cast<const float*>(data)[i];
    case DType::kF16: return static_cast<const f16*>(data)[i].ToFloat();
    case DType::kBF16: return static_cast<const bf16*>(data)[i].ToFloat();
  }
  return 0.0f;
}

// Writes `value` rounded to `dtype` as element i.
inline void StoreFromFloat(void* data, size_t i, DType dtype, float value) {
  switch (dtype) {
    case DType::kF32: static_cast<float*>(data)[i] = value; return;
    case DType::kF16: static_cast<f16*>(data)[i] = f16::FromFloat(value); return;
    case DType::kBF16: static_cast<bf16*>(data)[i] = bf16::FromFloat(value); return;
  }
}

}  // namespace headpage

#endif  // HEADPAGE_CORE_DTYPE_H_
