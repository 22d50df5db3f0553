// SPDX-License-Identifier: Apache-2.0
// `headpage workload`: a serving workload's KV memory through one pool, one
// policy and page size, or a sweep over them (sim/workload/workload.h).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/geometry.h"
#include "policy/head_classes.h"
#include "sim/cli/command.h"
#include "sim/workload/head_profile.h"
#include "sim/workload/workload.h"
#include "sim/workload/workload_dist.h"

namespace headpage {
namespace {

constexpr char kUsage[] =
    "usage: headpage workload [--dist sharegpt|arxiv|long|fixed:P,O|csv:FILE] [--requests N]\n"
    "                         [--rate R] [--pool-pages P] [--page-size S] [--policy X]\n"
    "                         [--budget B] [--profile uniform|skewed|trace:FILE] [--seed K]\n"
    "                         [--window W] [--geometry LxH] [--max-batch N] [--headroom F]\n"
    "                         [--small-stream-tokens T] [--compress-every N]\n"
    "                         [--prefix-share F --prefix-tokens N [--prefix-cache]\n"
    "                         [--compressed-prefix]]\n"
    "                         [--out metrics.csv] [--plot memory.png]\n"
    "       headpage workload --sweep [--policy X1,X2,...] [--page-size S1,S2,...] [--threads N] "
    "...\n"
    "\n"
    "Simulates a serving engine's KV memory with the real block manager on a pool of page\n"
    "ids (no K/V bytes): requests arrive (Poisson at R per second, or all at once with\n"
    "inf, or at a CSV's times), a vLLM-like scheduler admits them first come first served\n"
    "above a 1% watermark, decodes one token per running request per step, and preempts\n"
    "the newest request (recompute) when a step cannot get pages. Each request is\n"
    "compressed at admission by the policy, from the head profile's per-head importance:\n"
    "none, uniform, pyramid, ada, dbudget, pool-pressure (evict the least important\n"
    "tokens of all running requests, down to the budget, instead of preempting), or\n"
    "head-classes (retrieval heads keep the prompt, streaming heads 64 sinks and 256\n"
    "recent tokens, as duoattention; --heads gives the classes).\n"
    "Prints one CSV row per run: policy,page_size,requests,steps,peak_batch,mean_batch,\n"
    "preemptions,tokens_per_step,mean_fragmentation,final_fragmentation, then more.\n"
    "\n"
    "  --dist D        lengths (docs/fragmentation.md has the log-normal fits; default sharegpt)\n"
    "  --requests N    requests (default 1000; with csv: 0 = every row, the default); a run\n"
    "                  whose requests and pool would take over half the machine's memory\n"
    "                  is refused before it starts\n"
    "  --rate R        arrivals per second, or inf: all at time 0 (default inf)\n"
    "  --pool-pages P  pool size in pages of the page size (default: 16 GiB of KV)\n"
    "  --page-size S   tokens per page (default 16)\n"
    "  --policy X      none, uniform, pyramid, ada, dbudget, pool-pressure, head-classes\n"
    "                  (default none)\n"
    "  --budget B      tokens per KV head, window included (128), or share of the prompt (20%);\n"
    "                  pool-pressure: the floor each stream's prompt keeps (default 20%)\n"
    "  --window W      tokens every stream keeps unscored (default: the policy's, 32; dbudget 8;\n"
    "                  head-classes: the streaming heads' recent tokens, 256)\n"
    "  --profile P     head importance: uniform, skewed (default) or trace:FILE\n"
    "  --heads FILE    head-classes: the retrieval/streaming profile (DuoAttention's TSV,\n"
    "                  tools/profile_heads.py, headpage trace heads); a sweep adds the policy\n"
    "  --sparsity S    head-classes: the share of heads that stream (0.5; -1: the profile's)\n"
    "  --seed K        lengths, arrivals and the skewed profile (default 1)\n"
    "  --geometry LxH  layers x KV heads (default 32x8, Llama-3-8B)\n"
    "  --max-batch N   running requests at most (default 256)\n"
    "  --headroom F    pool-pressure frees this share of the pool beyond the need (default 0.02)\n"
    "  --compress-every N  uniform, pyramid, ada, dbudget: compress each request again after\n"
    "                  every N generated tokens, to the budget of the tokens it has seen\n"
    "                  (default 0: at admission only)\n"
    "  --prefix-share F  share of requests whose prompts start with one common prefix\n"
    "                  (a system prompt) of --prefix-tokens N tokens (default 0)\n"
    "  --prefix-cache  cache full prompt blocks and start requests on the cached ones; a\n"
    "                  compressing policy then keeps a request's cached prefix whole and\n"
    "                  compresses the rest of its prompt to the budget\n"
    "  --compressed-prefix  the common prefix is compressed once by the policy and every\n"
    "                  request with it starts on that; its own tokens stay whole (the\n"
    "                  serving engine's compressed_prefix)\n"
    "  --small-stream-tokens T  streams at most T tokens after compression count as small:\n"
    "                  their tail waste is reported apart (default 64)\n"
    "  --out FILE      the per-step series as CSV (--sweep: the summary rows)\n"
    "  --plot FILE     pages in use, fragmentation, batch and queue over time (matplotlib)\n"
    "  --sweep         every page size (default 1,4,8,16,32,64) x policy (default all); the\n"
    "                  pool keeps the bytes of --pool-pages at the first --page-size given\n"
    "                  (16 when none is)\n";

}  // namespace

int RunWorkloadCommand(int argc, char** argv) {
  const char* command = "workload";
  auto usage_error = [&](absl::string_view message) {
    return UsageError(command, message, kUsage);
  };
  std::string heads_path;
  double sparsity = 0.5;
  std::string dist = "sharegpt", policies, budget = "20%", profile_spec = "skewed", out_path,
              plot_path;
  // A list, so that a --page-size given empty is told apart from none given.
  std::vector<std::string> page_size_args;
  std::string geometry_spec = "32x8";
  int64_t requests = -1, pool_pages = -1, max_batch = 256, threads = 0, window = -1, seed = 1,
          small = 64, compress_every = 0;
  double rate = std::numeric_limits<double>::infinity(), headroom = 0.02, prefix_share = 0.0;
  int64_t prefix_tokens = 0;
  bool sweep = false, prefix_cache = false, compressed_prefix = false;
  FlagSet flags;
  flags.Switch("sweep", &sweep);
  flags.Text("dist", &dist);
  flags.Text("policy", &policies);
  flags.Text("budget", &budget);
  flags.Text("profile", &profile_spec);
  flags.Text("heads", &heads_path);
  flags.Number("sparsity", &sparsity);
  flags.TextList("page-size", &page_size_args);
  flags.Text("geometry", &geometry_spec);
  flags.Text("out", &out_path);
  flags.Text("plot", &plot_path);
  flags.Int("requests", &requests, /*min=*/0);
  flags.Int("pool-pages", &pool_pages, /*min=*/0);
  flags.Int("max-batch", &max_batch, /*min=*/0);
  flags.Int("threads", &threads, /*min=*/0);
  flags.Int("window", &window, /*min=*/0);
  flags.Int("seed", &seed, /*min=*/0);
  flags.Int("small-stream-tokens", &small, /*min=*/0);
  flags.Number("rate", &rate);
  flags.Number("headroom", &headroom);
  flags.Int("compress-every", &compress_every, /*min=*/0);
  flags.Number("prefix-share", &prefix_share);
  flags.Int("prefix-tokens", &prefix_tokens, /*min=*/0);
  flags.Switch("prefix-cache", &prefix_cache);
  flags.Switch("compressed-prefix", &compressed_prefix);
  if (const std::optional<int> exit = ParseFlags(flags, argc, argv, command, kUsage)) return *exit;

  // What the flags name.
  WorkloadOptions options;
  const std::vector<absl::string_view> lh = absl::StrSplit(geometry_spec, 'x');
  if (lh.size() != 2 || !absl::SimpleAtoi(lh[0], &options.geometry.num_layers) ||
      !absl::SimpleAtoi(lh[1], &options.geometry.num_kv_heads)) {
    return usage_error(
        absl::StrCat("--geometry needs LAYERSxKV_HEADS, as 32x8; got '", geometry_spec, "'"));
  }
  options.geometry.num_q_heads = options.geometry.num_kv_heads * 4;
  if (page_size_args.size() > 1) return usage_error("give --page-size once (a list: S1,S2,...)");
  const bool page_size_given = !page_size_args.empty();
  absl::StatusOr<std::vector<int32_t>> sizes =
      ParsePageSizes(page_size_given ? page_size_args[0] : (sweep ? "1,4,8,16,32,64" : "16"));
  if (!sizes.ok()) return usage_error(sizes.status().message());
  if (!sweep && sizes->size() > 1) return usage_error("one --page-size without --sweep");
  options.geometry.page_size = sweep && !page_size_given ? 16 : (*sizes)[0];
  if (absl::Status valid = Validate(options.geometry); !valid.ok()) {
    return usage_error(valid.message());
  }
  std::vector<WorkloadPolicy> policy_list;
  for (absl::string_view name : absl::StrSplit(policies, ',', absl::SkipEmpty())) {
    absl::StatusOr<WorkloadPolicy> p = ParseWorkloadPolicy(name);
    if (!p.ok()) return usage_error(p.status().message());
    policy_list.push_back(*p);
  }
  if (policy_list.empty()) {
    policy_list =
        sweep ? AllWorkloadPolicies() : std::vector<WorkloadPolicy>{WorkloadPolicy::kNone};
  }
  if (!sweep && policy_list.size() > 1) return usage_error("one --policy without --sweep");
  options.policy = policy_list[0];
  if (!heads_path.empty()) {
    absl::StatusOr<policy::HeadClasses> heads = policy::HeadClasses::Load(heads_path);
    if (!heads.ok()) return Fail(command, heads.status());
    options.head_classes = std::make_shared<const policy::HeadClasses>(*std::move(heads));
    options.head_sparsity = sparsity;
    if (sweep && std::find(policy_list.begin(), policy_list.end(),
                           WorkloadPolicy::kHeadClasses) == policy_list.end()) {
      policy_list.push_back(WorkloadPolicy::kHeadClasses);
    }
  }
  absl::StatusOr<Budget> b = Budget::Parse(budget);
  if (!b.ok()) return usage_error(b.status().message());
  options.budget = *b;
  options.max_batch = static_cast<int32_t>(std::min<int64_t>(max_batch, 1 << 30));
  options.pressure_headroom = headroom;
  options.compress_every = static_cast<int32_t>(std::min<int64_t>(compress_every, 1 << 30));
  if (!(prefix_share >= 0.0 && prefix_share <= 1.0)) {
    return usage_error(absl::StrCat("--prefix-share ", prefix_share, " is outside [0, 1]"));
  }
  options.prefix_share = prefix_share;
  options.prefix_tokens = static_cast<int32_t>(std::min<int64_t>(prefix_tokens, 1 << 30));
  options.prefix_cache = prefix_cache;
  options.compressed_prefix = compressed_prefix;
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
  // What the run will hold, before anything is allocated: the request list,
  // and for each run in flight at once its per-request state and its pool's
  // per-page bookkeeping (refcount, free stack, retired references,
  // block-table entry). A sweep keeps the pool's bytes across page sizes, so
  // its smallest page size has the most pages, and runs `threads` configs at
  // a time. Refused when it would not fit in half of this machine's memory,
  // rather than dying in the middle.
  const int64_t pool_slots = options.pool_pages * options.geometry.page_size;
  const int32_t smallest_page = sweep ? *std::min_element(sizes->begin(), sizes->end())
                                      : options.geometry.page_size;
  const double most_pages = static_cast<double>(pool_slots / std::max(smallest_page, 1));
  const int64_t runs = sweep ? static_cast<int64_t>(sizes->size() * policy_list.size()) : 1;
  const int64_t cores = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const double concurrent =
      static_cast<double>(std::min(runs, threads > 0 ? threads : cores));
  const double per_run = static_cast<double>(requests) * sizeof(WorkloadRequest) + most_pages * 16.0;
  const double needed = static_cast<double>(requests) * sizeof(WorkloadRequest) + concurrent * per_run;
  const double machine = static_cast<double>(sysconf(_SC_PHYS_PAGES)) *
                         static_cast<double>(sysconf(_SC_PAGE_SIZE));
  if (machine > 0 && needed > machine / 2) {
    return usage_error(absl::StrFormat(
        "%lld requests over a pool of %.0f pages (%.0f runs at once) need about %.1f GiB of host "
        "memory; this machine has %.1f GiB (at most half is used)",
        static_cast<long long>(requests), most_pages, concurrent, needed / kGiB, machine / kGiB));
  }
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
      static_cast<double>(options.pool_pages) *
          static_cast<double>(options.geometry.page_memory_bytes()) / kGiB,
      profile->name().c_str(), options.budget.ToString().c_str());

  if (sweep) {
    const std::atomic<bool>* interrupted = StopOnInterrupt();
    absl::StatusOr<std::vector<WorkloadSummary>> rows = RunWorkloadSweep(
        *list, *profile, options, *sizes, policy_list, static_cast<int32_t>(threads), interrupted);
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

}  // namespace headpage
