// SPDX-License-Identifier: Apache-2.0
// File: kernels/cuda_common.cuh
//
// What every .cu file of kernels/ shares: the dtype and head_dim dispatch (the
// only compile-time parameters, DESIGN.md "Kernels"), launch checking, float
// conversion of the storage types, and the clamp of a stream's length to its
// block-table row. The tensor-core and cp.async primitives of the attention
// kernels are in cuda_mma.cuh. CUDA and plain headers only.
#ifndef HEADPAGE_KERNELS_CUDA_COMMON_CUH_
#define HEADPAGE_KERNELS_CUDA_COMMON_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "core/dtype.h"
#include "kernels/gpu_launch.h"
#include "kernels/supported.h"

namespace headpage::gpu::internal {

template <typename T>
struct DTypeTag {
  using type = T;
};
template <int kHeadDim>
using HeadDimTag = std::integral_constant<int, kHeadDim>;

// The storage type of a DType on the device.
template <DType kDType> struct CudaType;
template <> struct CudaType<DType::kF32> { using type = float; };
template <> struct CudaType<DType::kF16> { using type = __half; };
template <> struct CudaType<DType::kBF16> { using type = __nv_bfloat16; };

// A runtime call's error as a LaunchResult. A failed call also leaves its error
// as the thread's last error; it is cleared here, where it is reported, so that
// the next op's CheckLaunch does not report it again as its own. (A sticky
// error, a fault in a kernel, stays: every later call returns it.)
inline LaunchResult CudaErrorResult(cudaError_t error) {
  if (error == cudaSuccess) return LaunchResult{};
  static_cast<void>(cudaGetLastError());
  LaunchResult result;
  result.kind = LaunchResult::Kind::kCudaError;
  result.cuda_error = static_cast<int>(error);
  result.cuda_message = cudaGetErrorString(error);
  return result;
}

// After a launch: the launch's own error (bad configuration, too much shared
// memory). Asynchronous faults surface at the caller's next synchronization.
inline LaunchResult CheckLaunch() { return CudaErrorResult(cudaGetLastError()); }

inline LaunchResult Unsupported(LaunchResult::Kind kind) {
  LaunchResult result;
  result.kind = kind;
  return result;
}

// The exhaustive switches. `f` is a generic lambda taking a DTypeTag<T> (resp.
// a HeadDimTag<D>) and returning a LaunchResult; a value outside the switch is
// an error result, never a silent fallback.
template <typename F>
LaunchResult DispatchDType(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kF32: return f(DTypeTag<float>{});
    case DType::kF16: return f(DTypeTag<__half>{});
    case DType::kBF16: return f(DTypeTag<__nv_bfloat16>{});
  }
  return Unsupported(LaunchResult::Kind::kUnsupportedDType);
}

template <typename F>
LaunchResult DispatchHeadDim(int32_t head_dim, F&& f) {
  static_assert(sizeof(kSupportedHeadDims) / sizeof(kSupportedHeadDims[0]) == 3 &&
                    kSupportedHeadDims[0] == 64 && kSupportedHeadDims[1] == 128 &&
                    kSupportedHeadDims[2] == 256,
                "DispatchHeadDim's cases must be exactly kSupportedHeadDims");
  switch (head_dim) {
    case 64: return f(HeadDimTag<64>{});
    case 128: return f(HeadDimTag<128>{});
    case 256: return f(HeadDimTag<256>{});
  }
  return Unsupported(LaunchResult::Kind::kUnsupportedHeadDim);
}

template <typename F>
LaunchResult DispatchDTypeAndHeadDim(DType dtype, int32_t head_dim, F&& f) {
  return DispatchDType(dtype, [&](auto dtype_tag) {
    return DispatchHeadDim(head_dim, [&](auto head_dim_tag) { return f(dtype_tag, head_dim_tag); });
  });
}

__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(__half x) { return __half2float(x); }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ float FromFloat<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half FromFloat<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Bytes moved per vector access: rows of every supported head_dim and dtype
// are multiples of it, and pages start 16-byte aligned (the arenas align them).
inline constexpr int kVectorBytes = 16;
using Vector = uint4;

template <typename T>
constexpr int ElementsPerVector() { return kVectorBytes / static_cast<int>(sizeof(T)); }

__host__ __device__ inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Programmatic dependent launch (sm_90). A kernel launched with
// LaunchOverlappingTail may be scheduled while the kernel ahead of it in the
// stream still runs, once every block of that kernel has called
// AllowDependentLaunch (or exited), so that its launch and the start of its
// blocks hide under the other's last wave. Such a kernel calls
// WaitForPrerequisiteGrids before it reads anything the kernel ahead wrote (or
// writes anything it reads); the wait returns once that kernel has finished
// and its writes are visible. AllowDependentLaunch only matters to a kernel
// launched that way next; WaitForPrerequisiteGrids returns at once in a kernel
// launched the ordinary way.
__device__ __forceinline__ void AllowDependentLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void WaitForPrerequisiteGrids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Whether every architecture this file is compiled for has the wait: a build
// that also holds older code (which a newer GPU could run, compiled from its
// PTX) has kernels whose wait is compiled out, so they launch the ordinary way.
constexpr bool EveryArchWaitsForPrerequisites() {
#if defined(__CUDA_ARCH_LIST__)
  constexpr int kArchs[] = {__CUDA_ARCH_LIST__};
  for (const int arch : kArchs) {
    if (arch < 900) return false;
  }
  return true;
#else
  return false;
#endif
}

// Launches `kernel` on a 1-D grid with the launch attributes `attrs` (the
// extended launch: clusters, programmatic serialization). The caller's
// attributes outlive the call; cudaLaunchKernelEx copies what it needs.
template <typename... Params, typename... Args>
LaunchResult LaunchWithAttributes(void (*kernel)(Params...), unsigned blocks, unsigned threads,
                                  size_t smem_bytes, GpuStream stream, cudaLaunchAttribute* attrs,
                                  unsigned num_attrs, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(blocks);
  config.blockDim = dim3(threads);
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  config.attrs = num_attrs > 0 ? attrs : nullptr;
  config.numAttrs = num_attrs;
  return CudaErrorResult(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

template <typename... Params, typename... Args>
LaunchResult LaunchOverlappingTail(void (*kernel)(Params...), unsigned blocks, unsigned threads,
                                   size_t smem_bytes, GpuStream stream, Args&&... args) {
  cudaLaunchAttribute overlap[1];
  overlap[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  overlap[0].val.programmaticStreamSerializationAllowed = 1;
  return LaunchWithAttributes(kernel, blocks, threads, smem_bytes, stream, overlap,
                              EveryArchWaitsForPrerequisites() ? 1u : 0u,
                              std::forward<Args>(args)...);
}

// Every lane of a warp, for the *_sync intrinsics.
inline constexpr unsigned kFullMask = 0xffffffffu;

// Warp-wide inclusive prefix sum over the lanes (lane 0 first), added in a
// fixed order: the same bits on every run, for floating-point sums too.
template <typename T>
__device__ __forceinline__ T LaneInclusiveSum(T x, int lane) {
#pragma unroll
  for (int d = 1; d < 32; d *= 2) {
    const T below = __shfl_up_sync(kFullMask, x, d);
    if (lane >= d) x += below;
  }
  return x;
}

// The length of stream `stream` as a kernel may use it: lens[stream], cut to
// the tokens of the stream's own block-table row (indptr[stream]..
// indptr[stream + 1] of page ids). The lengths live on the device, where the
// host never checked them; a longer one would read the next row's (or past the
// last row's) page ids. Computed in Int, the width the caller indexes with.
template <typename Int>
__device__ __forceinline__ Int TableClampedLength(const int32_t* lens, const int32_t* indptr,
                                                  Int stream, int32_t page_size) {
  const Int table_tokens = static_cast<Int>(indptr[stream + 1] - indptr[stream]) * page_size;
  return min(static_cast<Int>(lens[stream]), table_tokens);
}

// ---- fp8 pages (issue #18) -------------------------------------------------
// Pages of kv_dtype kFP8E4M3 store one byte per K/V element and a float scale
// per slot and part (core/paged_kv.h). What follows lets a kernel dispatch on
// the stored element and convert it exactly as the host does (core/dtype.h,
// core/kv_rows.h).

// Dispatches on what a page stores: f(DTypeTag<S>{}) with S the model dtype's
// device type for kAuto, __nv_fp8_e4m3 for fp8 pages (which ValidatePagedKV
// admits over f16 and bf16 only: f32 is kUnsupportedDType here). For kernels
// that move stored bytes and need only sizeof(S).
template <typename F>
LaunchResult DispatchKvElement(DType dtype, KvDType kv_dtype, F&& f) {
  switch (kv_dtype) {
    case KvDType::kAuto: return DispatchDType(dtype, f);
    case KvDType::kFP8E4M3:
      if (dtype == DType::kF16 || dtype == DType::kBF16) return f(DTypeTag<__nv_fp8_e4m3>{});
      return Unsupported(LaunchResult::Kind::kUnsupportedDType);
  }
  return Unsupported(LaunchResult::Kind::kUnsupportedDType);
}

template <typename F>
LaunchResult DispatchKvElementAndHeadDim(DType dtype, KvDType kv_dtype, int32_t head_dim, F&& f) {
  return DispatchKvElement(dtype, kv_dtype, [&](auto element_tag) {
    return DispatchHeadDim(head_dim,
                           [&](auto head_dim_tag) { return f(element_tag, head_dim_tag); });
  });
}

// An fp8 e4m3 byte as float, exactly (every e4m3 value is a half; NaN stays NaN).
__device__ __forceinline__ float Fp8ToFloat(uint8_t bits) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(bits, __NV_E4M3)));
}

// Element `bits` of an fp8 row with scale `scale`, dequantized: the byte's
// value times the scale, one rounding (core/kv_rows.h LoadKvElement).
__device__ __forceinline__ float DequantizeFp8(uint8_t bits, float scale) {
  return __fmul_rn(Fp8ToFloat(bits), scale);
}

// The same, rounded to the model dtype T: how the scorers read fp8 keys, on
// the host through GatherKV (core/kv_rows.h LoadKvRowInModelDtype) as here.
template <typename T>
__device__ __forceinline__ T DequantizeFp8As(uint8_t bits, float scale) {
  return FromFloat<T>(DequantizeFp8(bits, scale));
}

// Two floats to two e4m3 bytes (x the low one), rounding to nearest even and
// saturating to +-448, as fp8_e4m3::FromFloat does on the host.
__device__ __forceinline__ uint16_t FloatsToFp8x2(float x, float y) {
  return __nv_cvt_float2_to_fp8x2(make_float2(x, y), __NV_SATFINITE, __NV_E4M3);
}

// An unsigned type of exactly kBytes bytes (2, 4, 8, 16), for one aligned
// access to that many bytes of a row.
template <int kBytes> struct AlignedBytes;
template <> struct AlignedBytes<2> { using type = uint16_t; };
template <> struct AlignedBytes<4> { using type = uint32_t; };
template <> struct AlignedBytes<8> { using type = uint2; };
template <> struct AlignedBytes<16> { using type = uint4; };

// A lane's kPerLane elements of one row (of the model dtype T) quantized to
// e4m3, the row being kPerLane * 32 elements over the warp, which reduces its
// amax (fmaxf skips NaN, as the host's comparison does); every lane of the
// warp calls it. Writes the kPerLane bytes to `out` and returns the row's
// scale. The same IEEE operations as QuantizeRowFp8 (core/dtype.h): inv = 448
// / amax, one product x * inv, a saturating round-to-nearest-even conversion,
// scale = amax / 448; explicit _rn intrinsics hold to that whatever the
// compiler flags (no FMA, no approximate division), so the bytes and scales
// equal the host's. WriteKV and DecodeAttention's new tokens both store so.
template <typename T, int kPerLane>
__device__ __forceinline__ float QuantizeFp8RowPart(const T* in, uint8_t* out) {
  using In = typename AlignedBytes<kPerLane * static_cast<int>(sizeof(T))>::type;
  using Out = typename AlignedBytes<kPerLane>::type;
  const In packed = *reinterpret_cast<const In*>(in);
  const T* x = reinterpret_cast<const T*>(&packed);
  float amax = 0.0f;
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) amax = fmaxf(amax, fabsf(ToFloat(x[e])));
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    amax = fmaxf(amax, __shfl_xor_sync(kFullMask, amax, offset));
  }
  // As QuantizeRowFp8: inf (a tiny amax) becomes FLT_MAX, so zeros stay zero.
  const float inv = amax > 0.0f ? fminf(__fdiv_rn(fp8_e4m3::kMax, amax), FLT_MAX) : 0.0f;
  Out q;
  auto* pairs = reinterpret_cast<uint16_t*>(&q);
#pragma unroll
  for (int e = 0; e < kPerLane; e += 2) {
    pairs[e / 2] =
        FloatsToFp8x2(__fmul_rn(ToFloat(x[e]), inv), __fmul_rn(ToFloat(x[e + 1]), inv));
  }
  *reinterpret_cast<Out*>(out) = q;
  return __fdiv_rn(amax, fp8_e4m3::kMax);
}

}  // namespace headpage::gpu::internal

#endif  // HEADPAGE_KERNELS_CUDA_COMMON_CUH_
