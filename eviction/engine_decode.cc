// SPDX-License-Identifier: Apache-2.0
// EvictionEngine's decode-time steps (ObserveDecode, on the host and on a
// device pool) and the pool-wide budget (EnforcePoolBudget); Compress is in
// engine.cc.
#include "eviction/engine.h"

#include "eviction/cuda_executor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "kernels/window_scores_args.h"
#include "policy/budget.h"
#include "policy/scores.h"
#include "policy/select.h"

namespace headpage {

using policy::StreamScores;

// ---------------------------------------------------------------------------
// Decode

absl::Status EvictionEngine::ObserveDecode(SeqId seq, const PolicyConfig& config,
                                           absl::Span<const LayerQueries> queries,
                                           const DecodeSchedule& schedule) {
  HEADPAGE_RETURN_IF_ERROR(Validate(config));
  HEADPAGE_RETURN_IF_ERROR(ValidateQueries(queries, /*one_each=*/true));
  if (schedule.interval < 0 || schedule.window < 1 ||
      (schedule.interval > 0 && schedule.target < 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "decode schedule: interval ", schedule.interval, ", target ", schedule.target,
        ", window ", schedule.window, " (need interval >= 0, window >= 1, target >= 1)"));
  }
  if (schedule.interval > 0 && (config.needs_output_projection() ||
                                config.allocator == PolicyConfig::Allocator::kHeadClasses ||
                                config.allocator == PolicyConfig::Allocator::kAdaAcrossLayers)) {
    return absl::UnimplementedError(absl::StrCat(
        "policy ", config.name, ": decode-time compression is not built for it (CriticalKV and "
        "DefensiveKV would need W_o at every compression, head classes keep their profile's "
        "capacities, and allocation across layers scores every layer at once)"));
  }
  if (group_ != nullptr && schedule.interval > 0) {
    return absl::UnimplementedError(
        "decode-time compression in a tensor-parallel group (EvictionEngine::JoinGroup): a "
        "member failing in the decode step before it would leave the others waiting");
  }
  if (!manager_->Contains(seq)) {
    return absl::NotFoundError(absl::StrCat("sequence ", seq, " is not live"));
  }
  HEADPAGE_RETURN_IF_ERROR(CheckQueryPositions(seq, queries));
  const CacheGeometry& g = manager_->geometry();
  const int32_t heads = g.num_kv_heads;
  SeqState& state = StateFor(seq);
  if (cuda_ != nullptr) return ObserveDecodeOnDevice(seq, config, queries, schedule);

  // H2O bookkeeping for every policy: fold this query's attention into the
  // token scores. Tokens the engine has not seen yet start from zero.
  LayerKeys data;
  std::vector<std::vector<int32_t>> evict_sets;
  std::vector<int32_t> evict_layers;
  for (int32_t layer = 0; layer < g.num_layers; ++layer) {
    HEADPAGE_RETURN_IF_ERROR(host_.GatherLayer(seq, layer, &data));
    bool over_capacity = false;
    std::vector<std::vector<int32_t>> keep_sets(heads);
    for (int32_t h = 0; h < heads; ++h) {
      const int32_t st = layer * heads + h;
      const policy::StreamKeys keys = data.Stream(h, g);
      const int32_t n = keys.num_tokens;
      std::vector<float>& scores = state.scores[st];
      scores.resize(static_cast<size_t>(n), 0.0f);
      HEADPAGE_RETURN_IF_ERROR(policy::AccumulateAttention(keys, GroupOf(queries[layer], g, h),
                                                           config.reduce, absl::MakeSpan(scores)));
      // H2O's streaming eviction: back to the capacity, dropping the lowest
      // accumulated attention outside the recent half (of the capacity past a
      // frozen prefix, which the capacity holds on top, as Prepare sets it).
      const int32_t capacity = state.capacity[st];
      if (config.evicts_while_decoding && capacity > 0 && n > capacity) {
        const int32_t recent =
            config.recent_half ? std::max(capacity - state.frozen, 0) / 2 : config.window;
        const StreamScores stream{scores, absl::MakeConstSpan(keys.positions, n),
                                  policy::Protection{std::max(config.sinks, state.frozen), recent}};
        HEADPAGE_RETURN_IF_ERROR(policy::SelectKeepSet(stream, capacity, &keep_sets[h]));
        over_capacity = true;
      } else {
        keep_sets[h].resize(static_cast<size_t>(n));
        for (int32_t i = 0; i < n; ++i) keep_sets[h][i] = i;
      }
    }
    if (over_capacity) {
      evict_layers.push_back(layer);
      for (auto& set : keep_sets) evict_sets.push_back(std::move(set));
    }
  }
  for (size_t i = 0; i < evict_layers.size(); ++i) {
    const int32_t layers[] = {evict_layers[i]};
    const std::vector<std::vector<int32_t>> sets(evict_sets.begin() + i * heads,
                                                 evict_sets.begin() + (i + 1) * heads);
    HEADPAGE_RETURN_IF_ERROR(ApplyKeepSets(seq, layers, sets));
  }

  // DecodingPress: remember the last `window` queries of every layer, and every
  // `interval` steps compress with them as the observation window.
  ++state.decode_steps;
  if (schedule.interval == 0) return absl::OkStatus();
  const size_t row = static_cast<size_t>(g.num_q_heads) * g.head_dim;
  for (int32_t layer = 0; layer < g.num_layers; ++layer) {
    auto& ring = state.recent_queries[layer];
    std::vector<float> q(row);
    for (size_t i = 0; i < row; ++i) q[i] = LoadAsFloat(queries[layer].data, i, queries[layer].dtype);
    ring.push_back(std::move(q));
    if (static_cast<int32_t>(ring.size()) > schedule.window) ring.erase(ring.begin());
  }
  state.recent_positions.push_back(queries[0].positions[0]);
  if (static_cast<int32_t>(state.recent_positions.size()) > schedule.window) {
    state.recent_positions.erase(state.recent_positions.begin());
  }
  if (state.decode_steps % schedule.interval != 0) return absl::OkStatus();
  // Lay the buffered queries out as LayerQueries: [q_heads][w][head_dim].
  const auto w = static_cast<int32_t>(state.recent_positions.size());
  std::vector<std::vector<float>> buffers(g.num_layers);
  std::vector<LayerQueries> window(g.num_layers);
  for (int32_t layer = 0; layer < g.num_layers; ++layer) {
    std::vector<float>& b = buffers[layer];
    b.resize(static_cast<size_t>(g.num_q_heads) * w * g.head_dim);
    for (int32_t qh = 0; qh < g.num_q_heads; ++qh) {
      for (int32_t r = 0; r < w; ++r) {
        std::memcpy(&b[(static_cast<size_t>(qh) * w + r) * g.head_dim],
                    &state.recent_queries[layer][r][static_cast<size_t>(qh) * g.head_dim],
                    sizeof(float) * g.head_dim);
      }
    }
    window[layer] = LayerQueries{b.data(), state.recent_positions.data(), w, DType::kF32, MemoryKind::kHost, {}};
  }
  PolicyConfig at_decode = config;
  at_decode.window = std::min(config.window, w);
  return Compress(seq, at_decode, Budget::TokensPerHead(schedule.target), window).status();
}

// ---------------------------------------------------------------------------
// The pool-wide budget

absl::StatusOr<int64_t> EvictionEngine::EnforcePoolBudget(int64_t pages_to_free,
                                                          int32_t floor_tokens,
                                                          int32_t protect_recent) {
  if (pages_to_free < 0 || floor_tokens < 0 || protect_recent < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "EnforcePoolBudget: pages_to_free ", pages_to_free, ", floor_tokens ", floor_tokens,
        " and protect_recent ", protect_recent, " must be >= 0"));
  }
  // In a group every member passes the same arguments: 0 returns on all.
  if (pages_to_free == 0) return 0;
  // Sequences freed behind the engine's back leave no state behind.
  DropFreedSequences();
  const CacheGeometry& g = manager_->geometry();
  const int32_t heads = g.num_kv_heads;
  // Every stream of every scored sequence, in SeqId order so that the result
  // does not depend on hash-map iteration.
  std::vector<SeqId> seqs;
  for (const auto& [id, state] : states_) {
    // On a device pool the budget's selection knows no frozen prefix: such
    // sequences sit it out (their pages are mostly shared anyway).
    if (cuda_ == nullptr || state.frozen == 0) seqs.push_back(id);
  }
  std::sort(seqs.begin(), seqs.end());
  if (cuda_ != nullptr) {
    std::vector<std::vector<int32_t>*> scored;
    for (const SeqId seq : seqs) scored.push_back(&states_[seq].scored);
    const int64_t free_before = manager_->pool().free_pages();
    // In a group the members agree on the counts as the host path does (the
    // same agreements in the same order). Whether the agreement ran tells how
    // a failure reaches the others: before it, at its first agreement; inside
    // it, they know; after it, at the last one below.
    enum class Agreement { kNotReached, kFailed, kDone } agreement = Agreement::kNotReached;
    CudaExecutor::AgreeGlobalKept agree;
    if (group_ != nullptr) {
      agree = [&](absl::Span<const StreamScores> streams, absl::Span<const int32_t> floors)
          -> absl::StatusOr<std::vector<int32_t>> {
        agreement = Agreement::kFailed;
        HEADPAGE_ASSIGN_OR_RETURN(std::vector<int32_t> kept,
                                  GlobalKeptInGroup(seqs.size(), streams, floors, pages_to_free));
        agreement = Agreement::kDone;
        return kept;
      };
    }
    const absl::Status applied =
        cuda_->EnforcePoolBudget(seqs, scored, pages_to_free, floor_tokens, protect_recent, agree);
    if (group_ != nullptr && agreement != Agreement::kFailed) {
      HEADPAGE_RETURN_IF_ERROR(agreement == Agreement::kNotReached
                                   ? FailTogether(applied)
                                   : policy::Agree(*group_, applied, {0, 0},
                                                   "EvictionEngine::EnforcePoolBudget")
                                         .status());
    }
    HEADPAGE_RETURN_IF_ERROR(applied);
    return manager_->pool().free_pages() - free_before;
  }
  std::vector<std::vector<float>> scores;      // padded to each stream's length
  std::vector<std::vector<int32_t>> positions;
  std::vector<StreamScores> streams;
  std::vector<int32_t> floors;
  const auto gather = [&]() -> absl::Status {
    LayerKeys data;
    for (const SeqId seq : seqs) {
      SeqState& state = states_[seq];
      for (int32_t layer = 0; layer < g.num_layers; ++layer) {
        HEADPAGE_RETURN_IF_ERROR(host_.GatherLayer(seq, layer, &data));
        for (int32_t h = 0; h < heads; ++h) {
          const int32_t n = data.offsets[h + 1] - data.offsets[h];
          const std::vector<float>& known = state.scores[layer * heads + h];
          const auto scored = static_cast<int32_t>(std::min<size_t>(known.size(), n));
          scores.emplace_back(known.begin(), known.begin() + scored);
          // GlobalKept compares shares of each stream's score mass, which needs
          // scores >= 0. Knorm's are negative (-||k||): shift a stream's scores to
          // start at zero, which keeps their order within the stream.
          const auto lowest = std::min_element(scores.back().begin(), scores.back().end());
          if (lowest != scores.back().end() && *lowest < 0.0f) {
            const float shift = *lowest;
            for (float& x : scores.back()) x -= shift;
          }
          scores.back().resize(static_cast<size_t>(n), 0.0f);
          positions.emplace_back(data.positions.begin() + data.offsets[h],
                                 data.positions.begin() + data.offsets[h + 1]);
          floors.push_back(std::min(floor_tokens, n));
          // Unscored tokens (appended since the engine last looked) are the
          // stream's most recent ones: protect them with the recent window.
          // A frozen prefix stays, as sinks do.
          streams.push_back(StreamScores{
              {}, {}, policy::Protection{state.frozen, std::max(protect_recent, n - scored)}});
        }
      }
    }
    for (size_t i = 0; i < streams.size(); ++i) {
      streams[i].scores = scores[i];
      streams[i].positions = positions[i];
    }
    return absl::OkStatus();
  };
  const absl::Status gathered = gather();
  std::vector<int32_t> kept;
  if (group_ == nullptr) {
    HEADPAGE_RETURN_IF_ERROR(gathered);
    HEADPAGE_ASSIGN_OR_RETURN(kept,
                              policy::GlobalKept(streams, floors, g.page_size, pages_to_free));
  } else {
    HEADPAGE_RETURN_IF_ERROR(
        policy::Agree(*group_, gathered, {0, 0}, "EvictionEngine::EnforcePoolBudget").status());
    HEADPAGE_ASSIGN_OR_RETURN(kept, GlobalKeptInGroup(seqs.size(), streams, floors, pages_to_free,
                                                      /*agreed=*/true));
  }
  const int64_t free_before = manager_->pool().free_pages();
  const auto apply = [&]() -> absl::Status {
    size_t i = 0;
    for (const SeqId seq : seqs) {
      for (int32_t layer = 0; layer < g.num_layers; ++layer, i += heads) {
        bool changes = false;
        for (int32_t h = 0; h < heads; ++h) changes |= kept[i + h] != streams[i + h].num_tokens();
        if (!changes) continue;
        std::vector<std::vector<int32_t>> keep_sets(heads);
        for (int32_t h = 0; h < heads; ++h) {
          HEADPAGE_RETURN_IF_ERROR(
              policy::SelectKeepSet(streams[i + h], kept[i + h], &keep_sets[h]));
        }
        const int32_t layers[] = {layer};
        HEADPAGE_RETURN_IF_ERROR(ApplyKeepSets(seq, layers, keep_sets));
      }
    }
    return absl::OkStatus();
  };
  const absl::Status applied = apply();
  if (group_ != nullptr) {
    HEADPAGE_RETURN_IF_ERROR(
        policy::Agree(*group_, applied, {0, 0}, "EvictionEngine::EnforcePoolBudget").status());
  }
  HEADPAGE_RETURN_IF_ERROR(applied);
  return manager_->pool().free_pages() - free_before;
}

// ---------------------------------------------------------------------------
// Decode on a device pool: the same steps, the scores and queries on the GPU.

absl::Status EvictionEngine::ObserveDecodeOnDevice(SeqId seq, const PolicyConfig& config,
                                                   absl::Span<const LayerQueries> queries,
                                                   const DecodeSchedule& schedule) {
  // What the interval's compression needs, checked before anything changes.
  if (schedule.interval > 0) {
    HEADPAGE_RETURN_IF_ERROR(CudaExecutor::Supports(config));
    if (config.scorer == PolicyConfig::Scorer::kSnapKV && schedule.window > kMaxScoreWindow) {
      return absl::InvalidArgumentError(absl::StrCat("decode schedule: window ", schedule.window,
                                                     "; the GPU scores at most ", kMaxScoreWindow,
                                                     " queries"));
    }
  }
  SeqState& state = StateFor(seq);
  if (state.frozen > 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "ObserveDecode: sequence ", seq, " has a frozen prefix (FreezePrefix); decode-time "
        "eviction on a device pool does not keep one yet"));
  }
  const int32_t capacity = config.evicts_while_decoding ? state.capacity[0] : 0;
  const policy::Protection protection{config.sinks,
                                      config.recent_half ? capacity / 2 : config.window};
  HEADPAGE_RETURN_IF_ERROR(
      cuda_->ObserveDecode(config, seq, queries, absl::MakeSpan(state.scored), capacity, protection));
  ++state.decode_steps;
  if (schedule.interval == 0) return absl::OkStatus();
  HEADPAGE_RETURN_IF_ERROR(cuda_->RememberQueries(seq, queries, schedule.window));
  if (state.decode_steps % schedule.interval != 0) return absl::OkStatus();
  HEADPAGE_ASSIGN_OR_RETURN(const std::vector<LayerQueries> window, cuda_->RecentQueries(seq));
  PolicyConfig at_decode = config;
  at_decode.window = std::min(config.window, window[0].num_queries);
  return Compress(seq, at_decode, Budget::TokensPerHead(schedule.target), window).status();
}

}  // namespace headpage
