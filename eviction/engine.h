// SPDX-License-Identifier: Apache-2.0
// File: eviction/engine.h
//
// EvictionEngine runs a policy (policy/) against the block manager and the
// pool's memory, wherever it lives: it scores each stream's tokens, allocates
// budgets, selects keep sets, has BlockManager::Evict() plan the compaction,
// executes the plan and releases the retired pages. Memory freed by a policy is
// really back in the pool when a call returns (on a device pool: once the
// compaction enqueued on the engine's stream has run, which every later kernel
// on that stream waits for).
//
// Where the steps run follows the cache view's memory: a host pool goes through
// the host executor (host_executor.h: policy/ and the ref:: kernels), a device
// pool through the CUDA executor (cuda_executor.h: the gpu:: kernels, with only
// the kept counts crossing to the host). Both decide exactly the same keep sets.
//
// It also remembers a score for every token it has seen (the policy's score at
// the last compression, plus the attention of every decode query given to
// ObserveDecode(), H2O-style), which H2O's streaming eviction, decode-time
// compression and the pool-wide budget (EnforcePoolBudget) work from. Tokens
// appended after the engine last saw a sequence have no score yet and are
// protected. On a device pool the scores stay on the device, one float per
// slot beside the positions, moved by every compaction (cuda_executor.h).
//
// Thread-compatible, like the manager it drives.
#ifndef HEADPAGE_EVICTION_ENGINE_H_
#define HEADPAGE_EVICTION_ENGINE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "blockmgr/block_manager.h"
#include "core/paged_kv.h"
#include "eviction/host_executor.h"
#include "eviction/layer_queries.h"
#include "kernels/gpu_launch.h"
#include "policy/budget.h"
#include "policy/collective.h"
#include "policy/config.h"

namespace headpage {

class CudaExecutor;

struct CompressResult {
  int64_t tokens_before = 0;  // sum of the sequence's stream lengths
  int64_t tokens_after = 0;
  int64_t pages_freed = 0;    // pool pages back on the free list
  std::vector<int32_t> kept;  // [num_layers][num_kv_heads] stream lengths after
};

// Decode-time compression, as kvpress's DecodingPress: every `interval` decode
// steps, compress every stream to `target` tokens, scoring with the queries of
// the last `window` decode steps.
struct DecodeSchedule {
  int32_t interval = 0;  // 0: never
  int32_t target = 0;    // tokens per head after each compression
  int32_t window = 32;
};

class EvictionEngine {
 public:
  // InvalidArgument if manager is null or the cache view does not match the
  // manager's geometry; Unimplemented for a device cache in a build without
  // CUDA. A device cache is compressed on `stream` (a cudaStream_t; null: the
  // legacy default stream). REQUIRES: the manager, the cache and the stream
  // outlive the engine (its destructor waits for the stream).
  [[nodiscard]] static absl::StatusOr<EvictionEngine> Create(BlockManager* manager,
                                                             const PagedKV& cache,
                                                             GpuStream stream = nullptr);
  EvictionEngine(EvictionEngine&&) noexcept;
  EvictionEngine& operator=(EvictionEngine&&) noexcept;
  ~EvictionEngine();

  // Where the engine's steps run: the pool's memory.
  MemoryKind memory() const { return cache_.memory; }

  // Compresses `seq` once, at the end of its prefill: queries[l] are layer l's
  // observation window (SnapKV & co.: the last `window` prompt queries; H2O: every
  // prompt query; TOVA, DBudgetKV: the last query is read from them). After it
  // returns, each stream holds exactly the tokens the policy chose, in position
  // order, and the pages it gave up are free. CriticalKV and DefensiveKV also
  // read each layer's LayerQueries::output_projection.
  // Errors, changing nothing: NotFound (seq), InvalidArgument (queries for the
  // wrong number of layers, no queries, a bad policy or budget, a missing
  // output projection, a window longer
  // than the prompt, host query positions outside the sequence or not strictly
  // ascending), FailedPrecondition (TOVA on a layer whose heads hold
  // different tokens). ResourceExhausted when the pool cannot even compact in
  // place (streams shared with a fork): each layer is compacted and its pages
  // released before the next, which keeps the extra memory to one layer's fresh
  // pages, so the layers before the failing one stay compressed.
  [[nodiscard]] absl::StatusOr<CompressResult> Compress(SeqId seq, const PolicyConfig& config,
                                                        const Budget& budget,
                                                        absl::Span<const LayerQueries> queries);

  // Compress for several sequences whose prefill ended in the same step, in one
  // call: queries[i] are seqs[i]'s. On a device pool the sequences are
  // pipelined (the host plans one while the GPU scores the next). Every check
  // runs before anything changes (a sequence listed twice is InvalidArgument);
  // a ResourceExhausted part way leaves the sequences before the failing one
  // compressed. Each result's pages_freed counts the pages that sequence's
  // streams gave up (back in the pool unless another sequence shares them).
  [[nodiscard]] absl::StatusOr<std::vector<CompressResult>> CompressBatch(
      absl::Span<const SeqId> seqs, const PolicyConfig& config, const Budget& budget,
      absl::Span<const absl::Span<const LayerQueries>> queries);

  // One decode step of `seq` has been written (Reserve + WriteKV): `queries[l]`
  // holds layer l's new query (num_queries == 1). On a device pool the queries
  // are read on the engine's stream: device memory must stay unchanged until
  // the stream reaches this call's work (pageable host memory is copied before
  // the call returns; pinned host memory, like device memory, is read later).
  // A sequence that shares pages with another (a fork) cannot observe decode
  // steps on a device pool: FailedPrecondition (see CudaExecutor::KeepsScores). Accumulates its attention into
  // the token scores (H2O), then applies the policy's decode-time eviction: H2O
  // evicts the lowest-scoring non-recent tokens of each stream longer than its
  // capacity at Compress (`capacity` below, 0 = none); `schedule` compresses
  // every `interval` steps. Same errors as Compress.
  [[nodiscard]] absl::Status ObserveDecode(SeqId seq, const PolicyConfig& config,
                                           absl::Span<const LayerQueries> queries,
                                           const DecodeSchedule& schedule = DecodeSchedule());

  // The pool-wide budget: evicts the globally least important tokens of every
  // sequence the engine has scores for (policy::GlobalKept, one threshold over
  // all of them), keeping at least `floor_tokens` in every stream, and its last
  // `protect_recent` tokens, until pages_to_free pages are back in the pool or
  // the floors stop it. A stream's negative scores (knorm's) are shifted to start
  // at zero first. Returns the pages freed. InvalidArgument for negative arguments.
  [[nodiscard]] absl::StatusOr<int64_t> EnforcePoolBudget(int64_t pages_to_free,
                                                          int32_t floor_tokens = 0,
                                                          int32_t protect_recent = 0);

  // Makes this engine one member of `group`, a tensor-parallel group in which
  // every member's pool holds its slice of every layer's KV heads, sliced as
  // transformers shards k_proj: rank r of s holds heads [r H, (r + 1) H) of s H,
  // H being this geometry's num_kv_heads. From then on Compress and
  // CompressBatch decide, for this member's streams, exactly what one engine
  // holding every head would (Ada-KV's top-k over a layer's heads, or over
  // every layer's, is agreed through the group: policy::AdaKept with a Shard),
  // and EnforcePoolBudget frees pages_to_free pages across the members' pools
  // together, keeping what one engine over all of them would keep
  // (policy::GlobalKept with a Shard; it returns the pages freed here),
  // and the members agree on errors: when one fails, every member returns an
  // error (Aborted where another failed) and none waits for ever. Every member
  // must make the same calls with the same arguments in the same order, as a
  // replicated scheduler does. A policy that reads across a layer's heads
  // (PolicyConfig::runs_on_head_slices) is then Unimplemented, as are decode-time
  // schedules, whose decode steps would need their own agreements. On a device
  // pool the GPU scores and the agreed counts come back to it (only counts
  // cross between members: CudaExecutor::AgreeLayerKept). InvalidArgument for
  // a null group. REQUIRES: the group outlives the engine.
  [[nodiscard]] absl::Status JoinGroup(policy::Collective* group);

  // In a group (JoinGroup): reports `error` to the group, meeting the other
  // members at their next agreement point (every one is a policy::Agree), so
  // that they fail too, and returns it. Without a group (or for OK), returns
  // it. The engine uses it for its own failures; an embedder calls it when it
  // refuses a call before it reaches the engine (a binding's bad argument),
  // where the other members are already in that call.
  [[nodiscard]] absl::Status FailTogether(absl::Status error);

  // The score the engine keeps for each token of `seq`: [stream][slot] over
  // each stream's scored tokens (a prefix of its slots; the tokens appended
  // since the engine last scored the stream have none). For inspection and
  // tests; on a device pool it copies them to the host. NotFound (seq).
  [[nodiscard]] absl::StatusOr<std::vector<std::vector<float>>> StoredScores(SeqId seq);

  // The first `tokens` tokens of `seq` are shared with other requests (a
  // cached prefix: BlockManager::AddSequenceWithPrefix): from now on every
  // compression of seq (Compress, decode-time eviction, the pool budget)
  // keeps them whole and in their pages, and a policy's budget applies to the
  // rest of the prompt, the prefix on top. 0 lifts it. NotFound (seq);
  // InvalidArgument unless tokens is a multiple of the page size and at most
  // the tokens still at their original slots (BlockManager::IntactTokens).
  [[nodiscard]] absl::Status FreezePrefix(SeqId seq, int64_t tokens);

  // Forgets what the engine keeps about `seq` (call when the sequence is freed;
  // state of sequences the manager no longer has is also dropped lazily).
  void Forget(SeqId seq);

 private:
  // What the engine keeps per sequence.
  struct SeqState {
    std::vector<std::vector<float>> scores;  // host pool: [stream] one per scored slot (a prefix)
    std::vector<int32_t> scored;             // device pool: [stream] scored slots (a prefix)
    std::vector<int32_t> capacity;           // [stream] H2O's streaming budget; 0 = none
    int64_t decode_steps = 0;
    // The last DecodeSchedule::window decode queries of each layer,
    // [layer][step][num_q_heads * head_dim], oldest first.
    std::vector<std::vector<std::vector<float>>> recent_queries;
    std::vector<int32_t> recent_positions;
    int32_t frozen = 0;  // FreezePrefix's tokens
  };

  EvictionEngine(BlockManager* manager, const PagedKV& cache, std::unique_ptr<CudaExecutor> cuda);
  // Drops the state of sequences the manager no longer has.
  void DropFreedSequences();

  // What Compress works out for one sequence before anything changes.
  struct Prepared {
    SeqId seq = 0;
    int32_t capacity = 0;                 // tokens per stream, from the budget
    std::vector<int32_t> layer_capacity;  // [layer], after any pyramid schedule
    // Head classes: [layer][kv_head] each stream's capacity (INT32_MAX: all).
    std::vector<int32_t> stream_capacity;
    policy::Protection protection;
    int32_t frozen = 0;  // FreezePrefix's tokens, protected by `protection`
    int64_t tokens_before = 0;
    int64_t pages_before = 0;
  };
  // `longest`: a group's longest stream of `seq` (0: this engine's), which one
  // engine over every head would size the budget by.
  absl::StatusOr<Prepared> Prepare(SeqId seq, const PolicyConfig& config, const Budget& budget,
                                   int32_t longest = 0) const;
  // CompressBatch's checks of the call's arguments, before any sequence's.
  absl::Status CheckCall(absl::Span<const SeqId> seqs, const PolicyConfig& config,
                         const Budget& budget,
                         absl::Span<const absl::Span<const LayerQueries>> queries) const;
  // CompressBatch's checks, before anything changes: each sequence's Prepared
  // (sized by longest[i] where given).
  absl::StatusOr<std::vector<Prepared>> PrepareBatch(
      absl::Span<const SeqId> seqs, const PolicyConfig& config, const Budget& budget,
      absl::Span<const absl::Span<const LayerQueries>> queries,
      absl::Span<const int32_t> longest = {}) const;
  // In a group: each sequence's longest stream over every member, at the start
  // of CompressBatch: an agreement on `checked` (CheckCall's verdict; where a
  // member's earlier failure meets the others, and batches of different sizes
  // are refused on every member), then one all-reduce of the lengths.
  absl::StatusOr<std::vector<int32_t>> GroupLongest(absl::Span<const SeqId> seqs,
                                                    const absl::Status& checked) const;
  absl::Status ValidateQueries(absl::Span<const LayerQueries> queries, bool one_each) const;
  // InvalidArgument when the policy needs each layer's output projection and a
  // layer has none, or one of another shape.
  absl::Status CheckOutputProjections(const PolicyConfig& config,
                                      absl::Span<const LayerQueries> queries) const;
  // Compress's host steps scoring every layer before any is compacted: for a
  // policy that allocates across layers, or whose scores read caller data
  // (W_o) that may yet be refused.
  absl::Status CompressScoringFirst(const Prepared& p, const PolicyConfig& config,
                                    absl::Span<const LayerQueries> queries);
  // InvalidArgument unless every host query position is inside the sequence
  // and they ascend strictly (device positions are not read here).
  absl::Status CheckQueryPositions(SeqId seq, absl::Span<const LayerQueries> queries) const;
  // Evicts to the given keep sets ([layer][kv_head] order over `layers`), runs the
  // compaction on the host pool and releases the retired pages; moves the stored
  // scores along. The sequence's frozen prefix stays where it is.
  absl::Status ApplyKeepSets(SeqId seq, absl::Span<const int32_t> layers,
                             const std::vector<std::vector<int32_t>>& keep_sets);
  SeqState& StateFor(SeqId seq);
  // FreezePrefix's tokens for `seq` (0 when none).
  int32_t FrozenOf(SeqId seq) const {
    const auto it = states_.find(seq);
    return it == states_.end() ? 0 : it->second.frozen;
  }
  // ObserveDecode's steps on a device pool, after its checks.
  absl::Status ObserveDecodeOnDevice(SeqId seq, const PolicyConfig& config,
                                     absl::Span<const LayerQueries> queries,
                                     const DecodeSchedule& schedule);

  // The group-wide index of this member's kv head h of `layer`, streams listed
  // layer by layer (layer * total heads + global head).
  int64_t GroupOrder(int32_t layer, int32_t h) const;
  // In a group: policy::AdaKept with a Shard over `allocations` (this member's
  // streams, ranked group-wide by `order` among group_heads), every
  // allocation's counts end to end. Its errors are agreed already.
  absl::StatusOr<std::vector<int32_t>> AdaKeptInGroup(
      const PolicyConfig& config, absl::Span<const policy::AdaAllocation> allocations,
      absl::Span<const int64_t> order, int64_t group_heads) const;
  // In a group: the pool budget's policy::GlobalKept with a Shard over this
  // member's streams of num_seqs sequences ([seq][layer][kv head]), after the
  // agreement that a member failing before it meets (unless `agreed`: the
  // caller just made one) and the check that every member has num_seqs.
  absl::StatusOr<std::vector<int32_t>> GlobalKeptInGroup(
      size_t num_seqs, absl::Span<const policy::StreamScores> streams,
      absl::Span<const int32_t> floors, int64_t pages_to_free, bool agreed = false) const;
  // The CUDA executor's AgreeLayerKept: one sequence's layers, each its own
  // allocation at layer_capacity[layer].
  absl::StatusOr<std::vector<int32_t>> AgreeAdaKept(
      const PolicyConfig& config, absl::Span<const int32_t> layer_capacity,
      absl::Span<const std::vector<policy::StreamScores>> layers) const;

  BlockManager* manager_;
  PagedKV cache_;
  policy::Collective* group_ = nullptr;
  HostExecutor host_;
  std::unique_ptr<CudaExecutor> cuda_;  // set for a device pool
  absl::flat_hash_map<SeqId, SeqState> states_;
};

}  // namespace headpage

#endif  // HEADPAGE_EVICTION_ENGINE_H_
