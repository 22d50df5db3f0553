// SPDX-License-Identifier: Apache-2.0
#include "kernels/decode_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/kv_rows.h"
#include "core/status.h"
#include "kernels/decode_attention_plan.h"
#include "kernels/gpu_status.h"
#include "kernels/table_checks_host.h"
#include "kernels/validate_common.h"
#include "kernels/write_kv.h"

namespace headpage {

size_t DecodeAttentionWorkspaceBytes(int32_t num_seqs, int32_t num_q_heads, int32_t head_dim,
                                     int32_t num_splits) {
  // The even splits' layout does not depend on the KV heads: any divisor will do.
  return static_cast<size_t>(
      decode_plan::DecodeWorkspace::Of(num_seqs, num_q_heads, 1, head_dim, num_splits, 0).bytes);
}

size_t DecodeAttentionBalancedWorkspaceBytes(int32_t num_seqs, int32_t num_q_heads,
                                             int32_t num_kv_heads, int32_t head_dim,
                                             int32_t balanced_blocks) {
  // num_splits 1: no balanced blocks, no workspace.
  return static_cast<size_t>(decode_plan::DecodeWorkspace::Of(num_seqs, num_q_heads, num_kv_heads,
                                                              head_dim, 1, balanced_blocks)
                                 .bytes);
}

size_t DecodeAttentionWorkspaceBytes(const DecodeAttentionKernelArgs& args) {
  return static_cast<size_t>(decode_plan::DecodeWorkspace::Of(
                                 args.num_seqs, args.num_q_heads, args.num_kv_heads,
                                 args.cache.head_dim, args.num_splits, args.balanced_blocks)
                                 .bytes);
}

int32_t DecodeAttentionResidentBlocks(const PagedKV& cache) {
  if (cache.fp8()) return cache.head_dim <= 128 ? 4 : 2;
  return cache.dtype != DType::kF32 && cache.head_dim > 128 ? 1 : 2;
}

int32_t DecodeAttentionBalancedBlocks(const PagedKV& cache, int32_t num_sms) {
  const int64_t blocks = int64_t{DecodeAttentionResidentBlocks(cache)} * std::max(num_sms, 1);
  return static_cast<int32_t>(std::min<int64_t>(blocks, kDecodeMaxSplits));
}

int32_t DecodeAttentionSplits(int64_t max_len, int32_t num_streams, int32_t num_sms,
                              int32_t resident_blocks, int64_t min_len) {
  if (max_len <= 0 || num_streams <= 0) return 1;
  // About six (stream, split) blocks per multiprocessor, in whole waves: three
  // at the 16-bit pass's two resident blocks, one at the fp8 pass's four. Many
  // blocks keep a wave's tail a small part of the time when lengths differ, as
  // they do between a batch's requests and between a compressed request's
  // heads; a fraction of a wave past whole ones costs a whole wave when they do
  // not. Measured on an H100 (docs/performance.md): at a serving step's 16 rows
  // of 1K-8.7K tokens six splits took 102 us where four took 110, at head-wise
  // 20% 8x32K twelve took 92.6 us where eight took 95.8, and at full 8x32K and
  // 1x128K two waves or three ran alike. On the H200 at fp8 8x32K, 12 splits
  // (1.5 waves) took 174 us where 8 took 148, and at bf16 9 splits took 310 us
  // where 8 took 261.
  constexpr int64_t kTargetBlocksPerSM = 6;
  const int64_t resident = std::max(resident_blocks, 1);
  const int64_t per_wave = resident * std::max(num_sms, 1);
  // Past the first wave a split reads at least this many tokens (256 KiB of
  // bf16 K/V at head_dim 128): shorter ones spend more on their pipeline
  // start and the merge than the later waves gain (1x32K on an H100: 32
  // splits, one wave, 59.9 us; 64 splits 63.8; 99 splits 66.6).
  constexpr int64_t kMinSplitTokens = 512;
  // Filling the first wave pays down to this many tokens a split (H100: 1x8K
  // 19.2 us at 32 splits of 256 tokens against 20.8 at 16; 1x4K 16.9 us at 16
  // splits against 20.9 at 8).
  constexpr int64_t kMinFillTokens = 256;
  auto clamp = [](int64_t splits) {
    return static_cast<int32_t>(std::clamp<int64_t>(splits, 1, int64_t{kDecodeMaxSplits}));
  };
  // Streams of about one length (the shortest within an eighth of the
  // longest) give every block the same work: one wave has no tail to fill,
  // and its fewer, longer splits spend less on their starts and the merge. At
  // 1x128K one wave (32-33 splits) took 141 us on an H200 where three (99)
  // took 147-150, and 182-189 us on H100s where three took 185-193. One wave
  // still gives every SM a block: streams * floor(per_wave / streams) > per_wave / 2.
  const bool even = min_len > 0 && min_len <= max_len && min_len >= max_len - max_len / 8;
  const int64_t most_waves = even ? 1 : std::max<int64_t>(kTargetBlocksPerSM / resident, 1);
  for (int64_t waves = most_waves; waves >= 1; --waves) {
    const int64_t splits = waves * per_wave / num_streams;
    if (splits <= 1) return 1;  // the streams alone fill the waves, or half of one
    if ((max_len + splits - 1) / splits >= kMinSplitTokens) return clamp(splits);
  }
  return clamp(std::min(per_wave / num_streams, (max_len + kMinFillTokens - 1) / kMinFillTokens));
}

absl::Status Validate(const DecodeAttentionArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(ValidatePagedKV(args.cache, "DecodeAttention"));
  if (args.num_seqs < 0 || args.num_q_heads <= 0 || args.num_kv_heads <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("DecodeAttention: num_seqs ", args.num_seqs,
                                                   ", num_q_heads ", args.num_q_heads,
                                                   ", num_kv_heads ", args.num_kv_heads));
  }
  if (args.num_q_heads % args.num_kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("DecodeAttention: num_q_heads ", args.num_q_heads,
                     " is not a multiple of num_kv_heads ", args.num_kv_heads));
  }
  if (args.num_q_heads / args.num_kv_heads > kDecodeMaxGroup) {
    return absl::InvalidArgumentError(
        absl::StrCat("DecodeAttention: GQA group ", args.num_q_heads / args.num_kv_heads,
                     " exceeds ", kDecodeMaxGroup));
  }
  if (args.num_splits < 1 || args.num_splits > kDecodeMaxSplits) {
    return absl::InvalidArgumentError(absl::StrCat("DecodeAttention: num_splits ", args.num_splits,
                                                   " is outside [1, ", kDecodeMaxSplits, "]"));
  }
  // The bound the even splits have: a stream can span every block, and the
  // merge folds one piece per block of a row.
  if (args.balanced_blocks < 0 || args.balanced_blocks > kDecodeMaxSplits) {
    return absl::InvalidArgumentError(
        absl::StrCat("DecodeAttention: balanced_blocks ", args.balanced_blocks,
                     " is outside [0, ", kDecodeMaxSplits, "]"));
  }
  if (args.balanced_blocks > 0 && args.num_splits != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("DecodeAttention: num_splits ", args.num_splits, " and balanced_blocks ",
                     args.balanced_blocks, " both set: they are two divisions of the work"));
  }
  // One CUDA block per (stream, split), in a one-dimensional grid.
  if (static_cast<int64_t>(args.num_seqs) * args.num_kv_heads * args.num_splits >
      std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("DecodeAttention: ", args.num_seqs, " seqs x ", args.num_kv_heads,
                     " kv heads x ", args.num_splits, " splits exceed the int32 block range"));
  }
  if (args.num_page_ids < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("DecodeAttention: num_page_ids ", args.num_page_ids, " is negative"));
  }
  if (!std::isfinite(args.sm_scale)) {
    return absl::InvalidArgumentError(
        absl::StrCat("DecodeAttention: sm_scale ", args.sm_scale, " is not finite"));
  }
  const DecodeNewTokens& new_tokens = args.new_tokens;
  if (new_tokens.keys != nullptr || new_tokens.values != nullptr ||
      new_tokens.positions != nullptr) {
    if (new_tokens.keys == nullptr || new_tokens.values == nullptr ||
        new_tokens.positions == nullptr) {
      return absl::InvalidArgumentError(
          "DecodeAttention: new tokens need keys, values and positions, one of them is null");
    }
    if (!IsKernelAligned(new_tokens.keys) || !IsKernelAligned(new_tokens.values)) {
      return absl::InvalidArgumentError(
          "DecodeAttention: the new tokens' keys and values must be 16-byte aligned");
    }
  }
  if (args.num_seqs == 0) return absl::OkStatus();
  if (args.q == nullptr || args.indptr == nullptr ||
      (args.num_page_ids > 0 && args.page_ids == nullptr) || args.lens == nullptr ||
      args.out == nullptr) {
    return absl::InvalidArgumentError(
        "DecodeAttention: q, indptr, page_ids, lens or out is null");
  }
  if (!IsKernelAligned(args.q)) {
    return absl::InvalidArgumentError("DecodeAttention: q is not 16-byte aligned");
  }
  const size_t needed = DecodeAttentionWorkspaceBytes(args);
  if (needed > 0 && (args.workspace == nullptr || args.workspace_bytes < needed)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DecodeAttention: workspace of ", args.workspace_bytes, " bytes",
        args.workspace == nullptr ? " (null)" : "", " is below the ", needed, " that ",
        args.balanced_blocks > 0 ? absl::StrCat(args.balanced_blocks, " balanced blocks")
                                 : absl::StrCat(args.num_splits, " splits"),
        " need"));
  }
  if (needed > 0 && !IsKernelAligned(args.workspace)) {
    return absl::InvalidArgumentError("DecodeAttention: workspace is not 16-byte aligned");
  }
  return absl::OkStatus();
}

namespace {

TableFaultContext FaultContextOf(const DecodeAttentionArgs& args) {
  TableFaultContext context;
  context.op = "DecodeAttention";
  context.row_noun = "stream";
  context.num_page_ids = args.num_page_ids;
  context.num_pages = args.cache.num_pages;
  return context;
}

}  // namespace

absl::Status TableFaultStatus(const DecodeAttentionArgs& args, const TableFault& fault) {
  return TableFaultStatus(fault, FaultContextOf(args));
}

namespace ref {
namespace {

// The new tokens as WriteKV stores them, over the slot mapping Reserve would
// have given: each stream's last token, or -1 (skip) for an empty stream and
// for every stream of a seq whose position is negative. The tables are checked.
absl::Status WriteNewTokens(const DecodeAttentionArgs& args) {
  const int32_t num_streams = args.num_seqs * args.num_kv_heads;
  std::vector<int32_t> slots(static_cast<size_t>(num_streams), -1);
  for (int32_t stream = 0; stream < num_streams; ++stream) {
    const int32_t len = args.lens[stream];
    if (len > 0 && args.new_tokens.positions[stream / args.num_kv_heads] >= 0) {
      slots[stream] = static_cast<int32_t>(
          SlotOf(args.page_ids + args.indptr[stream], len - 1, args.cache.page_size));
    }
  }
  WriteKVArgs write;
  write.cache = args.cache;
  write.num_tokens = args.num_seqs;
  write.num_kv_heads = args.num_kv_heads;
  write.keys = args.new_tokens.keys;
  write.values = args.new_tokens.values;
  write.slot_mapping = slots.data();
  write.slot_stride = args.num_kv_heads;
  write.positions = args.new_tokens.positions;
  return WriteKV(write);
}

}  // namespace

absl::Status DecodeAttention(const DecodeAttentionArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  if (args.num_seqs == 0) return absl::OkStatus();
  HEADPAGE_RETURN_IF_ERROR(TableFaultStatus(
      args, FirstTableFault(BlockTableOf(args), args.num_seqs * args.num_kv_heads,
                            args.cache.page_size, args.cache.num_pages)));
  if (args.new_tokens.keys != nullptr) HEADPAGE_RETURN_IF_ERROR(WriteNewTokens(args));
  const PagedKV& cache = args.cache;
  const int32_t head_dim = cache.head_dim;
  const int32_t group = args.num_q_heads / args.num_kv_heads;
  std::vector<float> q(static_cast<size_t>(head_dim));
  std::vector<float> scores;
  std::vector<float> acc(static_cast<size_t>(head_dim));
  for (int32_t s = 0; s < args.num_seqs; ++s) {
    for (int32_t qh = 0; qh < args.num_q_heads; ++qh) {
      const int64_t stream = static_cast<int64_t>(s) * args.num_kv_heads + qh / group;
      const int32_t* pages = args.page_ids + args.indptr[stream];
      const int32_t len = args.lens[stream];
      const size_t row = static_cast<size_t>(s) * args.num_q_heads + qh;
      for (int32_t e = 0; e < head_dim; ++e) {
        q[e] = LoadAsFloat(args.q, row * head_dim + e, cache.dtype);
      }
      // Pass 1: the scores and their maximum.
      scores.assign(static_cast<size_t>(len), 0.0f);
      float max_score = -std::numeric_limits<float>::infinity();
      for (int32_t i = 0; i < len; ++i) {
        const int64_t slot = SlotOf(pages, i, cache.page_size);
        float dot = 0.0f;
        for (int32_t e = 0; e < head_dim; ++e) {
          dot += q[e] * LoadKvElement(cache, slot, KvPart::kKey, e);
        }
        scores[i] = args.sm_scale * dot;
        max_score = std::max(max_score, scores[i]);
      }
      // Pass 2: the weights, relative to the maximum, and the weighted values.
      std::fill(acc.begin(), acc.end(), 0.0f);
      float sum = 0.0f;
      for (int32_t i = 0; i < len; ++i) {
        const float weight = std::exp(scores[i] - max_score);
        sum += weight;
        const int64_t slot = SlotOf(pages, i, cache.page_size);
        for (int32_t e = 0; e < head_dim; ++e) {
          acc[e] += weight * LoadKvElement(cache, slot, KvPart::kValue, e);
        }
      }
      for (int32_t e = 0; e < head_dim; ++e) {
        StoreFromFloat(args.out, row * head_dim + e, cache.dtype, len > 0 ? acc[e] / sum : 0.0f);
      }
      if (args.lse != nullptr) {
        args.lse[row] =
            len > 0 ? max_score + std::log(sum) : -std::numeric_limits<float>::infinity();
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace gpu {

absl::Status DecodeAttention(const DecodeAttentionArgs& args, GpuStream stream) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  HEADPAGE_RETURN_IF_ERROR(ValidateGpuHeadDim(args.cache, "DecodeAttention"));
  // Before the early return: a checked call with no rows still resets its word.
  if (args.fault != nullptr) {
    HEADPAGE_RETURN_IF_ERROR(CheckTablesOnDevice(
        BlockTableOf(args), args.num_seqs * args.num_kv_heads, args.cache.page_size,
        args.cache.num_pages, args.fault, stream));
  }
  if (args.num_seqs == 0) return absl::OkStatus();
  return LaunchStatus(internal::LaunchDecodeAttention(args, stream), "DecodeAttention",
                      args.cache.dtype, args.cache.head_dim);
}

}  // namespace gpu
#endif

}  // namespace headpage
