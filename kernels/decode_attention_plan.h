// SPDX-License-Identifier: Apache-2.0
// File: kernels/decode_attention_plan.h
//
// DecodeAttention's balanced division of work (DecodeAttentionArgs::
// balanced_blocks > 0): the arithmetic the GPU's pass and merge both run, in
// plain C++ so that the host tests it.
//
// Even splits cut every stream into num_splits ranges of its own length, so a
// batch whose streams differ in length (a serving step's requests, head-wise
// budgets) gives blocks of different work, and the longest ones finish alone
// at the end of the launch. The balanced division lays the streams end to end
// in units of whole pages (at least kUnitTokens tokens, so that every range
// starts on a page boundary and on a tile), and hands each of the launched
// blocks an equal run of units: a block reads the tail of one stream, maybe
// whole short streams, and the head of the next. Each (stream, block) overlap
// is a piece with its own partial result; the merge combines a stream's
// pieces. Nothing depends on lengths known to the host, so one CUDA graph
// serves every later set of lengths.
//
// Pieces are numbered stream + block: along the streams laid end to end, the
// next piece has a later block, a later stream or both, so the numbers grow
// strictly and a stream's pieces are consecutive; there are at most
// num_streams + blocks - 1 of them.
#ifndef HEADPAGE_KERNELS_DECODE_ATTENTION_PLAN_H_
#define HEADPAGE_KERNELS_DECODE_ATTENTION_PLAN_H_

#include <cstdint>

#include "core/paged_kv.h"  // HEADPAGE_HOST_DEVICE

namespace headpage::decode_plan {

// A unit is the fewest whole pages of at least this many tokens: a tile of the
// 16-bit and fp8 passes (4 warps x 16 tokens).
inline constexpr int32_t kUnitTokens = 64;
// A block reads at least this many tokens (as for even splits): shorter runs
// spend more on the pipeline's start and the merge than they save.
inline constexpr int64_t kMinBlockTokens = 256;

HEADPAGE_HOST_DEVICE int32_t UnitTokens(int32_t page_size) {
  return page_size * ((kUnitTokens + page_size - 1) / page_size);
}

HEADPAGE_HOST_DEVICE int64_t UnitsOf(int64_t len, int32_t unit_tokens) {
  return (len + unit_tokens - 1) / unit_tokens;
}

// The division of `total_units` among the blocks that get work: as many of the
// launched ones as keep each at kMinBlockTokens or more (at least one), every
// block's share within one unit of the others'.
struct BalancedDivision {
  int64_t total_units = 0;
  int32_t unit_tokens = 0;
  int32_t blocks = 1;  // blocks 0..blocks-1 have work; the rest of the grid returns at once

  HEADPAGE_HOST_DEVICE static BalancedDivision Of(int64_t total_units, int32_t unit_tokens,
                                                  int32_t launched_blocks) {
    BalancedDivision d;
    d.total_units = total_units;
    d.unit_tokens = unit_tokens;
    const int64_t min_units = (kMinBlockTokens + unit_tokens - 1) / unit_tokens;
    int64_t blocks = total_units / min_units;
    if (blocks > launched_blocks) blocks = launched_blocks;
    d.blocks = blocks < 1 ? 1 : static_cast<int32_t>(blocks);
    return d;
  }

  // Block b's units are [BlockBegin(b), BlockBegin(b + 1)).
  HEADPAGE_HOST_DEVICE int64_t BlockBegin(int64_t block) const {
    return total_units * block / blocks;
  }

  // The block whose units hold `unit` (< total_units): the last block b with
  // BlockBegin(b) <= unit, i.e. b * total < (unit + 1) * blocks.
  HEADPAGE_HOST_DEVICE int32_t BlockOf(int64_t unit) const {
    return static_cast<int32_t>(((unit + 1) * blocks - 1) / total_units);
  }

  // A stream's pieces, the stream being `units` long from unit `begin` of the
  // streams laid end to end: numbered first.. first + count - 1 (none when it is
  // empty).
  HEADPAGE_HOST_DEVICE void StreamPieces(int32_t stream, int64_t begin, int64_t units,
                                         int64_t* first, int32_t* count) const {
    if (units <= 0) {
      *first = 0;
      *count = 0;
      return;
    }
    const int32_t first_block = BlockOf(begin);
    *first = static_cast<int64_t>(stream) + first_block;
    *count = BlockOf(begin + units - 1) - first_block + 1;
  }
};

// Where the split-KV workspace keeps what, for either division: a partial out
// (head_dim floats) per partial, then their lses (floats); the even splits have
// one partial per (seq, q head, split), the balanced division one per piece and
// query head of its group, and after the lses, at a multiple of 8 bytes, every
// stream's first unit and after them the total (int64: written by the pass's
// block 0, read by the merge, which so finds a stream's pieces without summing
// over every stream again). The launcher and DecodeAttentionWorkspaceBytes both
// read it, so that the two cannot drift apart.
struct DecodeWorkspace {
  int64_t partials = 0;
  int64_t lse_offset = 0, begins_offset = 0, bytes = 0;  // in bytes; bytes 0: none needed

  // num_splits even splits a stream, or (balanced_blocks > 0) the balanced
  // division over that many blocks; nothing for one split.
  HEADPAGE_HOST_DEVICE static DecodeWorkspace Of(int64_t num_seqs, int64_t num_q_heads,
                                                 int64_t num_kv_heads, int64_t head_dim,
                                                 int64_t num_splits, int64_t balanced_blocks) {
    if (num_seqs <= 0 || num_q_heads <= 0 || num_kv_heads <= 0 || head_dim <= 0) return {};
    if (balanced_blocks > 0) {
      return Balanced(num_seqs * num_kv_heads, num_q_heads / num_kv_heads, head_dim,
                      balanced_blocks);
    }
    if (num_splits <= 1) return {};
    DecodeWorkspace w;
    w.partials = num_seqs * num_q_heads * num_splits;
    w.lse_offset = w.partials * head_dim * 4;
    w.begins_offset = w.bytes = w.lse_offset + w.partials * 4;
    return w;
  }

  // The balanced division's, over num_streams streams of `group` query heads.
  HEADPAGE_HOST_DEVICE static DecodeWorkspace Balanced(int64_t num_streams, int64_t group,
                                                       int64_t head_dim, int64_t blocks) {
    DecodeWorkspace w;
    w.partials = (num_streams + blocks) * group;
    w.lse_offset = w.partials * head_dim * 4;
    w.begins_offset = (w.lse_offset + w.partials * 4 + 7) / 8 * 8;
    w.bytes = w.begins_offset + (num_streams + 1) * 8;
    return w;
  }
};

// One piece: the part of stream `stream` (its units [stream_begin, stream_begin
// + stream_units)) that block `block` reads, as a token range.
struct Piece {
  int64_t number;     // stream + block
  int32_t begin, end;  // tokens of the stream
  bool whole;          // the stream's only piece: its block writes out and lse itself
};

// The block's units are [lo, hi), and overlap the stream's.
HEADPAGE_HOST_DEVICE Piece PieceOf(int64_t lo, int64_t hi, int32_t unit_tokens, int32_t block,
                                   int32_t stream, int64_t stream_begin, int64_t stream_units,
                                   int64_t len) {
  const int64_t first = lo > stream_begin ? lo : stream_begin;
  const int64_t last = hi < stream_begin + stream_units ? hi : stream_begin + stream_units;
  Piece p;
  p.number = static_cast<int64_t>(stream) + block;
  p.begin = static_cast<int32_t>((first - stream_begin) * unit_tokens);
  const int64_t end = (last - stream_begin) * unit_tokens;
  p.end = static_cast<int32_t>(end < len ? end : len);
  p.whole = first == stream_begin && last == stream_begin + stream_units;
  return p;
}

HEADPAGE_HOST_DEVICE Piece PieceOf(const BalancedDivision& d, int32_t block, int32_t stream,
                                   int64_t stream_begin, int64_t stream_units, int64_t len) {
  return PieceOf(d.BlockBegin(block), d.BlockBegin(block + 1), d.unit_tokens, block, stream,
                 stream_begin, stream_units, len);
}

}  // namespace headpage::decode_plan

#endif  // HEADPAGE_KERNELS_DECODE_ATTENTION_PLAN_H_
