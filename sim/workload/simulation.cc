// SPDX-License-Identifier: Apache-2.0
#include "sim/workload/simulation.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "policy/budget.h"

namespace headpage {
namespace workload_internal {
namespace {

constexpr int64_t kMaxSteps = int64_t{1} << 32;  // a bug guard, never a real limit

}  // namespace

Simulation::Simulation(const std::vector<WorkloadRequest>& requests, const HeadProfile& profile,
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
      admitted_at_(requests.size(), 0),
      first_admit_s_(requests.size(), -1.0),
      shared_prefix_(requests.size(), 0) {
  // Evenly spread: request i has the prefix when floor((i + 1) * share) steps up.
  for (size_t i = 0; i < requests.size(); ++i) {
    const auto d = static_cast<double>(i);
    if (std::floor((d + 1) * options.prefix_share) > std::floor(d * options.prefix_share)) {
      shared_prefix_[i] = std::min(options.prefix_tokens, requests[i].prompt_len);
    }
  }
}

const std::vector<int32_t>& Simulation::TokenIds(size_t q, int64_t tokens) {
  token_ids_.resize(static_cast<size_t>(tokens));
  const int64_t shared = std::min<int64_t>(shared_prefix_[q], tokens);
  std::iota(token_ids_.begin(), token_ids_.begin() + shared, 1);
  std::fill(token_ids_.begin() + shared, token_ids_.end(), -static_cast<int32_t>(q) - 1);
  return token_ids_;
}

absl::Status Simulation::KeptAfterFrozen(int64_t prompt, int64_t frozen) {
  const int64_t rest = prompt - frozen;
  if (rest <= 0) {
    kept_.assign(static_cast<size_t>(streams_), static_cast<int32_t>(prompt));
    return absl::OkStatus();
  }
  HEADPAGE_RETURN_IF_ERROR(compressor_.PromptKept(
      static_cast<int32_t>(std::min<int64_t>(rest, std::numeric_limits<int32_t>::max())),
      &kept_));
  for (int32_t& k : kept_) k += static_cast<int32_t>(frozen);
  return absl::OkStatus();
}

absl::StatusOr<WorkloadResult> Simulation::Run() {
  const auto start = std::chrono::steady_clock::now();
  WorkloadResult result;
  sum_.policy = WorkloadPolicyName(o_.policy);
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
  sum_.final_cached_pages = manager_.Stats().pages_cached;
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
      const int32_t generated = ++generated_[r.request];
      r.finished = generated >= requests_[r.request].output_len;
      // Counted from its admission, as the engine does: a preempted request
      // comes back with its generated tokens as part of its prompt.
      const int32_t since = generated - admitted_at_[r.request];
      if (o_.compress_every > 0 && since > 0 && since % o_.compress_every == 0) {
        HEADPAGE_RETURN_IF_ERROR(CompressSeen(r));
      }
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

absl::Status Simulation::CompressSeen(const Running& r) {
  if (o_.policy == WorkloadPolicy::kNone || o_.policy == WorkloadPolicy::kPoolPressure ||
      r.on_compressed_prefix) {  // the engine keeps such a request's own tokens whole
    return absl::OkStatus();
  }
  const int32_t heads = o_.geometry.num_kv_heads;
  const int64_t seen = static_cast<int64_t>(requests_[r.request].prompt_len) + generated_[r.request];
  HEADPAGE_RETURN_IF_ERROR(KeptAfterFrozen(seen, r.frozen));
  HEADPAGE_ASSIGN_OR_RETURN(const absl::Span<const uint32_t> lens, manager_.StreamLengths(r.seq));
  const std::vector<uint32_t> held(lens.begin(), lens.end());
  bool evicted = false;
  for (int32_t l = 0; l < o_.geometry.num_layers; ++l) {
    bool shrinks = false;
    layer_kept_.resize(static_cast<size_t>(heads));
    for (int32_t h = 0; h < heads; ++h) {
      const size_t stream = static_cast<size_t>(l) * heads + h;
      layer_kept_[h] = std::min<int32_t>(kept_[stream], static_cast<int32_t>(held[stream]));
      shrinks |= layer_kept_[h] < static_cast<int32_t>(held[stream]);
    }
    if (!shrinks) continue;
    HEADPAGE_RETURN_IF_ERROR(manager_.Evict(r.seq, l, layer_kept_, r.frozen, &plan_));
    evicted = true;
  }
  if (evicted) {
    manager_.ReleaseRetiredPages();
    plan_.Clear();
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

absl::StatusOr<SeqId> Simulation::CompressedPrefix(int64_t tokens) {
  if (compressed_prefix_ != 0) return compressed_prefix_;
  if (!pool_->CanAllocate(PromptPages(tokens))) return SeqId{0};
  const SeqId seq = manager_.AddSequence();
  HEADPAGE_RETURN_IF_ERROR(manager_.ReserveWithoutSlots(seq, tokens, &copies_));
  HEADPAGE_RETURN_IF_ERROR(KeptAfterFrozen(tokens, 0));
  const int32_t heads = o_.geometry.num_kv_heads;
  for (int32_t l = 0; l < o_.geometry.num_layers; ++l) {
    layer_kept_.assign(kept_.begin() + static_cast<ptrdiff_t>(l) * heads,
                       kept_.begin() + static_cast<ptrdiff_t>(l + 1) * heads);
    HEADPAGE_RETURN_IF_ERROR(manager_.Evict(seq, l, layer_kept_, &plan_));
  }
  manager_.ReleaseRetiredPages();
  plan_.Clear();
  compressed_prefix_ = seq;
  return seq;
}

absl::StatusOr<bool> Simulation::AdmitOnCompressedPrefix(size_t q, int64_t tokens, double now,
                                                         WorkloadStep* step) {
  const int64_t shared = shared_prefix_[q];
  HEADPAGE_ASSIGN_OR_RETURN(const SeqId prefix, CompressedPrefix(shared));
  if (prefix == 0) return false;
  // Its own tokens, and a copy of each stream's shared partial tail page.
  if (!pool_->CanAllocate(PromptPages(tokens - shared) + streams_)) return false;
  HEADPAGE_ASSIGN_OR_RETURN(const SeqId seq, manager_.Fork(prefix));
  if (const absl::Status reserved = manager_.ReserveWithoutSlots(seq, tokens - shared, &copies_);
      !reserved.ok()) {
    HEADPAGE_RETURN_IF_ERROR(manager_.Free(seq));
    if (absl::IsResourceExhausted(reserved)) return false;
    return reserved;
  }
  copies_.clear();
  waiting_.pop_front();
  ++sum_.prefix_hits;
  sum_.prefix_hit_tokens += shared;
  admitted_at_[q] = generated_[q];
  HEADPAGE_RETURN_IF_ERROR(RecordAdmission({q, seq, false, 0, true}, tokens, /*whole=*/false,
                                           tokens - shared, now, step));
  return true;
}

absl::Status Simulation::RecordAdmission(const Running& running, int64_t tokens, bool whole,
                                         int64_t prefilled, double now, WorkloadStep* step) {
  const size_t q = running.request;
  const WorkloadRequest& r = requests_[q];
  const int32_t generated = generated_[q];
  HEADPAGE_ASSIGN_OR_RETURN(const absl::Span<const uint32_t> lens,
                            manager_.StreamLengths(running.seq));
  for (const uint32_t len : lens) {
    const int64_t alloc = PagesFor(len, page_size_) * page_size_;
    admitted_alloc_ += static_cast<double>(alloc);
    admitted_waste_ += static_cast<double>(alloc - len);
    // The prompt's share of what the stream kept (all of it but the
    // generated tokens, unless those were compressed with it).
    prompt_kept_ += whole ? static_cast<double>(len) * r.prompt_len / static_cast<double>(tokens)
                          : static_cast<double>(len) - generated;
    if (static_cast<int64_t>(len) <= o_.small_stream_tokens) {
      ++small_streams_;
      small_alloc_ += static_cast<double>(alloc);
      small_waste_ += static_cast<double>(alloc - len);
    }
  }
  admitted_streams_ += streams_;
  prompt_tokens_ += static_cast<double>(r.prompt_len) * streams_;
  if (generated > 0) sum_.recomputed_tokens += prefilled;
  if (first_admit_s_[q] < 0) first_admit_s_[q] = now;
  running_.push_back(running);
  ++step->admitted;
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
    if (o_.compressed_prefix && shared_prefix_[q] > 0 && shared_prefix_[q] < tokens) {
      if (step->admitted > 0 && prefill_tokens + tokens - shared_prefix_[q] > o_.max_prefill_tokens) {
        break;
      }
      HEADPAGE_ASSIGN_OR_RETURN(const bool admitted, AdmitOnCompressedPrefix(q, tokens, now, step));
      if (!admitted) break;
      prefill_tokens += tokens - shared_prefix_[q];
      continue;
    }
    // With the prefix cache, the prompt's cached blocks (all but its last
    // token's: the engine computes that one) cost no page and no prefill.
    const bool cache = o_.prefix_cache;
    const int64_t cached =
        cache ? manager_.CachedPrefixTokens(absl::MakeConstSpan(TokenIds(q, tokens)).first(
                                                static_cast<size_t>(tokens - 1)),
                                            0)
              : 0;
    if (step->admitted > 0 && prefill_tokens + tokens - cached > o_.max_prefill_tokens) break;
    const int64_t need = PromptPages(tokens) - streams_ * (cached / page_size_);
    if (cache ? manager_.AvailablePages() - need < pool_->Stats().watermark_pages
              : !pool_->CanAllocate(need)) {
      break;
    }
    SeqId seq = 0;
    if (cache) {
      const BlockManager::PrefixHit hit = manager_.AddSequenceWithPrefix(
          absl::MakeConstSpan(TokenIds(q, tokens)).first(static_cast<size_t>(tokens - 1)), 0);
      seq = hit.seq;
      if (hit.cached_tokens != cached) return absl::InternalError("workload: prefix hit moved");
    } else {
      seq = manager_.AddSequence();
    }
    if (const absl::Status reserved = manager_.ReserveWithoutSlots(seq, tokens - cached, &copies_);
        !reserved.ok()) {
      // The estimate counted cache-only pages this very hit puts back in use.
      HEADPAGE_RETURN_IF_ERROR(manager_.Free(seq));
      if (absl::IsResourceExhausted(reserved)) break;
      return reserved;
    }
    waiting_.pop_front();
    if (cache) {
      HEADPAGE_RETURN_IF_ERROR(manager_.CachePrefix(seq, TokenIds(q, tokens), 0).status());
      sum_.prefix_hits += cached > 0;
      sum_.prefix_hit_tokens += cached;
    }
    // Compression: the prompt as the policy keeps it, every generated token.
    // With decode-time compression a preempted request's generated tokens are
    // part of its prompt again (the engine re-admits prompt + generated).
    admitted_at_[q] = generated;
    const bool whole = o_.compress_every > 0;
    const int32_t prompt = whole ? static_cast<int32_t>(tokens) : r.prompt_len;
    // The cached prefix stays whole, as far as it lies in the compressed prompt.
    const int64_t frozen = std::min<int64_t>(cached, prompt / page_size_ * page_size_);
    HEADPAGE_RETURN_IF_ERROR(KeptAfterFrozen(prompt, frozen));
    bool evicted = false;
    for (int32_t l = 0; l < o_.geometry.num_layers; ++l) {
      layer_kept_.assign(kept_.begin() + static_cast<ptrdiff_t>(l) * heads,
                         kept_.begin() + static_cast<ptrdiff_t>(l + 1) * heads);
      bool shrinks = false;
      for (int32_t& k : layer_kept_) {
        shrinks |= k < prompt;
        if (!whole) k += generated;
      }
      if (!shrinks) continue;
      HEADPAGE_RETURN_IF_ERROR(manager_.Evict(seq, l, layer_kept_, frozen, &plan_));
      evicted = true;
    }
    if (evicted) {
      manager_.ReleaseRetiredPages();
      plan_.Clear();
    }
    HEADPAGE_RETURN_IF_ERROR(
        RecordAdmission({q, seq, false, frozen}, tokens, whole, tokens, now, step));
    prefill_tokens += tokens - cached;
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
    // A request on the compressed prefix has no scores (its pages are shared).
    if (running_[i].on_compressed_prefix) continue;
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
      // A cached prefix stays whole: the floor below which nothing goes.
      const int64_t frozen = running_[i].frozen;
      for (int32_t& k : layer_kept_) k = std::max<int32_t>(k, static_cast<int32_t>(frozen));
      HEADPAGE_RETURN_IF_ERROR(
          manager_.Evict(running_[i].seq, layer, layer_kept_, frozen, &plan_));
    }
  }
  manager_.ReleaseRetiredPages();
  plan_.Clear();
  ++sum_.pressure_rounds;
  return pool_->free_pages() - free_before;
}

}  // namespace workload_internal
}  // namespace headpage
