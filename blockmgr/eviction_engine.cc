// SPDX-License-Identifier: Apache-2.0
#include "blockmgr/eviction_engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "blockmgr/policy/select.h"
#include "core/status.h"
#include "kernels/compact.h"
#include "kernels/gather_kv.h"

namespace headpage {

using policy::StreamScores;

// ---------------------------------------------------------------------------
// Policies by name

absl::StatusOr<PolicyConfig> PolicyByName(absl::string_view name) {
  using S = PolicyConfig::Scorer;
  using A = PolicyConfig::Allocator;
  PolicyConfig c;
  c.name = std::string(name);
  if (name == "full") {
    c.scorer = S::kNone;
    c.allocator = A::kNone;
  } else if (name == "uniform-snapkv") {
    c.allocator = A::kUniform;
  } else if (name == "pyramid") {
    c.allocator = A::kPyramid;
  } else if (name == "ada-snapkv") {
    c.allocator = A::kAda;
  } else if (name == "ada-pyramid") {
    c.allocator = A::kAdaPyramid;
  } else if (name == "dbudget") {
    // ReFreeKV's released run: SnapKV-style window vote without pooling, w = 8,
    // last-token attention norm with T = 0.05.
    c.allocator = A::kDBudget;
    c.window = 8;
    c.snapkv.kernel_size = 1;
    c.snapkv.pooling = policy::Pooling::kNone;
  } else if (name == "h2o") {
    // Heavy hitters plus as many recent tokens (heavy_ratio = recent_ratio):
    // the recent half of the budget is protected, see Compress.
    c.scorer = S::kH2O;
    c.window = 0;
  } else if (name == "streamingllm") {
    c.scorer = S::kRecency;
    c.window = 0;
    c.sinks = 4;
  } else if (name == "tova") {
    c.scorer = S::kTova;
    c.window = 1;  // kvpress's TOVAPress always keeps the last token
  } else if (name == "knorm") {
    c.scorer = S::kKeyNorm;
    c.window = 0;
  } else if (name == "random") {
    c.scorer = S::kRandom;
    c.window = 0;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown policy '", name,
        "'; known: full, uniform-snapkv, pyramid, ada-snapkv, ada-pyramid, dbudget, h2o, "
        "streamingllm, tova, knorm, random"));
  }
  return c;
}

absl::Status Validate(const PolicyConfig& c) {
  if (c.window < 0 || c.sinks < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy ", c.name, ": window ", c.window, " and sinks ", c.sinks, " must be >= 0"));
  }
  if (!(c.ada.alpha >= 0.0 && c.ada.alpha <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy ", c.name, ": alpha ", c.ada.alpha, " is outside [0, 1]"));
  }
  if (!(c.pyramid_beta > 0.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy ", c.name, ": beta ", c.pyramid_beta, " must be > 0"));
  }
  if (!(c.dbudget_threshold >= 0.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy ", c.name, ": threshold ", c.dbudget_threshold, " must be >= 0"));
  }
  if (c.snapkv.kernel_size < 1 || c.snapkv.kernel_size % 2 == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "policy ", c.name, ": pooling kernel ", c.snapkv.kernel_size, " must be odd and >= 1"));
  }
  if (c.scorer == PolicyConfig::Scorer::kNone && c.allocator != PolicyConfig::Allocator::kNone) {
    return absl::InvalidArgumentError(absl::StrCat("policy ", c.name, ": an allocator needs a scorer"));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Budget

absl::StatusOr<Budget> Budget::Parse(absl::string_view text) {
  absl::string_view number = text;
  const bool percent = absl::ConsumeSuffix(&number, "%");
  double value = 0;
  if (!absl::SimpleAtod(number, &value) || !std::isfinite(value) || value <= 0 ||
      (percent && value > 100)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "budget '", text, "' is not a positive token count per head (e.g. 128) or a percentage "
        "of the prompt in (0, 100] (e.g. 20%)"));
  }
  if (percent) return Fraction(value / 100.0);
  if (value != std::floor(value) || value > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("budget '", text, "' is not a whole token count"));
  }
  return TokensPerHead(static_cast<int32_t>(value));
}

int32_t Budget::CapacityFor(int32_t prompt_len) const {
  if (kind == Kind::kTokensPerHead) return static_cast<int32_t>(value);
  return std::max<int32_t>(1, static_cast<int32_t>(std::lround(value * prompt_len)));
}

std::string Budget::ToString() const {
  if (kind == Kind::kTokensPerHead) return absl::StrCat(static_cast<int64_t>(value));
  return absl::StrCat(value * 100.0, "%");
}

// ---------------------------------------------------------------------------
// Engine

absl::StatusOr<EvictionEngine> EvictionEngine::Create(BlockManager* manager, const PagedKV& cache) {
  if (manager == nullptr) return absl::InvalidArgumentError("EvictionEngine: manager is null");
  const CacheGeometry& g = manager->geometry();
  if (cache.data == nullptr || cache.positions == nullptr || cache.page_size != g.page_size ||
      cache.head_dim != g.head_dim || cache.dtype != g.dtype ||
      cache.num_pages != manager->pool().num_pages()) {
    return absl::InvalidArgumentError(
        absl::StrCat("EvictionEngine: the cache view does not match the manager's geometry ",
                     g.DebugString(), " and pool of ", manager->pool().num_pages(), " pages"));
  }
  return EvictionEngine(manager, cache);
}

EvictionEngine::EvictionEngine(BlockManager* manager, const PagedKV& cache)
    : manager_(manager), cache_(cache) {}

EvictionEngine::SeqState& EvictionEngine::StateFor(SeqId seq) {
  SeqState& state = states_[seq];
  const CacheGeometry& g = manager_->geometry();
  if (state.scores.empty()) {
    state.scores.resize(g.streams_per_sequence());
    state.capacity.assign(g.streams_per_sequence(), 0);
    state.recent_queries.resize(g.num_layers);
  }
  return state;
}

absl::Status EvictionEngine::GatherLayer(SeqId seq, int32_t layer, LayerData* out) const {
  const CacheGeometry& g = manager_->geometry();
  // The layer's block tables of `seq`, tight: the CSR GatherKV takes.
  const SeqId seqs[] = {seq};
  HEADPAGE_ASSIGN_OR_RETURN(const BlockTableCsr table,
                            manager_->BlockTable(layer, seqs, BlockTableOptions{0}));
  out->offsets.assign(1, 0);
  for (const int32_t len : table.lens()) out->offsets.push_back(out->offsets.back() + len);
  const size_t tokens = static_cast<size_t>(out->offsets.back());
  out->keys.resize(tokens * g.head_dim * SizeOf(g.dtype));
  out->positions.resize(tokens);
  GatherKVArgs args;
  args.cache = cache_;
  args.num_rows = table.num_rows();
  args.indptr = table.indptr().data();
  args.page_ids = table.page_ids().data();
  args.lens = table.lens().data();
  args.keys = out->keys.data();
  args.positions = out->positions.data();
  return ref::GatherKV(args);
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
        (one_each && q.num_queries != 1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer ", l, " queries: null data or positions, an unknown dtype, or ", q.num_queries,
          one_each ? " queries where one is expected" : " queries"));
    }
  }
  return absl::OkStatus();
}

namespace {

// The group of KV head h out of a layer's q-head-major queries.
policy::GroupQueries GroupOf(const LayerQueries& q, const CacheGeometry& g, int32_t h) {
  policy::GroupQueries group;
  const size_t per_head = static_cast<size_t>(q.num_queries) * g.head_dim * SizeOf(q.dtype);
  group.data = static_cast<const char*>(q.data) + per_head * g.group_size() * h;
  group.positions = q.positions;
  group.group_size = g.group_size();
  group.num_queries = q.num_queries;
  group.head_dim = g.head_dim;
  group.dtype = q.dtype;
  return group;
}

// The last query (the highest position) of a group, as a one-query group.
absl::StatusOr<policy::GroupQueries> LastQueryOf(const LayerQueries& q, const CacheGeometry& g,
                                                 int32_t h, std::vector<char>* storage) {
  const int32_t last = static_cast<int32_t>(
      std::max_element(q.positions, q.positions + q.num_queries) - q.positions);
  const size_t row = static_cast<size_t>(g.head_dim) * SizeOf(q.dtype);
  const policy::GroupQueries all = GroupOf(q, g, h);
  storage->resize(row * g.group_size());
  for (int32_t i = 0; i < g.group_size(); ++i) {
    std::memcpy(storage->data() + i * row,
                static_cast<const char*>(all.data) + (static_cast<size_t>(i) * q.num_queries + last) * row,
                row);
  }
  policy::GroupQueries one = all;
  one.data = storage->data();
  one.positions = q.positions + last;
  one.num_queries = 1;
  return one;
}

}  // namespace

absl::StatusOr<CompressResult> EvictionEngine::Compress(SeqId seq, const PolicyConfig& config,
                                                        const Budget& budget,
                                                        absl::Span<const LayerQueries> queries) {
  HEADPAGE_RETURN_IF_ERROR(Validate(config));
  if (!(budget.value > 0) || (budget.kind == Budget::Kind::kFraction && budget.value > 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("budget ", budget.ToString(), " is out of range"));
  }
  HEADPAGE_RETURN_IF_ERROR(ValidateQueries(queries, /*one_each=*/false));
  const CacheGeometry& g = manager_->geometry();
  HEADPAGE_ASSIGN_OR_RETURN(const absl::Span<const uint32_t> lens_now, manager_->StreamLengths(seq));

  CompressResult result;
  const int64_t free_before = manager_->pool().free_pages();
  for (const uint32_t len : lens_now) result.tokens_before += len;
  const int32_t prompt_len = static_cast<int32_t>(*std::max_element(lens_now.begin(), lens_now.end()));
  if (config.window > prompt_len) {
    return absl::InvalidArgumentError(absl::StrCat("policy ", config.name, ": window ", config.window,
                                                   " is longer than the prompt (", prompt_len, ")"));
  }
  const int32_t capacity = budget.CapacityFor(prompt_len);
  SeqState& state = StateFor(seq);

  std::vector<int32_t> layer_capacity(g.num_layers, capacity);
  if (config.allocator == PolicyConfig::Allocator::kPyramid ||
      config.allocator == PolicyConfig::Allocator::kAdaPyramid) {
    HEADPAGE_ASSIGN_OR_RETURN(layer_capacity,
                              policy::PyramidCapacities(g.num_layers, capacity, config.window,
                                                        prompt_len, config.pyramid_beta));
  }
  // H2O keeps as many recent tokens as heavy hitters.
  policy::Protection protection{config.sinks, config.window};
  if (config.scorer == PolicyConfig::Scorer::kH2O) protection.recent = capacity / 2;

  const int32_t heads = g.num_kv_heads;
  LayerData data;
  std::vector<char> last_query;
  for (int32_t layer = 0; layer < g.num_layers && config.allocator != PolicyConfig::Allocator::kNone;
       ++layer) {
    HEADPAGE_RETURN_IF_ERROR(GatherLayer(seq, layer, &data));
    const LayerQueries& q = queries[layer];
    std::vector<std::vector<float>> scores(heads);
    std::vector<policy::StreamKeys> keys(heads);
    for (int32_t h = 0; h < heads; ++h) {
      const int32_t n = data.offsets[h + 1] - data.offsets[h];
      keys[h] = policy::StreamKeys{
          data.keys.data() + static_cast<size_t>(data.offsets[h]) * g.head_dim * SizeOf(g.dtype),
          data.positions.data() + data.offsets[h], n, g.head_dim, g.dtype};
      scores[h].assign(n, 0.0f);
    }
    switch (config.scorer) {
      case PolicyConfig::Scorer::kSnapKV:
        for (int32_t h = 0; h < heads; ++h) {
          HEADPAGE_RETURN_IF_ERROR(policy::SnapKVScores(keys[h], GroupOf(q, g, h), config.snapkv,
                                                        absl::MakeSpan(scores[h])));
        }
        break;
      case PolicyConfig::Scorer::kH2O:
        for (int32_t h = 0; h < heads; ++h) {
          HEADPAGE_RETURN_IF_ERROR(policy::AccumulateAttention(keys[h], GroupOf(q, g, h),
                                                               config.reduce, absl::MakeSpan(scores[h])));
        }
        break;
      case PolicyConfig::Scorer::kRecency:
        for (int32_t h = 0; h < heads; ++h) {
          HEADPAGE_RETURN_IF_ERROR(policy::RecencyScores(keys[h], absl::MakeSpan(scores[h])));
        }
        break;
      case PolicyConfig::Scorer::kTova: {
        std::vector<std::vector<char>> storage(heads);
        std::vector<policy::GroupQueries> last(heads);
        for (int32_t h = 0; h < heads; ++h) {
          HEADPAGE_ASSIGN_OR_RETURN(last[h], LastQueryOf(q, g, h, &storage[h]));
        }
        HEADPAGE_RETURN_IF_ERROR(policy::TovaScores(keys, last, absl::MakeSpan(scores[0])));
        for (int32_t h = 1; h < heads; ++h) scores[h] = scores[0];
        break;
      }
      case PolicyConfig::Scorer::kKeyNorm:
        for (int32_t h = 0; h < heads; ++h) {
          HEADPAGE_RETURN_IF_ERROR(policy::KeyNormScores(keys[h], absl::MakeSpan(scores[h])));
        }
        break;
      case PolicyConfig::Scorer::kRandom:
        for (int32_t h = 0; h < heads; ++h) {
          policy::RandomScores(config.seed + static_cast<uint64_t>(layer * heads + h),
                               absl::MakeSpan(scores[h]));
        }
        break;
      case PolicyConfig::Scorer::kNone:
        break;
    }
    std::vector<StreamScores> streams(heads);
    for (int32_t h = 0; h < heads; ++h) {
      streams[h] = StreamScores{scores[h], absl::MakeConstSpan(keys[h].positions, keys[h].num_tokens),
                                protection};
    }
    std::vector<int32_t> kept;
    switch (config.allocator) {
      case PolicyConfig::Allocator::kUniform:
      case PolicyConfig::Allocator::kPyramid: {
        HEADPAGE_ASSIGN_OR_RETURN(kept, policy::UniformKept(streams, layer_capacity[layer]));
        break;
      }
      case PolicyConfig::Allocator::kAda:
      case PolicyConfig::Allocator::kAdaPyramid: {
        HEADPAGE_ASSIGN_OR_RETURN(kept, policy::AdaKept(streams, layer_capacity[layer], config.ada));
        break;
      }
      case PolicyConfig::Allocator::kDBudget: {
        std::vector<std::vector<float>> rows(heads);
        std::vector<absl::Span<const float>> row_spans(heads);
        std::vector<char> storage;
        for (int32_t h = 0; h < heads; ++h) {
          HEADPAGE_ASSIGN_OR_RETURN(const policy::GroupQueries last, LastQueryOf(q, g, h, &storage));
          rows[h].resize(static_cast<size_t>(g.group_size()) * keys[h].num_tokens);
          HEADPAGE_RETURN_IF_ERROR(policy::LastQueryAttention(keys[h], last, absl::MakeSpan(rows[h])));
          row_spans[h] = rows[h];
        }
        HEADPAGE_ASSIGN_OR_RETURN(kept, policy::DBudgetKept(streams, row_spans, g.group_size(),
                                                            config.dbudget_threshold,
                                                            config.dbudget_by_position));
        break;
      }
      case PolicyConfig::Allocator::kNone:
        break;
    }
    std::vector<std::vector<int32_t>> keep_sets(heads);
    for (int32_t h = 0; h < heads; ++h) {
      HEADPAGE_RETURN_IF_ERROR(policy::SelectKeepSet(streams[h], kept[h], &keep_sets[h]));
      state.scores[layer * heads + h] = std::move(scores[h]);
      if (config.scorer == PolicyConfig::Scorer::kH2O) state.capacity[layer * heads + h] = capacity;
    }
    const int32_t layers[] = {layer};
    HEADPAGE_RETURN_IF_ERROR(ApplyKeepSets(seq, layers, keep_sets));
  }
  HEADPAGE_ASSIGN_OR_RETURN(const absl::Span<const uint32_t> lens_after, manager_->StreamLengths(seq));
  result.kept.assign(lens_after.begin(), lens_after.end());
  for (const uint32_t len : lens_after) result.tokens_after += len;
  result.pages_freed = manager_->pool().free_pages() - free_before;
  return result;
}

absl::Status EvictionEngine::ApplyKeepSets(SeqId seq, absl::Span<const int32_t> layers,
                                           const std::vector<std::vector<int32_t>>& keep_sets) {
  const CacheGeometry& g = manager_->geometry();
  const int32_t heads = g.num_kv_heads;
  SeqState& state = StateFor(seq);
  CompactionPlan plan;
  std::vector<int32_t> keep_flat;
  for (size_t i = 0; i < layers.size(); ++i) {
    std::vector<int32_t> kept(heads);
    for (int32_t h = 0; h < heads; ++h) {
      const auto& set = keep_sets[i * heads + h];
      kept[h] = static_cast<int32_t>(set.size());
      keep_flat.insert(keep_flat.end(), set.begin(), set.end());
    }
    HEADPAGE_RETURN_IF_ERROR(manager_->Evict(seq, layers[i], kept, &plan));
  }
  CompactArgs args;
  args.cache = cache_;
  args.num_rows = plan.num_rows();
  args.src_indptr = plan.src_indptr.data();
  args.src_page_ids = plan.src_page_ids.data();
  args.src_lens = plan.src_lens.data();
  args.dst_indptr = plan.dst_indptr.data();
  args.dst_page_ids = plan.dst_page_ids.data();
  args.keep_indptr = plan.keep_indptr.data();
  args.keep = keep_flat.data();
  args.in_place = plan.in_place.data();
  const absl::Status compacted = ref::Compact(args);
  // The plan is issued (executed, on the host) or failed validation; either way
  // the retired pages are no longer read.
  manager_->ReleaseRetiredPages();
  HEADPAGE_RETURN_IF_ERROR(compacted);
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
  const CacheGeometry& g = manager_->geometry();
  const int32_t heads = g.num_kv_heads;
  SeqState& state = StateFor(seq);

  // H2O bookkeeping for every policy: fold this query's attention into the
  // token scores. Tokens the engine has not seen yet start from zero.
  LayerData data;
  std::vector<std::vector<int32_t>> evict_sets;
  std::vector<int32_t> evict_layers;
  for (int32_t layer = 0; layer < g.num_layers; ++layer) {
    HEADPAGE_RETURN_IF_ERROR(GatherLayer(seq, layer, &data));
    bool over_capacity = false;
    std::vector<std::vector<int32_t>> keep_sets(heads);
    for (int32_t h = 0; h < heads; ++h) {
      const int32_t st = layer * heads + h;
      const int32_t n = data.offsets[h + 1] - data.offsets[h];
      const policy::StreamKeys keys{
          data.keys.data() + static_cast<size_t>(data.offsets[h]) * g.head_dim * SizeOf(g.dtype),
          data.positions.data() + data.offsets[h], n, g.head_dim, g.dtype};
      std::vector<float>& scores = state.scores[st];
      scores.resize(static_cast<size_t>(n), 0.0f);
      HEADPAGE_RETURN_IF_ERROR(policy::AccumulateAttention(keys, GroupOf(queries[layer], g, h),
                                                           config.reduce, absl::MakeSpan(scores)));
      // H2O's streaming eviction: back to the capacity, dropping the lowest
      // accumulated attention outside the recent half.
      const int32_t capacity = state.capacity[st];
      if (config.scorer == PolicyConfig::Scorer::kH2O && capacity > 0 && n > capacity) {
        const StreamScores stream{scores, absl::MakeConstSpan(keys.positions, n),
                                  policy::Protection{config.sinks, capacity / 2}};
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
    window[layer] = LayerQueries{b.data(), state.recent_positions.data(), w, DType::kF32};
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
  for (auto it = states_.begin(); it != states_.end();) {
    if (manager_->Contains(it->first)) {
      ++it;
    } else {
      states_.erase(it++);
    }
  }
  const CacheGeometry& g = manager_->geometry();
  const int32_t heads = g.num_kv_heads;
  // Every stream of every scored sequence, in SeqId order so that the result
  // does not depend on hash-map iteration.
  std::vector<SeqId> seqs;
  for (const auto& [id, state] : states_) seqs.push_back(id);
  std::sort(seqs.begin(), seqs.end());
  std::vector<std::vector<float>> scores;      // padded to each stream's length
  std::vector<std::vector<int32_t>> positions;
  std::vector<StreamScores> streams;
  std::vector<int32_t> floors;
  LayerData data;
  for (const SeqId seq : seqs) {
    SeqState& state = states_[seq];
    for (int32_t layer = 0; layer < g.num_layers; ++layer) {
      HEADPAGE_RETURN_IF_ERROR(GatherLayer(seq, layer, &data));
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

}  // namespace headpage
