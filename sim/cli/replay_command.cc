// SPDX-License-Identifier: Apache-2.0
// `headpage replay` and `headpage sweep`: what eviction does to attention on
// real traces (sim/eval/replay.h, sim/eval/sweep.h). They share their flags but
// for the lists: replay takes one trace, policy, budget and page size.
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "policy/options.h"
#include "sim/cli/command.h"
#include "sim/eval/replay.h"
#include "sim/eval/sweep.h"
#include "sim/trace/trace.h"

namespace headpage {
namespace {

// The rows as `--format` says: table, csv or json.

std::string FormatRows(const std::vector<SweepRow>& rows, absl::string_view format) {
  if (format == "csv") return SweepCsv(rows);
  if (format == "json") {
    std::string out = "[\n";
    for (size_t i = 0; i < rows.size(); ++i) {
      const SweepRow& r = rows[i];
      const ReplayMetrics& m = r.metrics;
      std::string options;
      for (const auto& [key, value] : r.options) {
        // Every option's text is a number or a bare word: numbers stay numbers.
        double number = 0;
        const bool numeric = absl::SimpleAtod(value, &number);
        absl::StrAppend(&options, "\"", key, "\": ", numeric ? value : absl::StrCat("\"", value, "\""),
                        ", ");
      }
      absl::StrAppendFormat(
          &out,
          "  {\"trace\": \"%s\", \"policy\": \"%s\", \"budget\": \"%s\", \"page_size\": %d, "
          "\"query_set\": \"%s\", \"query_window\": %d, %s"
          "\"layer\": %s, \"mean_l1_error\": %.9g, \"mean_rel_l2_error\": %.9g, "
          "\"mean_lost_mass\": %.9g, \"bound\": %.9g, \"topk_recall\": %.9g, \"kept_tokens\": %d, "
          "\"kept_pages\": %d, \"fragmentation\": %d, \"full_tokens\": %d, \"queries\": %d, "
          "\"projected_l1_error\": %s}%s\n",
          r.trace, r.policy, r.budget, r.page_size, r.query_set, r.query_window, options,
          m.layer < 0 ? std::string("\"all\"") : absl::StrCat(m.layer), m.mean_l1_error,
          m.mean_rel_l2_error, m.mean_lost_mass, m.mean_bound, m.mean_topk_recall, m.kept_tokens,
          m.kept_pages, m.fragmentation, m.full_tokens, m.queries,
          m.has_projected_error ? absl::StrFormat("%.9g", m.mean_projected_l1_error)
                                : std::string("null"),
          i + 1 < rows.size() ? "," : "");
    }
    return out + "]\n";
  }
  std::string out = absl::StrFormat(
      "%-22s %-19s %-7s %5s %-9s %5s %10s %10s %10s %10s %10s %7s %9s %8s %6s\n", "trace",
      "policy", "budget", "page", "queries", "layer", "l1_error", "proj_l1", "rel_l2", "lost_mass",
      "bound", "recall", "kept_tok", "pages", "frag");
  for (const SweepRow& r : rows) {
    const ReplayMetrics& m = r.metrics;
    absl::StrAppendFormat(&out,
                          "%-22s %-19s %-7s %5d %-9s %5s %10.4g %10s %10.4g %10.4g %10.4g %7.3f %9d %8d %6d\n",
                          r.trace, r.policy, r.budget, r.page_size, r.query_set,
                          m.layer < 0 ? std::string("all") : absl::StrCat(m.layer), m.mean_l1_error,
                          m.has_projected_error ? absl::StrFormat("%.4g", m.mean_projected_l1_error)
                                                : std::string("-"),
                          m.mean_rel_l2_error, m.mean_lost_mass, m.mean_bound, m.mean_topk_recall,
                          m.kept_tokens, m.kept_pages, m.fragmentation);
  }
  return out;
}

// The options of policy/options.h; each replaces one field of every policy
// named, and the rest keep the papers' defaults.
#define POLICY_OPTIONS_HELP                                                                  \
  "\nPolicy options (every CSV and JSON row records the values a policy ran with):\n"       \
  "  --window W        observation window: the last W tokens, observed and kept (SnapKV\n"  \
  "                    family 32, dbudget 8, tova 1); the query sets' window follows it\n"   \
  "  --kernel K        SnapKV's pooling kernel, odd (7; 1 pools nothing)\n"                 \
  "  --pooling P       avg, max (SnapKV's LongBench default) or none\n"                     \
  "  --reduce R        a GQA group's query heads: mean (Ada-KV's default) or max\n"         \
  "  --alpha A         Ada-KV's floor share, in [0, 1] (0.2)\n"                             \
  "  --floor F         scaled (Ada-KV's paper and code) or protect-top (kvpress)\n"         \
  "  --beta B          PyramidKV's beta, > 0 (20)\n"                                        \
  "  --threshold T     DBudgetKV's threshold, >= 0 (dbudget 0.05, dbudget-fro 0.01)\n"      \
  "  --sinks S         attention sinks kept whatever their score (streamingllm 4,\n"        \
  "                    duoattention 64, razorattention 4, else 0)\n"                         \
  "  --profile FILE    head classes: the (layer, kv head) profile duoattention and\n"        \
  "                    razorattention rank heads by (DuoAttention's TSV; `trace heads`)\n"   \
  "  --sparsity S      head classes: the share of heads that stream (duoattention 0.5;\n"   \
  "                    -1, razorattention's: the profile's own, score >= 0.5)\n"

constexpr char kReplayUsage[] =
    "usage: headpage replay --trace FILE --policy P --budget B [--page-size N]\n"
    "                       [--format table|csv|json] [--threads N] [--queries Q]\n"
    "                       [--decode-interval N --decode-target T [--decode-window W]]\n"
    "                       [POLICY OPTIONS]\n"
    "\n"
    "Compresses the trace's prompt with policy P at budget B (tokens per KV head, window\n"
    "included, e.g. 128, or a share of the prompt, e.g. 20%), appends the generated\n"
    "tokens, and reports per layer and overall what eviction did to attention: output\n"
    "error (L1, relative L2), lost attention mass, Ada-KV's L1 bound, top-32 recall, and\n"
    "the tokens, pages and empty tail slots kept. Policies (the registry's):\n"
    "{POLICIES}\n"
    "--decode-interval N compresses again every N generated tokens to T tokens per head,\n"
    "scoring with the last W generated queries (default 32), as kvpress's DecodingPress.\n"
    "--queries later|window|generated|all: which queries are measured. later (the default)\n"
    "is what attends after the compression: the last 32 prompt queries (the observation\n"
    "window the SnapKV family scores with; --window changes it) and every generated token's.\n"
    "window and generated are its two parts; all adds the prompt queries before the window,\n"
    "which ran during the prefill and never attend to the compressed cache. Every result\n"
    "row names its set (query_set).\n"
    POLICY_OPTIONS_HELP;

constexpr char kSweepUsage[] =
    "usage: headpage sweep --trace FILE [--trace FILE...] --policies P1,P2 --budgets B1,B2\n"
    "                      [--page-size N[,N...]] [--out results.csv] [--plot plot.png]\n"
    "                      [--threads N] [--queries later|window|generated|all]\n"
    "                      [--decode-interval N --decode-target T] [POLICY OPTIONS]\n"
    "\n"
    "Replays every trace x policy x budget x page size on all cores (the same numbers for\n"
    "any thread count), prints the rows of layer 'all', writes every row as CSV with\n"
    "--out, and with --plot draws error and lost mass against budget, one line per policy\n"
    "(tools/plot_sweep.py, matplotlib). Ctrl-C stops it between configurations.\n"
    "--queries as for replay (default later: the window and the generated tokens' queries).\n"
    POLICY_OPTIONS_HELP;

// The replay usage with the registry's policy names, wrapped.
const std::string& ReplayUsage() {
  static const std::string* usage = [] {
    std::string names = "  ";
    size_t line = 2;
    const std::vector<std::string>& all = PolicyNames();
    for (size_t i = 0; i < all.size(); ++i) {
      const std::string item = all[i] + (i + 1 < all.size() ? "," : ".");
      if (line + 1 + item.size() > 88) {
        names += "\n  ";
        line = 2;
      } else if (line > 2) {
        names += " ";
        ++line;
      }
      names += item;
      line += item.size();
    }
    return new std::string(absl::StrReplaceAll(kReplayUsage, {{"{POLICIES}", names}}));
  }();
  return *usage;
}

int RunReplayOrSweep(int argc, char** argv, bool sweep) {
  const char* command = sweep ? "sweep" : "replay";
  const char* usage = sweep ? kSweepUsage : ReplayUsage().c_str();
  SweepSpec spec;
  std::string format = "table", out_path, plot_path, budgets, policies, page_sizes = "16";
  std::string queries = "later";
  FlagSet flags;
  flags.TextList("trace", &spec.traces);
  flags.Text(sweep ? "policies" : "policy", &policies);
  flags.Text(sweep ? "budgets" : "budget", &budgets);
  flags.Text("page-size", &page_sizes);
  if (sweep) {
    flags.Text("out", &out_path);
    flags.Text("plot", &plot_path);
  } else {
    flags.Choice("format", {"table", "csv", "json"}, &format);
  }
  flags.Int("threads", &spec.threads, /*min=*/0);
  flags.Choice("queries", {"later", "window", "generated", "all"}, &queries);
  std::vector<std::string> option_text(PolicyOptionNames().size());
  for (size_t i = 0; i < option_text.size(); ++i) flags.Text(PolicyOptionNames()[i], &option_text[i]);
  flags.Int("decode-interval", &spec.replay.decode.interval, /*min=*/0);
  flags.Int("decode-target", &spec.replay.decode.target, /*min=*/0);
  flags.Int("decode-window", &spec.replay.decode.window, /*min=*/0);
  if (const std::optional<int> exit = ParseFlags(flags, argc, argv, command, usage)) return *exit;
  spec.replay.queries = *QueriesByName(queries);  // one of the choices above
  for (size_t i = 0; i < option_text.size(); ++i) {
    if (option_text[i].empty()) continue;
    const absl::Status set = SetPolicyOption(PolicyOptionNames()[i], option_text[i], &spec.options);
    if (!set.ok()) return UsageError(command, set.message(), usage);
  }
  if (spec.replay.decode.interval > 0 && spec.replay.decode.target < 1) {
    return UsageError(command, "--decode-interval needs --decode-target (tokens per head)", usage);
  }
  if (spec.replay.decode.interval == 0 && spec.replay.decode.target > 0) {
    return UsageError(command, "--decode-target needs --decode-interval (how often)", usage);
  }
  if (spec.traces.empty() || policies.empty() || budgets.empty()) {
    return UsageError(command, "--trace, a policy and a budget are required", usage);
  }
  if (!sweep && (spec.traces.size() > 1 || policies.find(',') != std::string::npos ||
                 budgets.find(',') != std::string::npos || page_sizes.find(',') != std::string::npos)) {
    return UsageError(command, "replay takes one trace, policy, budget and page size; see sweep", usage);
  }
  spec.policies = absl::StrSplit(policies, ',', absl::SkipEmpty());
  absl::StatusOr<std::vector<Budget>> b = ParseBudgets(budgets);
  if (!b.ok()) return UsageError(command, b.status().message(), usage);
  spec.budgets = *b;
  absl::StatusOr<std::vector<int32_t>> ps = ParsePageSizes(page_sizes);
  if (!ps.ok()) return UsageError(command, ps.status().message(), usage);
  spec.page_sizes = *ps;
  for (const std::string& name : spec.policies) {
    const absl::StatusOr<PolicyConfig> policy = PolicyByName(name, spec.options);
    if (!policy.ok()) return UsageError(command, policy.status().message(), usage);
  }

  const std::atomic<bool>* interrupted = StopOnInterrupt();
  const int64_t total = static_cast<int64_t>(spec.traces.size() * spec.policies.size() *
                                             spec.budgets.size() * spec.page_sizes.size());
  const bool show_progress = sweep && total > 1;
  SweepProgress progress = [&](int64_t done, int64_t n) {
    if (!show_progress) return;
    const int width = 30;
    const int filled = static_cast<int>(width * done / n);
    std::fprintf(stderr, "\r[%s%s] %lld/%lld configurations", std::string(filled, '#').c_str(),
                 std::string(width - filled, ' ').c_str(), static_cast<long long>(done),
                 static_cast<long long>(n));
    std::fflush(stderr);
  };
  if (!sweep && spec.threads == 0) spec.replay.threads = 0;  // one replay: threads over layers
  absl::StatusOr<std::vector<SweepRow>> rows =
      sweep || total > 1 ? RunSweep(spec, progress, interrupted) : absl::StatusOr<std::vector<SweepRow>>();
  if (!sweep) {
    absl::StatusOr<Trace> trace = Trace::Open(spec.traces[0]);
    if (!trace.ok()) return Fail(command, trace.status());
    ReplayOptions options = ReplayOptionsFor(spec);
    options.page_size = spec.page_sizes[0];
    options.threads = spec.threads;
    // Read again (a profile option reads its file): an error is reported, not assumed away.
    absl::StatusOr<PolicyConfig> named = PolicyByName(spec.policies[0], spec.options);
    if (!named.ok()) return Fail(command, named.status());
    const PolicyConfig& policy = *named;
    absl::StatusOr<ReplayResult> result = Replay(*trace, policy, spec.budgets[0], options);
    if (!result.ok()) return Fail(command, result.status());
    rows = ReplayRows(spec.traces[0], policy, spec.budgets[0], options, *result);
  }
  if (show_progress) std::fputc('\n', stderr);
  if (!rows.ok()) {
    if (absl::IsCancelled(rows.status())) {
      std::fprintf(stderr, "headpage %s: interrupted; nothing written\n", command);
      return 130;
    }
    return Fail(command, rows.status());
  }
  if (!sweep) {
    std::fputs(FormatRows(*rows, format).c_str(), stdout);
    return 0;
  }
  std::vector<SweepRow> all_rows;
  for (const SweepRow& r : *rows) {
    if (r.metrics.layer < 0) all_rows.push_back(r);
  }
  std::fputs(FormatRows(all_rows, "table").c_str(), stdout);
  if (!out_path.empty()) {
    const absl::Status written = WriteFile(out_path, SweepCsv(*rows));
    if (!written.ok()) return Fail(command, written);
    std::printf("wrote %s (%zu rows)\n", out_path.c_str(), rows->size());
  }
  if (!plot_path.empty()) {
    const absl::Status plotted = Plot("plot_sweep.py", out_path, SweepCsv(*rows), plot_path);
    if (!plotted.ok()) return Fail(command, plotted);
  }
  return 0;
}

}  // namespace

int RunReplayCommand(int argc, char** argv) { return RunReplayOrSweep(argc, argv, false); }
int RunSweepCommand(int argc, char** argv) { return RunReplayOrSweep(argc, argv, true); }

}  // namespace headpage
