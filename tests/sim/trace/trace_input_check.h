// SPDX-License-Identifier: Apache-2.0
// What the trace fuzzer (trace_fuzzer.cc) asks of any input, and sim_tests of
// every kept fuzzer input in tests/data/fuzz/trace/:
//   - the reader refuses it with InvalidArgument or DataLoss and a message, or
//     hands out a Trace that keeps every promise of sim/trace/trace.h (checked
//     by reading every element of every view);
//   - an accepted trace goes through what `headpage trace info` computes
//     (AttentionConcentration): one entry per layer, every share finite and in
//     (0, 1];
//   - and through a short replay (sim/eval/replay.h) of two policies, which
//     either refuses the trace with InvalidArgument and a message or returns
//     metrics that are finite and in their ranges.
#ifndef HEADPAGE_TESTS_SIM_TRACE_TRACE_INPUT_CHECK_H_
#define HEADPAGE_TESTS_SIM_TRACE_TRACE_INPUT_CHECK_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "sim/eval/replay.h"
#include "sim/eval/sweep.h"
#include "sim/trace/trace.h"

namespace headpage::testing {

// A trace is replayed only while its replay costs at most this many
// multiply-adds (q heads x (stored queries + generated tokens) x tokens x
// head_dim, summed over layers: the attention that each measured or observed
// query computes). Under ASan, UBSan and libFuzzer's coverage, an input's two
// replays take about 1.5 ms plus 65 ns per multiply-add (the comparisons of
// every inner loop are traced), so 2^17 keeps the slowest near 10 ms while
// the seeds of head_dim 64 (two layers, GQA, a few pages per stream) pass
// under it; the 64 KiB inputs scripts/fuzz-trace allows could cost 30 times
// that. The fuzzer's inputs are mostly refused by the reader and run at
// thousands a second. Larger traces still go through the reader and
// AttentionConcentration, which reads one query per q head.
inline constexpr double kMaxReplayWork = 1 << 17;

namespace trace_input_check_internal {

// Shape and alignment as promised, and every element finite.
inline std::string CheckView(const TensorView& v, DType dtype, int64_t rows, int64_t heads,
                             int32_t head_dim, const char* what) {
  if (v.dtype != dtype) return absl::StrCat(what, ": dtype differs from the metadata's");
  if (v.shape.size() != 3 || v.shape[0] != heads || v.shape[1] != rows || v.shape[2] != head_dim) {
    return absl::StrCat(what, ": shape other than promised");
  }
  if (reinterpret_cast<uintptr_t>(v.data) % SizeOf(dtype) != 0) {
    return absl::StrCat(what, ": misaligned");
  }
  const int64_t n = v.num_elements();
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(LoadAsFloat(v.data, static_cast<size_t>(i), dtype))) {
      return absl::StrCat(what, ": element ", i, " is not finite");
    }
  }
  return "";
}

inline std::string CheckLayers(const Trace& trace) {
  const TraceMetadata& m = trace.metadata();
  if (m.num_layers < 1 || m.num_q_heads % m.num_kv_heads != 0) return "metadata out of range";
  if (trace.layers().empty()) return "no layers";
  int32_t previous_layer = -1;
  for (const TraceLayer& layer : trace.layers()) {
    if (layer.index <= previous_layer || layer.index >= m.num_layers) {
      return "layer indices out of order";
    }
    previous_layer = layer.index;
    const auto& positions = layer.query_positions;
    if (positions.empty()) return "no query positions";
    if (reinterpret_cast<uintptr_t>(positions.data()) % alignof(int32_t) != 0) {
      return "query positions misaligned";
    }
    for (size_t i = 0; i < positions.size(); ++i) {
      if (positions[i] < 0 || positions[i] >= trace.num_tokens() ||
          (i > 0 && positions[i] <= positions[i - 1])) {
        return absl::StrCat("layer ", layer.index, ": query position ", i,
                            " out of range or order");
      }
    }
    const auto num_queries = static_cast<int64_t>(positions.size());
    for (const std::string& broken :
         {CheckView(layer.keys, m.dtype, trace.num_tokens(), m.num_kv_heads, m.head_dim, "keys"),
          CheckView(layer.values, m.dtype, trace.num_tokens(), m.num_kv_heads, m.head_dim,
                    "values"),
          CheckView(layer.queries, m.dtype, num_queries, m.num_q_heads, m.head_dim, "queries"),
          layer.outputs ? CheckView(*layer.outputs, m.dtype, num_queries, m.num_q_heads, m.head_dim,
                                    "outputs")
                        : std::string()}) {
      if (!broken.empty()) return absl::StrCat("layer ", layer.index, ": ", broken);
    }
  }
  return "";
}

inline std::string CheckConcentration(const Trace& trace) {
  const std::vector<LayerConcentration> conc = AttentionConcentration(trace);
  if (conc.size() != trace.layers().size()) {
    return "AttentionConcentration: not one entry per layer";
  }
  for (size_t i = 0; i < conc.size(); ++i) {
    const LayerConcentration& c = conc[i];
    const TraceLayer& layer = trace.layers()[i];
    const std::string where = absl::StrCat("AttentionConcentration, layer ", layer.index, ": ");
    if (c.layer != layer.index) return absl::StrCat(where, "entry of layer ", c.layer);
    if (c.has_prompt_query != (layer.query_positions[0] < trace.metadata().prompt_len)) {
      return absl::StrCat(where, "has_prompt_query is wrong");
    }
    if (!c.has_prompt_query) continue;
    for (double share : {c.mean_share, c.min_share, c.max_share}) {
      if (!(share > 0 && share <= 1)) {
        return absl::StrCat(where, "share ", share, " outside (0, 1]");
      }
    }
    if (c.min_share > c.mean_share + 1e-9 || c.mean_share > c.max_share + 1e-9) {
      return absl::StrCat(where, "min ", c.min_share, ", mean ", c.mean_share, ", max ",
                          c.max_share);
    }
  }
  return "";
}

inline std::string CheckMetrics(const ReplayMetrics& m, int32_t page_size,
                                const std::string& where) {
  for (double x :
       {m.mean_l1_error, m.mean_rel_l2_error, m.mean_lost_mass, m.mean_bound, m.mean_topk_recall}) {
    if (!std::isfinite(x) || x < 0) return absl::StrCat(where, "a metric is ", x);
  }
  // Sums of float terms: a rounding's worth past the ends is fine.
  if (m.mean_lost_mass > 1 + 1e-6 || m.mean_topk_recall > 1) {
    return absl::StrCat(where, "lost mass ", m.mean_lost_mass, ", recall ", m.mean_topk_recall);
  }
  if (m.queries < 0 || m.kept_tokens < 0 || m.kept_tokens > m.full_tokens ||
      m.kept_pages * page_size - m.kept_tokens != m.fragmentation || m.fragmentation < 0) {
    return absl::StrCat(where, "memory: ", m.kept_tokens, " of ", m.full_tokens, " tokens, ",
                        m.kept_pages, " pages, ", m.fragmentation, " empty slots");
  }
  return "";
}

inline std::string CheckReplay(const Trace& trace) {
  const TraceMetadata& meta = trace.metadata();
  double work = 0;
  for (const TraceLayer& layer : trace.layers()) {
    work += static_cast<double>(meta.num_q_heads) *
            (static_cast<double>(layer.query_positions.size()) + meta.generated_len) *
            trace.num_tokens() * meta.head_dim;
  }
  if (work > kMaxReplayWork) return "";
  ReplayOptions options;
  options.page_size = 4;  // tiny streams still span pages, and eviction frees some
  options.threads = 1;    // thousands of runs a second: no threads to start
  // ada-snapkv: the window score, head-wise budgets and compaction; h2o: every
  // prompt query observed and eviction while decoding (ObserveDecode).
  for (const char* name : {"ada-snapkv", "h2o"}) {
    absl::StatusOr<PolicyConfig> policy = PolicyByName(name);
    if (!policy.ok()) return absl::StrCat("no policy ", name);
    policy->window = std::min(policy->window, 2);  // the default 32 refuses short prompts
    const absl::StatusOr<ReplayResult> result =
        Replay(trace, *policy, Budget::Fraction(0.5), options);
    const std::string where = absl::StrCat("Replay ", name, ": ");
    if (!result.ok()) {
      if (result.status().code() != absl::StatusCode::kInvalidArgument ||
          result.status().message().empty()) {
        return absl::StrCat(where, result.status().ToString());
      }
      continue;
    }
    if (result->layers.size() != trace.layers().size()) {
      return absl::StrCat(where, "not one row per layer");
    }
    int64_t queries = 0;
    for (const ReplayMetrics& m : result->layers) {
      const std::string broken =
          CheckMetrics(m, options.page_size, absl::StrCat(where, "layer ", m.layer, ": "));
      if (!broken.empty()) return broken;
      if (m.full_tokens != static_cast<int64_t>(meta.num_kv_heads) * trace.num_tokens()) {
        return absl::StrCat(where, "layer ", m.layer, ": full_tokens ", m.full_tokens);
      }
      queries += m.queries;
    }
    const std::string broken =
        CheckMetrics(result->all, options.page_size, absl::StrCat(where, "all: "));
    if (!broken.empty()) return broken;
    if (result->all.queries != queries) {
      return absl::StrCat(where, "all: queries ", result->all.queries);
    }
  }
  return "";
}

}  // namespace trace_input_check_internal

// "" when `bytes` keeps every promise above, else the first one it breaks.
inline std::string CheckTraceInput(absl::Span<const uint8_t> bytes) {
  namespace internal = trace_input_check_internal;
  const absl::StatusOr<Trace> trace = Trace::FromBuffer(bytes);
  if (!trace.ok()) {
    const absl::StatusCode code = trace.status().code();
    if ((code != absl::StatusCode::kInvalidArgument && code != absl::StatusCode::kDataLoss) ||
        trace.status().message().empty()) {
      return absl::StrCat("the reader answered ", trace.status().ToString());
    }
    return "";
  }
  if (std::string broken = internal::CheckLayers(*trace); !broken.empty()) return broken;
  if (std::string broken = internal::CheckConcentration(*trace); !broken.empty()) return broken;
  return internal::CheckReplay(*trace);
}

}  // namespace headpage::testing

#endif  // HEADPAGE_TESTS_SIM_TRACE_TRACE_INPUT_CHECK_H_
