// SPDX-License-Identifier: Apache-2.0
#include "sim/eval/head_scores.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"

namespace headpage {

absl::StatusOr<policy::HeadClasses> HeadScoresFromTrace(const Trace& trace, int32_t sinks,
                                                        int32_t recent) {
  if (sinks < 0 || recent < 1) {
    return absl::InvalidArgumentError(absl::StrCat("head scores: sinks ", sinks, " and recent ",
                                                   recent, " (need sinks >= 0, recent >= 1)"));
  }
  const TraceMetadata& m = trace.metadata();
  const int32_t n = trace.num_tokens(), d = m.head_dim, heads = m.num_kv_heads;
  const int32_t group = m.num_q_heads / m.num_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<float> scores;
  std::vector<float> logits(n);
  for (const TraceLayer& layer : trace.layers()) {
    const int32_t rows = static_cast<int32_t>(layer.query_positions.size());
    for (int32_t h = 0; h < heads; ++h) {
      double lost = 0;
      int64_t count = 0;
      for (int32_t g = 0; g < group; ++g) {
        const int32_t qh = h * group + g;
        for (int32_t r = 0; r < rows; ++r) {
          const int32_t p = layer.query_positions[r];
          if (p >= m.prompt_len) continue;  // the prompt's queries only
          float max_logit = -INFINITY;
          for (int32_t j = 0; j <= p; ++j) {
            float dot = 0;
            for (int32_t e = 0; e < d; ++e) {
              dot += LoadAsFloat(layer.queries.data, (static_cast<int64_t>(qh) * rows + r) * d + e,
                                 layer.queries.dtype) *
                     LoadAsFloat(layer.keys.data, (static_cast<int64_t>(h) * n + j) * d + e,
                                 layer.keys.dtype);
            }
            logits[j] = dot * scale;
            max_logit = std::max(max_logit, logits[j]);
          }
          double total = 0, outside = 0;
          for (int32_t j = 0; j <= p; ++j) {
            const double w = std::exp(double{logits[j]} - max_logit);
            total += w;
            if (j >= sinks && j <= p - recent) outside += w;
          }
          lost += outside / total;
          ++count;
        }
      }
      if (count == 0) {
        return absl::FailedPreconditionError(absl::StrCat(
            "head scores: layer ", layer.index, " stores no prompt query"));
      }
      scores.push_back(static_cast<float>(lost / count));
    }
  }
  return policy::HeadClasses::FromScores(static_cast<int32_t>(trace.layers().size()), heads,
                                         std::move(scores));
}

}  // namespace headpage
