// SPDX-License-Identifier: Apache-2.0
// File: kernels/decode_attention_internal.cuh
//
// What DecodeAttention's kernels over the cache share: the tensor-core ones
// (f16, bf16 pages: decode_attention.cu; fp8 pages: decode_attention_fp8.cu)
// and the CUDA-core one (f32: decode_attention_simt.cu). All three run one
// block of kWarps warps per (stream, split), pipeline K/V through shared
// memory with cp.async, keep an online softmax per warp in the exp2 domain,
// and end with the same combine of the warps' states (out and lse for one
// split, a float partial for more). CUDA and plain headers only.
#ifndef HEADPAGE_KERNELS_DECODE_ATTENTION_INTERNAL_CUH_
#define HEADPAGE_KERNELS_DECODE_ATTENTION_INTERNAL_CUH_

#include <cstdint>

#include "kernels/cuda_common.cuh"
#include "kernels/cuda_mma.cuh"
#include "kernels/decode_attention_args.h"
#include "kernels/decode_attention_plan.h"
#include "kernels/table_checks.h"

namespace headpage::gpu::internal::decode {

// The running maximum starts here rather than at -inf, so that rescaling a
// state that has seen no token (exp2(m - m_new)) never computes -inf - -inf.
inline constexpr float kNoScore = -1e30f;
inline constexpr int kWarps = 4;
inline constexpr int kThreads = 32 * kWarps;
inline constexpr int kG = kDecodeMaxGroup;

// What a block works on: stream `stream` = (seq, kv_head), the query heads
// kv_head * group.. of seq, and the stream's tokens [begin, end): split `piece`
// of even splits, or piece number `piece` of the balanced division, `whole`
// when it is the stream's only one (decode_attention_plan.h).
struct BlockWork {
  int stream, seq, kv_head, group, begin, end, piece;
  bool whole;
};

__device__ __forceinline__ BlockWork StreamWork(const DecodeAttentionKernelArgs& args,
                                                int stream) {
  BlockWork work;
  work.stream = stream;
  work.seq = stream / args.num_kv_heads;
  work.kv_head = stream - work.seq * args.num_kv_heads;
  work.group = args.num_q_heads / args.num_kv_heads;
  work.whole = false;
  return work;
}

// Even splits have one size per stream, rounded up to whole pages and, where
// pages are small, to whole tiles of `tile_tokens`.
__device__ __forceinline__ BlockWork WorkOfThisBlock(const DecodeAttentionKernelArgs& args,
                                                     int tile_tokens) {
  const int split = static_cast<int>(blockIdx.x % args.num_splits);
  BlockWork work = StreamWork(args, static_cast<int>(blockIdx.x / args.num_splits));
  const int page_size = args.cache.page_size;
  const int64_t len = TableClampedLength<int64_t>(args.lens, args.indptr, work.stream, page_size);
  const int64_t align =
      static_cast<int64_t>(page_size) * ((tile_tokens + page_size - 1) / page_size);
  const int64_t chunk = ((len + args.num_splits - 1) / args.num_splits + align - 1) / align * align;
  const int64_t begin = split * chunk < len ? split * chunk : len;
  work.begin = static_cast<int>(begin);
  work.end = static_cast<int>(begin + chunk < len ? begin + chunk : len);
  work.piece = split;
  return work;
}

// Stream `stream`'s length in units of the balanced division (a negative
// length of an unchecked table reads as empty).
__device__ __forceinline__ int64_t StreamUnits(const DecodeAttentionKernelArgs& args, int stream,
                                               int unit_tokens, int64_t* len) {
  *len = TableClampedLength<int64_t>(args.lens, args.indptr, stream, args.cache.page_size);
  return *len > 0 ? decode_plan::UnitsOf(*len, unit_tokens) : 0;
}

// The streams laid end to end, for a block of kBlockThreads threads: thread t
// owns streams [*first, *last), a contiguous share, which start at unit
// *begin; returns the division of all the units. `scratch`: kBlockThreads / 32
// shared words. Every thread of the block calls it.
template <int kBlockThreads>
__device__ __forceinline__ decode_plan::BalancedDivision LayStreamsEndToEnd(
    const DecodeAttentionKernelArgs& args, long long* scratch, int* first, int* last,
    int64_t* begin) {
  constexpr int kBlockWarps = kBlockThreads / 32;
  const int num_streams = args.num_seqs * args.num_kv_heads;
  const int unit_tokens = decode_plan::UnitTokens(args.cache.page_size);
  const int per_thread = (num_streams + kBlockThreads - 1) / kBlockThreads;
  *first = min(static_cast<int>(threadIdx.x) * per_thread, num_streams);
  *last = min(*first + per_thread, num_streams);
  long long units = 0;
  for (int s = *first; s < *last; ++s) {
    int64_t len;
    units += StreamUnits(args, s, unit_tokens, &len);
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const long long inclusive = LaneInclusiveSum(units, lane);
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  long long before = 0, total = 0;
#pragma unroll
  for (int w = 0; w < kBlockWarps; ++w) {
    before += w < warp ? scratch[w] : 0;
    total += scratch[w];
  }
  __syncthreads();  // scratch is free again
  *begin = before + inclusive - units;
  return decode_plan::BalancedDivision::Of(total, unit_tokens, args.balanced_blocks);
}

// The balanced division's array of every stream's first unit, then the total
// (decode_plan::DecodeWorkspace), in the workspace.
__device__ __forceinline__ long long* BalancedBegins(const DecodeAttentionKernelArgs& args) {
  const int num_streams = args.num_seqs * args.num_kv_heads;
  const decode_plan::DecodeWorkspace layout = decode_plan::DecodeWorkspace::Balanced(
      num_streams, args.num_q_heads / args.num_kv_heads, args.cache.head_dim,
      args.balanced_blocks);
  return reinterpret_cast<long long*>(static_cast<char*>(args.workspace) + layout.begins_offset);
}

// ForEachPiece's balanced division. Its loop keeps its state in shared
// memory and reads the rest from the parameters, so that none of it holds
// registers while body runs (the fp8 pass at four blocks per SM has none to
// spare).
template <typename Body>
__device__ __forceinline__ void ForEachBalancedPiece(const DecodeAttentionKernelArgs& args,
                                                     Body& body) {
  __shared__ long long scratch[kWarps];
  // The next stream to look at and its first unit; the block's units are [lo, hi).
  __shared__ int next_stream;
  __shared__ long long next_begin, lo, hi;
  int first, last;
  int64_t begin;
  const decode_plan::BalancedDivision division =
      LayStreamsEndToEnd<kThreads>(args, scratch, &first, &last, &begin);
  if (static_cast<int>(blockIdx.x) >= division.blocks) return;
  const int64_t block_begin = division.BlockBegin(blockIdx.x);
  if (threadIdx.x == 0) {
    next_stream = -1;
    lo = block_begin;
    hi = division.BlockBegin(blockIdx.x + 1);
  }
  __syncthreads();
  // The stream holding unit lo: one thread finds it (none when the block's
  // run is empty, which only an empty batch gives). Block 0 also publishes
  // where every stream begins, for the merge.
  long long* const begins = blockIdx.x == 0 ? BalancedBegins(args) : nullptr;
  if (begins != nullptr && threadIdx.x == 0) {
    begins[args.num_seqs * args.num_kv_heads] = division.total_units;
  }
  for (int s = first; s < last; ++s) {
    int64_t len;
    const int64_t units = StreamUnits(args, s, division.unit_tokens, &len);
    if (begin <= block_begin && block_begin < begin + units) {
      next_stream = s;
      next_begin = begin;
    }
    if (begins != nullptr) begins[s] = begin;
    begin += units;
  }
  for (;;) {
    __syncthreads();  // the state is written (and the last piece's shared memory free)
    const int s = next_stream;
    const int64_t stream_begin = next_begin, run_begin = lo, run_end = hi;
    __syncthreads();  // every thread has read it
    if (s < 0 || s >= args.num_seqs * args.num_kv_heads || stream_begin >= run_end) return;
    const int unit_tokens = decode_plan::UnitTokens(args.cache.page_size);
    int64_t len;
    const int64_t units = StreamUnits(args, s, unit_tokens, &len);
    if (threadIdx.x == 0) {
      next_stream = s + 1;
      next_begin = stream_begin + units;
    }
    if (units > 0) {
      const decode_plan::Piece piece = decode_plan::PieceOf(
          run_begin, run_end, unit_tokens, blockIdx.x, s, stream_begin, units, len);
      BlockWork work = StreamWork(args, s);
      work.begin = piece.begin;
      work.end = piece.end;
      work.piece = static_cast<int>(piece.number);
      work.whole = piece.whole;
      body(work);
    }
  }
}

// Runs body(work) on each piece of this block's work: the one split of even
// splits, or the block's pieces of the balanced division
// (decode_attention_plan.h) in stream order, with a barrier between two (the
// next reuses the shared memory). Every thread of the block calls it. The passes are compiled
// once per division (kBalanced): the balanced loop's state costs registers the
// even splits' kernels need not pay (at head_dim 256 it spills).
template <bool kBalanced, typename Body>
__device__ __forceinline__ void ForEachPiece(const DecodeAttentionKernelArgs& args,
                                             int tile_tokens, Body&& body) {
  if constexpr (!kBalanced) {
    body(WorkOfThisBlock(args, tile_tokens));
  } else {
    ForEachBalancedPiece(args, body);
  }
}

// The slot where `work` stores its stream's new token (DecodeNewTokens): that
// of the stream's last token when the piece ends where the stream does, else
// -1, as when there are no new tokens, the seq's position is negative (it has
// none), or an unchecked table's length is past its pages or its page id
// outside the cache: nothing is written then.
__device__ __forceinline__ int64_t NewTokenSlot(const DecodeAttentionKernelArgs& args,
                                                const DecodeNewTokens& new_tokens,
                                                const BlockWork& work) {
  if (new_tokens.keys == nullptr || work.begin >= work.end) return -1;
  // The pieces end at TableClampedLength: it is lens[stream] unless the table is bad.
  if (work.end != args.lens[work.stream] || new_tokens.positions[work.seq] < 0) return -1;
  const int page_size = args.cache.page_size;
  const int last = work.end - 1;
  const int page = args.page_ids[args.indptr[work.stream] + last / page_size];
  if (page < 0 || page >= args.cache.num_pages) return -1;
  return static_cast<int64_t>(page) * page_size + last % page_size;
}

// Stage, before a piece's pipeline: the stream's new token into the cache
// when the piece holds it, then a barrier, after which the warp whose chunk
// holds the token reads it (the barrier orders the block's stores before its
// later cp.async reads). 16-bit and f32 pages: the block's threads copy the K
// and V rows' 16-byte vectors. Every thread of the block calls it.
template <typename T, int kHeadDim>
__device__ __forceinline__ void StoreNewToken(const DecodeAttentionKernelArgs& args,
                                              const DecodeNewTokens& new_tokens,
                                              const BlockWork& work) {
  const int64_t slot = NewTokenSlot(args, new_tokens, work);
  if (slot < 0) return;  // the same for the whole block
  constexpr int kRowVecs = kHeadDim * static_cast<int>(sizeof(T)) / kVectorBytes;
  const PagedKV& cache = args.cache;
  T* const data = static_cast<T*>(cache.data);
  // Row `stream` of [num_seqs][num_kv_heads][head_dim]: stream = seq * num_kv_heads + head.
  const int64_t row = static_cast<int64_t>(work.stream) * kRowVecs;
  for (int i = threadIdx.x; i < 2 * kRowVecs; i += kThreads) {
    const bool value = i >= kRowVecs;
    const int vec = value ? i - kRowVecs : i;
    const auto* src = static_cast<const Vector*>(value ? new_tokens.values : new_tokens.keys);
    auto* dst = reinterpret_cast<Vector*>(
        data + (value ? cache.ValueOffset(slot) : cache.KeyOffset(slot)));
    dst[vec] = src[row + vec];
  }
  if (threadIdx.x == 0) cache.positions[slot] = new_tokens.positions[work.seq];
  __syncthreads();
}

// StoreNewToken's fp8 pages: warp 0 quantizes the K and the V row as WriteKV
// does (QuantizeFp8RowPart, the host's bytes and scales).
template <typename T, int kHeadDim>
__device__ __forceinline__ void StoreNewTokenFp8(const DecodeAttentionKernelArgs& args,
                                                 const DecodeNewTokens& new_tokens,
                                                 const BlockWork& work) {
  const int64_t slot = NewTokenSlot(args, new_tokens, work);
  if (slot < 0) return;  // the same for the whole block
  if (threadIdx.x < 32) {
    constexpr int kPerLane = kHeadDim / 32;
    const PagedKV& cache = args.cache;
    auto* const data = static_cast<uint8_t*>(cache.data);
    const int lane = threadIdx.x;
    const int64_t in = static_cast<int64_t>(work.stream) * kHeadDim + lane * kPerLane;
    const float key_scale =
        QuantizeFp8RowPart<T, kPerLane>(static_cast<const T*>(new_tokens.keys) + in,
                                        data + cache.KeyOffset(slot) + lane * kPerLane);
    const float value_scale = QuantizeFp8RowPart<T, kPerLane>(
        static_cast<const T*>(new_tokens.values) + in,
        data + cache.ValueOffset(slot) + lane * kPerLane);
    if (lane == 0) {
      reinterpret_cast<float2*>(cache.scales)[slot] = make_float2(key_scale, value_scale);
      cache.positions[slot] = new_tokens.positions[work.seq];
    }
  }
  __syncthreads();
}

// Where a warp's next 16-token chunk starts, for the tensor-core passes: the
// warp's chunks are begin + 16 (warp + kWarps i). When 16 divides the page
// size a chunk lies in one page (ranges start on page boundaries), whose id
// is fetched one chunk ahead; otherwise each row looks its page up (RowPlace).
struct ChunkCursor {
  static constexpr int kChunk = 16;
  static constexpr int kTileTokens = kWarps * kChunk;
  const int32_t* table;  // the stream's block-table row
  int end, page_size, num_pages;
  bool whole_chunks;
  int step_pages, step_offset;
  int token;       // first token of the next chunk
  int page_index;  // where it lives, for whole chunks
  int offset;
  int page;        // -1 past the range

  __device__ ChunkCursor(const DecodeAttentionKernelArgs& args, const BlockWork& work, int warp) {
    page_size = args.cache.page_size;
    num_pages = args.cache.num_pages;
    end = work.end;
    table = args.page_ids + args.indptr[work.stream];
    whole_chunks = page_size % kChunk == 0;
    step_pages = kTileTokens / page_size;
    step_offset = kTileTokens - step_pages * page_size;
    token = work.begin + kChunk * warp;
    page_index = token / page_size;
    offset = token - page_index * page_size;
    page = whole_chunks && token < end ? __ldg(table + page_index) : -1;
  }

  // The page and offset of the chunk's row `row`; false past the range or
  // for an id outside the cache (which reads as zeros).
  __device__ __forceinline__ bool RowPlace(int row, int* row_page, int* row_offset) const {
    const int row_token = token + row;
    *row_page = page;
    *row_offset = offset + row;
    if (!whole_chunks) {
      const int row_page_index = row_token / page_size;
      *row_offset = row_token - row_page_index * page_size;
      *row_page = row_token < end ? __ldg(table + row_page_index) : -1;
    }
    return row_token < end && *row_page >= 0 && *row_page < num_pages;
  }

  __device__ __forceinline__ void Advance() {
    token += kTileTokens;
    if (whole_chunks) {
      offset += step_offset;
      page_index += step_pages;
      if (offset >= page_size) {
        offset -= page_size;
        ++page_index;
      }
      page = token < end ? __ldg(table + page_index) : -1;
    }
  }
};

// Calls copy(row, offset, fill) for a lane's rows row0 + k * kRowStride
// (k < kRows) of the cursor's chunk, for the tensor-core passes' copies: offset
// is where the row's K elements from `col_offset` on are in the cache's data
// (its V is page_size * kHeadDim further on); fill is false past the range or
// for an id outside the cache (the copy zero-fills, reading nothing). Where
// the chunk lies in one page, its address is computed once: a 64-bit product
// per row was most of the copies' instructions.
template <int kHeadDim, int kRows, int kRowStride, typename Copy>
__device__ __forceinline__ void ForEachChunkRow(const ChunkCursor& cursor, const PagedKV& cache,
                                                int row0, int col_offset, Copy&& copy) {
  if (cursor.whole_chunks) {
    const bool page_ok = cursor.page >= 0 && cursor.page < cache.num_pages;
    const int64_t chunk = page_ok ? static_cast<int64_t>(cursor.page) * cache.page_elements() +
                                        static_cast<int64_t>(cursor.offset) * kHeadDim
                                  : 0;
#pragma unroll
    for (int k = 0; k < kRows; ++k) {
      const int row = row0 + k * kRowStride;
      const bool fill = page_ok && cursor.token + row < cursor.end;
      copy(row, chunk + (fill ? row * kHeadDim + col_offset : 0), fill);
    }
    return;
  }
#pragma unroll
  for (int k = 0; k < kRows; ++k) {
    const int row = row0 + k * kRowStride;
    int row_page, row_offset;
    const bool fill = cursor.RowPlace(row, &row_page, &row_offset);
    copy(row,
         fill ? static_cast<int64_t>(row_page) * cache.page_elements() +
                    static_cast<int64_t>(row_offset) * kHeadDim + col_offset
              : 0,
         fill);
  }
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
    CpAsyncCommit();
    advance();
  }
#pragma unroll 1
  for (int i = 0; i < steps; ++i) {
    CpAsyncWait<kStages - 2>();
    sync();
    if (i + kStages - 1 < steps) issue((i + kStages - 1) % kStages);
    CpAsyncCommit();
    advance();
    compute(i % kStages, i);
  }
  CpAsyncWait<0>();
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

// Dynamic shared memory of a pass whose pipeline takes `pipeline_bytes`: the
// final combine reuses the stages, so whichever is larger.
template <int kHeadDim>
constexpr int PassSmemBytes(int pipeline_bytes) {
  return pipeline_bytes > Reduction<kHeadDim>::kBytes ? pipeline_bytes
                                                      : Reduction<kHeadDim>::kBytes;
}

// The tensor-core passes keep tokens as the rows of their m16n8k16 tiles and
// the GQA group's query heads as the 8 columns: a lane's accumulators hold
// heads 2 pair and 2 pair + 1 (pair = lane % 4), which the 8 lanes of the same
// pair share. A lane's online softmax of those two heads: their running maxima
// (shared by the pair's lanes), this lane's part of their sums, and its
// accumulators of O^T, o[b][h] and o[b][2 + h] for head 2 pair + h (which dims
// of tile b they are is the pass's own layout).
template <int kHeadDim>
struct HeadColumnSoftmax {
  float m[2] = {kNoScore, kNoScore};
  float d[2] = {0.0f, 0.0f};
  float o[kHeadDim / 16][4];

  __device__ HeadColumnSoftmax() {
#pragma unroll
    for (int b = 0; b < kHeadDim / 16; ++b) o[b][0] = o[b][1] = o[b][2] = o[b][3] = 0.0f;
  }
};

// Returns the largest x of the 8 lanes of the caller's pair; every lane of the
// warp calls it.
__device__ __forceinline__ float MaxOverPair(float x) {
#pragma unroll
  for (int mask = 4; mask < 32; mask *= 2) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, mask));
  return x;
}

// Raises each head's running maximum m[h] to chunk_max[h] where that is
// larger, and rescales its sum d[h] and its outputs o[b][h], o[b][2 + h] by
// exp2(m_old - m_new) times `also` (1 but for the fp8 pass's V-scale change).
template <int kTiles>
__device__ __forceinline__ void RaiseHeadMaxima(const float (&chunk_max)[2], float also,
                                                float (&m)[2], float (&d)[2],
                                                float (&o)[kTiles][4]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float m_new = fmaxf(m[h], chunk_max[h]);
    const float rescale = FastExp2(m[h] - m_new);
    m[h] = m_new;
    d[h] *= rescale;
#pragma unroll
    for (int b = 0; b < kTiles; ++b) {
      o[b][h] *= rescale * also;
      o[b][2 + h] *= rescale * also;
    }
  }
}

// Stage: a warp's state into the reduction's shared memory (after the barrier
// that ends the pipeline), for the passes above: per head 2 pair + h of the
// group, its sum over the pair's 8 lanes of d[h] (each lane's part), its
// maximum m[h], and its row of outputs, which store_row(h, row) writes (each
// lane its own dims).
template <int kHeadDim, typename StoreRow>
__device__ __forceinline__ void StoreHeadColumns(const Reduction<kHeadDim>& reduce,
                                                 const float (&m)[2], const float (&lane_d)[2],
                                                 int warp, int quad, int pair, int group,
                                                 StoreRow&& store_row) {
  float d[2] = {lane_d[0], lane_d[1]};
#pragma unroll
  for (int h = 0; h < 2; ++h) {
#pragma unroll
    for (int mask = 4; mask < 32; mask *= 2) d[h] += __shfl_xor_sync(kFullMask, d[h], mask);
    const int head = 2 * pair + h;
    if (head < group) {
      store_row(h, reduce.acc + (warp * kG + head) * kHeadDim);
      if (quad == 0) {
        reduce.m[warp * kG + head] = m[h];
        reduce.d[warp * kG + head] = d[h];
      }
    }
  }
}

// The tensor-core passes rescale a running softmax state only when a chunk's
// maximum exceeds it by more than this (log2 units): weights stay below 2^8,
// exact either way.
inline constexpr float kRescaleSlack = 8.0f;

// After every warp stored its state (and a barrier): merge the warps and write
// the block's result, out and lse for a whole stream, else a float partial: a
// split's beside its row's other splits (row * num_splits + split), a balanced
// piece's with its group's other heads (piece * group + h).
template <typename T, int kHeadDim, bool kBalanced>
__device__ __forceinline__ void StoreCombined(const DecodeAttentionKernelArgs& args,
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
    if (kBalanced ? work.whole : args.num_splits == 1) {
      static_cast<T*>(args.out)[row * kHeadDim + dim] = FromFloat<T>(out);
      if (dim == 0 && args.lse != nullptr) args.lse[row] = lse2 * kLn2;
    } else {
      const int64_t partial = kBalanced
                                  ? static_cast<int64_t>(work.piece) * work.group + h
                                  : row * args.num_splits + work.piece;
      partial_out[partial * kHeadDim + dim] = out;
      if (dim == 0) partial_lse[partial] = lse2;
    }
  }
}

// Launches a pass kernel with `smem_bytes` of dynamic shared memory: `even`,
// one block per (stream, split), or `balanced`, balanced_blocks blocks (the
// pass's two instances), as the arguments ask. With `occupancy`, launches
// nothing and stores there how many blocks of that kernel one SM holds.
template <typename Kernel>
LaunchResult LaunchWithSmem(Kernel even, Kernel balanced, int smem_bytes,
                            const DecodeAttentionArgs& args, float* partial_out,
                            float* partial_lse, GpuStream stream, int* occupancy) {
  const Kernel kernel = args.balanced_blocks > 0 ? balanced : even;
  const LaunchResult attribute = CudaErrorResult(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
  if (!attribute.ok()) return attribute;
  if (occupancy != nullptr) {
    return CudaErrorResult(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(occupancy, kernel, kThreads, smem_bytes));
  }
  const int64_t blocks = args.balanced_blocks > 0 ? args.balanced_blocks
                                                  : static_cast<int64_t>(args.num_seqs) *
                                                        args.num_kv_heads * args.num_splits;
  // The kernel's own fields only (DecodeAttentionKernelArgs); the fault word and
  // the new tokens apart. A checked call's pass follows the tables' check
  // (CheckTablesKernel, which allows the early launch and writes only the fault
  // word) and is launched under its tail; the pass waits before it reads
  // anything. Unchecked, the kernel before it is the caller's, which may write
  // the tables the pass reads through the read-only path: launched the
  // ordinary way.
  if (args.fault != nullptr) {
    return LaunchOverlappingTail(kernel, static_cast<unsigned>(blocks), kThreads,
                                 static_cast<size_t>(smem_bytes), stream,
                                 static_cast<const DecodeAttentionKernelArgs&>(args), partial_out,
                                 partial_lse, args.fault, args.new_tokens);
  }
  kernel<<<static_cast<unsigned>(blocks), kThreads, smem_bytes, stream>>>(
      static_cast<const DecodeAttentionKernelArgs&>(args), partial_out, partial_lse, args.fault,
      args.new_tokens);
  return CheckLaunch();
}

// decode_attention_simt.cu: the f32 pass, for every supported head_dim.
LaunchResult LaunchSimtPass(const DecodeAttentionArgs& args, float* partial_out,
                            float* partial_lse, GpuStream stream, int* occupancy);

// decode_attention_fp8.cu: the pass over fp8 pages (f16 and bf16 models).
LaunchResult LaunchFp8Pass(const DecodeAttentionArgs& args, float* partial_out,
                           float* partial_lse, GpuStream stream, int* occupancy);

}  // namespace headpage::gpu::internal::decode

#endif  // HEADPAGE_KERNELS_DECODE_ATTENTION_INTERNAL_CUH_
