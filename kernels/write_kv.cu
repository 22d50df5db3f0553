// SPDX-License-Identifier: Apache-2.0
// File: kernels/write_kv.cu
//
// WriteKV on the GPU: one thread per 16-byte vector of a (token, kv head) row,
// so consecutive threads write consecutive bytes of a row and a warp covers
// whole rows (a 128-dim bf16 row is 16 vectors). K and V of a row go out
// together; the row's first thread also stores the position.
//
// fp8 pages: one warp per (token, kv head), each lane on head_dim / 32
// contiguous elements of the K and of the V row, quantized by
// QuantizeFp8RowPart (cuda_common.cuh) to the host's bytes and scales.
#include "kernels/cuda_common.cuh"
#include "kernels/write_kv_args.h"

namespace headpage::gpu::internal {
namespace {

template <int kRowVectors>
__global__ void WriteKVKernel(WriteKVArgs args, int64_t num_vectors) {
  const PagedKV& cache = args.cache;
  const int64_t row_bytes = static_cast<int64_t>(kRowVectors) * kVectorBytes;
  const int64_t elem_bytes = row_bytes / cache.head_dim;
  const auto* keys = static_cast<const Vector*>(args.keys);
  const auto* values = static_cast<const Vector*>(args.values);
  auto* base = static_cast<char*>(cache.data);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < num_vectors;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / kRowVectors;  // token * num_kv_heads + head
    const int32_t vector = static_cast<int32_t>(i - row * kRowVectors);
    const int64_t token = row / args.num_kv_heads;
    const int64_t head = row - token * args.num_kv_heads;
    const int32_t slot = args.slot_mapping[token * args.slot_stride + head];
    if (slot < 0 || slot >= cache.num_slots()) continue;
    auto* key_row = reinterpret_cast<Vector*>(base + cache.KeyOffset(slot) * elem_bytes);
    auto* value_row = reinterpret_cast<Vector*>(base + cache.ValueOffset(slot) * elem_bytes);
    key_row[vector] = keys[i];
    value_row[vector] = values[i];
    if (vector == 0) cache.positions[slot] = args.positions[token];
  }
}

constexpr int kWarpSize = 32;
constexpr int kFp8Threads = 256;
constexpr int kFp8WarpsPerBlock = kFp8Threads / kWarpSize;

template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kFp8Threads)
    WriteKVFp8Kernel(WriteKVArgs args, int64_t num_rows) {
  constexpr int kPerLane = kHeadDim / kWarpSize;
  static_assert(kPerLane % 2 == 0 && kPerLane * kWarpSize == kHeadDim, "whole pairs per lane");
  const PagedKV& cache = args.cache;
  const int lane = threadIdx.x % kWarpSize;
  auto* base = static_cast<uint8_t*>(cache.data);
  const auto* keys = static_cast<const T*>(args.keys);
  const auto* values = static_cast<const T*>(args.values);
  // Whole warps stride over the rows, so every shuffle has its full warp.
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kFp8WarpsPerBlock;
  for (int64_t row = blockIdx.x * static_cast<int64_t>(kFp8WarpsPerBlock) + threadIdx.x / kWarpSize;
       row < num_rows; row += warps) {
    const int64_t token = row / args.num_kv_heads;
    const int64_t head = row - token * args.num_kv_heads;
    const int32_t slot = args.slot_mapping[token * args.slot_stride + head];
    if (slot < 0 || slot >= cache.num_slots()) continue;
    const int64_t in = row * kHeadDim + lane * kPerLane;
    const float key_scale = QuantizeFp8RowPart<T, kPerLane>(
        keys + in, base + cache.KeyOffset(slot) + lane * kPerLane);
    const float value_scale = QuantizeFp8RowPart<T, kPerLane>(
        values + in, base + cache.ValueOffset(slot) + lane * kPerLane);
    if (lane == 0) {
      reinterpret_cast<float2*>(cache.scales)[slot] = make_float2(key_scale, value_scale);
      cache.positions[slot] = args.positions[token];
    }
  }
}

LaunchResult LaunchWriteKVFp8(const WriteKVArgs& args, GpuStream stream) {
  return DispatchDTypeAndHeadDim(args.cache.dtype, args.cache.head_dim, [&](auto dtype_tag,
                                                                           auto head_dim_tag) {
    using T = typename decltype(dtype_tag)::type;
    // Validate() refuses fp8 pages over f32; the switch refuses it too.
    if constexpr (std::is_same_v<T, float>) {
      return Unsupported(LaunchResult::Kind::kUnsupportedDType);
    } else {
      const int64_t num_rows = static_cast<int64_t>(args.num_tokens) * args.num_kv_heads;
      const int64_t blocks = CeilDiv(num_rows, kFp8WarpsPerBlock) < 65536
                                 ? CeilDiv(num_rows, kFp8WarpsPerBlock)
                                 : 65536;
      WriteKVFp8Kernel<T, decltype(head_dim_tag)::value>
          <<<static_cast<unsigned>(blocks), kFp8Threads, 0, stream>>>(args, num_rows);
      return CheckLaunch();
    }
  });
}

}  // namespace

LaunchResult LaunchWriteKV(const WriteKVArgs& args, GpuStream stream) {
  if (args.cache.fp8()) return LaunchWriteKVFp8(args, stream);
  return DispatchDTypeAndHeadDim(args.cache.dtype, args.cache.head_dim, [&](auto dtype_tag,
                                                                           auto head_dim_tag) {
    using T = typename decltype(dtype_tag)::type;
    constexpr int kRowVectors = decltype(head_dim_tag)::value * sizeof(T) / kVectorBytes;
    const int64_t num_vectors =
        static_cast<int64_t>(args.num_tokens) * args.num_kv_heads * kRowVectors;
    constexpr int kThreads = 256;
    // A grid-stride loop: enough blocks to fill the GPU, never more than the work.
    const int64_t blocks = CeilDiv(num_vectors, kThreads) < 65536 ? CeilDiv(num_vectors, kThreads)
                                                                   : 65536;
    WriteKVKernel<kRowVectors><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        args, num_vectors);
    return CheckLaunch();
  });
}

}  // namespace headpage::gpu::internal
