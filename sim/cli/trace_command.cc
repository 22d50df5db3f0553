// SPDX-License-Identifier: Apache-2.0
// `headpage trace info FILE`: a trace's metadata, shapes and attention
// concentration (sim/trace/trace.h, sim/eval/sweep.h).
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "sim/cli/command.h"
#include "sim/eval/sweep.h"
#include "sim/trace/trace.h"

namespace headpage {
namespace {

constexpr char kCommand[] = "trace";
constexpr char kUsage[] =
    "usage: headpage trace info FILE\n"
    "\n"
    "Prints a trace's metadata, its tensors' shapes, and how concentrated each layer's\n"
    "attention is: the share of visible tokens that carry 90% of the last prompt query's\n"
    "attention, averaged over q heads (with the least and most concentrated head); '-'\n"
    "for a layer that stores no query of the prompt.\n";

}  // namespace

int RunTraceCommand(int argc, char** argv) {
  std::vector<std::string> args;  // "info" FILE
  FlagSet flags;
  flags.Positionals(&args);
  if (const std::optional<int> exit = ParseFlags(flags, argc, argv, kCommand, kUsage)) {
    return *exit;
  }
  if (args.size() != 2 || args[0] != "info") {
    return UsageError(kCommand, "expected: trace info FILE", kUsage);
  }
  const std::string& path = args[1];
  absl::StatusOr<Trace> trace = Trace::Open(path);
  if (!trace.ok()) return Fail("trace info", trace.status());
  const TraceMetadata& m = trace->metadata();
  std::printf("trace      %s\nmodel      %s\ntask       %s\nsource     %s\n", path.c_str(),
              m.model.c_str(), m.task.c_str(), m.source.c_str());
  std::printf("geometry   %d layers, %d q heads, %d kv heads, head_dim %d, %s, rope %s\n",
              m.num_layers, m.num_q_heads, m.num_kv_heads, m.head_dim, DTypeName(m.dtype),
              m.rope_applied ? "applied" : "not applied");
  std::printf("tokens     %d prompt + %d generated = %d\n", m.prompt_len, m.generated_len,
              trace->num_tokens());
  std::printf("layers     %zu captured\n\n", trace->layers().size());
  std::printf("layer  keys/values       queries        outputs  90%%-mass share: mean   min    max\n");
  const std::vector<LayerConcentration> conc = AttentionConcentration(*trace);
  for (size_t i = 0; i < trace->layers().size(); ++i) {
    const TraceLayer& l = trace->layers()[i];
    const LayerConcentration& c = conc[i];  // one per layer, in the same order
    const auto shape = [](const TensorView& t) { return absl::StrJoin(t.shape, "x"); };
    std::printf("%5d  %-16s  %-13s  %-7s  ", l.index, shape(l.keys).c_str(), shape(l.queries).c_str(),
                l.outputs ? "yes" : "no");
    if (c.has_prompt_query) {
      std::printf("%21.3f  %5.3f  %5.3f\n", c.mean_share, c.min_share, c.max_share);
    } else {
      std::printf("%21s  %5s  %5s  (no prompt query)\n", "-", "-", "-");
    }
  }
  return 0;
}

}  // namespace headpage
