// SPDX-License-Identifier: Apache-2.0
#include "eviction/host_executor.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "kernels/compact.h"
#include "kernels/gather_kv.h"
#include "policy/budget.h"
#include "policy/critical.h"
#include "policy/defensive.h"
#include "policy/scores.h"
#include "policy/select.h"

namespace headpage {

using policy::StreamScores;

policy::StreamKeys LayerKeys::Stream(int32_t h, const CacheGeometry& g) const {
  const int32_t n = offsets[h + 1] - offsets[h];
  return policy::StreamKeys{keys.data() + static_cast<size_t>(offsets[h]) * g.head_dim * SizeOf(g.dtype),
                            positions.data() + offsets[h], n, g.head_dim, g.dtype};
}

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

namespace {

// The last query (the highest position) of a group, as a one-query group.
policy::GroupQueries LastQueryOf(const LayerQueries& q, const CacheGeometry& g, int32_t h,
                                 std::vector<char>* storage) {
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

// The last `count` queries of every q head (positions ascend), copied: the
// observation window inside queries that hold the whole prompt.
LayerQueries LastQueries(const LayerQueries& q, const CacheGeometry& g, int32_t count,
                         std::vector<char>* storage) {
  count = std::min(count, q.num_queries);
  const size_t row = static_cast<size_t>(g.head_dim) * SizeOf(q.dtype);
  storage->resize(row * count * g.num_q_heads);
  for (int32_t head = 0; head < g.num_q_heads; ++head) {
    std::memcpy(storage->data() + row * count * head,
                static_cast<const char*>(q.data) +
                    row * (static_cast<size_t>(head) * q.num_queries + q.num_queries - count),
                row * count);
  }
  LayerQueries last = q;
  last.data = storage->data();
  last.positions = q.positions + (q.num_queries - count);
  last.num_queries = count;
  return last;
}

// The attention rows DBudgetKV's Frobenius metric may hold at once: one
// stream's, prompt x prompt floats per q head of its group.
constexpr int64_t kFrobeniusBytes = int64_t{4} << 30;

// DBudgetKV's kept counts for one layer: the last prompt token's attention norm
// (the released code), or the Frobenius norm of every observed query's
// attention rows (the paper), computed one stream at a time.
absl::StatusOr<std::vector<int32_t>> DBudgetCut(const PolicyConfig& config, const CacheGeometry& g,
                                                const LayerQueries& q,
                                                const std::vector<policy::StreamKeys>& keys,
                                                absl::Span<const StreamScores> streams) {
  const int32_t heads = g.num_kv_heads;
  if (config.dbudget_metric == PolicyConfig::DBudgetMetric::kFrobenius) {
    std::vector<float> rows;  // one stream's at a time
    HEADPAGE_ASSIGN_OR_RETURN(
        policy::DBudgetFrobenius sums,
        policy::DBudgetFrobenius::Create(absl::MakeConstSpan(q.positions, q.num_queries),
                                         g.group_size(), config.dbudget_threshold));
    for (int32_t h = 0; h < heads; ++h) {
      const int64_t count = int64_t{g.group_size()} * q.num_queries * keys[h].num_tokens;
      if (count * int64_t{sizeof(float)} > kFrobeniusBytes) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "policy ", config.name, ": DBudgetKV's Frobenius metric needs ",
            (count * int64_t{sizeof(float)}) >> 20, " MiB of attention rows for one KV head of "
            "this prompt (", q.num_queries, " queries), over the ", kFrobeniusBytes >> 20,
            " MiB it may take; use dbudget"));
      }
      rows.resize(static_cast<size_t>(count));
      HEADPAGE_RETURN_IF_ERROR(
          policy::QueryAttentionRows(keys[h], GroupOf(q, g, h), absl::MakeSpan(rows)));
      HEADPAGE_RETURN_IF_ERROR(sums.Add(streams[h], rows));
    }
    const int32_t cut = sums.Cut();
    std::vector<int32_t> kept(heads);
    for (int32_t h = 0; h < heads; ++h) kept[h] = keys[h].num_tokens - cut;
    return kept;
  }
  std::vector<std::vector<float>> last_rows(heads);
  std::vector<absl::Span<const float>> row_spans(heads);
  std::vector<char> storage;
  for (int32_t h = 0; h < heads; ++h) {
    last_rows[h].resize(static_cast<size_t>(g.group_size()) * keys[h].num_tokens);
    HEADPAGE_RETURN_IF_ERROR(policy::LastQueryAttention(
        keys[h], LastQueryOf(q, g, h, &storage), absl::MakeSpan(last_rows[h])));
    row_spans[h] = last_rows[h];
  }
  return policy::DBudgetKept(streams, row_spans, g.group_size(), config.dbudget_threshold,
                             config.dbudget_by_position);
}

}  // namespace

absl::Status HostExecutor::CheckHostPool() const {
  if (cache_.memory == MemoryKind::kHost) return absl::OkStatus();
  return absl::InvalidArgumentError(
      "HostExecutor: the pool is device memory; the host executor reads and writes host memory only");
}

absl::Status HostExecutor::GatherLayer(SeqId seq, int32_t layer, LayerKeys* out,
                                       std::vector<char>* values) const {
  HEADPAGE_RETURN_IF_ERROR(CheckHostPool());
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
  if (values != nullptr) values->resize(out->keys.size());
  GatherKVArgs args;
  args.cache = cache_;
  args.num_rows = table.num_rows();
  args.indptr = table.indptr().data();
  args.page_ids = table.page_ids().data();
  args.num_page_ids = static_cast<int32_t>(table.page_ids().size());
  args.lens = table.lens().data();
  args.keys = out->keys.data();
  args.values = values != nullptr ? values->data() : nullptr;
  args.positions = out->positions.data();
  return ref::GatherKV(args);
}

std::vector<StreamScores> LayerScores::Streams(const CacheGeometry& g,
                                               const policy::Protection& protection) const {
  std::vector<StreamScores> streams(g.num_kv_heads);
  for (int32_t h = 0; h < g.num_kv_heads; ++h) {
    const int32_t first = data.offsets[h];
    streams[h] = StreamScores{scores[h],
                              absl::MakeConstSpan(data.positions.data() + first,
                                                  data.offsets[h + 1] - first),
                              protection};
  }
  return streams;
}

namespace {

// Each kv head's projected value norms (policy/critical.h) out of the layer's
// gathered values.
absl::StatusOr<std::vector<std::vector<float>>> ValueNorms(const CacheGeometry& g, int32_t layer,
                                                           const LayerKeys& data,
                                                           const std::vector<char>& values,
                                                           const policy::OutputProjection& w) {
  std::vector<std::vector<float>> norms(g.num_kv_heads);
  for (int32_t h = 0; h < g.num_kv_heads; ++h) {
    const int32_t n = data.offsets[h + 1] - data.offsets[h];
    const policy::StreamValues v{
        values.data() + static_cast<size_t>(data.offsets[h]) * g.head_dim * SizeOf(g.dtype), n,
        g.head_dim, g.dtype};
    norms[h].resize(n);
    HEADPAGE_RETURN_IF_ERROR(
        policy::ProjectedValueNorms(v, w, g.num_kv_heads, h, absl::MakeSpan(norms[h])));
    for (int32_t i = 0; i < n; ++i) {
      if (!std::isfinite(norms[h][i])) {
        return absl::InvalidArgumentError(absl::StrCat(
            "layer ", layer, " kv head ", h, ": the value norm of slot ", i, " is ", norms[h][i],
            " (the output projection or the values hold NaN or Inf, or their product "
            "overflows float)"));
      }
    }
  }
  return norms;
}

// DefensiveKV's scores of one layer (policy/defensive.h): each head's worst
// case over the window, then the layer step that weighs them by the value norms.
absl::Status DefensiveLayer(const PolicyConfig& config, const CacheGeometry& g,
                            const LayerQueries& q, int32_t capacity,
                            const std::vector<policy::StreamKeys>& keys,
                            const std::vector<std::vector<float>>& norms,
                            std::vector<std::vector<float>>* scores) {
  const int32_t heads = g.num_kv_heads;
  std::vector<std::vector<float>> mean(heads);
  double mass_before = 0.0;
  int32_t prefix = -1;
  for (int32_t h = 0; h < heads; ++h) {
    mean[h].resize(keys[h].num_tokens);
    policy::DefensiveStream measured;
    HEADPAGE_RETURN_IF_ERROR(policy::DefensiveScores(keys[h], GroupOf(q, g, h),
                                                     config.snapkv.kernel_size,
                                                     absl::MakeSpan((*scores)[h]),
                                                     absl::MakeSpan(mean[h]), &measured));
    if (prefix >= 0 && measured.prefix != prefix) {
      return absl::FailedPreconditionError(absl::StrCat(
          "policy ", config.name, ": the layer's kv heads hold different tokens; DefensiveKV "
          "weighs each token across the layer's heads"));
    }
    prefix = measured.prefix;
    mass_before += measured.mass_before_window;
  }
  const double window_bias = mass_before / (static_cast<double>(g.num_q_heads) * q.num_queries);
  std::vector<absl::Span<float>> out(heads);
  std::vector<absl::Span<const float>> mean_spans(heads), norm_spans(heads);
  for (int32_t h = 0; h < heads; ++h) {
    out[h] = absl::MakeSpan((*scores)[h]);
    mean_spans[h] = mean[h];
    norm_spans[h] = norms[h];
  }
  return policy::DefensiveLayerScores(out, mean_spans, norm_spans, prefix, window_bias, capacity);
}

}  // namespace

absl::StatusOr<LayerScores> HostExecutor::Score(SeqId seq, int32_t layer,
                                                const PolicyConfig& config, int32_t capacity,
                                                const LayerQueries& q) const {
  using Scorer = PolicyConfig::Scorer;
  const CacheGeometry& g = manager_->geometry();
  const int32_t heads = g.num_kv_heads;
  LayerScores result;
  LayerKeys& data = result.data;
  std::vector<char> values;
  const bool needs_values = config.needs_output_projection();
  HEADPAGE_RETURN_IF_ERROR(GatherLayer(seq, layer, &data, needs_values ? &values : nullptr));
  std::vector<std::vector<float>>& scores = result.scores;
  scores.resize(heads);
  std::vector<policy::StreamKeys> keys(heads);
  for (int32_t h = 0; h < heads; ++h) {
    keys[h] = data.Stream(h, g);
    scores[h].assign(keys[h].num_tokens, 0.0f);
  }
  std::vector<std::vector<float>> norms;
  if (needs_values) {
    HEADPAGE_ASSIGN_OR_RETURN(norms, ValueNorms(g, layer, data, values, q.output_projection));
  }
  switch (config.scorer) {
    case Scorer::kSnapKV: {
      // SnapKV's vote reads its observation window: the last `window` queries,
      // also when the policy observed the whole prompt (DBudgetKV's Frobenius
      // metric reads the rest).
      std::vector<char> storage;
      const LayerQueries window = config.observe == PolicyConfig::Observe::kAllPrompt
                                      ? LastQueries(q, g, std::max(config.window, 1), &storage)
                                      : q;
      for (int32_t h = 0; h < heads; ++h) {
        HEADPAGE_RETURN_IF_ERROR(policy::SnapKVScores(keys[h], GroupOf(window, g, h), config.snapkv,
                                                      absl::MakeSpan(scores[h])));
      }
      result.rows = window.num_queries;
      break;
    }
    case Scorer::kDefensive:
      HEADPAGE_RETURN_IF_ERROR(DefensiveLayer(config, g, q, capacity, keys, norms, &scores));
      break;
    case Scorer::kH2O:
      for (int32_t h = 0; h < heads; ++h) {
        HEADPAGE_RETURN_IF_ERROR(policy::AccumulateAttention(keys[h], GroupOf(q, g, h),
                                                             config.reduce, absl::MakeSpan(scores[h])));
      }
      break;
    case Scorer::kRecency:
      for (int32_t h = 0; h < heads; ++h) {
        HEADPAGE_RETURN_IF_ERROR(policy::RecencyScores(keys[h], absl::MakeSpan(scores[h])));
      }
      break;
    case Scorer::kTova: {
      std::vector<std::vector<char>> storage(heads);
      std::vector<policy::GroupQueries> last(heads);
      for (int32_t h = 0; h < heads; ++h) last[h] = LastQueryOf(q, g, h, &storage[h]);
      HEADPAGE_RETURN_IF_ERROR(policy::TovaScores(keys, last, absl::MakeSpan(scores[0])));
      for (int32_t h = 1; h < heads; ++h) scores[h] = scores[0];
      break;
    }
    case Scorer::kKeyNorm:
      for (int32_t h = 0; h < heads; ++h) {
        HEADPAGE_RETURN_IF_ERROR(policy::KeyNormScores(keys[h], absl::MakeSpan(scores[h])));
      }
      break;
    case Scorer::kRandom:
      for (int32_t h = 0; h < heads; ++h) {
        policy::RandomScores(config.seed + static_cast<uint64_t>(layer * heads + h),
                             absl::MakeSpan(scores[h]));
      }
      break;
    case Scorer::kNone:
      break;
  }
  if (config.critical) result.value_norms = std::move(norms);
  return result;
}

absl::StatusOr<std::vector<std::vector<int32_t>>> HostExecutor::Select(
    const PolicyConfig& config, const LayerScores& layer, absl::Span<const int32_t> kept,
    const policy::Protection& protection, int32_t capacity) const {
  const CacheGeometry& g = manager_->geometry();
  const std::vector<StreamScores> streams = layer.Streams(g, protection);
  std::vector<std::vector<int32_t>> keep_sets(g.num_kv_heads);
  std::vector<float> critical;
  // CriticalKV's epsilon is kvpress's, added to SnapKV's mean over the rows;
  // these scores are the sum.
  policy::CriticalOptions critical_options = config.critical_options;
  critical_options.epsilon *= static_cast<float>(std::max(layer.rows, 1));
  const bool safeguard = (config.allocator == PolicyConfig::Allocator::kAda ||
                          config.allocator == PolicyConfig::Allocator::kAdaPyramid) &&
                         config.ada.floor == policy::AdaFloor::kProtectTop;
  for (int32_t h = 0; h < g.num_kv_heads; ++h) {
    StreamScores stream = streams[h];
    if (config.critical) {
      // The Ada safeguard's tokens (protected ones included) stay in stage 1.
      int32_t secured = 0;
      if (safeguard) {
        const int32_t protected_tokens = stream.NumProtected();
        secured = config.ada.safe_counts_protected
                      ? static_cast<int32_t>(std::floor(config.ada.alpha * capacity))
                      : static_cast<int32_t>(std::floor(
                            config.ada.alpha * (capacity - protected_tokens))) + protected_tokens;
      }
      critical.resize(stream.scores.size());
      HEADPAGE_RETURN_IF_ERROR(policy::CriticalScores(stream, layer.value_norms[h], kept[h],
                                                      critical_options, absl::MakeSpan(critical),
                                                      secured));
      stream.scores = critical;
    }
    HEADPAGE_RETURN_IF_ERROR(policy::SelectKeepSet(stream, kept[h], &keep_sets[h]));
  }
  return keep_sets;
}

absl::StatusOr<std::vector<int32_t>> AllocateByCapacity(const PolicyConfig& config,
                                                        absl::Span<const StreamScores> streams,
                                                        int32_t capacity) {
  using Allocator = PolicyConfig::Allocator;
  switch (config.allocator) {
    case Allocator::kUniform:
    case Allocator::kPyramid:
      return policy::UniformKept(streams, capacity);
    case Allocator::kAda:
    case Allocator::kAdaPyramid:
      return policy::AdaKept(streams, capacity, config.ada);
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "policy ", config.name, ": its budget is not one capacity per layer"));
  }
}

absl::StatusOr<LayerDecision> HostExecutor::Decide(SeqId seq, int32_t layer,
                                                   const PolicyConfig& config, int32_t capacity,
                                                   const policy::Protection& protection,
                                                   const LayerQueries& q,
                                                   absl::Span<const int32_t> stream_capacity) const {
  using Allocator = PolicyConfig::Allocator;
  const CacheGeometry& g = manager_->geometry();
  const int32_t heads = g.num_kv_heads;
  HEADPAGE_ASSIGN_OR_RETURN(LayerScores scored, Score(seq, layer, config, capacity, q));
  const std::vector<StreamScores> streams = scored.Streams(g, protection);
  std::vector<int32_t> kept;
  switch (config.allocator) {
    case Allocator::kUniform:
    case Allocator::kPyramid:
    case Allocator::kAda:
    case Allocator::kAdaPyramid: {
      HEADPAGE_ASSIGN_OR_RETURN(kept, AllocateByCapacity(config, streams, capacity));
      break;
    }
    case Allocator::kDBudget: {
      std::vector<policy::StreamKeys> keys(heads);
      for (int32_t h = 0; h < heads; ++h) keys[h] = scored.data.Stream(h, g);
      HEADPAGE_ASSIGN_OR_RETURN(kept, DBudgetCut(config, g, q, keys, streams));
      break;
    }
    case Allocator::kHeadClasses: {
      // The engine worked out each stream's capacity from the profile.
      if (static_cast<int32_t>(stream_capacity.size()) != heads) {
        return absl::InvalidArgumentError(absl::StrCat(
            "policy ", config.name, ": head classes need each kv head's capacity"));
      }
      kept.resize(heads);
      for (int32_t h = 0; h < heads; ++h) {
        kept[h] = std::min(static_cast<int32_t>(scored.scores[h].size()), stream_capacity[h]);
      }
      break;
    }
    case Allocator::kAdaAcrossLayers:
      return absl::InvalidArgumentError(absl::StrCat(
          "policy ", config.name, ": its budget is allocated across layers, not one at a time"));
    case Allocator::kNone:
      kept.resize(heads);
      for (int32_t h = 0; h < heads; ++h) kept[h] = static_cast<int32_t>(scored.scores[h].size());
      break;
  }
  LayerDecision decision;
  HEADPAGE_ASSIGN_OR_RETURN(decision.keep_sets,
                            Select(config, scored, kept, protection, capacity));
  decision.scores = std::move(scored.scores);
  return decision;
}

absl::Status HostExecutor::Apply(SeqId seq, absl::Span<const int32_t> layers,
                                 const std::vector<std::vector<int32_t>>& keep_sets,
                                 int32_t frozen) {
  HEADPAGE_RETURN_IF_ERROR(CheckHostPool());
  const int32_t heads = manager_->geometry().num_kv_heads;
  for (size_t s = 0; s < keep_sets.size() && frozen > 0; ++s) {
    const auto& set = keep_sets[s];
    if (static_cast<int64_t>(set.size()) < frozen || set[frozen - 1] != frozen - 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "HostExecutor::Apply: keep set ", s, " does not start with the ", frozen,
          " frozen tokens"));
    }
  }
  plan_.Clear();
  std::vector<int32_t> keep_flat;
  std::vector<int32_t> kept(heads);
  absl::Status planned = absl::OkStatus();
  for (size_t i = 0; i < layers.size() && planned.ok(); ++i) {
    for (int32_t h = 0; h < heads; ++h) {
      const auto& set = keep_sets[i * heads + h];
      kept[h] = static_cast<int32_t>(set.size());
      // The rows start past the frozen tokens: so do their keep sets.
      const auto skip = static_cast<ptrdiff_t>(std::min<size_t>(set.size(), frozen));
      keep_flat.insert(keep_flat.end(), set.begin() + skip, set.end());
    }
    planned = manager_->Evict(seq, layers[i], kept, frozen, &plan_);
  }
  // The keep sets of the layers Evict() took (a failed Evict changes nothing).
  keep_flat.resize(plan_.keep_indptr.back());
  CompactArgs args;
  args.cache = cache_;
  args.num_rows = plan_.num_rows();
  args.src_indptr = plan_.src_indptr.data();
  args.src_page_ids = plan_.src_page_ids.data();
  args.num_src_page_ids = static_cast<int32_t>(plan_.src_page_ids.size());
  args.src_lens = plan_.src_lens.data();
  args.dst_indptr = plan_.dst_indptr.data();
  args.dst_page_ids = plan_.dst_page_ids.data();
  args.num_dst_page_ids = static_cast<int32_t>(plan_.dst_page_ids.size());
  args.keep_indptr = plan_.keep_indptr.data();
  args.keep = keep_flat.data();
  args.num_keep = static_cast<int32_t>(keep_flat.size());
  args.in_place = plan_.in_place.data();
  args.keep_base = frozen;
  const absl::Status compacted = args.num_rows > 0 ? ref::Compact(args) : absl::OkStatus();
  // The plan is executed (on the host) or failed validation; either way the
  // retired pages are no longer read.
  manager_->ReleaseRetiredPages();
  HEADPAGE_RETURN_IF_ERROR(planned);
  return compacted;
}

}  // namespace headpage
