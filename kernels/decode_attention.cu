// SPDX-License-Identifier: Apache-2.0
// File: kernels/decode_attention.cu
//
// DecodeAttention on the GPU, memory-bound: every K/V byte of a stream is read
// once, by one block, for all the query heads of its GQA group.
//
// Grid: one block of 4 warps per (stream, split). A split is a page-aligned
// token range cut from the stream's own length, so the grid is fixed by the
// shapes alone (CUDA-graph capturable) and a long stream spreads over
// num_splits blocks instead of holding one multiprocessor. With one split the
// block writes out and lse; with more it writes a float partial (out, lse) to
// the workspace and MergeKernel combines a (seq, q head)'s splits.
//
// f16 and bf16 (MmaKernel): each warp owns 16-token chunks of the range (warp
// w takes chunks w, w + 4, ...) and pipelines them through its own shared
// memory with cp.async, kStages deep, zero-filled past the range. The math runs
// on the tensor cores, FlashAttention-2's way round with the query heads as the
// rows: S[8 heads][16 tokens] = Q K^T, then O[8 heads][head_dim] += P V, by
// mma.m16n8k16 whose upper 8 rows stay zero; ldmatrix reads K and (transposed)
// V from rows swizzled against bank conflicts. The softmax is online, in the
// exp2 domain, and rescales only when a chunk raises the running maximum by
// more than 2^8, so most chunks skip the rescale. P enters the second product
// in the cache dtype; for f16 as a hi + lo pair, which keeps f16 within 1e-3.
//
// f32 (SimtKernel): CUDA cores, one block-wide cp.async pipeline of tiles; a
// row is shared by the lanes that hold its 16-byte vectors, each lane keeps the
// group's queries and its slice of the outputs in registers.
#include <cfloat>
#include <type_traits>

#include "kernels/cuda_common.cuh"
#include "kernels/decode_attention_args.h"

namespace headpage::gpu::internal {
namespace {

constexpr float kLog2E = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
// The running maximum starts here rather than at -inf, so that rescaling a
// state that has seen no token (exp2(m - m_new)) never computes -inf - -inf.
constexpr float kNoScore = -1e30f;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kG = kDecodeMaxGroup;

// ---------------------------------------------------------------------------
// Pieces both kernels share.

__device__ __forceinline__ float FastExp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// cp.async of 16 bytes, or 16 zero bytes (nothing read) when !fill.
__device__ __forceinline__ void CopyAsync16(void* smem, const void* global, bool fill) {
  const auto dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(global),
               "r"(fill ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void CommitCopies() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int kPendingGroups>
__device__ __forceinline__ void WaitCopies() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPendingGroups) : "memory");
}

// What a block works on: split `split` of stream `stream` = (seq, kv_head),
// the query heads kv_head * group.. of seq, and the split's tokens [begin, end).
struct BlockWork {
  int split, stream, seq, kv_head, group, begin, end;
};

// Splits have one size per stream, rounded up to whole pages and, where pages
// are small, to whole tiles of `tile_tokens`.
__device__ __forceinline__ BlockWork WorkOfThisBlock(const DecodeAttentionArgs& args,
                                                     int tile_tokens) {
  BlockWork work;
  work.split = static_cast<int>(blockIdx.x % args.num_splits);
  work.stream = static_cast<int>(blockIdx.x / args.num_splits);
  work.seq = work.stream / args.num_kv_heads;
  work.kv_head = work.stream - work.seq * args.num_kv_heads;
  work.group = args.num_q_heads / args.num_kv_heads;
  const int page_size = args.cache.page_size;
  // The lengths live on the device: never trust one beyond its own block-table
  // row, which would read the next row's (or past the last row's) page ids.
  const int64_t table_tokens =
      static_cast<int64_t>(args.indptr[work.stream + 1] - args.indptr[work.stream]) * page_size;
  const int64_t len = min(static_cast<int64_t>(args.lens[work.stream]), table_tokens);
  const int64_t align =
      static_cast<int64_t>(page_size) * ((tile_tokens + page_size - 1) / page_size);
  const int64_t chunk = ((len + args.num_splits - 1) / args.num_splits + align - 1) / align * align;
  const int64_t begin = work.split * chunk < len ? work.split * chunk : len;
  work.begin = static_cast<int>(begin);
  work.end = static_cast<int>(begin + chunk < len ? begin + chunk : len);
  return work;
}

// The cp.async pipeline of both kernels over `steps` steps: kStages - 1 steps
// ahead, one commit group per step (empty past the end) so that the wait
// counts stay fixed. sync() makes step i's copies visible to every thread that
// computes on them, and orders step i - 1's compute before the copies that
// overwrite its stage.
template <int kStages, typename Issue, typename Advance, typename Sync, typename Compute>
__device__ __forceinline__ void RunPipeline(int steps, Issue&& issue, Advance&& advance,
                                            Sync&& sync, Compute&& compute) {
#pragma unroll 1
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < steps) issue(i);
    CommitCopies();
    advance();
  }
#pragma unroll 1
  for (int i = 0; i < steps; ++i) {
    WaitCopies<kStages - 2>();
    sync();
    if (i + kStages - 1 < steps) issue((i + kStages - 1) % kStages);
    CommitCopies();
    advance();
    compute(i % kStages, i);
  }
  WaitCopies<0>();
}

// Shared memory of the final combine: every warp's online-softmax state per
// query head of the group: unnormalized outputs [warp][head][dim], then the
// maxima and the sums [warp][head] (exp2 domain).
template <int kHeadDim>
struct Reduction {
  static constexpr int kBytes = kWarps * kG * (kHeadDim + 2) * static_cast<int>(sizeof(float));
  float* acc;
  float* m;
  float* d;
  __device__ explicit Reduction(void* smem)
      : acc(static_cast<float*>(smem)), m(acc + kWarps * kG * kHeadDim), d(m + kWarps * kG) {}
};

// After every warp stored its state (and a barrier): merge the warps and write
// the block's result, out and lse for one split, a float partial for more.
template <typename T, int kHeadDim>
__device__ __forceinline__ void StoreCombined(const DecodeAttentionArgs& args,
                                              const Reduction<kHeadDim>& reduce,
                                              const BlockWork& work, float* partial_out,
                                              float* partial_lse) {
  for (int i = threadIdx.x; i < work.group * kHeadDim; i += kThreads) {
    const int h = i / kHeadDim;
    const int dim = i - h * kHeadDim;
    float m_all = kNoScore;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m_all = fmaxf(m_all, reduce.m[w * kG + h]);
    float d_all = 0.0f, out = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float weight = FastExp2(reduce.m[w * kG + h] - m_all);
      d_all += reduce.d[w * kG + h] * weight;
      out += reduce.acc[(w * kG + h) * kHeadDim + dim] * weight;
    }
    out = d_all > 0.0f ? out / d_all : 0.0f;
    const float lse2 = d_all > 0.0f ? m_all + log2f(d_all) : -INFINITY;  // log2 of sum exp2
    const int64_t row =
        static_cast<int64_t>(work.seq) * args.num_q_heads + work.kv_head * work.group + h;
    if (args.num_splits == 1) {
      static_cast<T*>(args.out)[row * kHeadDim + dim] = FromFloat<T>(out);
      if (dim == 0 && args.lse != nullptr) args.lse[row] = lse2 * kLn2;
    } else {
      const int64_t partial = row * args.num_splits + work.split;
      partial_out[partial * kHeadDim + dim] = out;
      if (dim == 0) partial_lse[partial] = lse2;
    }
  }
}

// ---------------------------------------------------------------------------
// f16 and bf16: tensor cores.

template <typename T, int kHeadDim>
struct MmaTraits {
  static constexpr int kChunk = 16;                         // tokens per warp step
  static constexpr int kTileTokens = kWarps * kChunk;       // tokens per block step
  static constexpr int kVecElems = ElementsPerVector<T>();  // 8
  static constexpr int kRowVecs = kHeadDim / kVecElems;     // 16-byte vectors per row, >= 8
  static constexpr int kKSteps = kHeadDim / 16;             // mma k-steps of Q K^T
  static constexpr int kDimBlocks = kHeadDim / 8;           // mma n-blocks of P V
  static constexpr int kChunkElems = kChunk * kHeadDim;     // of K, and of V
  static constexpr int kStageBytes = 2 * kChunkElems * static_cast<int>(sizeof(T));
  // About 24 KiB of shared memory per warp: two or more chunks in flight.
  static constexpr int kStages = 24576 / kStageBytes > 2 ? 24576 / kStageBytes : 2;
  static constexpr int kCopies = kChunk * kRowVecs / 32;    // K vectors per lane per chunk
  static constexpr int kCopyRowStride = 32 / kRowVecs;
  static constexpr int kPipelineBytes = kWarps * kStages * kStageBytes;
  static constexpr int kSmemBytes = kPipelineBytes > Reduction<kHeadDim>::kBytes
                                        ? kPipelineBytes
                                        : Reduction<kHeadDim>::kBytes;
  static_assert(sizeof(T) == 2 && kRowVecs >= 8 && kKSteps % 2 == 0, "16-bit rows of >= 64");
};

// Element offset of vector `vec` of row `row` in a chunk: vectors are XOR-
// swizzled by the row, so that the 8 rows one ldmatrix reads hit 8 bank groups.
template <int kRowVecs>
__device__ __forceinline__ int Swizzled(int row, int vec) {
  return (row * kRowVecs + (vec ^ (row & 7))) * 8;
}

__device__ __forceinline__ void LoadMatrices(uint32_t (&r)[4], const void* smem) {
  const auto at = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(at));
}
__device__ __forceinline__ void LoadMatricesTransposed(uint32_t (&r)[4], const void* smem) {
  const auto at = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(at));
}

// c += a b for one m16n8k16 tile; a's rows 8..15 (a1, a3) are zero here.
__device__ __forceinline__ void Mma(float (&c)[4], uint32_t a0, uint32_t a2, uint32_t b0,
                                    uint32_t b1, __nv_bfloat16) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void Mma(float (&c)[4], uint32_t a0, uint32_t a2, uint32_t b0,
                                    uint32_t b1, __half) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
}

// Two floats rounded to T, packed low element first; `rest` gets what the
// rounding lost (x - T(x)) for a second, low-order product.
template <typename T>
__device__ __forceinline__ uint32_t Pack(float lo, float hi, float* rest_lo, float* rest_hi) {
  const T a = FromFloat<T>(lo), b = FromFloat<T>(hi);
  *rest_lo = lo - ToFloat(a);
  *rest_hi = hi - ToFloat(b);
  uint16_t bits_a, bits_b;
  memcpy(&bits_a, &a, sizeof(bits_a));
  memcpy(&bits_b, &b, sizeof(bits_b));
  return static_cast<uint32_t>(bits_a) | (static_cast<uint32_t>(bits_b) << 16);
}

template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kThreads, 2)
    MmaKernel(DecodeAttentionArgs args, float* partial_out, float* partial_lse) {
  using Tr = MmaTraits<T, kHeadDim>;
  // Chunks rescale the running state only when their maximum exceeds it by
  // more than this (log2 units): weights stay below 2^8, exact either way.
  constexpr float kRescaleSlack = 8.0f;
  // f16 keeps 11 bits of a weight; a second product adds the next 11.
  constexpr bool kSplitWeights = std::is_same<T, __half>::value;
  extern __shared__ __align__(128) unsigned char smem[];

  const BlockWork work = WorkOfThisBlock(args, Tr::kTileTokens);
  const int group = work.group, end = work.end;
  const PagedKV& cache = args.cache;
  const int page_size = cache.page_size;

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int quad = lane >> 2;  // mma fragment row: the query head
  const int pair = lane & 3;   // mma fragment column pair

  // Q as the A operand (rows = heads of the group, zero past it): per k-step,
  // elements 2*pair.. and 8 + 2*pair.. of head `quad`.
  uint32_t qa[Tr::kKSteps][2];
  {
    const T* q_row = static_cast<const T*>(args.q) +
                     (static_cast<int64_t>(work.seq) * args.num_q_heads +
                      work.kv_head * group + quad) *
                         kHeadDim;
#pragma unroll
    for (int kk = 0; kk < Tr::kKSteps; ++kk) {
      const auto* words = reinterpret_cast<const uint32_t*>(q_row + 16 * kk + 2 * pair);
      qa[kk][0] = quad < group ? words[0] : 0u;
      qa[kk][1] = quad < group ? words[4] : 0u;  // 8 elements on
    }
  }
  const float score_scale = args.sm_scale * kLog2E;

  // Copies: this warp's chunks start at begin + 16 * (warp + 4 i). Lane copies
  // column copy_col of rows copy_row0 + k * kCopyRowStride. When 16 divides
  // the page size, a chunk lies in one page (ranges start on page boundaries),
  // whose id is fetched one chunk ahead; otherwise every row looks its page up.
  T* stages = reinterpret_cast<T*>(smem) + warp * Tr::kStages * 2 * Tr::kChunkElems;
  const T* data = static_cast<const T*>(cache.data);
  const int32_t* table = args.page_ids + args.indptr[work.stream];
  const int copy_col = lane % Tr::kRowVecs;
  const int copy_row0 = lane / Tr::kRowVecs;
  const bool whole_chunks = page_size % Tr::kChunk == 0;
  const int step_pages = Tr::kTileTokens / page_size;
  const int step_offset = Tr::kTileTokens - step_pages * page_size;
  int copy_token = work.begin + Tr::kChunk * warp;  // first token of the next chunk to copy
  int copy_page_index = copy_token / page_size;
  int copy_offset = copy_token - copy_page_index * page_size;
  int copy_page = whole_chunks && copy_token < end ? __ldg(table + copy_page_index) : -1;
  auto issue_copies = [&](int stage) {
    T* k_chunk = stages + stage * 2 * Tr::kChunkElems;
#pragma unroll
    for (int k = 0; k < Tr::kCopies; ++k) {
      const int row = copy_row0 + k * Tr::kCopyRowStride;
      const int token = copy_token + row;
      int page = copy_page, offset = copy_offset + row;
      if (!whole_chunks) {
        const int page_index = token / page_size;
        offset = token - page_index * page_size;
        page = token < end ? __ldg(table + page_index) : -1;
      }
      // An id outside the cache reads as zeros.
      const bool fill = token < end && page >= 0 && page < cache.num_pages;
      const int64_t key = fill ? page * cache.page_elements() +
                                     static_cast<int64_t>(offset) * kHeadDim +
                                     copy_col * Tr::kVecElems
                               : 0;
      const int at = Swizzled<Tr::kRowVecs>(row, copy_col);
      CopyAsync16(k_chunk + at, data + key, fill);
      CopyAsync16(k_chunk + Tr::kChunkElems + at,
                  data + key + static_cast<int64_t>(page_size) * kHeadDim, fill);
    }
  };
  auto advance_copies = [&]() {
    copy_token += Tr::kTileTokens;
    if (whole_chunks) {
      copy_offset += step_offset;
      copy_page_index += step_pages;
      if (copy_offset >= page_size) {
        copy_offset -= page_size;
        ++copy_page_index;
      }
      copy_page = copy_token < end ? __ldg(table + copy_page_index) : -1;
    }
  };

  // The online softmax of head `quad`: m (shared by the quad's 4 lanes) and
  // this lane's part of the sum d; o's fragments c0, c1 hold dims 8n + 2 pair.
  float m = kNoScore, d = 0.0f;
  float o[Tr::kDimBlocks][4];
#pragma unroll
  for (int n = 0; n < Tr::kDimBlocks; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;

  auto compute_chunk = [&](int stage, int chunk_token) {
    const T* k_chunk = stages + stage * 2 * Tr::kChunkElems;
    const T* v_chunk = k_chunk + Tr::kChunkElems;
    // S = Q K^T for tokens 8j.. of the chunk; one ldmatrix.x4 serves two k-steps.
    float s[2][4] = {};
#pragma unroll
    for (int kp = 0; kp < Tr::kKSteps / 2; ++kp) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        uint32_t kb[4];
        const int row = 8 * j + (lane & 7);
        LoadMatrices(kb, k_chunk + Swizzled<Tr::kRowVecs>(row, 4 * kp + (lane >> 3)));
        Mma(s[j], qa[2 * kp][0], qa[2 * kp][1], kb[0], kb[1], T{});
        Mma(s[j], qa[2 * kp + 1][0], qa[2 * kp + 1][1], kb[2], kb[3], T{});
      }
    }
    // Scores of head `quad`, tokens 8j + 2 pair + c, in the exp2 domain.
    float chunk_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const bool valid = chunk_token + 8 * j + 2 * pair + c < end;
        s[j][c] = valid ? s[j][c] * score_scale : -INFINITY;
        chunk_max = fmaxf(chunk_max, s[j][c]);
      }
    }
    chunk_max = fmaxf(chunk_max, __shfl_xor_sync(kFullMask, chunk_max, 1));
    chunk_max = fmaxf(chunk_max, __shfl_xor_sync(kFullMask, chunk_max, 2));
    if (__any_sync(kFullMask, chunk_max > m + kRescaleSlack)) {
      const float m_new = fmaxf(m, chunk_max);
      const float rescale = FastExp2(m - m_new);
      m = m_new;
      d *= rescale;
#pragma unroll
      for (int n = 0; n < Tr::kDimBlocks; ++n) {
        o[n][0] *= rescale;
        o[n][1] *= rescale;
      }
    }
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        s[j][c] = FastExp2(s[j][c] - m);  // now the weight
        d += s[j][c];
      }
    }
    // P as the A operand: (head quad, tokens 2 pair..) and (.., 8 + 2 pair..).
    float rest[2][2];
    const uint32_t p0 = Pack<T>(s[0][0], s[0][1], &rest[0][0], &rest[0][1]);
    const uint32_t p2 = Pack<T>(s[1][0], s[1][1], &rest[1][0], &rest[1][1]);
    uint32_t r0 = 0, r2 = 0;
    if (kSplitWeights) {
      float unused[2];
      r0 = Pack<T>(rest[0][0], rest[0][1], &unused[0], &unused[1]);
      r2 = Pack<T>(rest[1][0], rest[1][1], &unused[0], &unused[1]);
    }
    // O += P V; one transposed ldmatrix.x4 gives V for two dim blocks.
#pragma unroll
    for (int i = 0; i < Tr::kDimBlocks / 2; ++i) {
      uint32_t vb[4];
      LoadMatricesTransposed(
          vb, v_chunk + Swizzled<Tr::kRowVecs>((lane & 7) + (lane & 8), 2 * i + (lane >> 4)));
      Mma(o[2 * i], p0, p2, vb[0], vb[1], T{});
      Mma(o[2 * i + 1], p0, p2, vb[2], vb[3], T{});
      if (kSplitWeights) {
        Mma(o[2 * i], r0, r2, vb[0], vb[1], T{});
        Mma(o[2 * i + 1], r0, r2, vb[2], vb[3], T{});
      }
    }
  };

  // The warp's own pipeline, synchronized by the warp alone.
  const int num_chunks = (end - work.begin + Tr::kChunk - 1) / Tr::kChunk;
  const int my_chunks = num_chunks > warp ? (num_chunks - warp + kWarps - 1) / kWarps : 0;
  RunPipeline<Tr::kStages>(
      my_chunks, issue_copies, advance_copies, [] { __syncwarp(); },
      [&](int stage, int i) {
        compute_chunk(stage, work.begin + Tr::kChunk * (warp + kWarps * i));
      });
  __syncthreads();  // every warp's stages become the reduction's memory

  d += __shfl_xor_sync(kFullMask, d, 1);
  d += __shfl_xor_sync(kFullMask, d, 2);
  const Reduction<kHeadDim> reduce(smem);
  if (quad < group) {
    float* acc = reduce.acc + (warp * kG + quad) * kHeadDim;
#pragma unroll
    for (int n = 0; n < Tr::kDimBlocks; ++n) {
      acc[8 * n + 2 * pair] = o[n][0];
      acc[8 * n + 2 * pair + 1] = o[n][1];
    }
    if (pair == 0) {
      reduce.m[warp * kG + quad] = m;
      reduce.d[warp * kG + quad] = d;
    }
  }
  __syncthreads();
  StoreCombined<T, kHeadDim>(args, reduce, work, partial_out, partial_lse);
}

// ---------------------------------------------------------------------------
// f32: CUDA cores.

template <int kHeadDim>
struct SimtTraits {
  static constexpr int kVecElems = ElementsPerVector<float>();        // 4
  static constexpr int kRowVecs = kHeadDim / kVecElems;               // 16-byte vectors per row
  static constexpr int kRowLanes = kRowVecs < 32 ? kRowVecs : 32;     // lanes sharing one row
  static constexpr int kLaneVecs = kRowVecs / kRowLanes;
  static constexpr int kLaneElems = kLaneVecs * kVecElems;
  static constexpr int kRowsPerPass = 32 / kRowLanes;                 // rows a warp reads at once
  static constexpr int kBatch = 4;                                    // rows per lane per tile
  static constexpr int kTileTokens = kWarps * kRowsPerPass * kBatch;
  static constexpr int kTileElems = kTileTokens * kHeadDim;           // of K, and of V
  static constexpr int kTileBytes = 2 * kTileElems * static_cast<int>(sizeof(float));
  // About 64 KiB of copies in flight per block.
  static constexpr int kStages = 65536 / kTileBytes > 2 ? 65536 / kTileBytes : 2;
  static constexpr int kLoads = kTileTokens * kRowVecs / kThreads;    // K vectors per thread
  static constexpr int kLoadRowStride = kThreads / kRowVecs;
  static constexpr int kSmemBytes = kStages * kTileBytes > Reduction<kHeadDim>::kBytes
                                        ? kStages * kTileBytes
                                        : Reduction<kHeadDim>::kBytes;
  static_assert(kThreads % kRowVecs == 0, "a thread's vectors share one column");
  static_assert(kLoads * kThreads == kTileTokens * kRowVecs, "whole tiles per thread");
};

template <int kHeadDim>
__global__ void __launch_bounds__(kThreads, 2)
    SimtKernel(DecodeAttentionArgs args, float* partial_out, float* partial_lse) {
  using Tr = SimtTraits<kHeadDim>;
  constexpr int kE = Tr::kLaneElems;
  extern __shared__ __align__(128) unsigned char smem[];

  const BlockWork work = WorkOfThisBlock(args, Tr::kTileTokens);
  const int group = work.group, begin = work.begin, end = work.end;
  const PagedKV& cache = args.cache;
  const int page_size = cache.page_size;
  const int num_tiles = (end - begin + Tr::kTileTokens - 1) / Tr::kTileTokens;

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int row_group = lane / Tr::kRowLanes;  // which row of a pass this lane reads
  const int row_lane = lane % Tr::kRowLanes;   // which vectors of the row

  // The group's queries, this lane's elements, scaled for exp2.
  float q[kG][kE];
  {
    const float q_scale = args.sm_scale * kLog2E;
    const float* q_row = static_cast<const float*>(args.q) +
                         (static_cast<int64_t>(work.seq) * args.num_q_heads +
                          work.kv_head * group) *
                             kHeadDim;
#pragma unroll
    for (int h = 0; h < kG; ++h) {
#pragma unroll
      for (int i = 0; i < Tr::kLaneVecs; ++i) {
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (h < group) {
          v = reinterpret_cast<const float4*>(q_row + h * kHeadDim)[row_lane + i * Tr::kRowLanes];
        }
        q[h][i * 4 + 0] = v.x * q_scale;
        q[h][i * 4 + 1] = v.y * q_scale;
        q[h][i * 4 + 2] = v.z * q_scale;
        q[h][i * 4 + 3] = v.w * q_scale;
      }
    }
  }

  // Copy state: this thread's vectors are column load_col of rows load_row0 +
  // k * kLoadRowStride of every tile; per row, where its next token lives.
  float* tiles = reinterpret_cast<float*>(smem);
  const float* data = static_cast<const float*>(cache.data);
  const int32_t* table = args.page_ids + args.indptr[work.stream];
  const int load_col = threadIdx.x % Tr::kRowVecs;
  const int load_row0 = threadIdx.x / Tr::kRowVecs;
  const int step_pages = Tr::kTileTokens / page_size;
  const int step_offset = Tr::kTileTokens - step_pages * page_size;
  int page_index[Tr::kLoads], offset[Tr::kLoads], page[Tr::kLoads];
  int load_tile_token = begin;  // first token of the tile the copy state describes
#pragma unroll
  for (int k = 0; k < Tr::kLoads; ++k) {
    const int token = begin + load_row0 + k * Tr::kLoadRowStride;
    page_index[k] = token / page_size;
    offset[k] = token - page_index[k] * page_size;
    page[k] = token < end ? __ldg(table + page_index[k]) : -1;
  }
  auto issue_copies = [&](int stage) {
    float* k_tile = tiles + stage * 2 * Tr::kTileElems;
    float* v_tile = k_tile + Tr::kTileElems;
#pragma unroll
    for (int k = 0; k < Tr::kLoads; ++k) {
      // page is -1 past the range; an id outside the cache reads as zeros.
      const bool fill = page[k] >= 0 && page[k] < cache.num_pages;
      const int64_t key = fill ? page[k] * cache.page_elements() +
                                     static_cast<int64_t>(offset[k]) * kHeadDim +
                                     load_col * Tr::kVecElems
                               : 0;
      const int at = (load_row0 + k * Tr::kLoadRowStride) * kHeadDim + load_col * Tr::kVecElems;
      CopyAsync16(k_tile + at, data + key, fill);
      CopyAsync16(v_tile + at, data + key + static_cast<int64_t>(page_size) * kHeadDim, fill);
    }
  };
  auto advance_copies = [&]() {
    load_tile_token += Tr::kTileTokens;
#pragma unroll
    for (int k = 0; k < Tr::kLoads; ++k) {
      offset[k] += step_offset;
      page_index[k] += step_pages;
      if (offset[k] >= page_size) {
        offset[k] -= page_size;
        ++page_index[k];
      }
      const int token = load_tile_token + load_row0 + k * Tr::kLoadRowStride;
      page[k] = token < end ? __ldg(table + page_index[k]) : -1;
    }
  };

  float m[kG], d[kG], acc[kG][kE];
#pragma unroll
  for (int h = 0; h < kG; ++h) {
    m[h] = kNoScore;
    d[h] = 0.0f;
#pragma unroll
    for (int e = 0; e < kE; ++e) acc[h][e] = 0.0f;
  }
  auto load_row = [&](const float* tile, int row, float* out) {
#pragma unroll
    for (int i = 0; i < Tr::kLaneVecs; ++i) {
      const float4 v =
          reinterpret_cast<const float4*>(tile + row * kHeadDim)[row_lane + i * Tr::kRowLanes];
      out[i * 4 + 0] = v.x;
      out[i * 4 + 1] = v.y;
      out[i * 4 + 2] = v.z;
      out[i * 4 + 3] = v.w;
    }
  };
  auto compute_tile = [&](int stage, int tile_token) {
    const float* k_tile = tiles + stage * 2 * Tr::kTileElems;
    const float* v_tile = k_tile + Tr::kTileElems;
    float s[Tr::kBatch][kG];
#pragma unroll
    for (int b = 0; b < Tr::kBatch; ++b) {
      const int row = (warp * Tr::kBatch + b) * Tr::kRowsPerPass + row_group;
      float key[kE];
      load_row(k_tile, row, key);
#pragma unroll
      for (int h = 0; h < kG; ++h) {
        s[b][h] = 0.0f;
        if (h < group) {
#pragma unroll
          for (int e = 0; e < kE; ++e) s[b][h] = fmaf(q[h][e], key[e], s[b][h]);
        }
      }
    }
#pragma unroll
    for (int b = 0; b < Tr::kBatch; ++b) {
      const int row = (warp * Tr::kBatch + b) * Tr::kRowsPerPass + row_group;
      const bool valid = tile_token + row < end;
#pragma unroll
      for (int h = 0; h < kG; ++h) {
        if (h < group) {
#pragma unroll
          for (int o = Tr::kRowLanes / 2; o > 0; o /= 2) {
            s[b][h] += __shfl_xor_sync(kFullMask, s[b][h], o);
          }
          if (!valid) s[b][h] = -INFINITY;
        }
      }
    }
#pragma unroll
    for (int h = 0; h < kG; ++h) {
      if (h < group) {
        float m_new = m[h];
#pragma unroll
        for (int b = 0; b < Tr::kBatch; ++b) m_new = fmaxf(m_new, s[b][h]);
        const float rescale = FastExp2(m[h] - m_new);
        m[h] = m_new;
        d[h] *= rescale;
#pragma unroll
        for (int e = 0; e < kE; ++e) acc[h][e] *= rescale;
#pragma unroll
        for (int b = 0; b < Tr::kBatch; ++b) {
          s[b][h] = FastExp2(s[b][h] - m_new);  // now the weight
          d[h] += s[b][h];
        }
      }
    }
#pragma unroll
    for (int b = 0; b < Tr::kBatch; ++b) {
      const int row = (warp * Tr::kBatch + b) * Tr::kRowsPerPass + row_group;
      float value[kE];
      load_row(v_tile, row, value);
#pragma unroll
      for (int h = 0; h < kG; ++h) {
        if (h < group) {
#pragma unroll
          for (int e = 0; e < kE; ++e) acc[h][e] = fmaf(s[b][h], value[e], acc[h][e]);
        }
      }
    }
  };

  // One pipeline for the block: every warp reads every thread's copies.
  RunPipeline<Tr::kStages>(
      num_tiles, issue_copies, advance_copies, [] { __syncthreads(); },
      [&](int stage, int t) { compute_tile(stage, begin + t * Tr::kTileTokens); });
  __syncthreads();  // the tiles' memory becomes the reduction's

  // Merge the row groups of each warp (lanes kRowLanes apart hold the same
  // elements of different rows).
#pragma unroll
  for (int o = Tr::kRowLanes; o < 32; o *= 2) {
#pragma unroll
    for (int h = 0; h < kG; ++h) {
      if (h < group) {
        const float m_other = __shfl_xor_sync(kFullMask, m[h], o);
        const float d_other = __shfl_xor_sync(kFullMask, d[h], o);
        const float m_new = fmaxf(m[h], m_other);
        const float mine = FastExp2(m[h] - m_new);
        const float theirs = FastExp2(m_other - m_new);
        m[h] = m_new;
        d[h] = d[h] * mine + d_other * theirs;
#pragma unroll
        for (int e = 0; e < kE; ++e) {
          acc[h][e] = acc[h][e] * mine + __shfl_xor_sync(kFullMask, acc[h][e], o) * theirs;
        }
      }
    }
  }
  const Reduction<kHeadDim> reduce(smem);
  if (row_group == 0) {
#pragma unroll
    for (int h = 0; h < kG; ++h) {
      if (h < group) {
        float* dst = reduce.acc + (warp * kG + h) * kHeadDim;
#pragma unroll
        for (int i = 0; i < Tr::kLaneVecs; ++i) {
#pragma unroll
          for (int e = 0; e < Tr::kVecElems; ++e) {
            dst[(row_lane + i * Tr::kRowLanes) * Tr::kVecElems + e] = acc[h][i * Tr::kVecElems + e];
          }
        }
        if (lane == 0) {
          reduce.m[warp * kG + h] = m[h];
          reduce.d[warp * kG + h] = d[h];
        }
      }
    }
  }
  __syncthreads();
  StoreCombined<float, kHeadDim>(args, reduce, work, partial_out, partial_lse);
}

// ---------------------------------------------------------------------------
// The merge of the splits: one block per (seq, q head). Its threads share the
// splits' weights exp2(lse_i - max), then each sums a strided subset of the
// splits for 4 dims, with independent loads (a loop that waited on each
// split's lse before reading its outputs cost ~0.5 us per split).
constexpr int kMergeThreads = 256;

template <bool kMax>
__device__ __forceinline__ float BlockReduce(float x, float* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    const float y = __shfl_xor_sync(kFullMask, x, o);
    x = kMax ? fmaxf(x, y) : x + y;
  }
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = x;
  __syncthreads();
  x = scratch[0];
#pragma unroll
  for (int w = 1; w < kMergeThreads / 32; ++w) x = kMax ? fmaxf(x, scratch[w]) : x + scratch[w];
  return x;
}

template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kMergeThreads)
    MergeKernel(const float* partial_out, const float* partial_lse, int num_splits, T* out,
                float* lse) {
  constexpr int kDimVecs = kHeadDim / 4;                   // float4s per partial row
  constexpr int kSplitGroups = kMergeThreads / kDimVecs;   // threads per dim vector
  __shared__ float weights[kDecodeMaxSplits];
  __shared__ float4 sums[kSplitGroups][kDimVecs];
  __shared__ float max_scratch[kMergeThreads / 32], sum_scratch[kMergeThreads / 32];
  const int64_t row = blockIdx.x;
  const float* lses = partial_lse + row * num_splits;
  float m_all = -INFINITY;
  for (int i = threadIdx.x; i < num_splits; i += kMergeThreads) m_all = fmaxf(m_all, lses[i]);
  m_all = BlockReduce<true>(m_all, max_scratch);
  float sum = 0.0f;
  for (int i = threadIdx.x; i < num_splits; i += kMergeThreads) {
    // Every split is written, an empty one as out 0 and lse -inf.
    weights[i] = m_all == -INFINITY ? 0.0f : FastExp2(lses[i] - m_all);
    sum += weights[i];
  }
  sum = BlockReduce<false>(sum, sum_scratch);  // its barrier also publishes weights[]

  const int vec = threadIdx.x % kDimVecs;
  const int split_group = threadIdx.x / kDimVecs;
  const auto* parts = reinterpret_cast<const float4*>(partial_out + row * num_splits * kHeadDim);
  float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
  for (int i = split_group; i < num_splits; i += kSplitGroups) {
    const float w = weights[i];
    const float4 p = parts[i * kDimVecs + vec];
    acc.x = fmaf(w, p.x, acc.x);
    acc.y = fmaf(w, p.y, acc.y);
    acc.z = fmaf(w, p.z, acc.z);
    acc.w = fmaf(w, p.w, acc.w);
  }
  sums[split_group][vec] = acc;
  __syncthreads();
  if (threadIdx.x < kDimVecs) {
    float4 total = sums[0][threadIdx.x];
#pragma unroll
    for (int g = 1; g < kSplitGroups; ++g) {
      const float4 more = sums[g][threadIdx.x];
      total.x += more.x;
      total.y += more.y;
      total.z += more.z;
      total.w += more.w;
    }
    const float scale = sum > 0.0f ? 1.0f / sum : 0.0f;
    T* dst = out + row * kHeadDim + 4 * threadIdx.x;
    dst[0] = FromFloat<T>(total.x * scale);
    dst[1] = FromFloat<T>(total.y * scale);
    dst[2] = FromFloat<T>(total.z * scale);
    dst[3] = FromFloat<T>(total.w * scale);
  }
  if (threadIdx.x == 0 && lse != nullptr) {
    lse[row] = sum > 0.0f ? (m_all + log2f(sum)) * kLn2 : -INFINITY;
  }
}

template <typename Kernel>
LaunchResult LaunchWithSmem(Kernel kernel, int smem_bytes, const DecodeAttentionArgs& args,
                            float* partial_out, float* partial_lse, GpuStream stream) {
  const LaunchResult attribute = CudaErrorResult(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
  if (!attribute.ok()) return attribute;
  const int64_t blocks = static_cast<int64_t>(args.num_seqs) * args.num_kv_heads * args.num_splits;
  kernel<<<static_cast<unsigned>(blocks), kThreads, smem_bytes, stream>>>(args, partial_out,
                                                                          partial_lse);
  return CheckLaunch();
}

}  // namespace

LaunchResult LaunchDecodeAttention(const DecodeAttentionArgs& args, GpuStream stream) {
  return DispatchDTypeAndHeadDim(args.cache.dtype, args.cache.head_dim, [&](auto dtype_tag,
                                                                           auto head_dim_tag) {
    using T = typename decltype(dtype_tag)::type;
    constexpr int kHeadDim = decltype(head_dim_tag)::value;
    const int64_t rows = static_cast<int64_t>(args.num_seqs) * args.num_q_heads;
    // The workspace (DecodeAttentionWorkspaceBytes): partial outs, then lses.
    float* partial_out = static_cast<float*>(args.workspace);
    float* partial_lse =
        args.num_splits > 1 ? partial_out + rows * args.num_splits * kHeadDim : nullptr;
    LaunchResult launched;
    if constexpr (std::is_same<T, float>::value) {
      launched = LaunchWithSmem(SimtKernel<kHeadDim>, SimtTraits<kHeadDim>::kSmemBytes, args,
                                partial_out, partial_lse, stream);
    } else {
      launched = LaunchWithSmem(MmaKernel<T, kHeadDim>, MmaTraits<T, kHeadDim>::kSmemBytes, args,
                                partial_out, partial_lse, stream);
    }
    if (!launched.ok() || args.num_splits == 1) return launched;
    MergeKernel<T, kHeadDim><<<static_cast<unsigned>(rows), kMergeThreads, 0, stream>>>(
        partial_out, partial_lse, args.num_splits, static_cast<T*>(args.out), args.lse);
    return CheckLaunch();
  });
}

}  // namespace headpage::gpu::internal
