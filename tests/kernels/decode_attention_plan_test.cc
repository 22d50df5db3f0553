// SPDX-License-Identifier: Apache-2.0
// DecodeAttention's balanced division (kernels/decode_attention_plan.h), on
// the host: the pieces every block reads cover every stream's tokens exactly
// once, on page boundaries; their numbers fit the workspace and are where the
// merge looks for them; and the blocks' shares differ by at most one unit.
#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <vector>

#include "tests/testing/catch.h"
#include "kernels/decode_attention_args.h"
#include "kernels/decode_attention_plan.h"

namespace headpage {
namespace {

using decode_plan::BalancedDivision;
using decode_plan::Piece;

struct Division {
  BalancedDivision division;
  std::vector<int64_t> units, begins;  // per stream, laid end to end
};

Division Divide(const std::vector<int64_t>& lens, int32_t page_size, int32_t launched) {
  Division d;
  const int32_t unit_tokens = decode_plan::UnitTokens(page_size);
  int64_t total = 0;
  for (int64_t len : lens) {
    d.begins.push_back(total);
    d.units.push_back(decode_plan::UnitsOf(len, unit_tokens));
    total += d.units.back();
  }
  d.division = BalancedDivision::Of(total, unit_tokens, launched);
  return d;
}

void CheckDivision(const std::vector<int64_t>& lens, int32_t page_size, int32_t launched) {
  CAPTURE(lens.size(), page_size, launched);
  const Division d = Divide(lens, page_size, launched);
  const BalancedDivision& division = d.division;
  const int32_t num_streams = static_cast<int32_t>(lens.size());
  REQUIRE(division.unit_tokens % page_size == 0);
  REQUIRE(division.unit_tokens >= decode_plan::kUnitTokens);
  REQUIRE(division.blocks >= 1);
  REQUIRE(division.blocks <= launched);

  // The blocks' shares: within one unit of each other, and no block below the
  // minimum unless there is a single one.
  int64_t smallest = INT64_MAX, largest = 0;
  for (int32_t b = 0; b < division.blocks; ++b) {
    const int64_t share = division.BlockBegin(b + 1) - division.BlockBegin(b);
    smallest = std::min(smallest, share);
    largest = std::max(largest, share);
  }
  REQUIRE(division.BlockBegin(0) == 0);
  REQUIRE(division.BlockBegin(division.blocks) == division.total_units);
  REQUIRE(largest - smallest <= 1);
  if (division.blocks > 1) {
    REQUIRE(smallest * division.unit_tokens >= decode_plan::kMinBlockTokens);
  }

  // Every block's pieces, found as the pass finds them: the streams that
  // overlap the block's units, in order.
  std::map<int32_t, std::vector<Piece>> by_stream;
  std::vector<bool> number_used(static_cast<size_t>(num_streams) + launched, false);
  for (int32_t b = 0; b < division.blocks; ++b) {
    const int64_t lo = division.BlockBegin(b), hi = division.BlockBegin(b + 1);
    for (int32_t s = 0; s < num_streams; ++s) {
      if (d.units[s] == 0 || d.begins[s] + d.units[s] <= lo || d.begins[s] >= hi) continue;
      const Piece piece = decode_plan::PieceOf(division, b, s, d.begins[s], d.units[s], lens[s]);
      CAPTURE(b, s, piece.number, piece.begin, piece.end);
      // The workspace holds num_streams + launched pieces.
      REQUIRE(piece.number >= 0);
      REQUIRE(piece.number < num_streams + launched);
      REQUIRE_FALSE(number_used[piece.number]);
      number_used[piece.number] = true;
      REQUIRE(piece.begin % page_size == 0);
      REQUIRE(piece.begin < piece.end);
      by_stream[s].push_back(piece);
    }
  }

  // Each stream: its pieces tile [0, len) in order, and the merge's numbers
  // are theirs.
  for (int32_t s = 0; s < num_streams; ++s) {
    CAPTURE(s, lens[s]);
    const std::vector<Piece>& pieces = by_stream[s];
    int64_t first = -1;
    int32_t count = -1;
    division.StreamPieces(s, d.begins[s], d.units[s], &first, &count);
    REQUIRE(count == static_cast<int32_t>(pieces.size()));
    int64_t covered = 0;
    for (int32_t i = 0; i < count; ++i) {
      REQUIRE(pieces[i].number == first + i);
      REQUIRE(pieces[i].begin == covered);
      REQUIRE(pieces[i].whole == (count == 1));
      covered = pieces[i].end;
    }
    REQUIRE(covered == lens[s]);
  }
}

TEST_CASE("DecodeAttention's balanced division: pieces cover every stream once", "[kernels]") {
  std::mt19937_64 rng(41);
  for (int32_t page_size : {1, 7, 16, 33, 128}) {
    for (int32_t streams : {1, 2, 5, 128, 1000}) {
      for (int32_t launched : {1, 3, 264, 1024}) {
        // Lengths from empty to 40K, many short, a few long, some empty.
        std::vector<int64_t> lens(streams);
        for (int64_t& len : lens) {
          const int kind = static_cast<int>(rng() % 4);
          len = kind == 0 ? 0
                : kind == 1 ? static_cast<int64_t>(rng() % 300)
                : kind == 2 ? static_cast<int64_t>(rng() % 5000)
                            : static_cast<int64_t>(rng() % 40000);
        }
        CheckDivision(lens, page_size, launched);
      }
    }
  }
}

TEST_CASE("DecodeAttention's balanced division: edge batches", "[kernels]") {
  CheckDivision({0, 0, 0}, 16, 264);  // nothing to read: one block, no pieces
  CheckDivision({1}, 16, 264);
  CheckDivision({255, 1, 0, 257}, 16, 264);
  CheckDivision(std::vector<int64_t>(64, 32768), 16, 264);  // 8 x 32K, 8 kv heads
  CheckDivision({131072, 131072, 131072, 131072, 131072, 131072, 131072, 131072}, 16, 264);
  CheckDivision({1 << 30, 64}, 16, 1024);
  // A serving step: 14 requests of 1K-8.5K tokens and two padded rows, 8 kv heads.
  std::vector<int64_t> lens;
  for (int64_t r = 0; r < 16; ++r) lens.insert(lens.end(), 8, r < 14 ? 1024 + 523 * r : 0);
  CheckDivision(lens, 16, 264);
}

TEST_CASE("DecodeAttention's balanced division: one wave of resident blocks", "[kernels]") {
  PagedKV cache;
  cache.head_dim = 128;
  REQUIRE(DecodeAttentionBalancedBlocks(cache, 132) == 264);
  cache.head_dim = 256;  // the 16-bit pass's stages take 128 KiB: one block per SM
  REQUIRE(DecodeAttentionBalancedBlocks(cache, 132) == 132);
  cache.head_dim = 128;
  cache.kv_dtype = KvDType::kFP8E4M3;
  REQUIRE(DecodeAttentionBalancedBlocks(cache, 132) == 528);
  cache.head_dim = 256;
  REQUIRE(DecodeAttentionBalancedBlocks(cache, 132) == 264);
  REQUIRE(DecodeAttentionBalancedBlocks(cache, 10000) == kDecodeMaxSplits);
  // Workspace: a partial per piece (streams + blocks) and query head of the group,
  // then 8-byte aligned every stream's first unit and the total.
  REQUIRE(DecodeAttentionBalancedWorkspaceBytes(2, 8, 2, 128, 10) ==
          size_t{2 * 2 + 10} * 4 * 129 * sizeof(float) + (2 * 2 + 1) * 8);
  const auto odd = decode_plan::DecodeWorkspace::Balanced(3, 1, 64, 2);  // 5 lses: 20 bytes
  REQUIRE(odd.lse_offset == 5 * 64 * 4);
  REQUIRE(odd.begins_offset == 5 * 64 * 4 + 24);
  REQUIRE(odd.bytes == odd.begins_offset + 4 * 8);
  REQUIRE(DecodeAttentionBalancedWorkspaceBytes(2, 8, 2, 128, 0) == 0);
}

TEST_CASE("DecodeWorkspace lays out the even splits' partials, then their lses",
          "[decode_plan]") {
  // 3 seqs x 4 q heads x 5 splits at head_dim 64.
  const auto even = decode_plan::DecodeWorkspace::Of(3, 4, 2, 64, 5, 0);
  REQUIRE(even.partials == 60);
  REQUIRE(even.lse_offset == 60 * 64 * 4);
  REQUIRE(even.bytes == 60 * 65 * 4);
  REQUIRE(DecodeAttentionWorkspaceBytes(3, 4, 64, 5) == static_cast<size_t>(even.bytes));
  // One split needs no workspace; the balanced division ignores num_splits.
  REQUIRE(decode_plan::DecodeWorkspace::Of(3, 4, 2, 64, 1, 0).bytes == 0);
  REQUIRE(DecodeAttentionWorkspaceBytes(3, 4, 64, 1) == 0);
  const auto balanced = decode_plan::DecodeWorkspace::Of(3, 4, 2, 64, 1, 7);
  const auto expected = decode_plan::DecodeWorkspace::Balanced(6, 2, 64, 7);
  REQUIRE(balanced.bytes == expected.bytes);
  REQUIRE(balanced.lse_offset == expected.lse_offset);
  REQUIRE(balanced.begins_offset == expected.begins_offset);
  DecodeAttentionKernelArgs args;
  args.num_seqs = 3;
  args.num_q_heads = 4;
  args.num_kv_heads = 2;
  args.cache.head_dim = 64;
  args.num_splits = 5;
  REQUIRE(DecodeAttentionWorkspaceBytes(args) == static_cast<size_t>(even.bytes));
  args.num_splits = 1;
  args.balanced_blocks = 7;
  REQUIRE(DecodeAttentionWorkspaceBytes(args) == static_cast<size_t>(expected.bytes));
}

}  // namespace
}  // namespace headpage
