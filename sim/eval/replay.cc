// SPDX-License-Identifier: Apache-2.0
#include "sim/eval/replay.h"

#include <algorithm>
#include <memory>
#include <cmath>
#include <cstring>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "allocator/arena.h"
#include "allocator/page_pool.h"
#include "blockmgr/block_manager.h"
#include "core/status.h"
#include "kernels/gather_kv.h"
#include "kernels/write_kv.h"
#include "sim/parallel.h"

namespace headpage {
namespace {

// One trace layer in float, laid out for the attention of one query at a time:
// keys transposed, so that a query's logits are axpys over contiguous keys (no
// float reduction across head_dim, so the compiler vectorizes them).
struct DenseLayer {
  int32_t n = 0, d = 0, heads = 0, q_heads = 0, num_queries = 0;
  std::vector<float> keys_t;      // [heads][d][n]
  std::vector<float> values;      // [heads][n][d]
  std::vector<float> queries;     // [q_heads][num_queries][d]
  std::vector<float> v_norm_max;  // [heads][n]: max over j' <= j of ||v_j'||_1
  int32_t hidden = 0;               // 0: the trace holds no output projection
  std::vector<float> projection_t;  // [q_heads][d][hidden]: W_o^h transposed
  const int32_t* query_positions = nullptr;
};

DenseLayer Densify(const TraceLayer& layer, const TraceMetadata& meta, int32_t num_tokens) {
  DenseLayer out;
  out.n = num_tokens;
  out.d = meta.head_dim;
  out.heads = meta.num_kv_heads;
  out.q_heads = meta.num_q_heads;
  out.num_queries = static_cast<int32_t>(layer.query_positions.size());
  out.query_positions = layer.query_positions.data();
  const size_t n = out.n, d = out.d;
  out.keys_t.resize(out.heads * d * n);
  out.values.resize(out.heads * n * d);
  out.v_norm_max.resize(out.heads * n);
  for (int32_t h = 0; h < out.heads; ++h) {
    for (size_t j = 0; j < n; ++j) {
      float norm = 0;
      for (size_t e = 0; e < d; ++e) {
        const size_t i = (h * n + j) * d + e;
        out.keys_t[(h * d + e) * n + j] = LoadAsFloat(layer.keys.data, i, layer.keys.dtype);
        out.values[i] = LoadAsFloat(layer.values.data, i, layer.values.dtype);
        norm += std::fabs(out.values[i]);
      }
      out.v_norm_max[h * n + j] = j == 0 ? norm : std::max(norm, out.v_norm_max[h * n + j - 1]);
    }
  }
  if (layer.output_projection) {
    const TensorView& w = *layer.output_projection;
    out.hidden = static_cast<int32_t>(w.shape[0]);
    const size_t hidden = out.hidden, row = static_cast<size_t>(out.q_heads) * d;
    out.projection_t.resize(out.q_heads * d * hidden);
    for (size_t o = 0; o < hidden; ++o) {
      for (size_t c = 0; c < row; ++c) {
        out.projection_t[c * hidden + o] = LoadAsFloat(w.data, o * row + c, w.dtype);
      }
    }
  }
  out.queries.resize(static_cast<size_t>(out.q_heads) * out.num_queries * d);
  for (size_t i = 0; i < out.queries.size(); ++i) {
    out.queries[i] = LoadAsFloat(layer.queries.data, i, layer.queries.dtype);
  }
  return out;
}

struct Sums {
  double l1 = 0, rel_l2 = 0, lost = 0, bound = 0, recall = 0, projected_l1 = 0;
  int64_t count = 0;

  void Add(const Sums& o) {
    l1 += o.l1;
    projected_l1 += o.projected_l1;
    rel_l2 += o.rel_l2;
    lost += o.lost;
    bound += o.bound;
    recall += o.recall;
    count += o.count;
  }
};

struct Scratch {
  std::vector<float> weights, full, kept, projected;
  std::vector<int32_t> order;
};

// Measures query row r of q head g against the kept tokens of its KV head:
// kept[j] != 0 when the stream holds position j.
void Measure(const DenseLayer& L, int32_t g, int32_t r, const uint8_t* kept, int32_t recall_k,
             Scratch* s, Sums* sums) {
  const int32_t h = g / (L.q_heads / L.heads);
  const int32_t m = L.query_positions[r] + 1;  // keys 0..p are visible
  const size_t n = L.n, d = L.d;
  const float* q = &L.queries[(static_cast<size_t>(g) * L.num_queries + r) * d];
  const float* kt = &L.keys_t[h * d * n];
  std::vector<float>& w = s->weights;
  w.assign(m, 0.0f);
  for (size_t e = 0; e < d; ++e) {
    const float qe = q[e];
    const float* row = kt + e * n;
    for (int32_t j = 0; j < m; ++j) w[j] += qe * row[j];
  }
  // The logits are scaled and stored before their maximum is taken: were
  // w[j] * scale - max_logit contracted into one fma, the unrounded product
  // could exceed the rounded maximum by half an ulp (up to 1e24 for values at
  // the reader's 1e15 limit), exp() would give Inf and the metrics NaN.
  // Stored, the largest weight is exactly exp(0) = 1, so 1 <= total <= m.
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  float max_logit = -INFINITY;
  for (int32_t j = 0; j < m; ++j) {
    w[j] *= scale;
    max_logit = std::max(max_logit, w[j]);
  }
  double total = 0, kept_mass = 0;
  for (int32_t j = 0; j < m; ++j) {
    w[j] = std::exp(w[j] - max_logit);
    total += w[j];
    if (kept[j]) kept_mass += w[j];
  }
  // Outputs: full over every visible key, kept over the kept ones, renormalized.
  s->full.assign(d, 0.0f);
  s->kept.assign(d, 0.0f);
  const float* v = &L.values[h * n * d];
  for (int32_t j = 0; j < m; ++j) {
    const float a = w[j];
    const float* vj = v + j * d;
    float* full = s->full.data();
    for (size_t e = 0; e < d; ++e) full[e] += a * vj[e];
    if (kept[j]) {
      float* kept_out = s->kept.data();
      for (size_t e = 0; e < d; ++e) kept_out[e] += a * vj[e];
    }
  }
  double l1 = 0, diff2 = 0, norm2 = 0;
  for (size_t e = 0; e < d; ++e) {
    const double full = s->full[e] / total;
    const double kept_out = kept_mass > 0 ? s->kept[e] / kept_mass : 0.0;
    l1 += std::fabs(full - kept_out);
    diff2 += (full - kept_out) * (full - kept_out);
    norm2 += full * full;
  }
  if (L.hidden > 0) {
    // The difference pushed through the head's slice of o_proj.
    const size_t hidden = L.hidden;
    s->projected.assign(hidden, 0.0f);
    const float* wt = &L.projection_t[static_cast<size_t>(g) * d * hidden];
    for (size_t e = 0; e < d; ++e) {
      const float full = s->full[e] / static_cast<float>(total);
      const float kept_out = kept_mass > 0 ? s->kept[e] / static_cast<float>(kept_mass) : 0.0f;
      const float delta = full - kept_out;
      const float* row = wt + e * hidden;
      float* y = s->projected.data();
      for (size_t o = 0; o < hidden; ++o) y[o] += delta * row[o];
    }
    double projected = 0;
    for (const float y : s->projected) projected += std::fabs(y);
    sums->projected_l1 += projected;
  }
  const double retained = kept_mass / total;
  sums->l1 += l1;
  sums->rel_l2 += norm2 > 0 ? std::sqrt(diff2 / norm2) : 0.0;
  sums->lost += 1.0 - retained;
  sums->bound += 2.0 * (1.0 - retained) * L.v_norm_max[h * n + m - 1];
  // Top-k recall; ties by the lower position, so the set is well defined.
  const int32_t k = std::min(recall_k, m);
  s->order.resize(m);
  std::iota(s->order.begin(), s->order.end(), 0);
  std::nth_element(s->order.begin(), s->order.begin() + (k - 1), s->order.end(),
                   [&](int32_t a, int32_t b) { return w[a] > w[b] || (w[a] == w[b] && a < b); });
  int32_t hits = 0;
  for (int32_t i = 0; i < k; ++i) hits += kept[s->order[i]] != 0;
  sums->recall += static_cast<double>(hits) / k;
  ++sums->count;
}

// Which positions each stream of geometry layer `layer` holds now: [heads][n].
absl::Status KeptMasks(const BlockManager& manager, const PagedKV& cache, SeqId seq, int32_t layer,
                       int32_t n, std::vector<uint8_t>* masks) {
  const int32_t heads = manager.geometry().num_kv_heads;
  // The layer's block tables of `seq`, tight: the CSR GatherKV takes.
  const SeqId seqs[] = {seq};
  HEADPAGE_ASSIGN_OR_RETURN(const BlockTableCsr table,
                            manager.BlockTable(layer, seqs, BlockTableOptions{0}));
  const absl::Span<const int32_t> lens = table.lens();
  std::vector<int32_t> positions(std::accumulate(lens.begin(), lens.end(), size_t{0}));
  GatherKVArgs args;
  args.cache = cache;
  args.num_rows = heads;
  args.indptr = table.indptr().data();
  args.page_ids = table.page_ids().data();
  args.num_page_ids = static_cast<int32_t>(table.page_ids().size());
  args.lens = lens.data();
  args.positions = positions.data();
  HEADPAGE_RETURN_IF_ERROR(ref::GatherKV(args));
  masks->assign(static_cast<size_t>(heads) * n, 0);
  size_t i = 0;
  for (int32_t h = 0; h < heads; ++h) {
    for (int32_t t = 0; t < lens[h]; ++t, ++i) (*masks)[static_cast<size_t>(h) * n + positions[i]] = 1;
  }
  return absl::OkStatus();
}

// Raw rows of a [heads][rows][d] tensor, as [heads][count][d] starting at row `first`.
std::vector<char> SliceRows(const TensorView& t, int32_t first, int32_t count) {
  const size_t heads = t.shape[0], rows = t.shape[1], d = t.shape[2];
  const size_t row_bytes = d * SizeOf(t.dtype);
  std::vector<char> out(heads * count * row_bytes);
  for (size_t h = 0; h < heads; ++h) {
    std::memcpy(out.data() + h * count * row_bytes,
                static_cast<const char*>(t.data) + (h * rows + first) * row_bytes, count * row_bytes);
  }
  return out;
}

// Rows [first, first + count) of a [heads][rows][d] tensor as WriteKV's input
// [count][heads][d].
std::vector<char> TokenMajor(const TensorView& t, int32_t first, int32_t count) {
  const size_t heads = t.shape[0], rows = t.shape[1], d = t.shape[2];
  const size_t row_bytes = d * SizeOf(t.dtype);
  std::vector<char> out(count * heads * row_bytes);
  for (int32_t i = 0; i < count; ++i) {
    for (size_t h = 0; h < heads; ++h) {
      std::memcpy(out.data() + (i * heads + h) * row_bytes,
                  static_cast<const char*>(t.data) + (h * rows + first + i) * row_bytes, row_bytes);
    }
  }
  return out;
}

}  // namespace

const char* QueriesName(ReplayOptions::Queries queries) {
  switch (queries) {
    case ReplayOptions::Queries::kLater: return "later";
    case ReplayOptions::Queries::kWindow: return "window";
    case ReplayOptions::Queries::kGenerated: return "generated";
    case ReplayOptions::Queries::kAll: return "all";
  }
  return "?";
}

absl::StatusOr<ReplayOptions::Queries> QueriesByName(absl::string_view name) {
  for (const auto q : {ReplayOptions::Queries::kLater, ReplayOptions::Queries::kWindow,
                       ReplayOptions::Queries::kGenerated, ReplayOptions::Queries::kAll}) {
    if (name == QueriesName(q)) return q;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown query set '", name, "'; known: later (the window and the generated tokens'), "
      "window, generated, all (every stored query, the prompt's before the window included)"));
}

absl::StatusOr<OutputCheck> CheckTraceOutputs(const Trace& trace) {
  const TraceMetadata& meta = trace.metadata();
  OutputCheck check;
  Scratch s;
  for (const TraceLayer& layer : trace.layers()) {
    if (!layer.outputs) continue;
    const DenseLayer L = Densify(layer, meta, trace.num_tokens());
    const size_t d = L.d;
    for (int32_t g = 0; g < L.q_heads; ++g) {
      for (int32_t r = 0; r < L.num_queries; ++r) {
        // Full attention: every visible key kept.
        const std::vector<uint8_t> all(L.n, 1);
        Sums unused;
        Measure(L, g, r, all.data(), 1, &s, &unused);
        // Measure() left the unnormalized output in s.full and the weights in s.weights.
        const double total = std::accumulate(s.weights.begin(), s.weights.end(), 0.0);
        double max_out = 0, max_diff = 0;
        for (size_t e = 0; e < d; ++e) {
          const double ours = s.full[e] / total;
          const double theirs = LoadAsFloat(layer.outputs->data,
                                            (static_cast<size_t>(g) * L.num_queries + r) * d + e,
                                            layer.outputs->dtype);
          max_out = std::max(max_out, std::fabs(theirs));
          max_diff = std::max(max_diff, std::fabs(ours - theirs));
        }
        check.max_abs_error = std::max(check.max_abs_error, max_diff);
        check.max_rel_error = std::max(check.max_rel_error, max_out > 0 ? max_diff / max_out : max_diff);
        ++check.outputs_checked;
      }
    }
  }
  if (check.outputs_checked == 0) {
    return absl::FailedPreconditionError("the trace stored no attention outputs to check against");
  }
  return check;
}

absl::StatusOr<ReplayResult> Replay(const Trace& trace, const PolicyConfig& model_policy,
                                    const Budget& budget, const ReplayOptions& options) {
  HEADPAGE_RETURN_IF_ERROR(Validate(model_policy));
  // A head-class profile of the whole model is cut to the trace's layers (the
  // engine here holds only those); one of the trace's layers is used as is.
  PolicyConfig policy = model_policy;
  if (policy.head_profile != nullptr &&
      policy.head_profile->num_layers() == trace.metadata().num_layers &&
      static_cast<int32_t>(trace.layers().size()) != trace.metadata().num_layers) {
    std::vector<int32_t> indices;
    for (const TraceLayer& layer : trace.layers()) indices.push_back(layer.index);
    HEADPAGE_ASSIGN_OR_RETURN(policy::HeadClasses rows, policy.head_profile->Rows(indices));
    policy.head_profile = std::make_shared<const policy::HeadClasses>(std::move(rows));
  }
  if (options.page_size < 1 || options.recall_k < 1 || options.threads < 0 ||
      options.measured_window < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "replay: page size ", options.page_size, ", recall k ", options.recall_k,
        ", measured window ", options.measured_window, " must be positive, threads ",
        options.threads, " at least 0"));
  }
  const TraceMetadata& meta = trace.metadata();
  // Rows are found in the first layer and used in every layer: the format lets
  // each layer store its own query positions, a replay needs them equal.
  const TraceLayer& first_layer = trace.layers()[0];
  for (const TraceLayer& layer : trace.layers()) {
    if (!std::equal(layer.query_positions.begin(), layer.query_positions.end(),
                    first_layer.query_positions.begin(), first_layer.query_positions.end())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "replay: layer ", layer.index, " stores queries at other positions than layer ",
          first_layer.index, " (layers.", layer.index, ".query_positions); a replay needs the "
          "same positions in every layer"));
    }
  }
  const auto layers = static_cast<int32_t>(trace.layers().size());
  const int32_t n = trace.num_tokens(), prompt = meta.prompt_len, heads = meta.num_kv_heads;

  // The pool: every stream's full length, twice over (eviction allocates fresh
  // pages before it releases the old ones), plus slack.
  CacheGeometry g;
  g.num_layers = layers;
  g.num_kv_heads = heads;
  g.num_q_heads = meta.num_q_heads;
  g.head_dim = meta.head_dim;
  g.dtype = meta.dtype;
  g.page_size = options.page_size;
  HEADPAGE_RETURN_IF_ERROR(Validate(g));
  const int64_t pages = 2 * static_cast<int64_t>(layers) * heads * (PagesFor(n, g.page_size) + 1) + 64;
  HEADPAGE_ASSIGN_OR_RETURN(PagePool pool, PagePool::Create({pages, 0.0}));
  HEADPAGE_ASSIGN_OR_RETURN(HostArena arena, HostArena::Create(g, pages));
  HEADPAGE_ASSIGN_OR_RETURN(BlockManager manager, BlockManager::Create(g, &pool));
  HEADPAGE_ASSIGN_OR_RETURN(EvictionEngine engine, EvictionEngine::Create(&manager, arena.view()));
  const SeqId seq = manager.AddSequence();

  // Writes tokens [first, first + count) of every layer into the pool.
  auto append = [&](int32_t first, int32_t count) -> absl::Status {
    HEADPAGE_ASSIGN_OR_RETURN(const ReservePlan plan, manager.Reserve(seq, count));
    std::vector<int32_t> positions(count);
    std::iota(positions.begin(), positions.end(), first);
    for (int32_t l = 0; l < layers; ++l) {
      const TraceLayer& layer = trace.layers()[l];
      const std::vector<char> keys = TokenMajor(layer.keys, first, count);
      const std::vector<char> values = TokenMajor(layer.values, first, count);
      HEADPAGE_RETURN_IF_ERROR(ref::WriteKV({arena.view(), count, heads, keys.data(), values.data(),
                                             plan.slot_mapping.data() + l * heads, layers * heads,
                                             positions.data()}));
    }
    return absl::OkStatus();
  };
  HEADPAGE_RETURN_IF_ERROR(append(0, prompt));

  // The queries of each layer, their prompt rows first (positions ascend),
  // at the same rows in every layer (checked above).
  const auto prompt_rows = static_cast<int32_t>(
      std::lower_bound(first_layer.query_positions.begin(), first_layer.query_positions.end(), prompt) -
      first_layer.query_positions.begin());
  if (prompt_rows < 1) {
    return absl::InvalidArgumentError("replay: the trace holds no query of the prompt");
  }
  // Compress at the end of the prompt: SnapKV & co. observe the last `window`
  // prompt queries, H2O every prompt query the trace holds.
  const int32_t window_rows = policy.ObservedQueries(prompt_rows);
  std::vector<std::vector<char>> window_data(layers);
  std::vector<LayerQueries> window(layers);
  for (int32_t l = 0; l < layers; ++l) {
    const TraceLayer& layer = trace.layers()[l];
    window_data[l] = SliceRows(layer.queries, prompt_rows - window_rows, window_rows);
    window[l] = LayerQueries{window_data[l].data(),
                             layer.query_positions.data() + (prompt_rows - window_rows), window_rows,
                             layer.queries.dtype, MemoryKind::kHost, {}};
    if (layer.output_projection) {
      window[l].output_projection = policy::OutputProjection{
          layer.output_projection->data, static_cast<int32_t>(layer.output_projection->shape[0]),
          meta.num_q_heads, meta.head_dim, layer.output_projection->dtype};
    } else if (policy.needs_output_projection()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "policy ", policy.name, " weighs values by the output projection, which this trace "
          "does not hold (layers.{i}.output_projection; tools/capture_trace.py writes it)"));
    }
  }
  if (policy.compresses()) {
    HEADPAGE_RETURN_IF_ERROR(engine.Compress(seq, policy, budget, window).status());
  }

  // What each stream holds when each query attends: snapshot 0 after the
  // prompt's compression (for the prompt queries), snapshot i + 1 after
  // generated token i was appended (for its query).
  const int32_t generated = meta.generated_len;
  std::vector<std::vector<std::vector<uint8_t>>> masks(generated + 1,
                                                       std::vector<std::vector<uint8_t>>(layers));
  for (int32_t l = 0; l < layers; ++l) {
    HEADPAGE_RETURN_IF_ERROR(KeptMasks(manager, arena.view(), seq, l, n, &masks[0][l]));
  }
  std::vector<std::vector<char>> step_data(layers);
  std::vector<LayerQueries> step(layers);
  for (int32_t i = 0; i < generated; ++i) {
    const int32_t position = prompt + i;
    HEADPAGE_RETURN_IF_ERROR(append(position, 1));
    for (int32_t l = 0; l < layers; ++l) {
      HEADPAGE_RETURN_IF_ERROR(KeptMasks(manager, arena.view(), seq, l, n, &masks[i + 1][l]));
    }
    // The query of this token, if the trace has it, feeds the policies that act
    // while decoding (H2O's streaming eviction, a decode schedule).
    const bool decode_policy = policy.evicts_while_decoding || options.decode.interval > 0;
    if (!decode_policy || !policy.compresses()) continue;
    const auto& qp = first_layer.query_positions;
    const auto it = std::lower_bound(qp.begin(), qp.end(), position);
    if (it == qp.end() || *it != position) continue;
    const auto row = static_cast<int32_t>(it - qp.begin());
    for (int32_t l = 0; l < layers; ++l) {
      const TraceLayer& layer = trace.layers()[l];
      step_data[l] = SliceRows(layer.queries, row, 1);
      step[l] = LayerQueries{step_data[l].data(), layer.query_positions.data() + row, 1,
                             layer.queries.dtype, MemoryKind::kHost, {}};
    }
    HEADPAGE_RETURN_IF_ERROR(engine.ObserveDecode(seq, policy, step, options.decode));
  }

  // The window the query sets measure: the same rows whatever the policy observed.
  const int32_t measured_rows = std::min(prompt_rows, options.measured_window);

  // Measure every query of every layer, layers spread over threads. Each layer's
  // sums are built by one call in a fixed order, so results do not depend on
  // the thread count.
  std::vector<Sums> sums(layers);
  ParallelFor(static_cast<size_t>(layers), options.threads, /*cancel=*/nullptr, [&](size_t l) {
    Scratch scratch;
    const DenseLayer dense = Densify(trace.layers()[l], meta, n);
    for (int32_t r = 0; r < dense.num_queries; ++r) {
      const int32_t position = dense.query_positions[r];
      const int32_t snapshot = position < prompt ? 0 : position - prompt + 1;
      if (snapshot > generated) continue;
      const bool in_window = r >= prompt_rows - measured_rows && r < prompt_rows;
      const bool is_generated = position >= prompt;
      bool measured = true;
      switch (options.queries) {
        case ReplayOptions::Queries::kLater: measured = in_window || is_generated; break;
        case ReplayOptions::Queries::kWindow: measured = in_window; break;
        case ReplayOptions::Queries::kGenerated: measured = is_generated; break;
        case ReplayOptions::Queries::kAll: break;
      }
      if (!measured) continue;
      for (int32_t qh = 0; qh < dense.q_heads; ++qh) {
        const int32_t h = qh / (dense.q_heads / heads);
        Measure(dense, qh, r, masks[snapshot][l].data() + static_cast<size_t>(h) * n,
                options.recall_k, &scratch, &sums[l]);
      }
    }
  });

  ReplayResult result;
  HEADPAGE_ASSIGN_OR_RETURN(const absl::Span<const uint32_t> lens, manager.StreamLengths(seq));
  Sums total;
  for (int32_t l = 0; l < layers; ++l) {
    ReplayMetrics m;
    m.layer = trace.layers()[l].index;
    const Sums& s = sums[l];
    m.queries = s.count;
    if (s.count > 0) {
      m.mean_l1_error = s.l1 / s.count;
      m.mean_rel_l2_error = s.rel_l2 / s.count;
      m.mean_lost_mass = s.lost / s.count;
      m.mean_bound = s.bound / s.count;
      m.mean_topk_recall = s.recall / s.count;
      m.mean_projected_l1_error = s.projected_l1 / s.count;
    }
    m.has_projected_error = trace.layers()[l].output_projection.has_value();
    for (int32_t h = 0; h < heads; ++h) {
      const int64_t len = lens[l * heads + h];
      m.full_tokens += n;
      m.kept_tokens += len;
      m.kept_pages += PagesFor(len, g.page_size);
      m.fragmentation += PagesFor(len, g.page_size) * g.page_size - len;
    }
    total.Add(s);
    result.all.full_tokens += m.full_tokens;
    result.all.kept_tokens += m.kept_tokens;
    result.all.kept_pages += m.kept_pages;
    result.all.fragmentation += m.fragmentation;
    result.layers.push_back(m);
  }
  result.all.queries = total.count;
  if (total.count > 0) {
    result.all.mean_l1_error = total.l1 / total.count;
    result.all.mean_rel_l2_error = total.rel_l2 / total.count;
    result.all.mean_lost_mass = total.lost / total.count;
    result.all.mean_bound = total.bound / total.count;
    result.all.mean_topk_recall = total.recall / total.count;
    result.all.mean_projected_l1_error = total.projected_l1 / total.count;
  }
  // The reader holds every layer's projection or none.
  result.all.has_projected_error = trace.layers()[0].output_projection.has_value();
  return result;
}

}  // namespace headpage
