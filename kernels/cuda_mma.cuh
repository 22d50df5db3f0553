// SPDX-License-Identifier: Apache-2.0
// File: kernels/cuda_mma.cuh
//
// The PTX primitives the attention-style kernels (decode_attention*.cu,
// window_scores*.cu) share, each written once: asynchronous copies into shared
// memory, ldmatrix, the m16n8k16 tensor-core product (f16 and bf16), the fast
// exp2, and the 16-byte-chunk swizzle. Each wrapper is a single instruction;
// the callers decide the layouts. sm_80 or newer. CUDA and plain headers only.
#ifndef HEADPAGE_KERNELS_CUDA_MMA_CUH_
#define HEADPAGE_KERNELS_CUDA_MMA_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace headpage::gpu::internal {

// ---- exp2 and the constants of the exp2 domain -----------------------------

// Softmaxes run in the exp2 domain: logits are scaled by log2(e) once, and a
// log2-sum-exp2 is turned back into a natural log-sum-exp by ln(2).
inline constexpr float kLog2E = 1.4426950408889634f;
inline constexpr float kLn2 = 0.6931471805599453f;

// 2^x by the special-function unit (ex2.approx, denormals flushed); 2^-inf = 0.
__device__ __forceinline__ float FastExp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// ---- Asynchronous copies (cp.async) -----------------------------------------

// The shared-memory address of a generic pointer into shared memory.
__device__ __forceinline__ uint32_t SmemAddress(const void* smem) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(smem));
}

// 16 bytes global -> shared, bypassing L1; 16 zero bytes (nothing read) when
// !fill.
__device__ __forceinline__ void CpAsync16(uint32_t smem, const void* global, bool fill) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(global),
               "r"(fill ? 16 : 0)
               : "memory");
}
// CpAsync16, with L2 asked to fetch the 256 bytes around the address from DRAM
// at once (the prefetch-size hint) rather than each 32-byte sector as it is
// first asked for. For copies whose neighbours are read soon after. Measured
// per kernel (docs/performance.md): WindowScores' key tiles gain 3% on the H100;
// DecodeAttention's chunks and Compact's loads gain nothing, so they go without.
__device__ __forceinline__ void CpAsync16Prefetch256(uint32_t smem, const void* global,
                                                     bool fill) {
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(smem),
               "l"(global), "r"(fill ? 16 : 0)
               : "memory");
}
// 4 bytes global -> shared, through L1.
__device__ __forceinline__ void CpAsync4(uint32_t smem, const void* global) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem), "l"(global) : "memory");
}
// 8 bytes global -> shared, through L1; 8 zero bytes (nothing read) when !fill.
__device__ __forceinline__ void CpAsync8(uint32_t smem, const void* global, bool fill) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(smem), "l"(global),
               "r"(fill ? 8 : 0)
               : "memory");
}
// Closes the copies issued since the last commit into one group.
__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most kPendingGroups committed groups are still in flight.
template <int kPendingGroups>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPendingGroups) : "memory");
}

// ---- ldmatrix ----------------------------------------------------------------

// Four 8x8 b16 matrices from shared memory: lanes 8i..8i+7 give the row
// addresses of matrix i, which lands in r_i (fragment layout of mma's A and B).
__device__ __forceinline__ void LdMatrixX4(uint32_t smem, uint32_t& r0, uint32_t& r1,
                                           uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(smem));
}
// The same, each matrix transposed (B from row-major K x N data).
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t smem, uint32_t& r0, uint32_t& r1,
                                                uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(smem));
}

// The transpose of an 8x8 b16 matrix held as a fragment (lane l: row l / 4,
// elements 2 (l % 4), + 1): the same lane then holds column l / 4's rows
// 2 (l % 4), + 1. sm_75 or newer.
__device__ __forceinline__ uint32_t MovMatrixTrans(uint32_t fragment) {
  uint32_t transposed;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n"
               : "=r"(transposed)
               : "r"(fragment));
  return transposed;
}

// ---- Tensor cores: mma.sync m16n8k16, float accumulators ---------------------

// c += a b for one 16x8x16 tile: a is the row-major A fragment (a0, a2: rows
// g, a1, a3: rows g + 8), b the column-major B fragment. T, the input type,
// picks the instruction: __half or __nv_bfloat16.
template <typename T>
__device__ __forceinline__ void MmaM16N8K16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                            uint32_t a3, uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void MmaM16N8K16<__nv_bfloat16>(float (&c)[4], uint32_t a0,
                                                           uint32_t a1, uint32_t a2, uint32_t a3,
                                                           uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void MmaM16N8K16<__half>(float (&c)[4], uint32_t a0, uint32_t a1,
                                                    uint32_t a2, uint32_t a3, uint32_t b0,
                                                    uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// ---- Shared-memory swizzle -----------------------------------------------------

// Rows of 16-byte chunks (8 or more per row) with chunk c of row r stored at
// c ^ (r % 8): the 8 rows one ldmatrix phase reads at one chunk fall in 8
// different bank groups. Returns the chunk's place within its row.
__device__ __forceinline__ int SwizzleChunk(int row, int chunk) { return chunk ^ (row & 7); }

}  // namespace headpage::gpu::internal

#endif  // HEADPAGE_KERNELS_CUDA_MMA_CUH_
