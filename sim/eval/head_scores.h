// SPDX-License-Identifier: Apache-2.0
// File: sim/eval/head_scores.h
//
// A head-class profile (policy/head_classes.h) measured on a trace: how much
// each (layer, KV head) would lose as a streaming head.
#ifndef HEADPAGE_SIM_EVAL_HEAD_SCORES_H_
#define HEADPAGE_SIM_EVAL_HEAD_SCORES_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "policy/head_classes.h"
#include "sim/trace/trace.h"

namespace headpage {

// For every captured layer (in the trace's order) and KV head: the attention
// mass the trace's prompt queries put outside what a streaming head keeps,
// the first `sinks` tokens and the `recent` tokens up to the query itself,
// averaged over the group's q heads and those queries. A retrieval head reads
// far back and scores high; a streaming head scores near 0. Computed in float
// from the trace's Q and K with its causal softmax. InvalidArgument for
// negative sinks or recent < 1; FailedPrecondition for a trace that stores no
// prompt query.
[[nodiscard]] absl::StatusOr<policy::HeadClasses> HeadScoresFromTrace(const Trace& trace,
                                                                      int32_t sinks,
                                                                      int32_t recent);

}  // namespace headpage

#endif  // HEADPAGE_SIM_EVAL_HEAD_SCORES_H_
