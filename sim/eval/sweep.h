// SPDX-License-Identifier: Apache-2.0
// File: sim/eval/sweep.h
//
// Sweeps replay every combination of traces x policies x budgets x page sizes,
// one replay per worker thread at a time, and collect one row per layer plus one
// for all layers of each configuration. Rows come out in configuration order,
// so the output is the same for any thread count. Also the per-layer attention
// concentration that `headpage trace info` prints.
#ifndef HEADPAGE_SIM_EVAL_SWEEP_H_
#define HEADPAGE_SIM_EVAL_SWEEP_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "policy/options.h"
#include "sim/eval/replay.h"
#include "sim/trace/trace.h"

namespace headpage {

struct SweepSpec {
  std::vector<std::string> traces;    // paths
  std::vector<std::string> policies;  // PolicyByName names
  std::vector<Budget> budgets;
  std::vector<int32_t> page_sizes{16};
  PolicyOptions options;  // applied to every policy of the sweep (policy/options.h)
  ReplayOptions replay;   // page_size and threads are set per configuration
  int32_t threads = 0;    // 0: all cores
};

struct SweepRow {
  std::string trace;  // the file's name, without its directory
  std::string policy;
  std::string budget;
  int32_t page_size = 0;
  std::string query_set;  // QueriesName of the set the metrics are over
  int32_t query_window = 0;  // the prompt queries its window measures (measured_window)
  // The policy's options as it ran (PolicyOptionValues), so that a row says
  // how it was made.
  std::vector<std::pair<std::string, std::string>> options;
  ReplayMetrics metrics;  // metrics.layer == -1: the "all" row
};

// The replay options of `spec` for every configuration: its replay options,
// with the query sets' window following the policies' observation window when
// spec.options sets one (> 0).
ReplayOptions ReplayOptionsFor(const SweepSpec& spec);

// The rows of one replay (its layers, then "all"), named as a sweep names them.
std::vector<SweepRow> ReplayRows(const std::string& trace_path, const PolicyConfig& policy,
                                 const Budget& budget, const ReplayOptions& options,
                                 const ReplayResult& result);

// Called after each configuration with (done, total); from worker threads, one
// call at a time.
using SweepProgress = std::function<void(int64_t done, int64_t total)>;

// Runs the sweep. `cancel`, when set, stops it between configurations
// (Cancelled). InvalidArgument for an unknown policy or an empty list; errors
// of Trace::Open and Replay pass through with the configuration named.
[[nodiscard]] absl::StatusOr<std::vector<SweepRow>> RunSweep(const SweepSpec& spec,
                                                             const SweepProgress& progress = nullptr,
                                                             const std::atomic<bool>* cancel = nullptr);

// The CSV the `sweep` command writes: a header line, then one line per row,
// layer "all" for the whole-model rows. The columns: trace, policy, budget,
// page_size, query_set, the policy options (window ... sinks), layer, then
// the metrics.
std::string SweepCsv(const std::vector<SweepRow>& rows);

// How concentrated a layer's attention is: for the last prompt query of each q
// head, the share of visible tokens that carry `mass` of its attention.
struct LayerConcentration {
  int32_t layer = 0;  // the model's layer index
  // False when the layer stores no query of the prompt: the shares are then 0
  // and mean nothing.
  bool has_prompt_query = false;
  double mean_share = 0, min_share = 0, max_share = 0;  // over q heads, each in (0, 1]
};
// One entry per layer of the trace, in its order. Logits are computed in double
// from the stored values and softmaxed after subtracting their maximum, so any
// finite trace gives finite shares (the reader's 1e15 limit is not needed).
// REQUIRES: 0 < mass <= 1.
std::vector<LayerConcentration> AttentionConcentration(const Trace& trace, double mass = 0.9);

}  // namespace headpage

#endif  // HEADPAGE_SIM_EVAL_SWEEP_H_
