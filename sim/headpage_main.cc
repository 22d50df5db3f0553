// SPDX-License-Identifier: Apache-2.0
// The `headpage` command-line tool. The first argument names a subcommand; each
// one parses its own flags and calls into the headpage_sim library.
//
// Exit status: 0 on success, 1 when the work itself fails (the error is printed),
// 2 for a usage error (unknown subcommand, bad flag).
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/geometry.h"
#include "sim/walkthrough.h"

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
