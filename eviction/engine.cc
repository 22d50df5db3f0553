// SPDX-License-Identifier: Apache-2.0
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
// Engine

absl::StatusOr<EvictionEngine> EvictionEngine::Create(BlockManager* manager, const PagedKV& cache,
                                                      GpuStream stream) {
  if (manager == nullptr) return absl::InvalidArgumentError("EvictionEngine: manager is null");
  const CacheGeometry& g = manager->geometry();
  if (cache.data == nullptr || cache.positions == nullptr || cache.page_size != g.page_size ||
      cache.head_dim != g.head_dim || cache.dtype != g.dtype ||
      cache.num_pages != manager->pool().num_pages()) {
    return absl::InvalidArgumentError(
        absl::StrCat("EvictionEngine: the cache view does not match the manager's geometry ",
                     g.DebugString(), " and pool of ", manager->pool().num_pages(), " pages"));
  }
  std::unique_ptr<CudaExecutor> cuda;
  if (cache.memory == MemoryKind::kDevice) {
    HEADPAGE_ASSIGN_OR_RETURN(cuda, CudaExecutor::Create(manager, cache, stream));
  }
  return EvictionEngine(manager, cache, std::move(cuda));
}

EvictionEngine::EvictionEngine(BlockManager* manager, const PagedKV& cache,
                               std::unique_ptr<CudaExecutor> cuda)
    : manager_(manager), cache_(cache), host_(manager, cache), cuda_(std::move(cuda)) {}
EvictionEngine::EvictionEngine(EvictionEngine&&) noexcept = default;
EvictionEngine& EvictionEngine::operator=(EvictionEngine&&) noexcept = default;
EvictionEngine::~EvictionEngine() = default;

void EvictionEngine::DropFreedSequences() {
  for (auto it = states_.begin(); it != states_.end();) {
    if (manager_->Contains(it->first)) {
      ++it;
    } else {
      if (cuda_ != nullptr) cuda_->Forget(it->first);
      states_.erase(it++);
    }
  }
}

void EvictionEngine::Forget(SeqId seq) {
  states_.erase(seq);
  if (cuda_ != nullptr) cuda_->Forget(seq);
}

absl::StatusOr<std::vector<std::vector<float>>> EvictionEngine::StoredScores(SeqId seq) {
  if (!manager_->Contains(seq)) {
    return absl::NotFoundError(absl::StrCat("sequence ", seq, " is not live"));
  }
  // A sequence the engine has not scored has no state, and gets none here
  // (state puts it under the pool budget).
  const auto it = states_.find(seq);
  if (it == states_.end()) {
    return std::vector<std::vector<float>>(manager_->geometry().streams_per_sequence());
  }
  if (cuda_ != nullptr) return cuda_->StoredScores(seq, it->second.scored);
  return it->second.scores;
}

EvictionEngine::SeqState& EvictionEngine::StateFor(SeqId seq) {
  SeqState& state = states_[seq];
  const CacheGeometry& g = manager_->geometry();
  if (state.scores.empty()) {
    state.scores.resize(g.streams_per_sequence());
    state.scored.assign(g.streams_per_sequence(), 0);
    state.capacity.assign(g.streams_per_sequence(), 0);
    state.recent_queries.resize(g.num_layers);
  }
  return state;
}

absl::Status EvictionEngine::ValidateQueries(absl::Span<const LayerQueries> queries,
                                             bool one_each) const {
  const CacheGeometry& g = manager_->geometry();
  if (static_cast<int32_t>(queries.size()) != g.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("queries for ", queries.size(),
                                                   " layers; the model has ", g.num_layers));
  }
  for (size_t l = 0; l < queries.size(); ++l) {
    const LayerQueries& q = queries[l];
    if (q.data == nullptr || q.positions == nullptr || q.num_queries < 1 || SizeOf(q.dtype) == 0 ||
        (one_each && q.num_queries != 1) ||
        (cuda_ == nullptr && q.memory != MemoryKind::kHost)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer ", l, " queries: null data or positions, an unknown dtype, device memory for a "
          "host pool, or ", q.num_queries, one_each ? " queries where one is expected" : " queries"));
    }
  }
  return absl::OkStatus();
}

absl::Status EvictionEngine::CheckOutputProjections(const PolicyConfig& config,
                                                    absl::Span<const LayerQueries> queries) const {
  if (!config.needs_output_projection()) return absl::OkStatus();
  const CacheGeometry& g = manager_->geometry();
  for (size_t l = 0; l < queries.size(); ++l) {
    const policy::OutputProjection& w = queries[l].output_projection;
    if (w.data == nullptr || w.hidden_size < 1 || w.num_q_heads != g.num_q_heads ||
        w.head_dim != g.head_dim || SizeOf(w.dtype) == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "policy ", config.name, " weighs tokens by their values through the output "
          "projection: layer ", l, " needs its W_o, [hidden][", g.num_q_heads, " x ", g.head_dim,
          "] (got ", w.data == nullptr ? "none" : "a projection of another shape or dtype", ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status EvictionEngine::CheckQueryPositions(SeqId seq,
                                                 absl::Span<const LayerQueries> queries) const {
  HEADPAGE_ASSIGN_OR_RETURN(const int64_t tokens, manager_->NumTokens(seq));
  for (size_t l = 0; l < queries.size(); ++l) {
    const LayerQueries& q = queries[l];
    // Device positions are read where they are: the kernels stay in bounds
    // whatever they hold, so they are the caller's to get right.
    if (q.memory != MemoryKind::kHost) continue;
    for (int32_t i = 0; i < q.num_queries; ++i) {
      const int32_t p = q.positions[i];
      if (p < 0 || p >= tokens || (i > 0 && p <= q.positions[i - 1])) {
        return absl::InvalidArgumentError(absl::StrCat(
            "layer ", l, " query ", i, " is at position ", p, "; query positions must ascend "
            "strictly within the sequence's ", tokens, " tokens"));
      }
    }
  }
  return absl::OkStatus();
}

namespace {

// Pages the streams of `seq` hold (shared ones included).
int64_t PagesHeld(const BlockManager& manager, SeqId seq) {
  const CacheGeometry& g = manager.geometry();
  int64_t pages = 0;
  for (int32_t layer = 0; layer < g.num_layers; ++layer) {
    for (int32_t h = 0; h < g.num_kv_heads; ++h) {
      const auto held = manager.StreamPages(seq, layer, h);
      if (held.ok()) pages += static_cast<int64_t>(held->size());
    }
  }
  return pages;
}

}  // namespace

absl::StatusOr<EvictionEngine::Prepared> EvictionEngine::Prepare(SeqId seq,
                                                                const PolicyConfig& config,
                                                                const Budget& budget) const {
  const CacheGeometry& g = manager_->geometry();
  HEADPAGE_ASSIGN_OR_RETURN(const absl::Span<const uint32_t> lens_now, manager_->StreamLengths(seq));
  Prepared p;
  p.seq = seq;
  for (const uint32_t len : lens_now) p.tokens_before += len;
  p.pages_before = PagesHeld(*manager_, seq);
  const int32_t prompt_len = static_cast<int32_t>(*std::max_element(lens_now.begin(), lens_now.end()));
  if (config.window > prompt_len) {
    return absl::InvalidArgumentError(absl::StrCat("policy ", config.name, ": window ", config.window,
                                                   " is longer than the prompt (", prompt_len, ")"));
  }
  p.capacity = budget.CapacityFor(prompt_len);
  p.layer_capacity.assign(g.num_layers, p.capacity);
  if (config.allocator == PolicyConfig::Allocator::kPyramid ||
      config.allocator == PolicyConfig::Allocator::kAdaPyramid) {
    HEADPAGE_ASSIGN_OR_RETURN(p.layer_capacity,
                              policy::PyramidCapacities(g.num_layers, p.capacity, config.window,
                                                        prompt_len, config.pyramid_beta));
  }
  if (config.allocator == PolicyConfig::Allocator::kHeadClasses) {
    const policy::HeadClasses* profile = config.head_profile.get();
    const auto check = [&]() -> absl::Status {
    if (profile == nullptr || profile->num_layers() != g.num_layers ||
        profile->num_kv_heads() != g.num_kv_heads) {
      return absl::InvalidArgumentError(absl::StrCat(
          "policy ", config.name, " needs a head profile of ", g.num_layers, " layers x ",
          g.num_kv_heads, " kv heads (option profile: DuoAttention's full_attention_heads.tsv, "
          "tools/profile_heads.py or headpage trace heads)",
          profile == nullptr ? ", and has none"
                             : absl::StrCat(", and has one of ", profile->num_layers(), " x ",
                                            profile->num_kv_heads())));
    }
      return absl::OkStatus();
    };
    HEADPAGE_RETURN_IF_ERROR(check());
    // Retrieval heads keep everything, streaming heads their sinks and window.
    const std::vector<uint8_t> retrieval = profile->Retrieval(config.head_sparsity);
    const auto streaming = static_cast<int32_t>(
        std::min<int64_t>(std::numeric_limits<int32_t>::max(), int64_t{config.sinks} + config.window));
    p.stream_capacity.resize(retrieval.size());
    for (size_t s = 0; s < retrieval.size(); ++s) {
      p.stream_capacity[s] = retrieval[s] ? std::numeric_limits<int32_t>::max() : streaming;
    }
  }
  // H2O keeps as many recent tokens as heavy hitters.
  p.protection = policy::Protection{config.sinks, config.window};
  if (config.recent_half) p.protection.recent = p.capacity / 2;
  // The checks the allocators and TOVA would make layer by layer, made here, so
  // that a batch is refused before any sequence or layer is compressed.
  using A = PolicyConfig::Allocator;
  const bool capacity_bound = config.allocator == A::kUniform || config.allocator == A::kPyramid ||
                              config.allocator == A::kAda || config.allocator == A::kAdaPyramid ||
                              config.allocator == A::kAdaAcrossLayers;
  const int32_t heads = g.num_kv_heads;
  for (int32_t layer = 0; layer < g.num_layers; ++layer) {
    for (int32_t h = 0; h < heads; ++h) {
      const int64_t n = lens_now[layer * heads + h];
      // The protected tokens: the recent window and the sinks (the prefix of
      // positions below `sinks`), at most the stream.
      const int64_t protect =
          std::min<int64_t>(n, int64_t{p.protection.recent} + p.protection.sinks);
      if (capacity_bound && p.layer_capacity[layer] < protect) {
        return absl::InvalidArgumentError(absl::StrCat(
            "policy ", config.name, ": layer ", layer, "'s capacity ", p.layer_capacity[layer],
            " is smaller than the ", protect, " protected tokens of kv head ", h));
      }
      if (config.scorer == PolicyConfig::Scorer::kTova && n != lens_now[layer * heads]) {
        return absl::FailedPreconditionError(absl::StrCat(
            "TOVA: layer ", layer, "'s kv heads hold different tokens (", n, " vs ",
            lens_now[layer * heads], "); it scores each token across the layer's heads"));
      }
    }
  }
  return p;
}

absl::StatusOr<CompressResult> EvictionEngine::Compress(SeqId seq, const PolicyConfig& config,
                                                        const Budget& budget,
                                                        absl::Span<const LayerQueries> queries) {
  const int64_t free_before = manager_->pool().free_pages();
  const SeqId seqs[] = {seq};
  const absl::Span<const LayerQueries> each[] = {queries};
  HEADPAGE_ASSIGN_OR_RETURN(std::vector<CompressResult> results,
                            CompressBatch(seqs, config, budget, each));
  results[0].pages_freed = manager_->pool().free_pages() - free_before;
  return std::move(results[0]);
}

absl::StatusOr<std::vector<CompressResult>> EvictionEngine::CompressBatch(
    absl::Span<const SeqId> seqs, const PolicyConfig& config, const Budget& budget,
    absl::Span<const absl::Span<const LayerQueries>> queries) {
  HEADPAGE_RETURN_IF_ERROR(Validate(config));
  HEADPAGE_RETURN_IF_ERROR(Validate(budget));
  if (queries.size() != seqs.size()) {
    return absl::InvalidArgumentError(absl::StrCat("CompressBatch: ", seqs.size(),
                                                   " sequences but queries for ", queries.size()));
  }
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (std::find(seqs.begin(), seqs.begin() + i, seqs[i]) != seqs.begin() + i) {
      return absl::InvalidArgumentError(
          absl::StrCat("CompressBatch: sequence ", seqs[i], " is listed twice"));
    }
  }
  if (cuda_ != nullptr && config.compresses()) HEADPAGE_RETURN_IF_ERROR(CudaExecutor::Supports(config));
  // Every check before anything changes.
  std::vector<Prepared> prepared;
  for (size_t i = 0; i < seqs.size(); ++i) {
    HEADPAGE_RETURN_IF_ERROR(ValidateQueries(queries[i], /*one_each=*/false));
    HEADPAGE_RETURN_IF_ERROR(CheckOutputProjections(config, queries[i]));
    HEADPAGE_ASSIGN_OR_RETURN(Prepared p, Prepare(seqs[i], config, budget));
    HEADPAGE_RETURN_IF_ERROR(CheckQueryPositions(seqs[i], queries[i]));
    prepared.push_back(std::move(p));
  }

  const CacheGeometry& g = manager_->geometry();
  const int32_t heads = g.num_kv_heads;
  if (config.compresses() && cuda_ != nullptr) {
    // Each job says whether the device store keeps its scores (its pages are
    // its own), asked once, before anything changes.
    std::vector<CudaExecutor::Job> jobs;
    for (size_t i = 0; i < seqs.size(); ++i) {
      jobs.push_back({seqs[i], prepared[i].layer_capacity, prepared[i].stream_capacity,
                      prepared[i].protection, queries[i],
                      CudaExecutor::KeepsScores(*manager_, seqs[i])});
    }
    const absl::Status compressed = cuda_->Compress(config, jobs);
    for (size_t i = 0; i < seqs.size(); ++i) {
      SeqState& state = StateFor(seqs[i]);
      if (!compressed.ok() || !jobs[i].keeps_scores) {
        // A failed call may have rewritten the store before its compactions:
        // nothing stored for these sequences is to be trusted.
        std::fill(state.scored.begin(), state.scored.end(), 0);
        continue;
      }
      // Every token left was scored by the compression.
      HEADPAGE_ASSIGN_OR_RETURN(const absl::Span<const uint32_t> lens, manager_->StreamLengths(seqs[i]));
      state.scored.assign(lens.begin(), lens.end());
      if (config.evicts_while_decoding) {
        state.capacity.assign(state.capacity.size(), prepared[i].capacity);
      }
    }
    HEADPAGE_RETURN_IF_ERROR(compressed);
  }
  for (size_t i = 0; i < seqs.size() && config.compresses() && cuda_ == nullptr; ++i) {
    const Prepared& p = prepared[i];
    if (config.allocator == PolicyConfig::Allocator::kAdaAcrossLayers) {
      HEADPAGE_RETURN_IF_ERROR(CompressAcrossLayers(p, config, queries[i]));
      continue;
    }
    SeqState& state = StateFor(p.seq);
    for (int32_t layer = 0; layer < g.num_layers; ++layer) {
      const absl::Span<const int32_t> stream_capacity =
          p.stream_capacity.empty()
              ? absl::Span<const int32_t>()
              : absl::MakeConstSpan(p.stream_capacity).subspan(static_cast<size_t>(layer) * heads,
                                                               heads);
      HEADPAGE_ASSIGN_OR_RETURN(LayerDecision decision,
                                host_.Decide(p.seq, layer, config, p.layer_capacity[layer],
                                             p.protection, queries[i][layer], stream_capacity));
      for (int32_t h = 0; h < heads; ++h) {
        state.scores[layer * heads + h] = std::move(decision.scores[h]);
        if (config.evicts_while_decoding) state.capacity[layer * heads + h] = p.capacity;
      }
      const int32_t layers[] = {layer};
      HEADPAGE_RETURN_IF_ERROR(ApplyKeepSets(p.seq, layers, decision.keep_sets));
    }
  }
  std::vector<CompressResult> results(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    HEADPAGE_ASSIGN_OR_RETURN(const absl::Span<const uint32_t> lens_after,
                              manager_->StreamLengths(seqs[i]));
    results[i].tokens_before = prepared[i].tokens_before;
    results[i].kept.assign(lens_after.begin(), lens_after.end());
    for (const uint32_t len : lens_after) results[i].tokens_after += len;
    results[i].pages_freed = prepared[i].pages_before - PagesHeld(*manager_, seqs[i]);
  }
  return results;
}

absl::Status EvictionEngine::CompressAcrossLayers(const Prepared& p, const PolicyConfig& config,
                                                  absl::Span<const LayerQueries> queries) {
  const CacheGeometry& g = manager_->geometry();
  const int32_t heads = g.num_kv_heads;
  // Every layer's scores first (keys dropped once scored: the allocation reads
  // scores and positions only), then one top-k over every stream of the
  // sequence, then each layer's selection and compaction.
  std::vector<LayerScores> layers(g.num_layers);
  std::vector<StreamScores> streams;
  for (int32_t layer = 0; layer < g.num_layers; ++layer) {
    HEADPAGE_ASSIGN_OR_RETURN(layers[layer], host_.Score(p.seq, layer, config,
                                                         p.layer_capacity[layer], queries[layer]));
    layers[layer].data.keys = {};
  }
  for (int32_t layer = 0; layer < g.num_layers; ++layer) {
    const std::vector<StreamScores> layer_streams = layers[layer].Streams(g, p.protection);
    streams.insert(streams.end(), layer_streams.begin(), layer_streams.end());
  }
  HEADPAGE_ASSIGN_OR_RETURN(const std::vector<int32_t> kept,
                            policy::AdaKept(streams, p.capacity, config.ada));
  SeqState& state = StateFor(p.seq);
  for (int32_t layer = 0; layer < g.num_layers; ++layer) {
    HEADPAGE_ASSIGN_OR_RETURN(
        const std::vector<std::vector<int32_t>> keep_sets,
        host_.Select(config, layers[layer],
                     absl::MakeConstSpan(kept).subspan(static_cast<size_t>(layer) * heads, heads),
                     p.protection, p.layer_capacity[layer]));
    for (int32_t h = 0; h < heads; ++h) {
      state.scores[layer * heads + h] = std::move(layers[layer].scores[h]);
    }
    const int32_t one[] = {layer};
    HEADPAGE_RETURN_IF_ERROR(ApplyKeepSets(p.seq, one, keep_sets));
  }
  return absl::OkStatus();
}

absl::Status EvictionEngine::ApplyKeepSets(SeqId seq, absl::Span<const int32_t> layers,
                                           const std::vector<std::vector<int32_t>>& keep_sets) {
  const CacheGeometry& g = manager_->geometry();
  const int32_t heads = g.num_kv_heads;
  SeqState& state = StateFor(seq);
  HEADPAGE_RETURN_IF_ERROR(host_.Apply(seq, layers, keep_sets));
  // Scores follow their tokens.
  for (size_t i = 0; i < layers.size(); ++i) {
    for (int32_t h = 0; h < heads; ++h) {
      std::vector<float>& scores = state.scores[layers[i] * heads + h];
      std::vector<float> moved;
      for (const int32_t k : keep_sets[i * heads + h]) {
        if (k < static_cast<int32_t>(scores.size())) moved.push_back(scores[k]);
      }
      scores = std::move(moved);
    }
  }
  return absl::OkStatus();
}

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
      // accumulated attention outside the recent half.
      const int32_t capacity = state.capacity[st];
      if (config.evicts_while_decoding && capacity > 0 && n > capacity) {
        const StreamScores stream{scores, absl::MakeConstSpan(keys.positions, n),
                                  policy::Protection{config.sinks, config.recent_half ? capacity / 2 : config.window}};
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
  if (pages_to_free == 0) return 0;
  // Sequences freed behind the engine's back leave no state behind.
  DropFreedSequences();
  const CacheGeometry& g = manager_->geometry();
  const int32_t heads = g.num_kv_heads;
  // Every stream of every scored sequence, in SeqId order so that the result
  // does not depend on hash-map iteration.
  std::vector<SeqId> seqs;
  for (const auto& [id, state] : states_) seqs.push_back(id);
  std::sort(seqs.begin(), seqs.end());
  if (cuda_ != nullptr) {
    std::vector<std::vector<int32_t>*> scored;
    for (const SeqId seq : seqs) scored.push_back(&states_[seq].scored);
    const int64_t free_before = manager_->pool().free_pages();
    HEADPAGE_RETURN_IF_ERROR(
        cuda_->EnforcePoolBudget(seqs, scored, pages_to_free, floor_tokens, protect_recent));
    return manager_->pool().free_pages() - free_before;
  }
  std::vector<std::vector<float>> scores;      // padded to each stream's length
  std::vector<std::vector<int32_t>> positions;
  std::vector<StreamScores> streams;
  std::vector<int32_t> floors;
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
        streams.push_back(StreamScores{{}, {}, policy::Protection{0, std::max(protect_recent, n - scored)}});
      }
    }
  }
  for (size_t i = 0; i < streams.size(); ++i) {
    streams[i].scores = scores[i];
    streams[i].positions = positions[i];
  }
  HEADPAGE_ASSIGN_OR_RETURN(const std::vector<int32_t> kept,
                            policy::GlobalKept(streams, floors, g.page_size, pages_to_free));
  const int64_t free_before = manager_->pool().free_pages();
  size_t i = 0;
  for (const SeqId seq : seqs) {
    for (int32_t layer = 0; layer < g.num_layers; ++layer, i += heads) {
      bool changes = false;
      for (int32_t h = 0; h < heads; ++h) changes |= kept[i + h] != streams[i + h].num_tokens();
      if (!changes) continue;
      std::vector<std::vector<int32_t>> keep_sets(heads);
      for (int32_t h = 0; h < heads; ++h) {
        HEADPAGE_RETURN_IF_ERROR(policy::SelectKeepSet(streams[i + h], kept[i + h], &keep_sets[h]));
      }
      const int32_t layers[] = {layer};
      HEADPAGE_RETURN_IF_ERROR(ApplyKeepSets(seq, layers, keep_sets));
    }
  }
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
