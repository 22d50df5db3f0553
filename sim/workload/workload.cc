// SPDX-License-Identifier: Apache-2.0
#include "sim/workload/workload.h"

#include <cmath>
#include <limits>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "allocator/page_pool.h"
#include "blockmgr/block_manager.h"
#include "core/status.h"
#include "sim/parallel.h"
#include "sim/workload/simulation.h"

namespace headpage {
namespace {

using workload_internal::Ratio;
using workload_internal::Simulation;

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

struct PolicyEntry {
  WorkloadPolicy policy;
  const char* name;
  const char* config;  // PolicyByName's name of the paper's defaults
};
constexpr PolicyEntry kPolicies[] = {
    {WorkloadPolicy::kNone, "none", "full"},
    {WorkloadPolicy::kUniform, "uniform", "uniform-snapkv"},
    {WorkloadPolicy::kPyramid, "pyramid", "pyramid"},
    {WorkloadPolicy::kAda, "ada", "ada-snapkv"},
    {WorkloadPolicy::kDBudget, "dbudget", "dbudget"},
    // The tokens it protects are SnapKV's window.
    {WorkloadPolicy::kPoolPressure, "pool-pressure", "uniform-snapkv"},
    {WorkloadPolicy::kHeadClasses, "head-classes", "duoattention"},
};

const PolicyEntry& EntryOf(WorkloadPolicy policy) {
  for (const PolicyEntry& e : kPolicies) {
    if (e.policy == policy) return e;
  }
  return kPolicies[0];
}

absl::Status ValidateOptions(const WorkloadOptions& o, const HeadProfile& profile) {
  HEADPAGE_RETURN_IF_ERROR(Validate(o.geometry));
  if (o.pool_pages < 1 ||
      o.pool_pages * o.geometry.page_size > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("workload: pool of ", o.pool_pages, " pages of ", o.geometry.page_size,
                     " tokens: need at least one page and at most 2^31 - 1 slots"));
  }
  if (!(o.watermark >= 0.0 && o.watermark < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("workload: watermark ", o.watermark, " is outside [0, 1)"));
  }
  if (o.max_batch < 1 || o.max_prefill_tokens < 1 || !(o.step_s > 0.0 && std::isfinite(o.step_s))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "workload: max_batch (", o.max_batch, ") and max_prefill_tokens (", o.max_prefill_tokens,
        ") must be >= 1 and step_s (", o.step_s, ") a positive number"));
  }
  if (!(o.budget.value > 0) || (o.budget.kind == Budget::Kind::kFraction && o.budget.value > 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("workload: budget ", o.budget.ToString(), " is out of range"));
  }
  if (o.compress_every < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("workload: compress_every ", o.compress_every, " is negative"));
  }
  if (!(o.prefix_share >= 0.0 && o.prefix_share <= 1.0) || o.prefix_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("workload: prefix share ", o.prefix_share,
                                                   " must be in [0, 1] and prefix tokens (",
                                                   o.prefix_tokens, ") >= 0"));
  }
  if (o.compressed_prefix && (o.policy == WorkloadPolicy::kNone ||
                              o.policy == WorkloadPolicy::kPoolPressure)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "workload: a compressed prefix needs a policy that compresses, not ",
        WorkloadPolicyName(o.policy)));
  }
  if (o.window < -1) {
    return absl::InvalidArgumentError(absl::StrCat("workload: window ", o.window, " is negative"));
  }
  if (!(o.pressure_headroom >= 0.0 && o.pressure_headroom < 1.0) || o.small_stream_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "workload: pressure headroom ", o.pressure_headroom,
        " must be in [0, 1) and small_stream_tokens (", o.small_stream_tokens, ") >= 0"));
  }
  if (profile.num_layers() != o.geometry.num_layers ||
      profile.num_kv_heads() != o.geometry.num_kv_heads) {
    return absl::InvalidArgumentError(
        absl::StrCat("workload: the head profile has ", profile.num_layers(), " layers x ",
                     profile.num_kv_heads(), " kv heads; the geometry ", o.geometry.num_layers,
                     " x ", o.geometry.num_kv_heads));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<WorkloadPolicy> ParseWorkloadPolicy(absl::string_view name) {
  for (const PolicyEntry& e : kPolicies) {
    if (name == e.name) return e.policy;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown workload policy '", name,
                   "'; known: none, uniform, pyramid, ada, dbudget, pool-pressure, head-classes"));
}

const char* WorkloadPolicyName(WorkloadPolicy policy) { return EntryOf(policy).name; }

std::vector<WorkloadPolicy> AllWorkloadPolicies() {
  std::vector<WorkloadPolicy> out;
  for (const PolicyEntry& e : kPolicies) {
    if (e.policy != WorkloadPolicy::kHeadClasses) out.push_back(e.policy);
  }
  return out;
}

absl::StatusOr<int64_t> PagesForBudget(const CacheGeometry& geometry, double gib) {
  HEADPAGE_RETURN_IF_ERROR(Validate(geometry));
  if (!(gib > 0.0 && std::isfinite(gib))) {
    return absl::InvalidArgumentError(
        absl::StrCat("pool budget must be a positive number of GiB, got ", gib));
  }
  const double pages = std::floor(gib * kGiB / static_cast<double>(geometry.page_memory_bytes()));
  if (pages < 1.0) {
    return absl::InvalidArgumentError(absl::StrCat("a pool of ", gib, " GiB holds no page of ",
                                                   geometry.page_memory_bytes(), " bytes"));
  }
  if (pages > static_cast<double>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(
        absl::StrCat("a pool of ", gib, " GiB holds ", pages, " pages of ",
                     geometry.page_memory_bytes(), " bytes, more than the 2^31 - 1 page ids"));
  }
  return static_cast<int64_t>(pages);
}

absl::StatusOr<WorkloadResult> RunWorkload(const std::vector<WorkloadRequest>& requests,
                                           const HeadProfile& profile,
                                           const WorkloadOptions& options) {
  HEADPAGE_RETURN_IF_ERROR(ValidateOptions(options, profile));
  for (size_t i = 1; i < requests.size(); ++i) {
    if (requests[i].arrival_s < requests[i - 1].arrival_s) {
      return absl::InvalidArgumentError(absl::StrCat("workload: request ", i,
                                                     " arrives before request ", i - 1,
                                                     "; requests must be in arrival order"));
    }
  }
  for (const WorkloadRequest& r : requests) {
    if (r.prompt_len < 1 || r.output_len < 1 || !(r.arrival_s >= 0 && std::isfinite(r.arrival_s))) {
      return absl::InvalidArgumentError(absl::StrCat("workload: request ", r.id, " has prompt ",
                                                     r.prompt_len, ", output ", r.output_len,
                                                     ", arrival ", r.arrival_s));
    }
  }
  HEADPAGE_ASSIGN_OR_RETURN(PolicyConfig config, PolicyByName(EntryOf(options.policy).config));
  if (options.window >= 0) config.window = options.window;
  if (options.policy == WorkloadPolicy::kHeadClasses) {
    if (options.head_classes == nullptr) {
      return absl::InvalidArgumentError(
          "workload: head-classes needs a head profile (--heads FILE: DuoAttention's TSV, "
          "tools/profile_heads.py or headpage trace heads)");
    }
    config.head_profile = options.head_classes;
    config.head_sparsity = options.head_sparsity;
    HEADPAGE_RETURN_IF_ERROR(Validate(config));
  }
  PagePoolOptions pool_options;
  pool_options.num_pages = options.pool_pages;
  pool_options.watermark = options.watermark;
  HEADPAGE_ASSIGN_OR_RETURN(PagePool pool, PagePool::Create(pool_options));
  auto owned_pool = std::make_unique<PagePool>(std::move(pool));
  HEADPAGE_ASSIGN_OR_RETURN(BlockManager manager,
                            BlockManager::Create(options.geometry, owned_pool.get()));
  Simulation sim(requests, profile, options, config, std::move(owned_pool), std::move(manager));
  return sim.Run();
}

absl::StatusOr<std::vector<WorkloadSummary>> RunWorkloadSweep(
    const std::vector<WorkloadRequest>& requests, const HeadProfile& profile,
    const WorkloadOptions& options, const std::vector<int32_t>& page_sizes,
    const std::vector<WorkloadPolicy>& policies, int32_t threads, const std::atomic<bool>* cancel) {
  if (page_sizes.empty() || policies.empty()) {
    return absl::InvalidArgumentError("workload sweep: no page size or no policy");
  }
  const int64_t pool_slots = options.pool_pages * options.geometry.page_size;
  std::vector<WorkloadOptions> configs;
  for (const int32_t page_size : page_sizes) {
    for (const WorkloadPolicy policy : policies) {
      WorkloadOptions o = options;
      o.geometry.page_size = page_size;
      o.pool_pages = page_size > 0 ? pool_slots / page_size : 0;
      o.policy = policy;
      o.record_steps = false;
      HEADPAGE_RETURN_IF_ERROR(ValidateOptions(o, profile));
      configs.push_back(o);
    }
  }
  std::vector<absl::StatusOr<WorkloadResult>> results(configs.size(),
                                                      absl::UnknownError("not run"));
  ParallelFor(configs.size(), threads, cancel,
              [&](size_t i) { results[i] = RunWorkload(requests, profile, configs[i]); });
  if (cancel != nullptr && cancel->load()) return absl::CancelledError("workload sweep cancelled");
  std::vector<WorkloadSummary> out;
  for (size_t i = 0; i < results.size(); ++i) {
    if (!results[i].ok()) {
      return absl::Status(
          results[i].status().code(),
          absl::StrCat("page size ", configs[i].geometry.page_size, ", policy ",
                       WorkloadPolicyName(configs[i].policy), ": ", results[i].status().message()));
    }
    out.push_back(results[i]->summary);
  }
  return out;
}

std::string WorkloadSummaryCsv(const std::vector<WorkloadSummary>& rows) {
  std::string out =
      "policy,page_size,requests,steps,peak_batch,mean_batch,preemptions,tokens_per_step,"
      "mean_fragmentation,final_fragmentation,completed,rejected,pool_pages,admitted_fragmentation,"
      "small_stream_share,small_stream_waste,kept_fraction,mean_utilization,peak_utilization,"
      "recomputed_tokens,pressure_rounds,evicted_tokens,evicted_fraction,mean_queue_s,p90_queue_s,"
      "simulated_s,wall_s,prefix_hits,prefix_hit_tokens,final_cached_pages\n";
  for (const WorkloadSummary& s : rows) {
    absl::StrAppendFormat(
        &out, "%s,%d,%d,%d,%d,%.3f,%d,%.3f,%.6f,%.6f,%d,%d,%d,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f,",
        s.policy, s.page_size, s.requests, s.steps, s.peak_batch, s.mean_batch, s.preemptions,
        s.tokens_per_step, s.mean_fragmentation, s.final_fragmentation, s.completed, s.rejected,
        s.pool_pages, s.admitted_fragmentation, s.small_stream_share, s.small_stream_waste,
        s.kept_fraction, s.mean_utilization, s.peak_utilization);
    absl::StrAppendFormat(&out, "%d,%d,%d,%.6f,%.3f,%.3f,%.3f,%.3f,", s.recomputed_tokens,
                          s.pressure_rounds, s.evicted_tokens, s.evicted_fraction, s.mean_queue_s,
                          s.p90_queue_s, s.simulated_s, s.wall_s);
    absl::StrAppendFormat(&out, "%d,%d,%d\n", s.prefix_hits, s.prefix_hit_tokens,
                          s.final_cached_pages);
  }
  return out;
}

std::string WorkloadStepsCsv(const WorkloadSummary& summary,
                             const std::vector<WorkloadStep>& steps) {
  std::string out =
      "policy,page_size,step,time_s,running,waiting,admitted,completed,preempted,tokens,evicted_"
      "tokens,"
      "pages_in_use,allocated_slots,used_slots,fragmentation,fragmentation_ratio,utilization\n";
  const double pool_slots = static_cast<double>(summary.pool_pages) * summary.page_size;
  for (const WorkloadStep& s : steps) {
    absl::StrAppendFormat(
        &out, "%s,%d,%d,%.3f,%d,%d,%d,%d,%d,%d,%d,%d,%d,%d,%d,%.6f,%.6f\n", summary.policy,
        summary.page_size, s.step, s.time_s, s.running, s.waiting, s.admitted, s.completed,
        s.preempted, s.tokens, s.evicted_tokens, s.pages_in_use, s.allocated_slots, s.used_slots,
        s.fragmentation(),
        Ratio(static_cast<double>(s.fragmentation()), static_cast<double>(s.allocated_slots)),
        Ratio(static_cast<double>(s.used_slots), pool_slots));
  }
  return out;
}

}  // namespace headpage
