// SPDX-License-Identifier: Apache-2.0
// Model-based random test: thousands of random operations on a BlockManager
// whose plans are executed by the CPU kernels on a real HostArena, checked after
// every step against a trivially correct model (a map from each stream to the
// vector of (position, K/V content) it should hold). A failure prints its seed;
// HEADPAGE_MODEL_SEED=<n> reruns just that seed. Its size comes from the
// environment (RunSizeFromEnvironment below), so that the same test serves as
// a long soak; the defaults are what scripts/test runs.
//
// An eviction's compaction runs at once, but its release is often left for a
// later step, so that the steps between (and their invariant checks) see
// retired pages, some of them still held by a fork's streams.
//
// The prefix cache takes part: sequences offer their blocks, new ones start
// from cached prefixes (the model knows what each cached block holds, from the
// sequence that offered it), evictions freeze cached prefixes or move streams
// off cached pages, and the small pool makes Reserve and Evict reclaim unused
// blocks. A cached page that anything wrote would show in the next sequence
// that starts with it.
#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "allocator/arena.h"
#include "blockmgr/block_manager.h"
#include "kernels/compact.h"
#include "kernels/copy_pages.h"
#include "kernels/write_kv.h"
#include "tests/blockmgr/blockmgr_test_util.h"

namespace headpage {
namespace {

struct Token {
  int32_t position;
  uint32_t content;  // K/V values are derived from it, see KeyElem
};
struct ModelSeq {
  int64_t num_tokens = 0;
  std::vector<std::vector<Token>> streams;  // [layer * kv_heads + h]
  // For the prefix cache: the token ids, drawn from one of a few families so
  // that prefixes repeat across sequences, the salt it caches under, and how
  // many leading tokens are still at their original slots.
  std::vector<int32_t> ids;
  int32_t family = 0;
  uint64_t salt = 0;
  int64_t intact = 0;
};

// Exactly representable in f32, different per element and per content.
float KeyElem(uint32_t content, int32_t e) {
  return static_cast<float>((content ^ (static_cast<uint32_t>(e) * 2654435761u)) & 0xffffffu);
}
float ValueElem(uint32_t content, int32_t e) { return -KeyElem(content, e) - 1.0f; }

class ModelTest {
 public:
  ModelTest(uint64_t seed, int32_t page_size, int64_t num_pages)
      : rng_(seed), geometry_(testing::TinyGeometry(page_size)), fixture_(num_pages, geometry_) {
    auto arena = HostArena::Create(geometry_, num_pages);
    REQUIRE_OK(arena);
    arena_ = std::make_unique<HostArena>(std::move(arena).value());
  }

  void Run(int64_t steps) {
    for (int64_t step = 0; step < steps; ++step) {
      INFO("step " << step);
      if (!pending_.empty() && Pick(3) == 0) Release();
      const uint32_t op = Pick(100);
      if (op < 6 || model_.empty()) {
        Add();
      } else if (op < 12) {
        AddWithPrefix();
      } else if (op < 48) {
        Reserve();
      } else if (op < 53) {
        CachePrefix();
      } else if (op < 58) {
        Fork();
      } else if (op < 78) {
        Evict();
      } else if (op < 92) {
        Free();
      } else if (op < 94) {
        Reclaim();
      } else {
        BadInput();
      }
      Verify(/*full=*/step % 20 == 0 || step + 1 == steps);
      pending_steps_ += !pending_.empty();
    }
    Release();
    Verify(/*full=*/true);
  }

  int64_t exhausted() const { return exhausted_; }
  int64_t copies() const { return copies_; }
  int64_t in_place_rows() const { return in_place_rows_; }
  int64_t pending_steps() const { return pending_steps_; }
  int64_t prefix_hit_tokens() const { return prefix_hit_tokens_; }
  int64_t frozen_evictions() const { return frozen_evictions_; }
  int64_t reclaimed_pages() const { return reclaimed_pages_; }

 private:
  uint32_t Pick(uint32_t n) { return static_cast<uint32_t>(rng_() % n); }
  SeqId AnySeq() {
    auto it = model_.begin();
    std::advance(it, Pick(static_cast<uint32_t>(model_.size())));
    return it->first;
  }
  BlockManager& m() { return *fixture_; }
  // True while a layer of `id` has an unreleased plan: Reserve, Fork and Free
  // must then refuse it.
  bool Pending(SeqId id) const {
    auto it = pending_.lower_bound({id, 0});
    return it != pending_.end() && it->first == id;
  }
  void Release() {
    m().ReleaseRetiredPages();
    pending_.clear();
  }
  int32_t heads() const { return geometry_.num_kv_heads; }
  int32_t streams() const { return geometry_.streams_per_sequence(); }

  void Add() {
    if (model_.size() >= 8) return;
    const SeqId id = m().AddSequence();
    ModelSeq& seq = model_[id];
    seq.streams.resize(streams());
    seq.family = static_cast<int32_t>(Pick(3));
    seq.salt = Pick(4) == 0;
  }

  // Token id at `position` of a family's prompt; now and then one off it.
  int32_t NextId(int32_t family, int64_t position) {
    if (Pick(50) == 0) return static_cast<int32_t>(100000 + Pick(1000));
    return static_cast<int32_t>(family * 1000 + position % 97);
  }

  // A new sequence from the longest cached prefix of a family's prompt.
  void AddWithPrefix() {
    if (model_.size() >= 8) return;
    const auto family = static_cast<int32_t>(Pick(3));
    const uint64_t salt = Pick(4) == 0;
    std::vector<int32_t> ids(Pick(48));
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = NextId(family, static_cast<int64_t>(i));
    const int64_t cached = m().CachedPrefixTokens(ids, salt);
    const BlockManager::PrefixHit hit = m().AddSequenceWithPrefix(ids, salt);
    REQUIRE(hit.cached_tokens == cached);
    REQUIRE(cached % geometry_.page_size == 0);
    REQUIRE(cached <= static_cast<int64_t>(ids.size()));
    ModelSeq& seq = model_[hit.seq];
    seq.streams.resize(streams());
    seq.family = family;
    seq.salt = salt;
    seq.ids.assign(ids.begin(), ids.begin() + cached);
    seq.num_tokens = seq.intact = cached;
    const int32_t ps = geometry_.page_size;
    for (int64_t end = ps; end <= cached; end += ps) {
      const auto block = cache_.find({std::vector<int32_t>(ids.begin(), ids.begin() + end), salt});
      REQUIRE(block != cache_.end());  // the manager hit a block no sequence offered
      for (int32_t st = 0; st < streams(); ++st) {
        seq.streams[st].insert(seq.streams[st].end(), block->second[st].begin(),
                               block->second[st].end());
      }
    }
    prefix_hit_tokens_ += cached;
  }

  // A sequence offers its blocks; the model learns what each cached block holds.
  void CachePrefix() {
    const SeqId id = AnySeq();
    ModelSeq& seq = model_[id];
    const auto n = static_cast<int64_t>(Pick(static_cast<uint32_t>(seq.ids.size()) + 1));
    const std::vector<int32_t> ids(seq.ids.begin(), seq.ids.begin() + n);
    auto cached = m().CachePrefix(id, ids, seq.salt);
    if (Pending(id)) {
      REQUIRE(cached.status().code() == absl::StatusCode::kFailedPrecondition);
      return;
    }
    REQUIRE_OK(cached);
    const int32_t ps = geometry_.page_size;
    REQUIRE(*cached % ps == 0);
    REQUIRE(*cached <= seq.intact);  // more than n when it offered more before
    for (int64_t end = ps; end <= *cached; end += ps) {
      std::vector<std::vector<Token>> block(streams());
      for (int32_t st = 0; st < streams(); ++st) {
        block[st].assign(seq.streams[st].begin() + (end - ps), seq.streams[st].begin() + end);
      }
      cache_[{std::vector<int32_t>(seq.ids.begin(), seq.ids.begin() + end), seq.salt}] =
          std::move(block);
    }
  }

  void Reclaim() {
    const int64_t before = m().pool().free_pages();
    const int64_t target = before + Pick(40);
    const int64_t available = m().AvailablePages();
    const int64_t freed = m().ReclaimCachedPages(target);
    REQUIRE(freed == m().pool().free_pages() - before);
    // It stops once the target is met, or when no unused block is left (and then
    // everything the cache alone held is free).
    REQUIRE((m().pool().free_pages() >= target || m().Stats().cached_blocks_unused == 0));
    REQUIRE(m().AvailablePages() == available);
    reclaimed_pages_ += freed;
  }

  void Reserve() {
    const SeqId id = AnySeq();
    const int64_t n = 1 + Pick(Pick(4) == 0 ? 24 : 3);
    if (Pending(id)) {
      REQUIRE(m().Reserve(id, n).status().code() == absl::StatusCode::kFailedPrecondition);
      return;
    }
    auto plan = m().Reserve(id, n);
    if (!plan.ok()) {
      REQUIRE(plan.status().code() == absl::StatusCode::kResourceExhausted);
      ++exhausted_;
      return;  // Verify() proves nothing changed
    }
    ModelSeq& seq = model_[id];
    REQUIRE(plan->first_position == seq.num_tokens);
    // Copy-on-write first, then the new tokens, as an engine would.
    copies_ += plan->page_copies.size();
    REQUIRE_OK(ref::CopyPages({arena_->view(), plan->page_copies.size(),
                               plan->page_copies.src.data(), plan->page_copies.dst.data()}));
    std::vector<int32_t> positions(n);
    for (int64_t t = 0; t < n; ++t) positions[t] = static_cast<int32_t>(seq.num_tokens + t);
    const int32_t d = geometry_.head_dim;
    for (int32_t layer = 0; layer < geometry_.num_layers; ++layer) {
      std::vector<float> keys(n * heads() * d), values(n * heads() * d);
      for (int64_t t = 0; t < n; ++t) {
        for (int32_t h = 0; h < heads(); ++h) {
          const uint32_t content = static_cast<uint32_t>(rng_());
          for (int32_t e = 0; e < d; ++e) {
            keys[(t * heads() + h) * d + e] = KeyElem(content, e);
            values[(t * heads() + h) * d + e] = ValueElem(content, e);
          }
          seq.streams[layer * heads() + h].push_back({positions[t], content});
        }
      }
      if (layer == 0) {
        for (int64_t t = 0; t < n; ++t) seq.ids.push_back(NextId(seq.family, positions[t]));
      }
      const WriteKVArgs args{arena_->view(), static_cast<int32_t>(n), heads(), keys.data(),
                             values.data(), plan->slot_mapping.data() + layer * heads(),
                             streams(), positions.data()};
      REQUIRE_OK(ref::WriteKV(args));
    }
    if (seq.intact == seq.num_tokens) seq.intact += n;
    seq.num_tokens += n;
  }

  void Fork() {
    if (model_.size() >= 8) return;
    const SeqId parent = AnySeq();
    if (Pending(parent)) {
      REQUIRE(m().Fork(parent).status().code() == absl::StatusCode::kFailedPrecondition);
      return;
    }
    auto child = m().Fork(parent);
    REQUIRE_OK(child);
    model_[*child] = model_[parent];
  }

  void Free() {
    const SeqId id = AnySeq();
    if (Pending(id)) {
      REQUIRE(m().Free(id).code() == absl::StatusCode::kFailedPrecondition);
      return;
    }
    REQUIRE_OK(m().Free(id));
    model_.erase(id);
    dead_.push_back(id);
  }

  // One or two (sequence, layer) evictions batched into one plan, executed by
  // ref::Compact with random keep sets, then released now or at a later step.
  void Evict() {
    CompactionPlan plan;
    std::vector<int32_t> keep;
    std::map<std::pair<SeqId, int32_t>, std::vector<std::vector<int32_t>>> chosen;
    const int calls = 1 + static_cast<int>(Pick(2));
    for (int c = 0; c < calls; ++c) {
      const SeqId id = AnySeq();
      const int32_t layer = static_cast<int32_t>(Pick(geometry_.num_layers));
      if (chosen.count({id, layer})) continue;
      const ModelSeq& seq = model_[id];
      if (pending_.count({id, layer})) {
        const std::vector<int32_t> all(heads(), 0);
        REQUIRE(m().Evict(id, layer, all, &plan).code() ==
                absl::StatusCode::kFailedPrecondition);
        continue;
      }
      // Half the time the leading pages stay frozen, as for a cached prefix.
      const int32_t ps = geometry_.page_size;
      const int64_t frozen = Pick(2) == 0 ? 0 : ps * Pick(static_cast<uint32_t>(seq.intact / ps) + 1);
      std::vector<int32_t> kept(heads());
      std::vector<std::vector<int32_t>> sets(heads());
      bool shrinks = false;
      for (int32_t h = 0; h < heads(); ++h) {
        const auto len = static_cast<int32_t>(seq.streams[layer * heads() + h].size());
        const uint32_t mode = Pick(4);  // keep all, none, or a random subset
        for (int32_t i = 0; i < len; ++i) {
          if (i < frozen || mode == 0 || (mode != 1 && Pick(3) != 0)) sets[h].push_back(i);
        }
        kept[h] = static_cast<int32_t>(sets[h].size());
        shrinks |= kept[h] != len;
      }
      const absl::Status status = m().Evict(id, layer, kept, frozen, &plan);
      if (!status.ok()) {
        REQUIRE(status.code() == absl::StatusCode::kResourceExhausted);
        ++exhausted_;
        continue;
      }
      // The plan's rows cover the suffixes: keep sets relative to `frozen`.
      for (const auto& set : sets) {
        for (const int32_t i : set) {
          if (i >= frozen) keep.push_back(static_cast<int32_t>(i - frozen));
        }
      }
      chosen[{id, layer}] = sets;
      frozen_evictions_ += frozen > 0;
      if (shrinks) model_[id].intact = std::min(model_[id].intact, frozen);
    }
    REQUIRE(static_cast<size_t>(plan.keep_indptr.back()) == keep.size());
    for (uint8_t in_place : plan.in_place) in_place_rows_ += in_place;
    CompactArgs args;
    args.cache = arena_->view();
    args.num_rows = plan.num_rows();
    args.src_indptr = plan.src_indptr.data();
    args.src_page_ids = plan.src_page_ids.data();
    args.num_src_page_ids = static_cast<int32_t>(plan.src_page_ids.size());
    args.src_lens = plan.src_lens.data();
    args.dst_indptr = plan.dst_indptr.data();
    args.dst_page_ids = plan.dst_page_ids.data();
    args.num_dst_page_ids = static_cast<int32_t>(plan.dst_page_ids.size());
    args.keep_indptr = plan.keep_indptr.data();
    args.keep = keep.data();
    args.num_keep = static_cast<int32_t>(keep.size());
    args.in_place = plan.in_place.data();
    REQUIRE_OK(ref::Compact(args));
    for (const auto& [key, sets] : chosen) pending_.insert(key);
    if (Pick(2) == 0) Release();
    for (const auto& [key, sets] : chosen) {
      for (int32_t h = 0; h < heads(); ++h) {
        std::vector<Token>& stream = model_[key.first].streams[key.second * heads() + h];
        std::vector<Token> survivors;
        for (int32_t i : sets[h]) survivors.push_back(stream[i]);
        stream = std::move(survivors);
      }
    }
  }

  // Bad input must be refused with the right code and change nothing.
  void BadInput() {
    CompactionPlan plan;
    switch (Pick(4)) {
      case 0:
        if (!dead_.empty()) {
          REQUIRE(m().Free(dead_[Pick(static_cast<uint32_t>(dead_.size()))]).code() ==
                  absl::StatusCode::kNotFound);
        }
        break;
      case 1: {
        const SeqId id = AnySeq();
        std::vector<int32_t> kept(heads(), 0);
        kept[0] = static_cast<int32_t>(model_[id].streams[0].size()) + 1;
        // A pending layer is refused before its counts are looked at.
        REQUIRE(m().Evict(id, 0, kept, &plan).code() ==
                (pending_.count({id, 0}) ? absl::StatusCode::kFailedPrecondition
                                         : absl::StatusCode::kInvalidArgument));
        break;
      }
      case 2:
        REQUIRE(m().Reserve(AnySeq(), -3).status().code() == absl::StatusCode::kInvalidArgument);
        break;
      default: {
        std::vector<int32_t> kept(heads() + 1, 0);
        REQUIRE(m().Evict(AnySeq(), 1, kept, &plan).code() == absl::StatusCode::kInvalidArgument);
        break;
      }
    }
    REQUIRE(plan.num_rows() == 0);
  }

  void Verify(bool full) {
    REQUIRE_OK(m().CheckInvariants());
    REQUIRE(m().num_sequences() == static_cast<int64_t>(model_.size()));
    const PagedKV& kv = arena_->view();
    const auto* data = static_cast<const float*>(kv.data);
    int64_t tokens = 0;
    for (const auto& [id, seq] : model_) {
      REQUIRE(*m().NumTokens(id) == seq.num_tokens);
      auto lens = m().StreamLengths(id);
      REQUIRE_OK(lens);
      for (int32_t st = 0; st < streams(); ++st) {
        const std::vector<Token>& expect = seq.streams[st];
        REQUIRE((*lens)[st] == expect.size());
        tokens += static_cast<int64_t>(expect.size());
        auto pages = m().StreamPages(id, st / heads(), st % heads());
        REQUIRE_OK(pages);
        const std::vector<int32_t> table(pages->begin(), pages->end());
        for (size_t i = 0; i < expect.size(); ++i) {
          const int64_t slot = SlotOf(table.data(), static_cast<int64_t>(i), kv.page_size);
          INFO("seq " << id << " stream " << st << " token " << i);
          REQUIRE(kv.positions[slot] == expect[i].position);
          const int32_t d = kv.head_dim;
          for (int32_t e = 0; e < d; e += full ? 1 : d - 1) {
            REQUIRE(data[kv.KeyOffset(slot) + e] == KeyElem(expect[i].content, e));
            REQUIRE(data[kv.ValueOffset(slot) + e] == ValueElem(expect[i].content, e));
          }
        }
      }
    }
    REQUIRE(m().Stats().stream_tokens == tokens);
    REQUIRE(m().AvailablePages() >= m().pool().free_pages());
  }

  std::mt19937_64 rng_;
  CacheGeometry geometry_;
  testing::Fixture fixture_;
  std::unique_ptr<HostArena> arena_;
  std::map<SeqId, ModelSeq> model_;
  std::vector<SeqId> dead_;
  std::set<std::pair<SeqId, int32_t>> pending_;  // (seq, layer) in an unreleased plan
  // What each block a sequence offered holds, [stream][slot in block], by its
  // token ids from the prompt's start and its salt.
  std::map<std::pair<std::vector<int32_t>, uint64_t>, std::vector<std::vector<Token>>> cache_;
  int64_t exhausted_ = 0, copies_ = 0, in_place_rows_ = 0, pending_steps_ = 0;
  int64_t prefix_hit_tokens_ = 0, frozen_evictions_ = 0, reclaimed_pages_ = 0;
};

// How much the model test runs: seeds first_seed..last_seed, `steps` random
// operations each.
struct RunSize {
  uint64_t first_seed = 1;
  uint64_t last_seed = 6;
  int64_t steps = 1500;

  uint64_t num_seeds() const { return last_seed - first_seed + 1; }
};

// The one place the environment is read:
//   HEADPAGE_MODEL_SEEDS=<first>:<last>  seeds first..last (inclusive)
//   HEADPAGE_MODEL_SEEDS=<count>         seeds 1..count
//   HEADPAGE_MODEL_SEED=<n>              seed n alone (what a failure says to rerun)
//   HEADPAGE_MODEL_STEPS=<n>             random operations per seed
// A value that does not parse fails the test: a typo must not quietly run the
// default size and report a soak that never happened.
RunSize RunSizeFromEnvironment() {
  // Digits only (no sign, no spaces), at least `min`, at most one short of
  // UINT64_MAX so that `seed <= last_seed` ends and last - first + 1 cannot wrap.
  const auto parse = [](const std::string& text, uint64_t min, uint64_t* value) {
    const char* end = text.data() + text.size();
    const auto parsed = std::from_chars(text.data(), end, *value);
    return parsed.ec == std::errc() && parsed.ptr == end && *value >= min && *value < UINT64_MAX;
  };
  RunSize size;
  const char* seed = std::getenv("HEADPAGE_MODEL_SEED");
  const char* seeds = std::getenv("HEADPAGE_MODEL_SEEDS");
  if (seed != nullptr && seeds != nullptr) {
    FAIL("HEADPAGE_MODEL_SEED and HEADPAGE_MODEL_SEEDS are both set: give one");
  }
  if (seed != nullptr) {
    if (!parse(seed, 0, &size.first_seed)) {
      FAIL("HEADPAGE_MODEL_SEED='" << seed << "': want a seed (an integer)");
    }
    size.last_seed = size.first_seed;
  } else if (seeds != nullptr) {
    const std::string text = seeds;
    const size_t colon = text.find(':');
    size.first_seed = 1;
    const bool ok = colon == std::string::npos
                        ? parse(text, 1, &size.last_seed)
                        : parse(text.substr(0, colon), 0, &size.first_seed) &&
                              parse(text.substr(colon + 1), size.first_seed, &size.last_seed);
    if (!ok) {
      const char* want = "want <first>:<last> with first <= last, or a count of seeds from 1";
      FAIL("HEADPAGE_MODEL_SEEDS='" << text << "': " << want);
    }
  }
  if (const char* steps = std::getenv("HEADPAGE_MODEL_STEPS")) {
    uint64_t value = 0;
    if (!parse(steps, 1, &value) || value > INT64_MAX) {
      FAIL("HEADPAGE_MODEL_STEPS='" << steps << "': want a positive number of operations per seed");
    }
    size.steps = static_cast<int64_t>(value);
  }
  return size;
}

TEST_CASE("BlockManager model test: random operations match a map of streams", "[blockmgr]") {
  const RunSize size = RunSizeFromEnvironment();
  int64_t exhausted = 0, copies = 0, in_place = 0, pending = 0;
  int64_t hits = 0, frozen = 0, reclaimed = 0;
  for (uint64_t seed = size.first_seed; seed <= size.last_seed; ++seed) {
    // Page sizes 1 (every token a page), odd, power of two; pools small enough
    // that exhaustion, in-place compaction and copy-on-write all happen.
    const int32_t page_size = std::vector<int32_t>{1, 3, 4, 8, 16, 5}[seed % 6];
    const int64_t pages = 24 + static_cast<int64_t>(480 / page_size);
    INFO("seed " << seed << " page_size " << page_size << " pages " << pages
                 << " (rerun with HEADPAGE_MODEL_SEED=" << seed
                 << " HEADPAGE_MODEL_STEPS=" << size.steps << ")");
    ModelTest test(seed, page_size, pages);
    test.Run(size.steps);
    exhausted += test.exhausted();
    copies += test.copies();
    in_place += test.in_place_rows();
    pending += test.pending_steps();
    hits += test.prefix_hit_tokens();
    frozen += test.frozen_evictions();
    reclaimed += test.reclaimed_pages();
  }
  // The interesting paths were exercised, not just the easy ones. Six seeds in a
  // row cover every page size; fewer steps than the default may not reach them.
  if (size.num_seeds() >= 6 && size.steps >= RunSize{}.steps) {
    REQUIRE(exhausted > 0);
    REQUIRE(copies > 0);
    REQUIRE(in_place > 0);
    REQUIRE(pending > 0);
    REQUIRE(hits > 0);
    REQUIRE(frozen > 0);
    REQUIRE(reclaimed > 0);
  }
}

}  // namespace
}  // namespace headpage
