// SPDX-License-Identifier: Apache-2.0
#include "sim/eval/sweep.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/status.h"
#include "sim/parallel.h"

namespace headpage {
namespace {

std::string BaseName(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

absl::StatusOr<std::vector<SweepRow>> RunSweep(const SweepSpec& spec, const SweepProgress& progress,
                                               const std::atomic<bool>* cancel) {
  if (spec.traces.empty() || spec.policies.empty() || spec.budgets.empty() || spec.page_sizes.empty()) {
    return absl::InvalidArgumentError("sweep: every list (traces, policies, budgets, page sizes) needs an entry");
  }
  std::vector<PolicyConfig> policies;
  for (const std::string& name : spec.policies) {
    HEADPAGE_ASSIGN_OR_RETURN(PolicyConfig config, PolicyByName(name, spec.options));
    policies.push_back(std::move(config));
  }
  std::vector<std::unique_ptr<Trace>> traces;
  for (const std::string& path : spec.traces) {
    absl::StatusOr<Trace> trace = Trace::Open(path);
    if (!trace.ok()) {
      return absl::Status(trace.status().code(), absl::StrCat(path, ": ", trace.status().message()));
    }
    traces.push_back(std::make_unique<Trace>(std::move(trace).value()));
  }
  struct Config {
    size_t trace, policy, budget, page_size;
  };
  std::vector<Config> configs;
  for (size_t t = 0; t < traces.size(); ++t) {
    for (size_t p = 0; p < policies.size(); ++p) {
      for (size_t b = 0; b < spec.budgets.size(); ++b) {
        for (size_t s = 0; s < spec.page_sizes.size(); ++s) configs.push_back({t, p, b, s});
      }
    }
  }
  std::vector<absl::StatusOr<ReplayResult>> results(configs.size(), absl::UnknownError("not run"));
  std::atomic<int64_t> done{0};
  std::mutex progress_mutex;
  ParallelFor(configs.size(), spec.threads, cancel, [&](size_t i) {
    const Config& c = configs[i];
    ReplayOptions options = ReplayOptionsFor(spec);
    options.page_size = spec.page_sizes[c.page_size];
    options.threads = 1;  // the sweep is parallel across configurations
    results[i] = Replay(*traces[c.trace], policies[c.policy], spec.budgets[c.budget], options);
    const int64_t finished = ++done;
    if (progress) {
      std::lock_guard<std::mutex> lock(progress_mutex);
      progress(finished, static_cast<int64_t>(configs.size()));
    }
  });
  if (cancel != nullptr && cancel->load()) return absl::CancelledError("sweep cancelled");

  std::vector<SweepRow> rows;
  for (size_t i = 0; i < configs.size(); ++i) {
    const Config& c = configs[i];
    if (!results[i].ok()) {
      return absl::Status(results[i].status().code(),
                          absl::StrCat(BaseName(spec.traces[c.trace]), " / ", spec.policies[c.policy],
                                       " / ", spec.budgets[c.budget].ToString(), " / page ",
                                       spec.page_sizes[c.page_size], ": ",
                                       results[i].status().message()));
    }
    ReplayOptions options = ReplayOptionsFor(spec);
    options.page_size = spec.page_sizes[c.page_size];
    std::vector<SweepRow> replay_rows = ReplayRows(spec.traces[c.trace], policies[c.policy],
                                                   spec.budgets[c.budget], options, *results[i]);
    rows.insert(rows.end(), replay_rows.begin(), replay_rows.end());
  }
  return rows;
}

ReplayOptions ReplayOptionsFor(const SweepSpec& spec) {
  ReplayOptions options = spec.replay;
  if (spec.options.window && *spec.options.window > 0) {
    options.measured_window = *spec.options.window;
  }
  return options;
}

std::vector<SweepRow> ReplayRows(const std::string& trace_path, const PolicyConfig& policy,
                                 const Budget& budget, const ReplayOptions& options,
                                 const ReplayResult& result) {
  SweepRow row;
  row.trace = BaseName(trace_path);
  row.policy = policy.name;
  row.budget = budget.ToString();
  row.page_size = options.page_size;
  row.query_set = QueriesName(options.queries);
  row.query_window = options.measured_window;
  row.options = PolicyOptionValues(policy);
  std::vector<SweepRow> rows;
  for (const ReplayMetrics& m : result.layers) {
    row.metrics = m;
    rows.push_back(row);
  }
  row.metrics = result.all;
  rows.push_back(row);
  return rows;
}

std::string SweepCsv(const std::vector<SweepRow>& rows) {
  std::string out = absl::StrCat(
      "trace,policy,budget,page_size,query_set,query_window,",
      absl::StrJoin(PolicyOptionNames(), ","),
      ",layer,mean_l1_error,mean_rel_l2_error,mean_lost_mass,bound,"
      "topk_recall,kept_tokens,kept_pages,fragmentation,full_tokens,queries,"
      "projected_l1_error\n");
  for (const SweepRow& r : rows) {
    const ReplayMetrics& m = r.metrics;
    absl::StrAppend(&out, r.trace, ",", r.policy, ",", r.budget, ",", r.page_size, ",", r.query_set,
                    ",", r.query_window);
    for (const auto& option : r.options) absl::StrAppend(&out, ",", option.second);
    absl::StrAppendFormat(&out, ",%s,%.9g,%.9g,%.9g,%.9g,%.9g,%d,%d,%d,%d,%d,%s\n",
                          m.layer < 0 ? std::string("all") : absl::StrCat(m.layer), m.mean_l1_error,
                          m.mean_rel_l2_error, m.mean_lost_mass, m.mean_bound, m.mean_topk_recall,
                          m.kept_tokens, m.kept_pages, m.fragmentation, m.full_tokens, m.queries,
                          m.has_projected_error
                              ? absl::StrFormat("%.9g", m.mean_projected_l1_error)
                              : std::string());
  }
  return out;
}

std::vector<LayerConcentration> AttentionConcentration(const Trace& trace, double mass) {
  const TraceMetadata& meta = trace.metadata();
  const int32_t n = trace.num_tokens(), d = meta.head_dim;
  const int32_t group = meta.num_q_heads / meta.num_kv_heads;
  std::vector<LayerConcentration> out;
  for (const TraceLayer& layer : trace.layers()) {
    LayerConcentration c;
    c.layer = layer.index;
    // The last prompt query: the last row whose position is in the prompt.
    const auto& qp = layer.query_positions;
    const auto row = static_cast<int32_t>(
        std::lower_bound(qp.begin(), qp.end(), meta.prompt_len) - qp.begin() - 1);
    c.has_prompt_query = row >= 0;
    if (!c.has_prompt_query) {
      out.push_back(c);
      continue;
    }
    c.min_share = 1.0;
    const int32_t m = qp[row] + 1;
    const auto nq = static_cast<int64_t>(qp.size());
    std::vector<double> w(m);
    for (int32_t g = 0; g < meta.num_q_heads; ++g) {
      const int32_t h = g / group;
      double top = -INFINITY;
      for (int32_t j = 0; j < m; ++j) {
        // In double, so that the shares do not rest on the reader's 1e15
        // limit (in float, a product of two values beyond 1.8e19 is Inf).
        double dot = 0;
        for (int32_t e = 0; e < d; ++e) {
          dot += static_cast<double>(
                     LoadAsFloat(layer.queries.data, (g * nq + row) * d + e, layer.queries.dtype)) *
                 LoadAsFloat(layer.keys.data, (static_cast<int64_t>(h) * n + j) * d + e, layer.keys.dtype);
        }
        w[j] = dot / std::sqrt(static_cast<double>(d));
        top = std::max(top, w[j]);
      }
      // After subtracting the maximum, the largest weight is exp(0) = 1, so
      // the total is in [1, m] whatever the logits' magnitude.
      double total = 0;
      for (double& x : w) total += (x = std::exp(x - top));
      std::sort(w.begin(), w.end(), std::greater<double>());
      double acc = 0;
      int32_t count = 0;
      while (count < m && acc < mass * total) acc += w[count++];
      const double share = static_cast<double>(count) / m;
      c.mean_share += share / meta.num_q_heads;
      c.min_share = std::min(c.min_share, share);
      c.max_share = std::max(c.max_share, share);
    }
    out.push_back(c);
  }
  return out;
}

}  // namespace headpage
