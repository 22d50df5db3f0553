// SPDX-License-Identifier: Apache-2.0
#include "sim/eval/head_scores.h"

#include <algorithm>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "policy/scores.h"

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
  const size_t element = SizeOf(m.dtype);
  std::vector<int32_t> key_positions(n);
  std::iota(key_positions.begin(), key_positions.end(), 0);
  std::vector<float> rows;  // one q head's attention rows, [prompt queries][n]
  std::vector<float> scores;
  for (const TraceLayer& layer : trace.layers()) {
    const auto stored = static_cast<int32_t>(layer.query_positions.size());
    // The prompt's queries: a prefix of the stored rows (positions ascend).
    const auto prompt_rows = static_cast<int32_t>(
        std::lower_bound(layer.query_positions.begin(), layer.query_positions.end(),
                         m.prompt_len) -
        layer.query_positions.begin());
    if (prompt_rows == 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("head scores: layer ", layer.index, " stores no prompt query"));
    }
    rows.resize(static_cast<size_t>(prompt_rows) * n);
    for (int32_t h = 0; h < heads; ++h) {
      const policy::StreamKeys keys{
          static_cast<const char*>(layer.keys.data) + static_cast<size_t>(h) * n * d * element,
          key_positions.data(), n, d, m.dtype};
      double lost = 0;
      for (int32_t g = 0; g < group; ++g) {
        // One q head at a time: its first prompt_rows rows are contiguous.
        const policy::GroupQueries query{
            static_cast<const char*>(layer.queries.data) +
                static_cast<size_t>(h * group + g) * stored * d * element,
            layer.query_positions.data(), 1, prompt_rows, d, m.dtype};
        HEADPAGE_RETURN_IF_ERROR(policy::QueryAttentionRows(keys, query, absl::MakeSpan(rows)));
        for (int32_t r = 0; r < prompt_rows; ++r) {
          const int32_t p = layer.query_positions[r];
          const float* row = rows.data() + static_cast<size_t>(r) * n;
          double outside = 0;
          for (int32_t j = sinks; j <= p - recent; ++j) outside += row[j];
          lost += outside;
        }
      }
      scores.push_back(static_cast<float>(lost / (static_cast<double>(group) * prompt_rows)));
    }
  }
  return policy::HeadClasses::FromScores(static_cast<int32_t>(trace.layers().size()), heads,
                                         std::move(scores));
}

}  // namespace headpage
