// SPDX-License-Identifier: Apache-2.0
#include "sim/walkthrough/walkthrough.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "allocator/page_pool.h"
#include "core/status.h"
#include "sim/workload/head_profile.h"
#include "sim/workload/workload.h"

namespace headpage {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// Time spent inside BlockManager calls during one step.
class StepClock {
 public:
  using Clock = std::chrono::steady_clock;

  // Runs f() and adds its duration; returns what f() returns.
  template <typename F>
  auto Time(F&& f) {
    const Clock::time_point start = Clock::now();
    if constexpr (std::is_void_v<std::invoke_result_t<F>>) {
      f();
      Stop(start);
    } else {
      auto result = f();
      Stop(start);
      return result;
    }
  }

  double microseconds() const {
    return std::chrono::duration<double, std::micro>(elapsed_).count();
  }
  int64_t calls() const { return calls_; }
  void Reset() { *this = StepClock(); }

 private:
  void Stop(Clock::time_point start) {
    elapsed_ += Clock::now() - start;
    ++calls_;
  }

  Clock::duration elapsed_{0};
  int64_t calls_ = 0;
};

// `status` with `context` in front of its message (ResourceExhausted has none).
absl::Status Annotate(const absl::Status& status, absl::string_view context) {
  return absl::Status(status.code(), status.message().empty()
                                         ? std::string(context)
                                         : absl::StrCat(context, ": ", status.message()));
}

absl::Status ValidateOptions(const WalkthroughOptions& o) {
  HEADPAGE_RETURN_IF_ERROR(Validate(o.geometry));
  if (o.prefill_tokens < 0 || o.decode_steps < 0 || o.fork_decode_steps < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("walkthrough: prefill (", o.prefill_tokens, "), decode (", o.decode_steps,
                     ") and fork decode (", o.fork_decode_steps, ") must not be negative"));
  }
  if (!(o.keep_fraction >= 0.0 && o.keep_fraction <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("walkthrough: keep fraction ", o.keep_fraction, " is outside [0, 1]"));
  }
  if (o.min_kept < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("walkthrough: min kept ", o.min_kept, " is negative"));
  }
  if (!(o.head_skew >= 0.0 && std::isfinite(o.head_skew))) {
    return absl::InvalidArgumentError(
        absl::StrCat("walkthrough: head skew ", o.head_skew, " must be finite and >= 0"));
  }
  return absl::OkStatus();
}

// Reserve with the error made readable: which step, which call, and for
// ResourceExhausted (which carries no message) how short the pool is.
absl::Status TimedReserve(BlockManager* manager, StepClock* clock, absl::string_view step,
                          SeqId seq, int64_t num_tokens, SlotMappingOut out, PageCopies* copies) {
  const absl::Status status =
      clock->Time([&] { return manager->Reserve(seq, num_tokens, out, copies); });
  if (status.ok()) return status;
  std::string detail(status.message());
  if (absl::IsResourceExhausted(status)) {
    const absl::StatusOr<int64_t> needed = manager->PagesNeeded(seq, num_tokens);
    detail = absl::StrCat("the pool has ", manager->pool().free_pages(), " free pages, ",
                          needed.ok() ? absl::StrCat(*needed) : std::string("more"),
                          " needed (try a larger --pool-gib)");
  }
  return absl::Status(status.code(), absl::StrCat(step, ": Reserve(seq ", seq, ", ", num_tokens,
                                                  " tokens): ", detail));
}

}  // namespace

absl::Status RunWalkthrough(const WalkthroughOptions& options,
                            const std::function<void(const WalkthroughStep&)>& on_step) {
  HEADPAGE_RETURN_IF_ERROR(ValidateOptions(options));
  const CacheGeometry& geometry = options.geometry;
  HEADPAGE_ASSIGN_OR_RETURN(const int64_t num_pages, PagesForBudget(geometry, options.pool_gib));
  PagePoolOptions pool_options;
  pool_options.num_pages = num_pages;
  HEADPAGE_ASSIGN_OR_RETURN(PagePool pool, PagePool::Create(pool_options));
  HEADPAGE_ASSIGN_OR_RETURN(BlockManager manager, BlockManager::Create(geometry, &pool));

  const int32_t num_streams = geometry.streams_per_sequence();
  const int32_t num_heads = geometry.num_kv_heads;
  StepClock clock;

  // Proves the bookkeeping, then reports the step and starts the next one's clock.
  auto record = [&](std::string name, std::string note) -> absl::Status {
    const absl::Status invariants = manager.CheckInvariants();
    if (!invariants.ok()) {
      return absl::InternalError(absl::StrCat("CheckInvariants() failed after step '", name,
                                              "': ", invariants.message()));
    }
    WalkthroughStep step;
    step.name = std::move(name);
    step.stats = manager.Stats();
    step.kv_gib = static_cast<double>(step.stats.pages_in_use) *
                  static_cast<double>(geometry.page_memory_bytes()) / kGiB;
    step.manager_us = clock.microseconds();
    step.manager_calls = clock.calls();
    step.note = std::move(note);
    on_step(step);
    clock.Reset();
    return absl::OkStatus();
  };

  HEADPAGE_RETURN_IF_ERROR(record("start", absl::StrCat("empty pool of ", num_pages, " pages")));

  // Prefill: one sequence, every stream gets the whole prompt.
  const std::string prefill_name = absl::StrCat("prefill ", options.prefill_tokens);
  const SeqId parent = clock.Time([&] { return manager.AddSequence(); });
  // Admission control, as an engine does it: is there room for the prompt? This
  // also keeps a prompt far beyond the pool from sizing the slot buffer below.
  const absl::StatusOr<int64_t> prefill_pages =
      manager.PagesNeeded(parent, options.prefill_tokens);
  if (!prefill_pages.ok()) return Annotate(prefill_pages.status(), prefill_name);
  if (*prefill_pages > pool.free_pages()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        prefill_name, ": the pool has ", pool.free_pages(), " free pages, ", *prefill_pages,
        " needed (try a larger --pool-gib)"));
  }

  // One slot-mapping buffer for every Reserve: [layer][kv_head][tokens of the batch].
  std::vector<int32_t> slots(static_cast<size_t>(num_streams) *
                             static_cast<size_t>(std::max<int64_t>(options.prefill_tokens, 2)));
  PageCopies copies;
  HEADPAGE_RETURN_IF_ERROR(TimedReserve(&manager, &clock, prefill_name, parent,
                                        options.prefill_tokens,
                                        {slots.data(), options.prefill_tokens, 0}, &copies));
  HEADPAGE_RETURN_IF_ERROR(record(
      prefill_name, absl::StrCat("1 sequence x ", num_streams, " streams (", geometry.num_layers,
                                 " layers x ", num_heads, " kv heads)")));

  // Decode: one token a step.
  const std::string decode_name = absl::StrCat("decode ", options.decode_steps, "x1");
  for (int64_t i = 0; i < options.decode_steps; ++i) {
    HEADPAGE_RETURN_IF_ERROR(
        TimedReserve(&manager, &clock, decode_name, parent, 1, {slots.data(), 1, 0}, &copies));
  }
  HEADPAGE_RETURN_IF_ERROR(record(
      decode_name,
      absl::StrFormat("Reserve(1): %.2f us a call",
                      clock.calls() > 0 ? clock.microseconds() / clock.calls() : 0.0)));

  // Fork: the child shares every page.
  const int64_t shared_pages = manager.Stats().pages_in_use;
  absl::StatusOr<SeqId> forked = clock.Time([&] { return manager.Fork(parent); });
  if (!forked.ok()) return Annotate(forked.status(), "fork: Fork(parent)");
  const SeqId child = *forked;
  HEADPAGE_RETURN_IF_ERROR(
      record("fork", absl::StrCat("the child shares all ", shared_pages, " pages (refcount 2)")));

  // Decode both, as one batch of two: the first write to a shared, partly
  // filled tail page copies it.
  HEADPAGE_ASSIGN_OR_RETURN(const int64_t fork_len, manager.NumTokens(parent));
  const std::string both_name = absl::StrCat("decode ", options.fork_decode_steps, "x2");
  copies.clear();
  for (int64_t i = 0; i < options.fork_decode_steps; ++i) {
    HEADPAGE_RETURN_IF_ERROR(
        TimedReserve(&manager, &clock, both_name, parent, 1, {slots.data(), 2, 0}, &copies));
    HEADPAGE_RETURN_IF_ERROR(
        TimedReserve(&manager, &clock, both_name, child, 1, {slots.data(), 2, 1}, &copies));
  }
  const int64_t tail_fill = fork_len % geometry.page_size;
  std::string cow_note = absl::StrCat("copy-on-write: ", copies.size(), " page copies planned");
  if (options.fork_decode_steps > 0) {
    absl::StrAppend(&cow_note,
                    tail_fill == 0
                        ? absl::StrCat(" (the tails were full at the fork, ", fork_len, " % ",
                                       geometry.page_size, " == 0; try --decode ",
                                       options.decode_steps + 1, ")")
                        : absl::StrCat(" (the shared tails held ", tail_fill, " of ",
                                       geometry.page_size, " tokens)"));
  }
  HEADPAGE_RETURN_IF_ERROR(record(both_name, std::move(cow_note)));

  // Evict every layer of the parent to keep_fraction, Ada-like: a few heads keep
  // much, most keep little. One compaction plan for all layers.
  HEADPAGE_ASSIGN_OR_RETURN(const absl::Span<const uint32_t> live_lens,
                            manager.StreamLengths(parent));
  const std::vector<uint32_t> lens(live_lens.begin(), live_lens.end());  // Evict changes them
  CompactionPlan plan;
  int64_t tokens_before = 0, tokens_kept = 0;
  int32_t head_min = std::numeric_limits<int32_t>::max(), head_max = 0;
  for (int32_t layer = 0; layer < geometry.num_layers; ++layer) {
    const auto layer_lens =
        absl::MakeConstSpan(lens).subspan(static_cast<size_t>(layer) * num_heads, num_heads);
    int64_t layer_tokens = 0;
    for (const uint32_t len : layer_lens) layer_tokens += len;
    const auto budget = static_cast<int64_t>(
        std::llround(options.keep_fraction * static_cast<double>(layer_tokens)));
    const std::vector<double> weights = SkewedHeadWeights(
        num_heads, options.head_skew, options.seed ^ (0x9e3779b97f4a7c15ull * (layer + 1)));
    const std::vector<int32_t> kept =
        ProportionalKeptCounts(weights, layer_lens, budget, options.min_kept);
    for (const int32_t k : kept) {
      tokens_kept += k;
      head_min = std::min(head_min, k);
      head_max = std::max(head_max, k);
    }
    tokens_before += layer_tokens;
    const absl::Status status =
        clock.Time([&] { return manager.Evict(parent, layer, kept, &plan); });
    if (!status.ok()) {
      return Annotate(status, absl::StrCat("evict: Evict(parent, layer ", layer, ")",
                                           absl::IsResourceExhausted(status)
                                               ? absl::StrCat(": the pool has ", pool.free_pages(),
                                                              " free pages (try a larger --pool-gib)")
                                               : ""));
    }
  }
  // Rows that keep everything move nothing and retire nothing; a fresh row
  // retires all its source pages, an in-place row those past its new length.
  int64_t fresh_rows = 0, in_place_rows = 0, retired_refs = 0;
  for (int32_t r = 0; r < plan.num_rows(); ++r) {
    if (plan.kept[r] == plan.src_lens[r]) continue;
    ++(plan.in_place[r] ? in_place_rows : fresh_rows);
    const int32_t src_pages = plan.src_indptr[r + 1] - plan.src_indptr[r];
    retired_refs += plan.in_place[r] ? src_pages - (plan.dst_indptr[r + 1] - plan.dst_indptr[r])
                                     : src_pages;
  }
  HEADPAGE_RETURN_IF_ERROR(record(
      absl::StrFormat("evict %g%%", 100.0 * options.keep_fraction),
      absl::StrFormat("plan: %d rows (%d fresh, %d in place), keeps %d of %d tokens, %d..%d a "
                      "head",
                      plan.num_rows(), fresh_rows, in_place_rows, tokens_kept, tokens_before,
                      head_min > head_max ? 0 : head_min, head_max)));

  // The plan is "enqueued": its source pages may go back to the pool, except
  // those another sequence (here the child) still holds.
  const int64_t free_before_release = pool.free_pages();
  clock.Time([&] { manager.ReleaseRetiredPages(); });
  const int64_t released = pool.free_pages() - free_before_release;
  HEADPAGE_RETURN_IF_ERROR(record(
      "release retired",
      absl::StrCat(released, " pages back to the free list; ", retired_refs - released,
                   " other source pages are still held by other sequences")));

  for (const auto& [name, seq] : {std::pair<const char*, SeqId>{"free parent", parent},
                                  std::pair<const char*, SeqId>{"free child", child}}) {
    const int64_t free_before = pool.free_pages();
    // A lambda may not capture a structured binding before C++20 (clang says so).
    const absl::Status status = clock.Time([&, id = seq] { return manager.Free(id); });
    if (!status.ok()) return Annotate(status, absl::StrCat(name, ": Free(seq ", seq, ")"));
    HEADPAGE_RETURN_IF_ERROR(record(
        name, absl::StrCat(pool.free_pages() - free_before, " pages back to the free list")));
  }
  return absl::OkStatus();
}

std::string WalkthroughTableHeader() {
  // A group label centred in dashes over the columns it spans.
  auto group = [](absl::string_view label, size_t width) {
    const std::string text = absl::StrCat(" ", label, " ");
    const size_t left = (width - text.size()) / 2;
    return absl::StrCat(std::string(left, '-'), text, std::string(width - left - text.size(), '-'));
  };
  return absl::StrCat(
      absl::StrFormat("%-16s %4s | %s | %s | %s | %7s %10s |\n", "", "", group("pages", 27),
                      group("slots", 35), group("stream length", 22), "KV", "BlockMgr"),
      absl::StrFormat("%-16s %4s | %9s %9s %7s | %9s %9s %8s %6s | %6s %8s %6s | %7s %10s | %s",
                      "step", "seqs", "in use", "free", "retired", "allocated", "used", "frag",
                      "frag%", "min", "mean", "max", "GiB", "us", "note"));
}

std::string FormatWalkthroughRow(const WalkthroughStep& step) {
  const BlockManagerStats& s = step.stats;
  const double frag_pct =
      s.allocated_slots > 0
          ? 100.0 * static_cast<double>(s.internal_fragmentation) / static_cast<double>(s.allocated_slots)
          : 0.0;
  return absl::StrFormat(
      "%-16s %4d | %9d %9d %7d | %9d %9d %8d %5.2f%% | %6d %8.1f %6d | %7.3f %10.1f | %s",
      step.name, s.num_sequences, s.pages_in_use, s.pages_free, s.pages_retired, s.allocated_slots,
      s.used_slots, s.internal_fragmentation, frag_pct, s.min_stream_len, s.mean_stream_len,
      s.max_stream_len, step.kv_gib, step.manager_us, step.note);
}

}  // namespace headpage
