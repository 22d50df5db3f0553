// SPDX-License-Identifier: Apache-2.0
#include "eviction/engine.h"

#include "eviction/cuda_executor.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "core/status.h"
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
  if (cache.data == nullptr || cache.positions == nullptr ||
      (cache.fp8() && cache.scales == nullptr) || cache.page_size != g.page_size ||
      cache.head_dim != g.head_dim || cache.dtype != g.dtype || cache.kv_dtype != g.kv_dtype ||
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

absl::Status EvictionEngine::FreezePrefix(SeqId seq, int64_t tokens) {
  HEADPAGE_ASSIGN_OR_RETURN(const int64_t intact, manager_->IntactTokens(seq));
  const int32_t page_size = manager_->geometry().page_size;
  if (tokens < 0 || tokens % page_size != 0 || tokens > intact) {
    return absl::InvalidArgumentError(absl::StrCat(
        "FreezePrefix: ", tokens, " tokens of sequence ", seq, ": want a multiple of the page "
        "size ", page_size, " and at most the ", intact, " tokens still at their original slots"));
  }
  StateFor(seq).frozen = static_cast<int32_t>(tokens);
  return absl::OkStatus();
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
                                                                const Budget& budget,
                                                                int32_t longest) const {
  const CacheGeometry& g = manager_->geometry();
  HEADPAGE_ASSIGN_OR_RETURN(const absl::Span<const uint32_t> lens_now, manager_->StreamLengths(seq));
  Prepared p;
  p.seq = seq;
  p.frozen = FrozenOf(seq);
  for (const uint32_t len : lens_now) p.tokens_before += len;
  p.pages_before = PagesHeld(*manager_, seq);
  const int32_t prompt_len = std::max(
      static_cast<int32_t>(*std::max_element(lens_now.begin(), lens_now.end())), longest);
  // A frozen prefix is kept on top of the budget, which the rest of the
  // prompt gets as if it were the whole prompt.
  const int32_t rest = std::max(prompt_len - p.frozen, 0);
  // Head classes' window is the streaming heads' recent tokens, not an
  // observation window: a prompt no longer than it is kept whole.
  if (config.window > prompt_len && config.allocator != PolicyConfig::Allocator::kHeadClasses) {
    return absl::InvalidArgumentError(absl::StrCat("policy ", config.name, ": window ", config.window,
                                                   " is longer than the prompt (", prompt_len, ")"));
  }
  const int32_t rest_capacity = rest > 0 ? budget.CapacityFor(rest) : 0;
  p.capacity = p.frozen + rest_capacity;
  p.layer_capacity.assign(g.num_layers, p.capacity);
  if (config.allocator == PolicyConfig::Allocator::kPyramid ||
      config.allocator == PolicyConfig::Allocator::kAdaPyramid) {
    HEADPAGE_ASSIGN_OR_RETURN(p.layer_capacity,
                              policy::PyramidCapacities(g.num_layers, rest_capacity, config.window,
                                                        rest, config.pyramid_beta));
    for (int32_t& c : p.layer_capacity) c += p.frozen;
  }
  if (config.allocator == PolicyConfig::Allocator::kHeadClasses) {
    const policy::HeadClasses* profile = config.head_profile.get();
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
    // Retrieval heads keep everything, streaming heads their sinks and window.
    const std::vector<uint8_t> retrieval = profile->Retrieval(config.head_sparsity);
    const auto streaming = static_cast<int32_t>(std::min<int64_t>(
        std::numeric_limits<int32_t>::max(),
        int64_t{std::max(config.sinks, p.frozen)} + config.window));
    p.stream_capacity.resize(retrieval.size());
    for (size_t s = 0; s < retrieval.size(); ++s) {
      p.stream_capacity[s] = retrieval[s] ? std::numeric_limits<int32_t>::max() : streaming;
    }
  }
  // H2O keeps as many recent tokens as heavy hitters. The frozen prefix is
  // protected as sinks are (positions below it), which every allocator and
  // selection honours on both executors.
  p.protection = policy::Protection{std::max(config.sinks, p.frozen), config.window};
  if (config.recent_half) p.protection.recent = rest_capacity / 2;
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
      if ((config.scorer == PolicyConfig::Scorer::kTova ||
           config.scorer == PolicyConfig::Scorer::kDefensive) &&
          n != lens_now[layer * heads]) {
        return absl::FailedPreconditionError(absl::StrCat(
            "policy ", config.name, ": layer ", layer, "'s kv heads hold different tokens (", n,
            " vs ", lens_now[layer * heads], "); it scores each token across the layer's heads"));
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

absl::StatusOr<std::vector<EvictionEngine::Prepared>> EvictionEngine::PrepareBatch(
    absl::Span<const SeqId> seqs, const PolicyConfig& config, const Budget& budget,
    absl::Span<const absl::Span<const LayerQueries>> queries,
    absl::Span<const int32_t> longest) const {
  HEADPAGE_RETURN_IF_ERROR(CheckCall(seqs, config, budget, queries));
  // Every check before anything changes.
  std::vector<Prepared> prepared;
  for (size_t i = 0; i < seqs.size(); ++i) {
    HEADPAGE_RETURN_IF_ERROR(ValidateQueries(queries[i], /*one_each=*/false));
    HEADPAGE_RETURN_IF_ERROR(CheckOutputProjections(config, queries[i]));
    HEADPAGE_ASSIGN_OR_RETURN(Prepared p,
                              Prepare(seqs[i], config, budget, longest.empty() ? 0 : longest[i]));
    HEADPAGE_RETURN_IF_ERROR(CheckQueryPositions(seqs[i], queries[i]));
    prepared.push_back(std::move(p));
  }
  return prepared;
}

absl::Status EvictionEngine::CheckCall(absl::Span<const SeqId> seqs, const PolicyConfig& config,
                                       const Budget& budget,
                                       absl::Span<const absl::Span<const LayerQueries>> queries) const {
  HEADPAGE_RETURN_IF_ERROR(Validate(config));
  HEADPAGE_RETURN_IF_ERROR(Validate(budget));
  if (group_ != nullptr && !config.runs_on_head_slices()) {
    return absl::UnimplementedError(absl::StrCat(
        "policy ", config.name, " reads across a layer's kv heads (TOVA's and DefensiveKV's "
        "scores, DBudgetKV's metric, a head profile, random seeds by head), which a tensor-"
        "parallel group does not exchange"));
  }
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
  return absl::OkStatus();
}

absl::StatusOr<std::vector<CompressResult>> EvictionEngine::CompressBatch(
    absl::Span<const SeqId> seqs, const PolicyConfig& config, const Budget& budget,
    absl::Span<const absl::Span<const LayerQueries>> queries) {
  // One engine over every head sizes a sequence's budget by its longest stream
  // among all of them; after head-wise eviction the members' own longest differ
  // (a decode-time compression), so a group's are agreed before the checks.
  std::vector<int32_t> longest;
  if (group_ != nullptr) {
    HEADPAGE_ASSIGN_OR_RETURN(longest,
                              GroupLongest(seqs, CheckCall(seqs, config, budget, queries)));
  }
  absl::StatusOr<std::vector<Prepared>> checked =
      PrepareBatch(seqs, config, budget, queries, longest);
  if (group_ != nullptr) {
    // The members go on only if every one accepted the call.
    HEADPAGE_RETURN_IF_ERROR(
        policy::Agree(*group_, checked.status(), {0, 0}, "EvictionEngine::Compress").status());
  }
  HEADPAGE_RETURN_IF_ERROR(checked.status());
  const std::vector<Prepared>& prepared = *checked;

  const CacheGeometry& g = manager_->geometry();
  const int32_t heads = g.num_kv_heads;
  if (config.compresses() && cuda_ != nullptr) {
    // Each job says whether the device store keeps its scores (its pages are
    // its own), asked once, before anything changes.
    std::vector<CudaExecutor::Job> jobs;
    for (size_t i = 0; i < seqs.size(); ++i) {
      jobs.push_back({seqs[i], prepared[i].layer_capacity, prepared[i].stream_capacity,
                      prepared[i].protection, queries[i],
                      CudaExecutor::KeepsScores(*manager_, seqs[i]), prepared[i].frozen,
                      longest.empty() ? 0 : longest[i]});
    }
    // In a group, Ada's budget is agreed across the members' heads from the
    // scores the GPU computed. A failure inside the agreement is known to
    // every member already; any other meets theirs (FailTogether).
    bool agreement_failed = false;
    CudaExecutor::AgreeLayerKept agree;
    using A = PolicyConfig::Allocator;
    if (group_ != nullptr && (config.allocator == A::kAda || config.allocator == A::kAdaPyramid)) {
      agree = [&](const CudaExecutor::Job& job,
                  absl::Span<const std::vector<StreamScores>> layers) {
        absl::StatusOr<std::vector<int32_t>> kept = AgreeAdaKept(config, job.layer_capacity, layers);
        agreement_failed = !kept.ok();
        return kept;
      };
    }
    const absl::Status compressed = cuda_->Compress(config, jobs, agree);
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
    if (!compressed.ok()) return agreement_failed ? compressed : FailTogether(compressed);
  }
  for (size_t i = 0; i < seqs.size() && config.compresses() && cuda_ == nullptr; ++i) {
    const Prepared& p = prepared[i];
    // In a group every step is taken on every member, so that a failure on one
    // meets the others at an agreement (FailTogether).
    if (config.allocator == PolicyConfig::Allocator::kAdaAcrossLayers ||
        config.needs_output_projection() || group_ != nullptr) {
      HEADPAGE_RETURN_IF_ERROR(CompressScoringFirst(p, config, queries[i]));
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
  if (group_ != nullptr) {
    // A member that failed in the last steps meets the others here.
    HEADPAGE_RETURN_IF_ERROR(
        policy::Agree(*group_, absl::OkStatus(), {0, 0}, "EvictionEngine::Compress").status());
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

absl::Status EvictionEngine::CompressScoringFirst(const Prepared& p, const PolicyConfig& config,
                                                  absl::Span<const LayerQueries> queries) {
  const CacheGeometry& g = manager_->geometry();
  const int32_t heads = g.num_kv_heads;
  // Every layer's scores first (keys dropped once scored: the allocation reads
  // scores and positions only), so that what the caller handed in (W_o's
  // values, the value norms) is refused before any layer is compacted.
  // In a group, every failure is reported with FailTogether, or was agreed
  // already (an Ada allocation).
  std::vector<LayerScores> layers(g.num_layers);
  for (int32_t layer = 0; layer < g.num_layers; ++layer) {
    absl::StatusOr<LayerScores> scored =
        host_.Score(p.seq, layer, config, p.layer_capacity[layer], queries[layer]);
    if (!scored.ok()) return FailTogether(scored.status());
    layers[layer] = *std::move(scored);
    layers[layer].data.keys = {};
  }
  // The budgets: one allocation over every stream of the sequence
  // (Layer-DefensiveKV) or one per layer. Ada's top-k runs, in a group, over
  // every member's streams ordered as one engine would list them, all
  // allocations in the same few exchanges.
  using A = PolicyConfig::Allocator;
  const bool across = config.allocator == A::kAdaAcrossLayers;
  const bool ada = across || config.allocator == A::kAda || config.allocator == A::kAdaPyramid;
  std::vector<std::vector<StreamScores>> streams(across ? 1 : g.num_layers);
  std::vector<int64_t> order;
  for (int32_t layer = 0; layer < g.num_layers; ++layer) {
    const std::vector<StreamScores> layer_streams = layers[layer].Streams(g, p.protection);
    std::vector<StreamScores>& into = streams[across ? 0 : layer];
    into.insert(into.end(), layer_streams.begin(), layer_streams.end());
    if (across || layer == 0) {
      for (int32_t h = 0; h < heads; ++h) order.push_back(GroupOrder(across ? layer : 0, h));
    }
  }
  std::vector<policy::AdaAllocation> allocations;
  for (size_t i = 0; i < streams.size(); ++i) {
    allocations.push_back({streams[i], across ? p.capacity : p.layer_capacity[i]});
  }
  std::vector<int32_t> kept;
  if (ada && group_ != nullptr) {
    const int64_t group_heads = int64_t{heads} * group_->size() * (across ? g.num_layers : 1);
    HEADPAGE_ASSIGN_OR_RETURN(kept, AdaKeptInGroup(config, allocations, order, group_heads));
  } else {
    for (const policy::AdaAllocation& a : allocations) {
      absl::StatusOr<std::vector<int32_t>> each_kept =
          ada ? policy::AdaKept(a.streams, a.capacity, config.ada)
              : AllocateByCapacity(config, a.streams, a.capacity);
      if (!each_kept.ok()) return FailTogether(each_kept.status());
      kept.insert(kept.end(), each_kept->begin(), each_kept->end());
    }
  }
  std::vector<std::vector<std::vector<int32_t>>> keep_sets(g.num_layers);
  for (int32_t layer = 0; layer < g.num_layers; ++layer) {
    absl::StatusOr<std::vector<std::vector<int32_t>>> selected =
        host_.Select(config, layers[layer],
                     absl::MakeConstSpan(kept).subspan(static_cast<size_t>(layer) * heads, heads),
                     p.protection, p.layer_capacity[layer]);
    if (!selected.ok()) return FailTogether(selected.status());
    keep_sets[layer] = *std::move(selected);
  }
  // Nothing is refused past this point but a pool too short to compact into.
  SeqState& state = StateFor(p.seq);
  for (int32_t layer = 0; layer < g.num_layers; ++layer) {
    for (int32_t h = 0; h < heads; ++h) {
      state.scores[layer * heads + h] = std::move(layers[layer].scores[h]);
    }
    const int32_t one[] = {layer};
    HEADPAGE_RETURN_IF_ERROR(FailTogether(ApplyKeepSets(p.seq, one, keep_sets[layer])));
  }
  return absl::OkStatus();
}

absl::Status EvictionEngine::ApplyKeepSets(SeqId seq, absl::Span<const int32_t> layers,
                                           const std::vector<std::vector<int32_t>>& keep_sets) {
  const CacheGeometry& g = manager_->geometry();
  const int32_t heads = g.num_kv_heads;
  SeqState& state = StateFor(seq);
  HEADPAGE_RETURN_IF_ERROR(host_.Apply(seq, layers, keep_sets, state.frozen));
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

}  // namespace headpage
