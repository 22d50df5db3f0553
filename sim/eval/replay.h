// SPDX-License-Identifier: Apache-2.0
// File: sim/eval/replay.h
//
// Replay runs an eviction policy over a real trace through the real block
// manager and eviction engine, on a host pool holding the trace's K/V, and
// measures what eviction did to attention. The prompt is written and compressed
// at its end (and, when the schedule asks, every N decode steps); then each
// generated token is appended and its query attends. For every layer, KV head,
// q head and later query (the prompt queries the trace holds, and every
// generated token's), it compares attention over the tokens the stream kept
// with attention over the full cache:
//
//   l1 error       ||o - o_kept||_1 of the attention output (before o_proj)
//   projected l1   ||(o - o_kept) W_o^h^T||_1, the error the head adds to the
//                  layer's output after o_proj (what CriticalKV bounds), when
//                  the trace holds the output projection
//   rel l2 error   ||o - o_kept||_2 / ||o||_2
//   lost mass      1 - F, F = the full attention's mass on the kept tokens
//   bound          Ada-KV's L1 bound for this output, 2 (1 - F) max_j ||v_j||_1
//                  (their C = max ||V W_O||, taken before o_proj)
//   top-k recall   the share of the full attention's k largest weights kept
//
// and the memory the streams kept (tokens, pages, empty tail slots) for the
// page size. Deterministic: the same inputs give the same numbers, whatever the
// thread count.
#ifndef HEADPAGE_SIM_EVAL_REPLAY_H_
#define HEADPAGE_SIM_EVAL_REPLAY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "eviction/engine.h"
#include "sim/trace/trace.h"

namespace headpage {

struct ReplayOptions {
  int32_t page_size = 16;
  // Decode-time compression (kvpress's DecodingPress); interval 0 = never.
  DecodeSchedule decode;
  int32_t recall_k = 32;
  // Which queries are measured. The default, kLater, is what runs after the
  // compression: the observation window (the proxy the policies score with) and
  // every generated token's query. kWindow and kGenerated are its two parts
  // (on the window Ada-KV's theorem applies exactly). kAll adds the prompt
  // queries before the window, which ran during the prefill and never attend
  // to the compressed cache.
  enum class Queries : uint8_t { kLater, kWindow, kGenerated, kAll };
  Queries queries = Queries::kLater;
  // The window the query sets measure: the last `measured_window` prompt
  // queries the trace holds, the same rows for every policy of a run (the
  // SnapKV family's default observation window).
  int32_t measured_window = 32;
  // Threads for the attention measurements (0: all cores). Results do not depend on it.
  int32_t threads = 0;
};

// The query set's name on the command line and in results: later, window,
// generated, all.
const char* QueriesName(ReplayOptions::Queries queries);
// The set called `name`; InvalidArgument naming the four.
[[nodiscard]] absl::StatusOr<ReplayOptions::Queries> QueriesByName(absl::string_view name);

// One layer's figures (layer = the model's layer index), or all layers (-1).
struct ReplayMetrics {
  int32_t layer = -1;
  int64_t queries = 0;  // (q head, query) pairs measured
  double mean_l1_error = 0;
  double mean_rel_l2_error = 0;
  double mean_lost_mass = 0;
  double mean_bound = 0;
  double mean_topk_recall = 0;
  // The projected l1 error; only when the trace holds the output projection.
  bool has_projected_error = false;
  double mean_projected_l1_error = 0;
  // Memory at the end of the replay, over this layer's streams (all layers' for -1).
  int64_t full_tokens = 0;
  int64_t kept_tokens = 0;
  int64_t kept_pages = 0;
  int64_t fragmentation = 0;  // allocated - used slots: the empty tails
};

struct ReplayResult {
  std::vector<ReplayMetrics> layers;  // in the trace's layer order
  ReplayMetrics all;                  // query-weighted means, summed memory
};

// Recomputes, from the trace's queries, keys and values, the attention output
// of every stored query (causal, in float) and compares it with the model's own
// outputs the capture stored: the largest absolute difference over every layer
// that has outputs, and the largest relative to the output's max |value|.
// FailedPrecondition when no layer stored outputs.
struct OutputCheck {
  double max_abs_error = 0;
  double max_rel_error = 0;
  int64_t outputs_checked = 0;  // (layer, q head, query) rows
};
[[nodiscard]] absl::StatusOr<OutputCheck> CheckTraceOutputs(const Trace& trace);

// InvalidArgument for a bad policy, budget or page size; errors of the engine
// pass through. Any head_dim the trace reader accepts replays: the host pool,
// the host references and the policies take them all (the GPU kernels' own
// list is kernels/supported.h).
[[nodiscard]] absl::StatusOr<ReplayResult> Replay(const Trace& trace, const PolicyConfig& policy,
                                                  const Budget& budget,
                                                  const ReplayOptions& options = ReplayOptions());

}  // namespace headpage

#endif  // HEADPAGE_SIM_EVAL_REPLAY_H_
