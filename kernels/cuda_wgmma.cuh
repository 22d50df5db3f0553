// SPDX-License-Identifier: Apache-2.0
// File: kernels/cuda_wgmma.cuh
//
// Hopper's warpgroup MMA (wgmma, sm_90a), the few wrappers WindowScores'
// logits need: the shared-memory matrix descriptor of a 128-byte-swizzled
// K-major operand, the fences and groups that order wgmma against the threads'
// own accesses, and m64n64k16 with A in registers (f16, bf16) and float
// accumulators. Each wrapper is one instruction; the callers decide the
// layouts. The instructions exist only in code built for sm_90a: a translation
// unit that instantiates a caller must be built for it (window_scores_wgmma.cu
// refuses to compile otherwise); anywhere else the wrappers trap. CUDA and plain
// headers only.
#ifndef HEADPAGE_KERNELS_CUDA_WGMMA_CUH_
#define HEADPAGE_KERNELS_CUDA_WGMMA_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace headpage::gpu::internal {

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define HEADPAGE_WGMMA_ASM(...) asm volatile(__VA_ARGS__)
#else
#define HEADPAGE_WGMMA_ASM(...) __trap()
#endif

// The layout the descriptor below describes, one "region" per 64 columns of
// 16-bit elements: rows of 128 bytes (8 chunks of 16), chunk c of row r stored
// at c ^ (r % 8), groups of 8 rows 1024 bytes apart. A region's base must be
// 1024-byte aligned. (The swizzle is cuda_mma.cuh's SwizzleChunk, which
// ldmatrix readers of the same tile use.)
inline constexpr int kWgmmaRowBytes = 128;
inline constexpr int kWgmmaAtomBytes = 1024;

// The descriptor of a K-major operand tile in the layout above, starting at
// shared address `smem` (a region's base, plus 32 bytes per 16-element k-step
// inside the 128-byte rows): 128-byte swizzle (mode 1, bits 62-63), stride
// between 8-row groups 1024 bytes (bits 32-45), leading offset unused by
// swizzled K-major tiles (1 by convention, bits 16-29), address bits 4-17.
__device__ __forceinline__ uint64_t WgmmaDescriptorSw128(uint32_t smem) {
  uint64_t desc = (smem & 0x3FFFFu) >> 4;
  desc |= static_cast<uint64_t>(1) << 16;
  desc |= static_cast<uint64_t>(kWgmmaAtomBytes >> 4) << 32;
  desc |= static_cast<uint64_t>(1) << 62;
  return desc;
}

// Orders this thread's generic-proxy writes to shared memory (st.shared,
// cp.async once waited for) before later async-proxy reads of it (wgmma's
// operands); a barrier after it publishes them to the warpgroup.
__device__ __forceinline__ void FenceProxyAsyncShared() {
  HEADPAGE_WGMMA_ASM("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Before the first wgmma that reads registers written since the last one.
__device__ __forceinline__ void WgmmaFence() {
  HEADPAGE_WGMMA_ASM("wgmma.fence.sync.aligned;\n" ::: "memory");
}

// Closes the wgmmas issued since the last commit into one group.
__device__ __forceinline__ void WgmmaCommit() {
  HEADPAGE_WGMMA_ASM("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

// Waits until at most kPending committed groups are in flight.
template <int kPending>
__device__ __forceinline__ void WgmmaWait() {
  HEADPAGE_WGMMA_ASM("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// Ties an accumulator register to this point of the program: after
// WgmmaWait, so that no read of it is scheduled before the wait.
__device__ __forceinline__ void WgmmaFenceOperand(float& r) {
  asm volatile("" : "+f"(r)::"memory");
}

// d (+)= a * b for the warpgroup's 64 x 64 tile over 16 of K: a in registers
// (warp w of the warpgroup holds rows 16w..16w+15 as mma.sync's m16n8k16 A
// fragment), b the K-major 64 x 16 tile `b_desc` describes, d as mma.sync's
// m16n8 accumulators of warp w's rows for columns 8j..8j+7 in d[4j..4j+3].
// accumulate = false overwrites d.
template <typename T>
__device__ __forceinline__ void WgmmaM64N64K16(float (&d)[32], const uint32_t (&a)[4],
                                               uint64_t b_desc, bool accumulate) {
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>,
                "wgmma takes f16 or bf16 here");
#define HEADPAGE_WGMMA_M64N64K16(TYPE)                                                            \
  HEADPAGE_WGMMA_ASM(                                                                             \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %36, 0;\n"                                                \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE " "                             \
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                   \
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "         \
      "{%32, %33, %34, %35}, %37, p, 1, 1, 0;\n}\n"                                               \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),       \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),   \
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),             \
        "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]),             \
        "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])              \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(static_cast<int>(accumulate)),            \
        "l"(b_desc))
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    HEADPAGE_WGMMA_M64N64K16("bf16");
  } else {
    HEADPAGE_WGMMA_M64N64K16("f16");
  }
#undef HEADPAGE_WGMMA_M64N64K16
}

#undef HEADPAGE_WGMMA_ASM

}  // namespace headpage::gpu::internal

#endif  // HEADPAGE_KERNELS_CUDA_WGMMA_CUH_
