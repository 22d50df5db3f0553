// SPDX-License-Identifier: Apache-2.0
// `headpage trace info FILE`: a trace's metadata, shapes and attention
// concentration (sim/trace/trace.h, sim/eval/sweep.h); `headpage trace heads
// FILE`: a head-class profile measured on it (sim/eval/head_scores.h).
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "sim/cli/command.h"
#include "sim/eval/head_scores.h"
#include "sim/eval/sweep.h"
#include "sim/trace/trace.h"

namespace headpage {
namespace {

constexpr char kCommand[] = "trace";
constexpr char kUsage[] =
    "usage: headpage trace info FILE\n"
    "       headpage trace heads FILE [--sinks S] [--recent R]\n"
    "\n"
    "Prints a trace's metadata, its tensors' shapes, and how concentrated each layer's\n"
    "attention is: the share of visible tokens that carry 90% of the last prompt query's\n"
    "attention, averaged over q heads (with the least and most concentrated head); '-'\n"
    "for a layer that stores no query of the prompt.\n"
    "\n"
    "heads prints a head-class profile (DuoAttention's TSV: one line per captured layer,\n"
    "one value per KV head) for the duoattention and razorattention policies' option\n"
    "profile: the attention mass the trace's prompt queries put outside S sinks (64)\n"
    "and the R most recent tokens (256), the share a streaming head would lose.\n";

}  // namespace

int PrintHeadScores(const std::string& path, int32_t sinks, int32_t recent) {
  absl::StatusOr<Trace> trace = Trace::Open(path);
  if (!trace.ok()) return Fail("trace heads", trace.status());
  absl::StatusOr<policy::HeadClasses> scores = HeadScoresFromTrace(*trace, sinks, recent);
  if (!scores.ok()) return Fail("trace heads", scores.status());
  std::vector<int32_t> layers;
  for (const TraceLayer& l : trace->layers()) layers.push_back(l.index);
  std::fputs(scores
                 ->ToTsv(absl::StrCat(path, ": layers ", absl::StrJoin(layers, " "), " of ",
                                      trace->metadata().num_layers, "; attention outside ", sinks,
                                      " sinks and ", recent, " recent tokens"))
                 .c_str(),
             stdout);
  return 0;
}

int RunTraceCommand(int argc, char** argv) {
  std::vector<std::string> args;  // "info" FILE | "heads" FILE
  int32_t sinks = 64, recent = 256;
  FlagSet flags;
  flags.Positionals(&args);
  flags.Int("sinks", &sinks, 0);
  flags.Int("recent", &recent, 1);
  if (const std::optional<int> exit = ParseFlags(flags, argc, argv, kCommand, kUsage)) {
    return *exit;
  }
  if (args.size() == 2 && args[0] == "heads") return PrintHeadScores(args[1], sinks, recent);
  if (args.size() != 2 || args[0] != "info") {
    return UsageError(kCommand, "expected: trace info FILE, or trace heads FILE", kUsage);
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
  std::printf("layers     %zu captured\n", trace->layers().size());
  const std::optional<TensorView>& w = trace->layers()[0].output_projection;
  std::printf("W_o        %s\n\n",
              w ? absl::StrCat("every layer, hidden size ", w->shape[0]).c_str()
                : "none (CriticalKV and DefensiveKV cannot replay it)");
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
