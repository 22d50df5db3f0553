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
#include "eviction/engine.h"
#include "sim/trace/trace.h"

namespace headpage {

struct ReplayOptions {
  int32_t page_size = 16;
  // Decode-time compression (kvpress's DecodingPress); interval 0 = never.
  DecodeSchedule decode;
  int32_t recall_k = 32;
  // Which queries are measured: all of them, only the observation window that
  // scored the prompt (where Ada-KV's theorem applies exactly), or only the
  // generated tokens'.
  enum class Queries : uint8_t { kAll, kWindow, kGenerated };
  Queries queries = Queries::kAll;
  // Threads for the attention measurements (0: all cores). Results do not depend on it.
  int32_t threads = 0;
};

// One layer's figures (layer = the model's layer index), or all layers (-1).
struct ReplayMetrics {
  int32_t layer = -1;
  int64_t queries = 0;  // (q head, query) pairs measured
  double mean_l1_error = 0;
  double mean_rel_l2_error = 0;
  double mean_lost_mass = 0;
  double mean_bound = 0;
  double mean_topk_recall = 0;
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

// InvalidArgument for a bad policy, budget or page size, or a trace whose
// head_dim the kernels do not support; errors of the engine pass through.
[[nodiscard]] absl::StatusOr<ReplayResult> Replay(const Trace& trace, const PolicyConfig& policy,
                                                  const Budget& budget,
                                                  const ReplayOptions& options = ReplayOptions());

}  // namespace headpage

#endif  // HEADPAGE_SIM_EVAL_REPLAY_H_
