// SPDX-License-Identifier: Apache-2.0
// `headpage walkthrough`: one sequence through the block manager, the pool after
// each step (sim/walkthrough/walkthrough.h).
#include <cstdint>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "core/geometry.h"
#include "sim/cli/command.h"
#include "sim/walkthrough/walkthrough.h"
#include "sim/workload/workload.h"

namespace headpage {
namespace {

constexpr char kCommand[] = "walkthrough";
constexpr char kUsage[] =
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

}  // namespace

int RunWalkthroughCommand(int argc, char** argv) {
  WalkthroughOptions options;
  int64_t page_size = options.geometry.page_size;
  FlagSet flags;
  flags.Int("page-size", &page_size, /*min=*/1);
  flags.Int("prefill", &options.prefill_tokens, /*min=*/0);
  flags.Int("decode", &options.decode_steps, /*min=*/0);
  flags.PositiveNumber("pool-gib", &options.pool_gib);
  if (const std::optional<int> exit = ParseFlags(flags, argc, argv, kCommand, kUsage)) {
    return *exit;
  }
  if (page_size > (1 << 16)) {
    return UsageError(kCommand, absl::StrCat("--page-size ", page_size, " is above 65536"), kUsage);
  }
  options.geometry = CacheGeometry::Llama3_8B(DType::kBF16, static_cast<int32_t>(page_size));

  const CacheGeometry& g = options.geometry;
  const absl::StatusOr<int64_t> num_pages = PagesForBudget(g, options.pool_gib);
  if (!num_pages.ok()) return Fail(kCommand, num_pages.status());
  std::printf("headpage walkthrough: Llama-3-8B %s\n", g.DebugString().c_str());
  std::printf("  %d streams a sequence; a page holds %d tokens of one stream = %zu bytes\n",
              g.streams_per_sequence(), g.page_size, g.page_memory_bytes());
  std::printf("  pool: %lld pages = %.3f GiB of KV (budget %g GiB); no arena: bookkeeping only\n\n",
              static_cast<long long>(*num_pages),
              static_cast<double>(*num_pages) * static_cast<double>(g.page_memory_bytes()) / kGiB,
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
              static_cast<double>(peak_pages) * static_cast<double>(g.page_memory_bytes()) / kGiB);
  return 0;
}

}  // namespace headpage
