// SPDX-License-Identifier: Apache-2.0
#include "sim/workload.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <limits>
#include <memory>
#include <numeric>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "allocator/page_pool.h"
#include "blockmgr/block_manager.h"
#include "policy/budget.h"
#include "core/status.h"
#include "sim/parallel.h"
#include "sim/walkthrough.h"

namespace headpage {
namespace {

constexpr int32_t kR = HeadProfile::kResolution;
constexpr int64_t kMaxSteps = int64_t{1} << 32;  // a bug guard, never a real limit

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
};

const PolicyEntry& EntryOf(WorkloadPolicy policy) {
  for (const PolicyEntry& e : kPolicies) {
    if (e.policy == policy) return e;
  }
  return kPolicies[0];
}

double Ratio(double a, double b) { return b > 0 ? a / b : 0.0; }

// How each stream of a request keeps its prompt at admission: the policy's
// budget allocation, computed on the head profile's curves where it needs
// scores (see workload.h).
class Compressor {
 public:
  Compressor(const HeadProfile& profile, const CacheGeometry& geometry, WorkloadPolicy policy,
             const Budget& budget, const PolicyConfig& config)
      : profile_(profile), geometry_(geometry), policy_(policy), budget_(budget), config_(config) {
    positions_.resize(kR);
    std::iota(positions_.begin(), positions_.end(), 0);
  }

  // The prompt tokens each stream ([layer][kv_head]) keeps of a prompt of
  // `prompt_len` tokens.
  absl::Status PromptKept(int32_t prompt_len, std::vector<int32_t>* kept) {
    const int32_t heads = geometry_.num_kv_heads, layers = geometry_.num_layers;
    kept->assign(static_cast<size_t>(geometry_.streams_per_sequence()), prompt_len);
    const int32_t w = config_.window;
    if (policy_ == WorkloadPolicy::kNone || policy_ == WorkloadPolicy::kPoolPressure ||
        prompt_len <= w + 1) {
      return absl::OkStatus();
    }
    // A capacity under the window would be an error for the allocators: the
    // window (plus one token) is always kept.
    const int32_t capacity = std::max(budget_.CapacityFor(prompt_len), w + 1);
    if (capacity >= prompt_len && policy_ != WorkloadPolicy::kDBudget) return absl::OkStatus();
    const int32_t candidates = prompt_len - w, selectable = capacity - w;
    for (int32_t l = 0; l < layers; ++l) {
      int32_t* layer_kept = kept->data() + static_cast<size_t>(l) * heads;
      switch (policy_) {
        case WorkloadPolicy::kUniform:
          std::fill(layer_kept, layer_kept + heads, capacity);
          break;
        case WorkloadPolicy::kPyramid: {
          if (l == 0) {
            HEADPAGE_ASSIGN_OR_RETURN(
                pyramid_,
                policy::PyramidCapacities(layers, capacity, w, prompt_len, config_.pyramid_beta));
          }
          std::fill(layer_kept, layer_kept + heads, std::clamp(pyramid_[l], w, prompt_len));
          break;
        }
        case WorkloadPolicy::kAda: {
          // The layer's Ada allocation at the profile's resolution, as shares
          // of its budget, handed out over the request's candidates.
          const auto reference = static_cast<int32_t>(std::clamp<int64_t>(
              std::llround(static_cast<double>(selectable) * kR / candidates), 1, kR));
          HEADPAGE_ASSIGN_OR_RETURN(const std::vector<double>* shares, AdaShares(l, reference));
          const std::vector<uint32_t> lens(static_cast<size_t>(heads),
                                           static_cast<uint32_t>(candidates));
          const std::vector<int32_t> split = ProportionalKeptCounts(
              *shares, lens, static_cast<int64_t>(selectable) * heads, /*min_kept=*/0);
          for (int32_t h = 0; h < heads; ++h) layer_kept[h] = w + split[h];
          break;
        }
        case WorkloadPolicy::kDBudget: {
          HEADPAGE_ASSIGN_OR_RETURN(const double cut, DBudgetCut(l));
          const auto dropped = static_cast<int32_t>(std::llround(cut * candidates));
          std::fill(layer_kept, layer_kept + heads, prompt_len - dropped);
          break;
        }
        case WorkloadPolicy::kNone:
        case WorkloadPolicy::kPoolPressure:
          break;
      }
    }
    return absl::OkStatus();
  }

 private:
  // The profile's streams of layer `layer`, as StreamScores at its resolution.
  std::vector<policy::StreamScores> ReferenceStreams(int32_t layer) {
    const int32_t heads = geometry_.num_kv_heads;
    if (reference_scores_.empty()) {
      reference_scores_.resize(static_cast<size_t>(geometry_.streams_per_sequence()));
      for (int32_t st = 0; st < geometry_.streams_per_sequence(); ++st) {
        const absl::Span<const double> mass = profile_.BinMass(st);
        reference_scores_[st].assign(mass.begin(), mass.end());
      }
    }
    std::vector<policy::StreamScores> streams(static_cast<size_t>(heads));
    for (int32_t h = 0; h < heads; ++h) {
      streams[h] = policy::StreamScores{reference_scores_[layer * heads + h], positions_, {}};
    }
    return streams;
  }

  absl::StatusOr<const std::vector<double>*> AdaShares(int32_t layer, int32_t reference) {
    std::vector<double>& shares = ada_memo_[static_cast<int64_t>(layer) * (kR + 1) + reference];
    if (shares.empty()) {
      HEADPAGE_ASSIGN_OR_RETURN(const std::vector<int32_t> kept,
                                policy::AdaKept(ReferenceStreams(layer), reference, config_.ada));
      shares.assign(kept.begin(), kept.end());
    }
    return &shares;
  }

  absl::StatusOr<double> DBudgetCut(int32_t layer) {
    if (dbudget_cut_.empty()) dbudget_cut_.assign(static_cast<size_t>(geometry_.num_layers), -1.0);
    if (dbudget_cut_[layer] < 0) {
      const std::vector<policy::StreamScores> streams = ReferenceStreams(layer);
      // The last query's attention: the same curve (one row, a group of one).
      std::vector<absl::Span<const float>> rows;
      for (const policy::StreamScores& s : streams) rows.push_back(s.scores);
      HEADPAGE_ASSIGN_OR_RETURN(const std::vector<int32_t> kept,
                                policy::DBudgetKept(streams, rows, 1, config_.dbudget_threshold));
      dbudget_cut_[layer] = 1.0 - static_cast<double>(kept[0]) / kR;
    }
    return dbudget_cut_[layer];
  }

  const HeadProfile& profile_;
  CacheGeometry geometry_;
  WorkloadPolicy policy_;
  Budget budget_;
  PolicyConfig config_;
  std::vector<int32_t> positions_;                    // 0..kR-1
  std::vector<std::vector<float>> reference_scores_;  // [stream][kR]
  std::vector<int32_t> pyramid_;
  absl::flat_hash_map<int64_t, std::vector<double>> ada_memo_;  // (layer, reference) -> kept
  std::vector<double> dbudget_cut_;                             // [layer], -1: not yet
};

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

// One run: the pool, the manager, the queues and the running tallies.
class Simulation {
 public:
  Simulation(const std::vector<WorkloadRequest>& requests, const HeadProfile& profile,
             const WorkloadOptions& options, const PolicyConfig& config,
             std::unique_ptr<PagePool> pool, BlockManager manager)
      : requests_(requests),
        profile_(profile),
        o_(options),
        window_(config.window),
        pool_(std::move(pool)),
        manager_(std::move(manager)),
        compressor_(profile, options.geometry, options.policy, options.budget, config),
        streams_(options.geometry.streams_per_sequence()),
        page_size_(options.geometry.page_size),
        generated_(requests.size(), 0),
        first_admit_s_(requests.size(), -1.0) {}

  absl::StatusOr<WorkloadResult> Run();

 private:
  struct Running {
    size_t request;
    SeqId seq;
    bool finished = false;
  };

  absl::Status Decode(WorkloadStep* step);
  absl::Status Admit(double now, WorkloadStep* step);
  absl::Status Complete(WorkloadStep* step);
  absl::Status Preempt(size_t index, WorkloadStep* step);
  // Pool-pressure: evicts until `pages_to_free` pages are back or the floors
  // stop it; returns the pages freed.
  absl::StatusOr<int64_t> RelievePressure(int64_t pages_to_free, WorkloadStep* step);
  int64_t PromptPages(int64_t tokens) const { return streams_ * PagesFor(tokens, page_size_); }

  const std::vector<WorkloadRequest>& requests_;
  const HeadProfile& profile_;
  const WorkloadOptions& o_;
  const int32_t window_;
  std::unique_ptr<PagePool> pool_;
  BlockManager manager_;
  Compressor compressor_;
  const int32_t streams_;
  const int32_t page_size_;

  std::deque<size_t> waiting_;
  std::vector<Running> running_;
  std::vector<int32_t> generated_;     // [request] decode tokens so far
  std::vector<double> first_admit_s_;  // [request], -1: never admitted
  PageCopies copies_;                  // never any: the simulator does not fork
  CompactionPlan plan_;
  std::vector<int32_t> kept_;
  std::vector<int32_t> layer_kept_;

  WorkloadSummary sum_;
  // Tallies for the ratios of the summary.
  double completed_alloc_ = 0, completed_waste_ = 0;
  double admitted_alloc_ = 0, admitted_waste_ = 0, small_alloc_ = 0, small_waste_ = 0;
  int64_t admitted_streams_ = 0, small_streams_ = 0;
  double prompt_tokens_ = 0, prompt_kept_ = 0;
};

absl::StatusOr<WorkloadResult> Simulation::Run() {
  const auto start = std::chrono::steady_clock::now();
  WorkloadResult result;
  sum_.policy = EntryOf(o_.policy).name;
  sum_.page_size = page_size_;
  sum_.requests = static_cast<int64_t>(requests_.size());
  sum_.pool_pages = o_.pool_pages;
  const int64_t watermark_pages = pool_->Stats().watermark_pages;
  const double pool_slots = static_cast<double>(o_.pool_pages) * page_size_;
  double batch_sum = 0, util_sum = 0, frag_sum = 0, alloc_sum = 0;
  int64_t tokens = 0;
  size_t next_arrival = 0;
  double now = 0.0;
  for (int64_t step_index = 0;; ++step_index) {
    if (step_index >= kMaxSteps) {
      return absl::InternalError("workload: the simulation does not end");
    }
    for (; next_arrival < requests_.size() && requests_[next_arrival].arrival_s <= now;
         ++next_arrival) {
      const WorkloadRequest& r = requests_[next_arrival];
      // Rejected: even recomputed at its full length it would never be admitted.
      if (PromptPages(static_cast<int64_t>(r.prompt_len) + r.output_len) >
          o_.pool_pages - watermark_pages) {
        ++sum_.rejected;
      } else {
        waiting_.push_back(next_arrival);
      }
    }
    if (running_.empty() && waiting_.empty()) {
      if (next_arrival == requests_.size()) break;
      now = requests_[next_arrival].arrival_s;
      --step_index;  // an idle gap is no step
      continue;
    }
    WorkloadStep step;
    step.step = step_index;
    step.time_s = now;
    HEADPAGE_RETURN_IF_ERROR(Decode(&step));
    HEADPAGE_RETURN_IF_ERROR(Admit(now, &step));
    step.running = static_cast<int32_t>(running_.size());
    // The memory the step's batch holds, before its finished requests go.
    const BlockManagerStats stats = manager_.Stats();
    step.pages_in_use = stats.pages_in_use;
    step.allocated_slots = stats.allocated_slots;
    step.used_slots = stats.used_slots;
    HEADPAGE_RETURN_IF_ERROR(Complete(&step));
    step.waiting = static_cast<int32_t>(waiting_.size());
    if (o_.check_invariants) {
      const absl::Status invariants = manager_.CheckInvariants();
      if (!invariants.ok()) {
        return absl::InternalError(
            absl::StrCat("workload step ", step_index, ": ", invariants.message()));
      }
    }
    sum_.steps = step_index + 1;
    sum_.peak_batch = std::max(sum_.peak_batch, step.running);
    batch_sum += step.running;
    tokens += step.tokens;
    frag_sum += static_cast<double>(step.fragmentation());
    alloc_sum += static_cast<double>(step.allocated_slots);
    const double util = static_cast<double>(step.used_slots) / pool_slots;
    util_sum += util;
    sum_.peak_utilization = std::max(sum_.peak_utilization, util);
    if (o_.record_steps) result.steps.push_back(step);
    now += o_.step_s;
  }
  const auto steps = static_cast<double>(std::max<int64_t>(sum_.steps, 1));
  sum_.mean_batch = batch_sum / steps;
  sum_.tokens_per_step = static_cast<double>(tokens) / steps;
  sum_.mean_utilization = util_sum / steps;
  sum_.mean_fragmentation = Ratio(frag_sum, alloc_sum);
  sum_.final_fragmentation = Ratio(completed_waste_, completed_alloc_);
  sum_.admitted_fragmentation = Ratio(admitted_waste_, admitted_alloc_);
  sum_.small_stream_share =
      Ratio(static_cast<double>(small_streams_), static_cast<double>(admitted_streams_));
  sum_.small_stream_waste = Ratio(small_waste_, small_alloc_);
  sum_.kept_fraction = Ratio(prompt_kept_, prompt_tokens_);
  sum_.evicted_fraction = Ratio(static_cast<double>(sum_.evicted_tokens), prompt_tokens_);
  sum_.simulated_s = now;
  std::vector<double> delays;
  for (size_t i = 0; i < requests_.size(); ++i) {
    if (first_admit_s_[i] >= 0) delays.push_back(first_admit_s_[i] - requests_[i].arrival_s);
  }
  if (!delays.empty()) {
    sum_.mean_queue_s =
        std::accumulate(delays.begin(), delays.end(), 0.0) / static_cast<double>(delays.size());
    const size_t p90 =
        std::min(delays.size() - 1, static_cast<size_t>(0.9 * static_cast<double>(delays.size())));
    std::nth_element(delays.begin(), delays.begin() + p90, delays.end());
    sum_.p90_queue_s = delays[p90];
  }
  sum_.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.summary = sum_;
  return result;
}

absl::Status Simulation::Decode(WorkloadStep* step) {
  bool can_relieve = o_.policy == WorkloadPolicy::kPoolPressure;
  for (size_t i = 0; i < running_.size();) {
    Running& r = running_[i];
    const absl::Status status = manager_.ReserveWithoutSlots(r.seq, 1, &copies_);
    if (status.ok()) {
      ++step->tokens;
      r.finished = ++generated_[r.request] >= requests_[r.request].output_len;
      ++i;
      continue;
    }
    if (!absl::IsResourceExhausted(status)) return status;
    if (can_relieve) {
      // What the rest of the step needs, the watermark and the headroom.
      int64_t need = 0;
      for (size_t j = i; j < running_.size(); ++j) {
        HEADPAGE_ASSIGN_OR_RETURN(const int64_t pages, manager_.PagesNeeded(running_[j].seq, 1));
        need += pages;
      }
      const int64_t target =
          need + pool_->Stats().watermark_pages +
          static_cast<int64_t>(o_.pressure_headroom * static_cast<double>(o_.pool_pages));
      HEADPAGE_ASSIGN_OR_RETURN(const int64_t freed,
                                RelievePressure(target - pool_->free_pages(), step));
      can_relieve = freed > 0;  // the floors are reached: preempt from now on
      continue;
    }
    // vLLM: preempt the newest running request, which may be this one.
    const size_t victim = running_.size() - 1;
    HEADPAGE_RETURN_IF_ERROR(Preempt(victim, step));
    if (victim == i) break;
  }
  return absl::OkStatus();
}

absl::Status Simulation::Preempt(size_t index, WorkloadStep* step) {
  HEADPAGE_RETURN_IF_ERROR(manager_.Free(running_[index].seq));
  waiting_.push_front(running_[index].request);
  running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(index));
  ++step->preempted;
  ++sum_.preemptions;
  return absl::OkStatus();
}

absl::Status Simulation::Admit(double now, WorkloadStep* step) {
  int64_t prefill_tokens = 0;
  const int32_t heads = o_.geometry.num_kv_heads;
  while (!waiting_.empty() && static_cast<int32_t>(running_.size()) < o_.max_batch) {
    const size_t q = waiting_.front();
    const WorkloadRequest& r = requests_[q];
    const int32_t generated = generated_[q];
    const int64_t tokens = static_cast<int64_t>(r.prompt_len) + generated;
    if (step->admitted > 0 && prefill_tokens + tokens > o_.max_prefill_tokens) break;
    if (!pool_->CanAllocate(PromptPages(tokens))) break;
    waiting_.pop_front();
    const SeqId seq = manager_.AddSequence();
    HEADPAGE_RETURN_IF_ERROR(manager_.ReserveWithoutSlots(seq, tokens, &copies_));
    // Compression: the prompt as the policy keeps it, every generated token.
    HEADPAGE_RETURN_IF_ERROR(compressor_.PromptKept(r.prompt_len, &kept_));
    bool evicted = false;
    for (int32_t l = 0; l < o_.geometry.num_layers; ++l) {
      layer_kept_.assign(kept_.begin() + static_cast<ptrdiff_t>(l) * heads,
                         kept_.begin() + static_cast<ptrdiff_t>(l + 1) * heads);
      bool shrinks = false;
      for (int32_t& k : layer_kept_) {
        shrinks |= k < r.prompt_len;
        k += generated;
      }
      if (!shrinks) continue;
      HEADPAGE_RETURN_IF_ERROR(manager_.Evict(seq, l, layer_kept_, &plan_));
      evicted = true;
    }
    if (evicted) {
      manager_.ReleaseRetiredPages();
      plan_.Clear();
    }
    HEADPAGE_ASSIGN_OR_RETURN(const absl::Span<const uint32_t> lens, manager_.StreamLengths(seq));
    for (const uint32_t len : lens) {
      const int64_t alloc = PagesFor(len, page_size_) * page_size_;
      admitted_alloc_ += static_cast<double>(alloc);
      admitted_waste_ += static_cast<double>(alloc - len);
      prompt_kept_ += len - generated;
      if (static_cast<int64_t>(len) <= o_.small_stream_tokens) {
        ++small_streams_;
        small_alloc_ += static_cast<double>(alloc);
        small_waste_ += static_cast<double>(alloc - len);
      }
    }
    admitted_streams_ += streams_;
    prompt_tokens_ += static_cast<double>(r.prompt_len) * streams_;
    if (generated > 0) sum_.recomputed_tokens += tokens;
    if (first_admit_s_[q] < 0) first_admit_s_[q] = now;
    running_.push_back({q, seq});
    prefill_tokens += tokens;
    ++step->admitted;
  }
  return absl::OkStatus();
}

absl::Status Simulation::Complete(WorkloadStep* step) {
  for (const Running& r : running_) {
    if (!r.finished) continue;
    HEADPAGE_ASSIGN_OR_RETURN(const absl::Span<const uint32_t> lens, manager_.StreamLengths(r.seq));
    for (const uint32_t len : lens) {
      const int64_t alloc = PagesFor(len, page_size_) * page_size_;
      completed_alloc_ += static_cast<double>(alloc);
      completed_waste_ += static_cast<double>(alloc - len);
    }
    HEADPAGE_RETURN_IF_ERROR(manager_.Free(r.seq));
    ++step->completed;
    ++sum_.completed;
  }
  running_.erase(
      std::remove_if(running_.begin(), running_.end(), [](const Running& r) { return r.finished; }),
      running_.end());
  return absl::OkStatus();
}

absl::StatusOr<int64_t> Simulation::RelievePressure(int64_t pages_to_free, WorkloadStep* step) {
  if (pages_to_free <= 0) return 0;
  // GlobalKept's input: per stream that can give pages back, one element per
  // page it can empty (its least important candidates first, in groups of
  // tokens that each empty exactly one page: the tail page's tokens, then whole
  // pages), one for the rest of its candidates, and one protected element for
  // the window and the generated tokens. Elements evicted = pages freed.
  struct Source {
    size_t running;
    int32_t stream;
    int32_t first_group;  // tokens of the first group (the tail page's)
  };
  std::vector<Source> sources;
  std::vector<float> scores;
  std::vector<size_t> offsets{0};
  std::vector<int32_t> floors;
  for (size_t i = 0; i < running_.size(); ++i) {
    const WorkloadRequest& r = requests_[running_[i].request];
    HEADPAGE_ASSIGN_OR_RETURN(const absl::Span<const uint32_t> lens,
                              manager_.StreamLengths(running_[i].seq));
    // Ranked candidates at admission, and how many of them the floor keeps:
    // the prompt keeps at least its budget, window included.
    const int64_t original = std::max(r.prompt_len - window_, 0);
    const int64_t kept_candidates =
        std::clamp<int64_t>(o_.budget.CapacityFor(r.prompt_len) - window_, 0, original);
    for (int32_t st = 0; st < streams_; ++st) {
      const int64_t len = lens[st];
      const int64_t candidates = len - (r.prompt_len - original) - generated_[running_[i].request];
      const int64_t removable = candidates - kept_candidates;
      const int64_t first = len % page_size_ == 0 ? page_size_ : len % page_size_;
      if (removable < first) continue;
      const int64_t groups = 1 + (removable - first) / page_size_;
      // Group g takes candidate ranks [hi - size, hi), hi = candidates - removed
      // before it: the profile's mass between those shares of the ranking.
      int64_t hi = candidates;
      double top = profile_.TopMass(st, static_cast<double>(hi) / original);
      for (int64_t g = 0; g < groups; ++g) {
        hi -= g == 0 ? first : page_size_;
        const double below = profile_.TopMass(st, static_cast<double>(hi) / original);
        scores.push_back(static_cast<float>(top - below));
        top = below;
      }
      if (hi > 0) scores.push_back(static_cast<float>(top));
      scores.push_back(0.0f);  // the protected element
      floors.push_back(static_cast<int32_t>(scores.size() - offsets.back() - groups));
      offsets.push_back(scores.size());
      sources.push_back({i, st, static_cast<int32_t>(first)});
    }
  }
  if (sources.empty()) return 0;
  size_t longest = 0;
  for (size_t s = 0; s < sources.size(); ++s) {
    longest = std::max(longest, offsets[s + 1] - offsets[s]);
  }
  std::vector<int32_t> positions(longest);
  std::iota(positions.begin(), positions.end(), 0);
  std::vector<policy::StreamScores> elements(sources.size());
  for (size_t s = 0; s < sources.size(); ++s) {
    const size_t n = offsets[s + 1] - offsets[s];
    elements[s] = policy::StreamScores{absl::MakeConstSpan(scores).subspan(offsets[s], n),
                                       absl::MakeConstSpan(positions).subspan(0, n),
                                       {0, 1}};
  }
  HEADPAGE_ASSIGN_OR_RETURN(const std::vector<int32_t> kept,
                            policy::GlobalKept(elements, floors, /*page_size=*/1, pages_to_free));
  // Apply per request and layer; sources are in (running, stream) order.
  const int64_t free_before = pool_->free_pages();
  const int32_t heads = o_.geometry.num_kv_heads;
  for (size_t s = 0; s < sources.size();) {
    const size_t i = sources[s].running;
    const int32_t layer = sources[s].stream / heads;
    HEADPAGE_ASSIGN_OR_RETURN(const absl::Span<const uint32_t> lens,
                              manager_.StreamLengths(running_[i].seq));
    layer_kept_.assign(lens.begin() + static_cast<ptrdiff_t>(layer) * heads,
                       lens.begin() + static_cast<ptrdiff_t>(layer + 1) * heads);
    bool shrinks = false;
    for (; s < sources.size() && sources[s].running == i && sources[s].stream / heads == layer;
         ++s) {
      const int64_t evicted = static_cast<int64_t>(offsets[s + 1] - offsets[s]) - kept[s];
      if (evicted == 0) continue;
      const int64_t tokens = sources[s].first_group + (evicted - 1) * page_size_;
      layer_kept_[sources[s].stream % heads] -= static_cast<int32_t>(tokens);
      step->evicted_tokens += tokens;
      sum_.evicted_tokens += tokens;
      shrinks = true;
    }
    if (shrinks) {
      HEADPAGE_RETURN_IF_ERROR(manager_.Evict(running_[i].seq, layer, layer_kept_, &plan_));
    }
  }
  manager_.ReleaseRetiredPages();
  plan_.Clear();
  ++sum_.pressure_rounds;
  return pool_->free_pages() - free_before;
}

}  // namespace

absl::StatusOr<WorkloadPolicy> ParseWorkloadPolicy(absl::string_view name) {
  for (const PolicyEntry& e : kPolicies) {
    if (name == e.name) return e.policy;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown workload policy '", name,
                   "'; known: none, uniform, pyramid, ada, dbudget, pool-pressure"));
}

const char* WorkloadPolicyName(WorkloadPolicy policy) { return EntryOf(policy).name; }

std::vector<WorkloadPolicy> AllWorkloadPolicies() {
  std::vector<WorkloadPolicy> out;
  for (const PolicyEntry& e : kPolicies) out.push_back(e.policy);
  return out;
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
      "simulated_s,wall_s\n";
  for (const WorkloadSummary& s : rows) {
    absl::StrAppendFormat(
        &out, "%s,%d,%d,%d,%d,%.3f,%d,%.3f,%.6f,%.6f,%d,%d,%d,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f,",
        s.policy, s.page_size, s.requests, s.steps, s.peak_batch, s.mean_batch, s.preemptions,
        s.tokens_per_step, s.mean_fragmentation, s.final_fragmentation, s.completed, s.rejected,
        s.pool_pages, s.admitted_fragmentation, s.small_stream_share, s.small_stream_waste,
        s.kept_fraction, s.mean_utilization, s.peak_utilization);
    absl::StrAppendFormat(&out, "%d,%d,%d,%.6f,%.3f,%.3f,%.3f,%.3f\n", s.recomputed_tokens,
                          s.pressure_rounds, s.evicted_tokens, s.evicted_fraction, s.mean_queue_s,
                          s.p90_queue_s, s.simulated_s, s.wall_s);
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
