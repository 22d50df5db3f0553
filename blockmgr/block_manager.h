// SPDX-License-Identifier: Apache-2.0
// File: blockmgr/block_manager.h
//
// BlockManager maps every (sequence, layer, kv_head) stream to its own block
// table of pages from one shared PagePool, so that each stream can have its own
// length: what head-wise eviction (Ada-KV, SnapKV, PyramidKV, DBudgetKV) needs
// in order to give memory back.
//
// It is host bookkeeping for the serving engine's scheduler thread: it sees
// counts, never K/V bytes, and returns the data movement as plans (plans.h) that a
// kernel backend executes in stream order. Every operation checks first and
// commits only if it can succeed, so an error (bad input, or ResourceExhausted:
// the normal state of a loaded server) leaves the manager exactly as it was.
//
// Page lifetime. A stream holds one reference to each page of its block table;
// Fork() shares them (refcount + 1), and a shared, partly filled tail page is
// copied before it is written (copy-on-write, planned by Reserve()). The prefix
// cache holds one more reference to each page of the blocks it keeps (see
// "Prefix caching" below). Evict()
// *retires* the pages it takes from a stream instead of releasing them: the
// compaction plan still has to read them. Retired pages stay allocated until
// ReleaseRetiredPages(), which the engine calls once the plans are enqueued.
// Pages released by Free() and copy-on-write may be reused by the next
// allocation; that is safe because every plan runs in stream order.
//
// Example, one decode step for a batch:
//   for each seq i: manager.Reserve(seq[i], 1, {slots, batch, i}, &copies);
//   execute copies (kernels CopyPages), then WriteKV per layer;
//   manager.RefreshBlockTable(&table[layer]) and upload what changed;
//   run attention.
//
// Thread-compatible: one thread owns the manager and its pool.
#ifndef HEADPAGE_BLOCKMGR_BLOCK_MANAGER_H_
#define HEADPAGE_BLOCKMGR_BLOCK_MANAGER_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/node_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "allocator/page_pool.h"
#include "blockmgr/block_table.h"
#include "blockmgr/plans.h"
#include "blockmgr/prefix_cache.h"
#include "core/geometry.h"

namespace headpage {

struct BlockManagerStats {
  int64_t num_sequences = 0;
  int64_t num_streams = 0;
  // Pages. The figures assume this manager is the pool's only user.
  int64_t pages_total = 0;
  int64_t pages_free = 0;
  int64_t pages_in_use = 0;   // held by at least one stream
  int64_t pages_retired = 0;  // held only by compaction plans not yet released
  int64_t pages_cached = 0;   // held by the prefix cache (and maybe by streams)
  // Held by the prefix cache alone: what reclaiming every unused block frees.
  int64_t pages_cached_only = 0;
  int64_t cached_blocks = 0;
  int64_t cached_blocks_unused = 0;  // in the least-recently-used list
  int64_t peak_pages_used = 0;
  // Slots of the pages in use. A shared page counts once.
  int64_t allocated_slots = 0;
  int64_t used_slots = 0;  // holding a live token
  // allocated - used: the empty tail of each stream's last page (every other page
  // of a block table is full).
  int64_t internal_fragmentation = 0;
  // Per-stream lengths. stream_tokens counts a shared token once per stream.
  int64_t stream_tokens = 0;
  int64_t min_stream_len = 0;
  int64_t max_stream_len = 0;
  double mean_stream_len = 0.0;
};

class BlockManager {
 public:
  // InvalidArgument for a bad geometry, a null pool, or a pool whose slot ids
  // (num_pages * page_size) do not fit in int32; FailedPrecondition for a pool
  // another live manager serves (PagePool::Claim). REQUIRES: `pool` outlives
  // the manager.
  [[nodiscard]] static absl::StatusOr<BlockManager> Create(const CacheGeometry& geometry,
                                                           PagePool* pool);

  BlockManager(BlockManager&&) = default;
  BlockManager& operator=(BlockManager&&) = default;
  ~BlockManager() = default;

  // A new, empty sequence.
  SeqId AddSequence();

  // Room for `num_tokens` new tokens in every stream of `seq`. Writes their slot
  // ids where `out` says (plans.h: [token][layer][kv_head]) and appends the copy-on-write page copies the writes
  // need to `page_copies`. O(streams + new pages).
  // Errors: NotFound (unknown or freed seq), InvalidArgument (num_tokens < 0 or
  // past the int32 position range), FailedPrecondition (seq has an unreleased
  // compaction plan), ResourceExhausted (no message) when the pool is short.
  [[nodiscard]] absl::Status Reserve(SeqId seq, int64_t num_tokens, SlotMappingOut out,
                                     PageCopies* page_copies);
  // The same, with a slot mapping [num_tokens][num_layers][num_kv_heads] of its own.
  [[nodiscard]] absl::StatusOr<ReservePlan> Reserve(SeqId seq, int64_t num_tokens);
  // The same, writing no slot ids: for callers that track memory only (the
  // workload simulator), where a prefill's num_tokens * streams slot ids would
  // cost more than everything else Reserve does. Same effect on the manager and
  // the same errors (InvalidArgument for a null page_copies).
  [[nodiscard]] absl::Status ReserveWithoutSlots(SeqId seq, int64_t num_tokens,
                                                 PageCopies* page_copies);

  // Pages Reserve(seq, num_tokens) would take now, for admission control with
  // PagePool::CanAllocate(). NotFound, InvalidArgument, FailedPrecondition as for Reserve.
  [[nodiscard]] absl::StatusOr<int64_t> PagesNeeded(SeqId seq, int64_t num_tokens) const;

  // A new sequence sharing every page of `parent` (parallel sampling, beam
  // search). O(pages of parent). NotFound, FailedPrecondition as for Reserve.
  [[nodiscard]] absl::StatusOr<SeqId> Fork(SeqId parent);

  // Releases every page of `seq`; the id is dead afterwards. NotFound for an
  // unknown or already freed seq; FailedPrecondition with an unreleased plan.
  [[nodiscard]] absl::Status Free(SeqId seq);

  // Shrinks stream (seq, layer, h) to kept_counts[h] tokens for every kv_head h
  // and appends num_kv_heads rows (kv_head order) to `plan`. Survivors go to
  // fresh pages when the pool has enough; otherwise a stream whose pages no other
  // sequence shares is compacted in place (its tail pages are retired). Streams
  // that keep everything get a row that moves nothing.
  // Errors, all changing nothing: NotFound (seq), InvalidArgument (layer out of
  // range, kept_counts.size() != num_kv_heads, a count < 0 or > the stream's
  // length, null plan), FailedPrecondition (this layer of seq already has a row
  // in an unreleased plan), ResourceExhausted (no room even in place).
  [[nodiscard]] absl::Status Evict(SeqId seq, int32_t layer,
                                   absl::Span<const int32_t> kept_counts, CompactionPlan* plan);
  // The same, leaving the first `frozen_tokens` tokens of each of the layer's
  // streams where they are: only the rest (the suffix) is compacted, so pages
  // shared with other requests or with the prefix cache stay shared. This is how
  // a request with a cached prefix compresses only its private part. The plan's
  // rows cover the suffixes: a row's source is the stream's pages from
  // frozen_tokens / page_size on, its length and keep set count suffix slots
  // (slot frozen_tokens + i of the stream is the row's slot i), and it keeps
  // kept_counts[h] - frozen_tokens of them.
  // InvalidArgument also when frozen_tokens is negative, not a multiple of
  // page_size, more than a kept count, or more than the tokens still at their
  // original slots (those before the sequence's first eviction, or the frozen
  // tokens of every eviction since).
  [[nodiscard]] absl::Status Evict(SeqId seq, int32_t layer,
                                   absl::Span<const int32_t> kept_counts, int64_t frozen_tokens,
                                   CompactionPlan* plan);

  // Releases the pages that Evict() retired. Call once every compaction plan
  // built since the last call is enqueued (or executed, on the CPU backend).
  void ReleaseRetiredPages();

  // Layer `layer`'s block tables for `seqs` (see block_table.h). NotFound for an
  // unknown seq, InvalidArgument for a bad layer, an empty batch or more than
  // 2^31 - 1 page entries.
  [[nodiscard]] absl::StatusOr<BlockTableCsr> BlockTable(
      int32_t layer, absl::Span<const SeqId> seqs,
      const BlockTableOptions& options = BlockTableOptions()) const;

  // Brings `table` up to date: appended pages go into the rows' headroom and are
  // listed in changed_entries(); a row whose pages were replaced (eviction,
  // copy-on-write) is rewritten; a row past its capacity rebuilds the whole
  // table (rebuilt() is then true). O(rows + changed entries) when no rebuild is
  // needed. NotFound, changing nothing, if a sequence of the table was freed.
  [[nodiscard]] absl::Status RefreshBlockTable(BlockTableCsr* table) const;

  BlockManagerStats Stats() const;

  // ---------------------------------------------------------------------------
  // Prefix caching
  //
  // A sequence offers the full blocks of its prompt to the cache once their K/V
  // is written (CachePrefix); a later request that starts with the same token
  // ids starts with those pages (AddSequenceWithPrefix) instead of computing
  // them again. Cached pages are shared by reference, as a fork's are: they are
  // full, so nothing writes them; Evict never compacts them in place; an
  // eviction that moves a stream off them leaves them to the cache. Unused
  // blocks stay cached until the pool runs short: Reserve and Evict reclaim
  // them, least recently used first, before they report ResourceExhausted.
  // The salt separates K/V that the same tokens would not reproduce (another
  // model or adapter, another policy state); 0 when nothing does.

  struct PrefixHit {
    SeqId seq = 0;
    int64_t cached_tokens = 0;  // a multiple of page_size
  };

  // Tokens at the start of `tokens` whose blocks are cached under `salt`: a
  // multiple of page_size. O(tokens matched).
  int64_t CachedPrefixTokens(absl::Span<const int32_t> tokens, uint64_t salt) const;

  // A new sequence whose streams hold the cached pages of the longest cached
  // prefix of `tokens`, as if those tokens had been reserved and written; it
  // takes no page. An engine passes a prompt without its last token, whose
  // logits it must compute anyway. O(blocks matched * streams).
  PrefixHit AddSequenceWithPrefix(absl::Span<const int32_t> tokens, uint64_t salt);

  // Caches the full blocks of seq's first tokens.size() tokens, whose ids are
  // `tokens` and whose K/V is written (or will be, in stream order, before any
  // later plan reads it), under `salt`; blocks already cached with these very
  // pages are shared. Stops at a block cached with other pages (two requests
  // computed the same prefix at once: the second keeps its own) and at the
  // tokens an eviction moved. Returns the tokens of seq now in the cache.
  // NotFound (seq); InvalidArgument if tokens.size() exceeds seq's tokens;
  // FailedPrecondition with an unreleased plan. O(tokens + new blocks * streams).
  [[nodiscard]] absl::StatusOr<int64_t> CachePrefix(SeqId seq, absl::Span<const int32_t> tokens,
                                                    uint64_t salt);

  // Frees unused cached blocks, least recently used first, until the pool has
  // `free_pages` free pages or no unused block is left. Returns the pages freed.
  int64_t ReclaimCachedPages(int64_t free_pages);

  // Free pages, plus those that reclaiming every unused cached block would free:
  // what an admission decision may count on.
  int64_t AvailablePages() const { return pool_->free_pages() + cache_only_pages_; }
  // Pages the prefix cache holds a reference to (Stats().pages_cached, in O(1)).
  int64_t CachedPages() const { return cached_pages_; }

  bool Contains(SeqId seq) const { return seqs_.contains(seq); }
  // Whether every page of `seq` is held by its own stream alone (no fork shares
  // one): O(1) for a sequence never forked, else O(pages). NotFound (seq).
  [[nodiscard]] absl::StatusOr<bool> HoldsPagesAlone(SeqId seq) const;
  int64_t num_sequences() const { return static_cast<int64_t>(seqs_.size()); }
  const CacheGeometry& geometry() const { return geometry_; }
  const PagePool& pool() const { return *pool_; }

  // Positions appended to `seq` so far (its logical length).
  [[nodiscard]] absl::StatusOr<int64_t> NumTokens(SeqId seq) const;
  // Leading tokens of `seq` still at their original slots in every stream:
  // those before its first eviction, or the frozen ones of every eviction
  // since. What Evict may freeze and CachePrefix may cache. NotFound (seq).
  [[nodiscard]] absl::StatusOr<int64_t> IntactTokens(SeqId seq) const;
  // Lengths of seq's streams, [num_layers][num_kv_heads].
  [[nodiscard]] absl::StatusOr<absl::Span<const uint32_t>> StreamLengths(SeqId seq) const;
  // The block table of one stream.
  [[nodiscard]] absl::StatusOr<absl::Span<const PageId>> StreamPages(SeqId seq, int32_t layer,
                                                                     int32_t kv_head) const;

  // Proves the bookkeeping from scratch: every page is exactly free or
  // referenced, refcounts equal the references streams and retired lists hold,
  // lengths fit the pages, the incremental statistics match a recount. Internal
  // naming the first violation. O(pool + pages held).
  [[nodiscard]] absl::Status CheckInvariants() const;

 private:
  // The streams of one sequence, struct-of-arrays indexed by
  // stream = layer * num_kv_heads + kv_head. Reserve() on the decode path reads
  // only lens, tails and tail_maybe_shared: 9 contiguous bytes a stream.
  struct Sequence {
    int64_t num_tokens = 0;
    std::vector<uint32_t> lens;
    std::vector<PageId> tails;              // pages.back(), or kNoPage
    std::vector<uint8_t> tail_maybe_shared;  // 0: the tail page is known to be ours alone
    std::vector<uint32_t> versions;          // + 1 whenever existing page ids change
    std::vector<std::vector<PageId>> pages;
    std::vector<uint8_t> pending_layers;  // layer has rows in an unreleased plan
    int32_t num_pending_layers = 0;       // count of the above
    bool any_maybe_shared = false;        // false: every tail_maybe_shared is 0
    // Set on parent and child by Fork(), and on a sequence that takes pages
    // from the prefix cache or gives it some: the only ways a page gains a
    // second holder. Never cleared. While false, every page of the sequence has
    // this stream as its one holder and no other reference, whatever other
    // sequences share: Evict() and Free() then skip their per-page checks.
    bool ever_shared = false;
    // Tokens 0..intact_tokens-1 lie at slots 0..intact_tokens-1 of every stream:
    // what CachePrefix may cache and Evict may freeze.
    int64_t intact_tokens = 0;
    // The cached blocks this sequence uses: page j of every stream is blocks[j]'s
    // page for that stream, j < blocks.size().
    std::vector<CachedBlock*> blocks;
  };

  BlockManager(const CacheGeometry& geometry, PagePool* pool);

  absl::StatusOr<Sequence*> Find(SeqId seq);
  absl::StatusOr<const Sequence*> Find(SeqId seq) const;
  static bool HasPendingPlan(const Sequence& s);
  // InvalidArgument for a negative num_tokens or one past the int32 positions,
  // FailedPrecondition while seq has an unreleased compaction plan.
  absl::Status CheckReservable(const Sequence& s, SeqId seq, int64_t num_tokens) const;
  int64_t ModPage(int64_t x) const { return page_mask_ ? (x & page_mask_) : x % page_size_; }
  int64_t CountReservePages(const Sequence& s, int64_t num_tokens) const;
  // Reserve after its checks: allocates, plans copy-on-write, and writes token
  // t's slot ids to record[t * streams + stream] unless record is null.
  absl::Status CommitReserve(Sequence* s, int64_t num_tokens, int32_t* record,
                             PageCopies* page_copies);
  // References held by streams: pool refcount less the retired lists' and the
  // prefix cache's. REQUIRES: a stream or the cache holds `page` (retired_refs_
  // is exact only for those).
  uint32_t StreamHolders(PageId page) const {
    return pool_->refcount(page) - retired_refs_[page] - cached_[page];
  }
  // A stream stops holding `page`, whose live tokens numbered `fill`.
  void ReleaseFromStream(PageId page, int64_t fill);
  // True when this stream is the only holder of every page of `s`: nothing
  // shared s's pages, or no page of the pool has two stream holders (each extra
  // holder adds its page's fill, at least one token, to shared_excess_slots_)
  // and the prefix cache holds none.
  bool SoleHolder(const Sequence& s) const {
    return !s.ever_shared || (shared_excess_slots_ == 0 && cached_pages_ == 0);
  }
  // After pool references to `page` were dropped: counts it as held by the
  // cache alone if it now is.
  void NoteCacheOnly(PageId page) {
    if (cached_[page] && pool_->refcount(page) == 1) ++cache_only_pages_;
  }
  // CachePrefix's result: seq's tokens in the cache (after a debug check).
  int64_t CachedTokens(const Sequence& s) const;
  // Drops seq's use of its cached blocks from index `keep` on, last first.
  void ReleaseBlocks(Sequence* s, size_t keep);
  // Reclaims unused blocks until `need` pages are free; false if it cannot.
  bool MakeRoom(int64_t need) {
    if (need > pool_->free_pages()) ReclaimCachedPages(need);
    return need <= pool_->free_pages();
  }
  // A stream of `len` tokens held in `pages` stops holding pages[from..]: they
  // are retired (appended to retired_) in one call per stream, not per page.
  // `sole_holder`: SoleHolder() of the stream's sequence.
  void RetireFromStream(absl::Span<const PageId> pages, int64_t len, int64_t from,
                        bool sole_holder);
  void RebuildTable(BlockTableCsr* table, absl::Span<const Sequence* const> seqs) const;
  void DebugCheck() const;
  // CheckInvariants' parts for the prefix cache: a sequence's blocks (counting
  // their users), then every cached block (adding the cache's references).
  absl::Status CheckSequenceBlocks(SeqId id, const Sequence& s,
                                   absl::flat_hash_map<const CachedBlock*, int32_t>* block_users) const;
  absl::Status CheckCachedBlocks(
      const absl::flat_hash_map<const CachedBlock*, int32_t>& block_users,
      std::vector<uint32_t>* refs) const;

  CacheGeometry geometry_;
  PagePool* pool_;
  // The pool's claim (PagePool::Claim): moved with the manager, given back
  // when the manager that holds it goes.
  struct PoolClaim {
    PagePool* pool = nullptr;
    PoolClaim() = default;
    explicit PoolClaim(PagePool* p) : pool(p) {}
    PoolClaim(PoolClaim&& other) noexcept : pool(other.pool) { other.pool = nullptr; }
    PoolClaim& operator=(PoolClaim&& other) noexcept {
      if (this != &other) {
        if (pool != nullptr) pool->Unclaim();
        pool = other.pool;
        other.pool = nullptr;
      }
      return *this;
    }
    ~PoolClaim() {
      if (pool != nullptr) pool->Unclaim();
    }
  };
  PoolClaim claim_;
  int32_t num_streams_;  // per sequence
  int32_t page_size_;
  int64_t page_mask_;  // page_size - 1 when page_size is a power of two, else 0
  bool page_size_is_pow2_;

  absl::flat_hash_map<SeqId, std::unique_ptr<Sequence>> seqs_;
  SeqId next_seq_id_ = 1;

  // Σ stream lengths, and how much of it counts a slot of a shared page more
  // than once: Σ over pages of (stream holders - 1) * fill. used slots =
  // stream_tokens_ - shared_excess_slots_. Kept incrementally, so that Stats()
  // costs O(streams) and the decode path never looks at page fill levels.
  int64_t stream_tokens_ = 0;
  int64_t shared_excess_slots_ = 0;

  std::vector<PageId> retired_;        // one entry per retired reference
  // [pool pages] The entries of retired_ made while another stream still held
  // the page; retired_shared_ lists them (one entry per count) for the reset.
  // For every page a stream holds this is exactly its entries in retired_, which
  // is all StreamHolders() needs: a page retired by its last stream holder can
  // gain no stream holder before it is released, so it goes uncounted. That is
  // the common case (every page of an unforked sequence), and skipping it spares
  // Evict() and ReleaseRetiredPages() a random write per page.
  std::vector<uint32_t> retired_refs_;
  std::vector<PageId> retired_shared_;
  int64_t retired_only_pages_ = 0;     // pages held by retired_ and no stream
  std::vector<SeqId> pending_seqs_;    // seqs with pending_layers set

  // The prefix cache: every cached block by its key, the unused ones in
  // least-recently-used order (oldest first), and per pool page whether the
  // cache holds a reference to it.
  absl::node_hash_map<PrefixBlockKey, CachedBlock> cache_;
  CachedBlockLru lru_;
  uint64_t next_block_id_ = 1;
  std::vector<uint8_t> cached_;
  int64_t cached_pages_ = 0;      // pages with cached_ set
  int64_t cache_only_pages_ = 0;  // of those, the ones nothing else references

  std::vector<PageId> scratch_pages_;  // reused by Reserve() and Evict()
  // Reserve()'s per-stream cursors for many tokens, kept to avoid allocating.
  std::vector<int64_t> stream_offset_;
  std::vector<const PageId*> stream_cursor_;
};

}  // namespace headpage

#endif  // HEADPAGE_BLOCKMGR_BLOCK_MANAGER_H_
