// SPDX-License-Identifier: Apache-2.0
// The `headpage` command-line tool. The first argument names a subcommand; each
// one parses its own flags and calls into the headpage_sim library.
//
// Exit status: 0 on success, 1 when the work itself fails (the error is printed),
// 2 for a usage error (unknown subcommand, bad flag).
#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/geometry.h"
#include "core/status.h"
#include "sim/replay.h"
#include "sim/sweep.h"
#include "sim/trace.h"
#include "sim/walkthrough.h"
#include "sim/workload.h"

namespace headpage {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// ---------------------------------------------------------------------------
// walkthrough

constexpr char kWalkthroughUsage[] =
    "usage: headpage walkthrough [--page-size N] [--prefill N] [--decode N] [--pool-gib G]\n"
    "\n"
    "Walks one sequence of the Llama-3-8B KV cache (32 layers x 8 kv heads, head_dim 128,\n"
    "bf16) through the block manager: prefill, decode, fork, decode both (copy-on-write),\n"
    "Ada-like head-wise eviction of every layer to 20%, ReleaseRetiredPages, free. After\n"
    "each step it prints the pool's state and the time the block-manager calls took, and\n"
    "proves the bookkeeping with CheckInvariants(). Bookkeeping only: no K/V bytes move.\n"
    "\n"
    "  --page-size N  tokens per page (default 16)\n"
    "  --prefill N    prompt tokens (default 8192)\n"
    "  --decode N     decode steps before the fork (default 64)\n"
    "  --pool-gib G   pool size in GiB; pages = G GiB / page bytes (default 16)\n";

// Reads flag `name`'s value from "--name=V" or "--name V". Returns false (and
// leaves *i alone) when argv[*i] is not that flag; sets *value to nullptr when
// the value is missing.
bool MatchFlag(int argc, char** argv, int* i, absl::string_view name, const char** value) {
  const absl::string_view arg = argv[*i];
  if (arg.substr(0, 2) != "--" || arg.substr(2, name.size()) != name) return false;
  const absl::string_view rest = arg.substr(2 + name.size());
  if (rest.empty()) {
    *value = *i + 1 < argc ? argv[++*i] : nullptr;
    return true;
  }
  if (rest[0] != '=') return false;
  *value = argv[*i] + 2 + name.size() + 1;
  return true;
}

int WalkthroughUsageError(const std::string& message) {
  std::fprintf(stderr, "headpage walkthrough: %s\n\n%s", message.c_str(), kWalkthroughUsage);
  return 2;
}

int RunWalkthroughCommand(int argc, char** argv) {
  WalkthroughOptions options;
  int64_t page_size = options.geometry.page_size;
  for (int i = 1; i < argc; ++i) {
    const char* value = nullptr;
    const absl::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kWalkthroughUsage, stdout);
      return 0;
    }
    int64_t* int_flag = nullptr;
    double* double_flag = nullptr;
    const char* name = nullptr;
    if (MatchFlag(argc, argv, &i, "page-size", &value)) {
      int_flag = &page_size, name = "--page-size";
    } else if (MatchFlag(argc, argv, &i, "prefill", &value)) {
      int_flag = &options.prefill_tokens, name = "--prefill";
    } else if (MatchFlag(argc, argv, &i, "decode", &value)) {
      int_flag = &options.decode_steps, name = "--decode";
    } else if (MatchFlag(argc, argv, &i, "pool-gib", &value)) {
      double_flag = &options.pool_gib, name = "--pool-gib";
    } else {
      return WalkthroughUsageError(absl::StrCat("unknown argument '", arg, "'"));
    }
    if (value == nullptr) return WalkthroughUsageError(absl::StrCat(name, " needs a value"));
    const bool parsed = int_flag != nullptr ? absl::SimpleAtoi(value, int_flag)
                                            : absl::SimpleAtod(value, double_flag);
    const bool in_range = int_flag != nullptr ? *int_flag >= (int_flag == &page_size ? 1 : 0)
                                              : *double_flag > 0.0;
    if (!parsed || !in_range) {
      return WalkthroughUsageError(absl::StrCat(
          name, " needs ",
          int_flag == &page_size ? "a positive integer"
          : int_flag != nullptr  ? "an integer >= 0"
                                 : "a positive number",
          ", got '", value, "'"));
    }
  }
  if (page_size > (1 << 16)) {
    return WalkthroughUsageError(absl::StrCat("--page-size ", page_size, " is above 65536"));
  }
  options.geometry = CacheGeometry::Llama3_8B(DType::kBF16, static_cast<int32_t>(page_size));

  const CacheGeometry& g = options.geometry;
  const absl::StatusOr<int64_t> num_pages = PagesForBudget(g, options.pool_gib);
  if (!num_pages.ok()) {
    std::fprintf(stderr, "headpage walkthrough: %s\n", num_pages.status().ToString().c_str());
    return 1;
  }
  std::printf("headpage walkthrough: Llama-3-8B %s\n", g.DebugString().c_str());
  std::printf("  %d streams a sequence; a page holds %d tokens of one stream = %zu bytes\n",
              g.streams_per_sequence(), g.page_size, g.page_bytes());
  std::printf("  pool: %lld pages = %.3f GiB of KV (budget %g GiB); no arena: bookkeeping only\n\n",
              static_cast<long long>(*num_pages),
              static_cast<double>(*num_pages) * static_cast<double>(g.page_bytes()) / kGiB,
              options.pool_gib);
  std::printf("%s\n", WalkthroughTableHeader().c_str());

  int64_t peak_pages = 0;
  const absl::Status status = RunWalkthrough(options, [&](const WalkthroughStep& step) {
    std::printf("%s\n", FormatWalkthroughRow(step).c_str());
    std::fflush(stdout);
    peak_pages = step.stats.peak_pages_used;
  });
  if (!status.ok()) {
    std::fflush(stdout);
    std::fprintf(stderr, "headpage walkthrough: FAILED: %s\n", status.ToString().c_str());
    return 1;
  }
  std::printf("\npeak: %lld pages in use = %.3f GiB of KV; CheckInvariants() OK after every step\n",
              static_cast<long long>(peak_pages),
              static_cast<double>(peak_pages) * static_cast<double>(g.page_bytes()) / kGiB);
  return 0;
}


// ---------------------------------------------------------------------------
// trace info, replay, sweep

int Fail(const char* command, const absl::Status& status) {
  std::fflush(stdout);
  std::fprintf(stderr, "headpage %s: %s\n", command, status.ToString().c_str());
  return 1;
}

int UsageError(const char* command, const std::string& message, const char* usage) {
  std::fprintf(stderr, "headpage %s: %s\n\n%s", command, message.c_str(), usage);
  return 2;
}

// Writes `contents` to `path`; Unavailable naming the path if that fails.
absl::Status WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path);
  out << contents;
  if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

// Runs tools/<script> CSV PNG. The CSV is `csv_path` when the caller wrote one
// there, else `csv` written next to the plot.
absl::Status Plot(const char* script, const std::string& csv_path, const std::string& csv,
                  const std::string& plot_path) {
  std::string path = csv_path;
  if (path.empty()) {
    path = plot_path + ".csv";
    HEADPAGE_RETURN_IF_ERROR(WriteFile(path, csv));
  }
  // The plotting scripts need matplotlib: the repository's .venv has it when
  // scripts/demo made one (HEADPAGE_PYTHON); otherwise whatever python3 is on PATH.
  const char* python = std::getenv("HEADPAGE_PYTHON");
  const std::string cmd = absl::StrCat(python != nullptr ? python : "python3", " \"",
                                       HEADPAGE_SOURCE_DIR, "/tools/", script, "\" \"", path,
                                       "\" \"", plot_path, "\"");
  if (std::system(cmd.c_str()) != 0) {
    return absl::UnavailableError(absl::StrCat("plotting failed: ", cmd));
  }
  std::printf("wrote %s\n", plot_path.c_str());
  return absl::OkStatus();
}

constexpr char kTraceUsage[] =
    "usage: headpage trace info FILE\n"
    "\n"
    "Prints a trace's metadata, its tensors' shapes, and how concentrated each layer's\n"
    "attention is: the share of visible tokens that carry 90% of the last prompt query's\n"
    "attention, averaged over q heads (with the least and most concentrated head).\n";

int RunTraceCommand(int argc, char** argv) {
  if (argc == 2 && (absl::string_view(argv[1]) == "--help" || absl::string_view(argv[1]) == "-h")) {
    std::fputs(kTraceUsage, stdout);
    return 0;
  }
  if (argc != 3 || absl::string_view(argv[1]) != "info") {
    return UsageError("trace", "expected: trace info FILE", kTraceUsage);
  }
  absl::StatusOr<Trace> trace = Trace::Open(argv[2]);
  if (!trace.ok()) return Fail("trace info", trace.status());
  const TraceMetadata& m = trace->metadata();
  std::printf("trace      %s\nmodel      %s\ntask       %s\nsource     %s\n", argv[2], m.model.c_str(),
              m.task.c_str(), m.source.c_str());
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
    const auto shape = [](const TensorView& t) { return absl::StrJoin(t.shape, "x"); };
    std::printf("%5d  %-16s  %-13s  %-7s  %21.3f  %5.3f  %5.3f\n", l.index, shape(l.keys).c_str(),
                shape(l.queries).c_str(), l.outputs ? "yes" : "no",
                i < conc.size() ? conc[i].mean_share : 0.0, i < conc.size() ? conc[i].min_share : 0.0,
                i < conc.size() ? conc[i].max_share : 0.0);
  }
  return 0;
}

// Parses "a,b,c" into budgets / page sizes / names.
absl::StatusOr<std::vector<Budget>> ParseBudgets(absl::string_view list) {
  std::vector<Budget> out;
  for (absl::string_view part : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    absl::StatusOr<Budget> b = Budget::Parse(part);
    if (!b.ok()) return b.status();
    out.push_back(*b);
  }
  if (out.empty()) return absl::InvalidArgumentError("no budget given");
  return out;
}

absl::StatusOr<std::vector<int32_t>> ParsePageSizes(absl::string_view list) {
  std::vector<int32_t> out;
  for (absl::string_view part : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    int32_t v = 0;
    if (!absl::SimpleAtoi(part, &v) || v < 1 || v > (1 << 16)) {
      return absl::InvalidArgumentError(absl::StrCat("page size '", part, "' is not in [1, 65536]"));
    }
    out.push_back(v);
  }
  if (out.empty()) return absl::InvalidArgumentError("no page size given");
  return out;
}

std::string FormatRows(const std::vector<SweepRow>& rows, absl::string_view format) {
  if (format == "csv") return SweepCsv(rows);
  if (format == "json") {
    std::string out = "[\n";
    for (size_t i = 0; i < rows.size(); ++i) {
      const SweepRow& r = rows[i];
      const ReplayMetrics& m = r.metrics;
      absl::StrAppendFormat(
          &out,
          "  {\"trace\": \"%s\", \"policy\": \"%s\", \"budget\": \"%s\", \"page_size\": %d, "
          "\"layer\": %s, \"mean_l1_error\": %.9g, \"mean_rel_l2_error\": %.9g, "
          "\"mean_lost_mass\": %.9g, \"bound\": %.9g, \"topk_recall\": %.9g, \"kept_tokens\": %d, "
          "\"kept_pages\": %d, \"fragmentation\": %d, \"full_tokens\": %d}%s\n",
          r.trace, r.policy, r.budget, r.page_size,
          m.layer < 0 ? std::string("\"all\"") : absl::StrCat(m.layer), m.mean_l1_error,
          m.mean_rel_l2_error, m.mean_lost_mass, m.mean_bound, m.mean_topk_recall, m.kept_tokens,
          m.kept_pages, m.fragmentation, m.full_tokens, i + 1 < rows.size() ? "," : "");
    }
    return out + "]\n";
  }
  std::string out = absl::StrFormat("%-22s %-15s %-7s %5s %5s %10s %10s %10s %10s %7s %9s %8s %6s\n",
                                    "trace", "policy", "budget", "page", "layer", "l1_error",
                                    "rel_l2", "lost_mass", "bound", "recall", "kept_tok", "pages",
                                    "frag");
  for (const SweepRow& r : rows) {
    const ReplayMetrics& m = r.metrics;
    absl::StrAppendFormat(&out, "%-22s %-15s %-7s %5d %5s %10.4g %10.4g %10.4g %10.4g %7.3f %9d %8d %6d\n",
                          r.trace, r.policy, r.budget, r.page_size,
                          m.layer < 0 ? std::string("all") : absl::StrCat(m.layer), m.mean_l1_error,
                          m.mean_rel_l2_error, m.mean_lost_mass, m.mean_bound, m.mean_topk_recall,
                          m.kept_tokens, m.kept_pages, m.fragmentation);
  }
  return out;
}

std::atomic<bool> interrupted{false};
extern "C" void OnInterrupt(int) { interrupted = true; }

constexpr char kReplayUsage[] =
    "usage: headpage replay --trace FILE --policy P --budget B [--page-size N]\n"
    "                       [--format table|csv|json] [--threads N] [--queries Q]\n"
    "                       [--decode-interval N --decode-target T [--decode-window W]]\n"
    "\n"
    "Compresses the trace's prompt with policy P at budget B (tokens per KV head, window\n"
    "included, e.g. 128, or a share of the prompt, e.g. 20%), appends the generated\n"
    "tokens, and reports per layer and overall what eviction did to attention: output\n"
    "error (L1, relative L2), lost attention mass, Ada-KV's L1 bound, top-32 recall, and\n"
    "the tokens, pages and empty tail slots kept. Policies: full, uniform-snapkv, pyramid,\n"
    "ada-snapkv, ada-pyramid, dbudget, h2o, streamingllm, tova, knorm, random.\n"
    "--decode-interval N compresses again every N generated tokens to T tokens per head,\n"
    "scoring with the last W generated queries (default 32), as kvpress's DecodingPress.\n"
    "--queries all|window|generated measures every later query (default), only the\n"
    "observation window that scored the prompt (where Ada-KV's theorem applies), or only\n"
    "the generated tokens'.\n";

constexpr char kSweepUsage[] =
    "usage: headpage sweep --trace FILE [--trace FILE...] --policies P1,P2 --budgets B1,B2\n"
    "                      [--page-size N[,N...]] [--out results.csv] [--plot plot.png]\n"
    "                      [--threads N] [--queries all|window|generated]\n"
    "                      [--decode-interval N --decode-target T]\n"
    "\n"
    "Replays every trace x policy x budget x page size on all cores (the same numbers for\n"
    "any thread count), prints the rows of layer 'all', writes every row as CSV with\n"
    "--out, and with --plot draws error and lost mass against budget, one line per policy\n"
    "(tools/plot_sweep.py, matplotlib). Ctrl-C stops it between configurations.\n";

int RunReplayOrSweep(int argc, char** argv, bool sweep) {
  const char* command = sweep ? "sweep" : "replay";
  const char* usage = sweep ? kSweepUsage : kReplayUsage;
  SweepSpec spec;
  std::string format = "table", out_path, plot_path, budgets = "", policies = "", page_sizes = "16";
  for (int i = 1; i < argc; ++i) {
    const char* value = nullptr;
    const absl::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(usage, stdout);
      return 0;
    }
    std::string* target = nullptr;
    std::string trace;
    if (MatchFlag(argc, argv, &i, "trace", &value)) {
      target = &trace;
    } else if (MatchFlag(argc, argv, &i, sweep ? "policies" : "policy", &value)) {
      target = &policies;
    } else if (MatchFlag(argc, argv, &i, sweep ? "budgets" : "budget", &value)) {
      target = &budgets;
    } else if (MatchFlag(argc, argv, &i, "page-size", &value)) {
      target = &page_sizes;
    } else if (!sweep && MatchFlag(argc, argv, &i, "format", &value)) {
      target = &format;
    } else if (sweep && MatchFlag(argc, argv, &i, "out", &value)) {
      target = &out_path;
    } else if (sweep && MatchFlag(argc, argv, &i, "plot", &value)) {
      target = &plot_path;
    } else if (MatchFlag(argc, argv, &i, "threads", &value)) {
      if (value == nullptr || !absl::SimpleAtoi(value, &spec.threads) || spec.threads < 0) {
        return UsageError(command, "--threads needs an integer >= 0", usage);
      }
      continue;
    } else if (MatchFlag(argc, argv, &i, "queries", &value)) {
      const absl::string_view q = value == nullptr ? "" : value;
      if (q == "all") {
        spec.replay.queries = ReplayOptions::Queries::kAll;
      } else if (q == "window") {
        spec.replay.queries = ReplayOptions::Queries::kWindow;
      } else if (q == "generated") {
        spec.replay.queries = ReplayOptions::Queries::kGenerated;
      } else {
        return UsageError(command, "--queries must be all, window or generated", usage);
      }
      continue;
    } else if (MatchFlag(argc, argv, &i, "decode-interval", &value) ||
               MatchFlag(argc, argv, &i, "decode-target", &value) ||
               MatchFlag(argc, argv, &i, "decode-window", &value)) {
      DecodeSchedule& d = spec.replay.decode;
      int32_t* field = arg.find("interval") != absl::string_view::npos ? &d.interval
                       : arg.find("target") != absl::string_view::npos ? &d.target
                                                                       : &d.window;
      if (value == nullptr || !absl::SimpleAtoi(value, field) || *field < 0) {
        return UsageError(command, absl::StrCat(arg, " needs an integer >= 0"), usage);
      }
      continue;
    } else {
      return UsageError(command, absl::StrCat("unknown argument '", arg, "'"), usage);
    }
    if (value == nullptr) return UsageError(command, absl::StrCat(arg, " needs a value"), usage);
    *target = value;
    if (target == &trace) spec.traces.push_back(trace);
  }
  if (spec.replay.decode.interval > 0 && spec.replay.decode.target < 1) {
    return UsageError(command, "--decode-interval needs --decode-target (tokens per head)", usage);
  }
  if (spec.traces.empty() || policies.empty() || budgets.empty()) {
    return UsageError(command, "--trace, a policy and a budget are required", usage);
  }
  if (!sweep && (spec.traces.size() > 1 || policies.find(',') != std::string::npos ||
                 budgets.find(',') != std::string::npos || page_sizes.find(',') != std::string::npos)) {
    return UsageError(command, "replay takes one trace, policy, budget and page size; see sweep", usage);
  }
  if (format != "table" && format != "csv" && format != "json") {
    return UsageError(command, absl::StrCat("--format must be table, csv or json, not '", format, "'"), usage);
  }
  spec.policies = absl::StrSplit(policies, ',', absl::SkipEmpty());
  absl::StatusOr<std::vector<Budget>> b = ParseBudgets(budgets);
  if (!b.ok()) return UsageError(command, std::string(b.status().message()), usage);
  spec.budgets = *b;
  absl::StatusOr<std::vector<int32_t>> ps = ParsePageSizes(page_sizes);
  if (!ps.ok()) return UsageError(command, std::string(ps.status().message()), usage);
  spec.page_sizes = *ps;
  for (const std::string& name : spec.policies) {
    if (!PolicyByName(name).ok()) {
      return UsageError(command, std::string(PolicyByName(name).status().message()), usage);
    }
  }

  std::signal(SIGINT, OnInterrupt);
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
      sweep || total > 1 ? RunSweep(spec, progress, &interrupted) : absl::StatusOr<std::vector<SweepRow>>();
  if (!sweep) {
    absl::StatusOr<Trace> trace = Trace::Open(spec.traces[0]);
    if (!trace.ok()) return Fail(command, trace.status());
    ReplayOptions options = spec.replay;
    options.page_size = spec.page_sizes[0];
    options.threads = spec.threads;
    absl::StatusOr<ReplayResult> result =
        Replay(*trace, *PolicyByName(spec.policies[0]), spec.budgets[0], options);
    if (!result.ok()) return Fail(command, result.status());
    std::vector<SweepRow> replay_rows;
    SweepRow row{spec.traces[0].substr(spec.traces[0].find_last_of('/') + 1), spec.policies[0],
                 spec.budgets[0].ToString(), spec.page_sizes[0], {}};
    for (const ReplayMetrics& m : result->layers) {
      row.metrics = m;
      replay_rows.push_back(row);
    }
    row.metrics = result->all;
    replay_rows.push_back(row);
    rows = std::move(replay_rows);
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
    std::ofstream out(out_path);
    out << SweepCsv(*rows);
    if (!out) return Fail(command, absl::UnavailableError(absl::StrCat("cannot write ", out_path)));
    std::printf("wrote %s (%zu rows)\n", out_path.c_str(), rows->size());
  }
  if (!plot_path.empty()) {
    const absl::Status plotted = Plot("plot_sweep.py", out_path, SweepCsv(*rows), plot_path);
    if (!plotted.ok()) return Fail(command, plotted);
  }
  return 0;
}

int RunReplayCommand(int argc, char** argv) { return RunReplayOrSweep(argc, argv, false); }
int RunSweepCommand(int argc, char** argv) { return RunReplayOrSweep(argc, argv, true); }

// ---------------------------------------------------------------------------
// workload

constexpr char kWorkloadUsage[] =
    "usage: headpage workload [--dist sharegpt|arxiv|long|fixed:P,O|csv:FILE] [--requests N]\n"
    "                         [--rate R] [--pool-pages P] [--page-size S] [--policy X]\n"
    "                         [--budget B] [--profile uniform|skewed|trace:FILE] [--seed K]\n"
    "                         [--window W] [--geometry LxH] [--max-batch N] [--headroom F]\n"
    "                         [--small-stream-tokens T] [--out metrics.csv] [--plot memory.png]\n"
    "       headpage workload --sweep [--policy X1,X2,...] [--page-size S1,S2,...] [--threads N] "
    "...\n"
    "\n"
    "Simulates a serving engine's KV memory with the real block manager on a pool of page\n"
    "ids (no K/V bytes): requests arrive (Poisson at R per second, or all at once with\n"
    "inf, or at a CSV's times), a vLLM-like scheduler admits them first come first served\n"
    "above a 1% watermark, decodes one token per running request per step, and preempts\n"
    "the newest request (recompute) when a step cannot get pages. Each request is\n"
    "compressed at admission by the policy, from the head profile's per-head importance:\n"
    "none, uniform, pyramid, ada, dbudget, or pool-pressure (evict the least important\n"
    "tokens of all running requests, down to the budget, instead of preempting).\n"
    "Prints one CSV row per run: policy,page_size,requests,steps,peak_batch,mean_batch,\n"
    "preemptions,tokens_per_step,mean_fragmentation,final_fragmentation, then more.\n"
    "\n"
    "  --dist D        lengths (docs/fragmentation.md has the log-normal fits; default sharegpt)\n"
    "  --requests N    requests (default 1000; with csv: 0 = every row, the default)\n"
    "  --rate R        arrivals per second, or inf: all at time 0 (default inf)\n"
    "  --pool-pages P  pool size in pages of the page size (default: 16 GiB of KV)\n"
    "  --page-size S   tokens per page (default 16)\n"
    "  --policy X      none, uniform, pyramid, ada, dbudget, pool-pressure (default none)\n"
    "  --budget B      tokens per KV head, window included (128), or share of the prompt (20%);\n"
    "                  pool-pressure: the floor each stream's prompt keeps (default 20%)\n"
    "  --window W      tokens every stream keeps unscored (default: the policy's, 32; dbudget 8)\n"
    "  --profile P     head importance: uniform, skewed (default) or trace:FILE\n"
    "  --seed K        lengths, arrivals and the skewed profile (default 1)\n"
    "  --geometry LxH  layers x KV heads (default 32x8, Llama-3-8B)\n"
    "  --max-batch N   running requests at most (default 256)\n"
    "  --headroom F    pool-pressure frees this share of the pool beyond the need (default 0.02)\n"
    "  --small-stream-tokens T  streams at most T tokens after compression count as small:\n"
    "                  their tail waste is reported apart (default 64)\n"
    "  --out FILE      the per-step series as CSV (--sweep: the summary rows)\n"
    "  --plot FILE     pages in use, fragmentation, batch and queue over time (matplotlib)\n"
    "  --sweep         every page size (default 1,4,8,16,32,64) x policy (default all); the\n"
    "                  pool keeps the bytes of --pool-pages at the first --page-size given\n"
    "                  (16 when none is)\n";

int RunWorkloadCommand(int argc, char** argv) {
  const char* command = "workload";
  auto usage_error = [&](const std::string& message) {
    return UsageError(command, message, kWorkloadUsage);
  };
  std::string dist = "sharegpt", policies, budget = "20%", profile_spec = "skewed", out_path,
              plot_path;
  std::string page_sizes, geometry_spec = "32x8";
  int64_t requests = -1, pool_pages = -1, max_batch = 256, threads = 0, window = -1, seed = 1,
          small = 64;
  double rate = std::numeric_limits<double>::infinity(), headroom = 0.02;
  bool sweep = false;
  for (int i = 1; i < argc; ++i) {
    const char* value = nullptr;
    const absl::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kWorkloadUsage, stdout);
      return 0;
    }
    if (arg == "--sweep") {
      sweep = true;
      continue;
    }
    // Each flag's value goes to one of these: text, a whole number, a number.
    struct Flag {
      const char* name;
      std::string* text;
      int64_t* integer;
      double* number;
    };
    const Flag flags[] = {
        {"dist", &dist, nullptr, nullptr},
        {"policy", &policies, nullptr, nullptr},
        {"budget", &budget, nullptr, nullptr},
        {"profile", &profile_spec, nullptr, nullptr},
        {"page-size", &page_sizes, nullptr, nullptr},
        {"geometry", &geometry_spec, nullptr, nullptr},
        {"out", &out_path, nullptr, nullptr},
        {"plot", &plot_path, nullptr, nullptr},
        {"requests", nullptr, &requests, nullptr},
        {"pool-pages", nullptr, &pool_pages, nullptr},
        {"max-batch", nullptr, &max_batch, nullptr},
        {"threads", nullptr, &threads, nullptr},
        {"window", nullptr, &window, nullptr},
        {"seed", nullptr, &seed, nullptr},
        {"small-stream-tokens", nullptr, &small, nullptr},
        {"rate", nullptr, nullptr, &rate},
        {"headroom", nullptr, nullptr, &headroom},
    };
    const Flag* flag = nullptr;
    for (const Flag& f : flags) {
      if (MatchFlag(argc, argv, &i, f.name, &value)) {
        flag = &f;
        break;
      }
    }
    if (flag == nullptr) return usage_error(absl::StrCat("unknown argument '", arg, "'"));
    std::string* text = flag->text;
    int64_t* integer = flag->integer;
    double* number = flag->number;
    if (value == nullptr) return usage_error(absl::StrCat(arg, " needs a value"));
    if (text != nullptr) {
      *text = value;
    } else if (integer != nullptr ? !absl::SimpleAtoi(value, integer) || *integer < 0
                                  : !absl::SimpleAtod(value, number) || std::isnan(*number)) {
      return usage_error(absl::StrCat(arg, " needs ",
                                      integer != nullptr ? "a whole number >= 0" : "a number",
                                      ", got '", value, "'"));
    }
  }

  // What the flags name.
  WorkloadOptions options;
  const std::vector<absl::string_view> lh = absl::StrSplit(geometry_spec, 'x');
  if (lh.size() != 2 || !absl::SimpleAtoi(lh[0], &options.geometry.num_layers) ||
      !absl::SimpleAtoi(lh[1], &options.geometry.num_kv_heads)) {
    return usage_error(
        absl::StrCat("--geometry needs LAYERSxKV_HEADS, as 32x8; got '", geometry_spec, "'"));
  }
  options.geometry.num_q_heads = options.geometry.num_kv_heads * 4;
  absl::StatusOr<std::vector<int32_t>> sizes =
      ParsePageSizes(page_sizes.empty() ? (sweep ? "1,4,8,16,32,64" : "16") : page_sizes);
  if (!sizes.ok()) return usage_error(std::string(sizes.status().message()));
  if (!sweep && sizes->size() > 1) return usage_error("one --page-size without --sweep");
  options.geometry.page_size = sweep && page_sizes.empty() ? 16 : (*sizes)[0];
  if (absl::Status valid = Validate(options.geometry); !valid.ok()) {
    return usage_error(std::string(valid.message()));
  }
  std::vector<WorkloadPolicy> policy_list;
  for (absl::string_view name : absl::StrSplit(policies, ',', absl::SkipEmpty())) {
    absl::StatusOr<WorkloadPolicy> p = ParseWorkloadPolicy(name);
    if (!p.ok()) return usage_error(std::string(p.status().message()));
    policy_list.push_back(*p);
  }
  if (policy_list.empty()) {
    policy_list =
        sweep ? AllWorkloadPolicies() : std::vector<WorkloadPolicy>{WorkloadPolicy::kNone};
  }
  if (!sweep && policy_list.size() > 1) return usage_error("one --policy without --sweep");
  options.policy = policy_list[0];
  absl::StatusOr<Budget> b = Budget::Parse(budget);
  if (!b.ok()) return usage_error(std::string(b.status().message()));
  options.budget = *b;
  options.max_batch = static_cast<int32_t>(std::min<int64_t>(max_batch, 1 << 30));
  options.pressure_headroom = headroom;
  options.window = static_cast<int32_t>(std::min<int64_t>(window, 1 << 30));
  options.small_stream_tokens = static_cast<int32_t>(std::min<int64_t>(small, 1 << 30));
  if (pool_pages < 0) {
    absl::StatusOr<int64_t> pages = PagesForBudget(options.geometry, 16.0);
    if (!pages.ok()) return Fail(command, pages.status());
    pool_pages = *pages;
  }
  options.pool_pages = pool_pages;

  absl::StatusOr<WorkloadSource> source = ParseWorkloadSource(dist);
  if (!source.ok()) return Fail(command, source.status());
  if (requests < 0) requests = source->kind == WorkloadSource::Kind::kCsv ? 0 : 1000;
  absl::StatusOr<std::vector<WorkloadRequest>> list =
      GenerateRequests(*source, requests, rate, static_cast<uint64_t>(seed));
  if (!list.ok()) return Fail(command, list.status());
  absl::StatusOr<HeadProfile> profile =
      HeadProfile::Parse(profile_spec, options.geometry, static_cast<uint64_t>(seed));
  if (!profile.ok()) return Fail(command, profile.status());
  std::fprintf(
      stderr,
      "headpage workload: %s, %zu requests, rate %g/s, %d layers x %d kv heads, pool %lld pages "
      "x %d tokens = %.2f GiB of bf16 KV, profile %s, budget %s\n",
      source->Name().c_str(), list->size(), rate, options.geometry.num_layers,
      options.geometry.num_kv_heads, static_cast<long long>(options.pool_pages),
      options.geometry.page_size,
      static_cast<double>(options.pool_pages) * static_cast<double>(options.geometry.page_bytes()) /
          kGiB,
      profile->name().c_str(), options.budget.ToString().c_str());

  if (sweep) {
    std::signal(SIGINT, OnInterrupt);
    absl::StatusOr<std::vector<WorkloadSummary>> rows = RunWorkloadSweep(
        *list, *profile, options, *sizes, policy_list, static_cast<int32_t>(threads), &interrupted);
    if (!rows.ok()) return Fail(command, rows.status());
    const std::string csv = WorkloadSummaryCsv(*rows);
    std::fputs(csv.c_str(), stdout);
    if (!out_path.empty()) {
      const absl::Status written = WriteFile(out_path, csv);
      if (!written.ok()) return Fail(command, written);
    }
    return 0;
  }
  absl::StatusOr<WorkloadResult> result = RunWorkload(*list, *profile, options);
  if (!result.ok()) return Fail(command, result.status());
  std::fputs(WorkloadSummaryCsv({result->summary}).c_str(), stdout);
  const std::string series = WorkloadStepsCsv(result->summary, result->steps);
  if (!out_path.empty()) {
    const absl::Status written = WriteFile(out_path, series);
    if (!written.ok()) return Fail(command, written);
  }
  if (!plot_path.empty()) {
    const absl::Status plotted = Plot("plot_workload.py", out_path, series, plot_path);
    if (!plotted.ok()) return Fail(command, plotted);
  }
  return 0;
}

// ---------------------------------------------------------------------------
// Dispatch

struct Subcommand {
  const char* name;
  const char* summary;
  int (*run)(int argc, char** argv);  // argv[0] is the subcommand's name
};

constexpr Subcommand kSubcommands[] = {
    {"walkthrough",
     "one sequence through prefill, decode, fork, eviction and free; the pool after each step",
     &RunWalkthroughCommand},
    {"trace", "trace info FILE: a trace's metadata, shapes and attention concentration",
     &RunTraceCommand},
    {"replay", "one policy and budget over a trace: attention error, lost mass, memory kept",
     &RunReplayCommand},
    {"sweep", "traces x policies x budgets x page sizes on all cores; CSV and a plot",
     &RunSweepCommand},
    {"workload", "a serving workload through one pool: batch, preemptions, fragmentation",
     &RunWorkloadCommand},
};

void PrintUsage(std::FILE* out) {
  std::fputs(
      "usage: headpage <subcommand> [flags]\n"
      "\n"
      "headpage: a head-wise paged KV cache (every layer and KV head has its own length).\n"
      "\n"
      "subcommands:\n",
      out);
  for (const Subcommand& sub : kSubcommands) std::fprintf(out, "  %-12s %s\n", sub.name, sub.summary);
  std::fputs("\n`headpage <subcommand> --help` describes its flags.\n", out);
}

}  // namespace
}  // namespace headpage

int main(int argc, char** argv) {
  using headpage::kSubcommands;
  using headpage::PrintUsage;
  if (argc < 2) {
    PrintUsage(stderr);
    return 2;
  }
  const absl::string_view command = argv[1];
  if (command == "--help" || command == "-h" || command == "help") {
    PrintUsage(stdout);
    return 0;
  }
  for (const auto& sub : kSubcommands) {
    if (command == sub.name) return sub.run(argc - 1, argv + 1);
  }
  std::fprintf(stderr, "headpage: unknown subcommand '%s'\n\n", argv[1]);
  PrintUsage(stderr);
  return 2;
}
