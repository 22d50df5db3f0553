// SPDX-License-Identifier: Apache-2.0
// File: eviction/cuda_executor.h
//
// The CUDA executor: the eviction engine's steps on a pool in device memory.
// For one sequence it uploads the block tables of every layer (one copy),
// scores every (layer, kv head) stream on the GPU, selects keep sets with
// gpu::Select (per-stream top-B, or Ada-KV's layer-wide threshold with floors),
// copies only the kept counts to the host (one small copy and the one
// synchronization of the call), has BlockManager::Evict() plan the compaction,
// runs gpu::Compact straight from Select's keep sets (keep_offsets) and
// releases the retired pages once the compaction is enqueued. No K/V byte
// crosses to the host.
//
// It also keeps the engine's score store on the device (one float per slot,
// moved by Compact like the positions): H2O's running attention totals,
// decode-time compression and the pool-wide budget work from it there.
//
// Kept counts and keep sets equal the host executor's for the same scores: the
// selection is the same function (kernels/select), ties broken alike. Scores
// from the position, the key norm and the random scorer are bit-equal to the
// host's; SnapKV's window scores are computed with tensor cores and agree to
// rounding (kernels/window_scores.h).
//
// Runs on the CUDA stream given at creation; every kernel it enqueues, and
// every later use of the pool, must be ordered on that stream. It keeps device
// and pinned host scratch that grows to the largest sequence seen.
#ifndef HEADPAGE_EVICTION_CUDA_EXECUTOR_H_
#define HEADPAGE_EVICTION_CUDA_EXECUTOR_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "blockmgr/block_manager.h"
#include "core/paged_kv.h"
#include "eviction/layer_queries.h"
#include "kernels/gpu_launch.h"
#include "policy/config.h"
#include "policy/stream_scores.h"
#include "policy/types.h"

namespace headpage {

class CudaExecutor {
 public:
  // InvalidArgument unless `cache` is device memory; Unimplemented in builds
  // without CUDA. REQUIRES: manager outlives the executor and matches `cache`.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<CudaExecutor>> Create(BlockManager* manager,
                                                                           const PagedKV& cache,
                                                                           GpuStream stream);
  virtual ~CudaExecutor() = default;

  // Whether the GPU runs `config`'s scorer and allocator. Unimplemented naming
  // the missing part otherwise (H2O with the max group reduction: its sum over
  // every prompt query is taken in chunks, which only the mean commutes with).
  [[nodiscard]] static absl::Status Supports(const PolicyConfig& config);

  // One sequence of a batch: layer l keeps layer_capacity[l] tokens per stream
  // on average (uniform: each at most that), protecting `protection`;
  // queries[l] are layer l's observed queries, host or device memory, of the
  // cache's dtype.
  struct Job {
    SeqId seq = 0;
    absl::Span<const int32_t> layer_capacity;
    // [layer][kv_head]: each stream's own capacity (head classes), or empty.
    absl::Span<const int32_t> stream_capacity;
    policy::Protection protection;
    absl::Span<const LayerQueries> queries;
    // KeepsScores(seq), asked by the engine before the call: whether the
    // job's scores go to the store (and move with the compaction).
    bool keeps_scores = false;
    // Leading tokens of every stream that stay where they are (a shared
    // prefix): `protection` keeps them, and the compaction starts after them.
    int32_t frozen_tokens = 0;
    // In a group: the sequence's longest stream over every member, which the
    // scores' key chunks are planned for (WindowScoresArgs::plan_max_len), as
    // one executor over every head plans them (0: this pool's longest).
    int32_t plan_len = 0;
  };

  // In a tensor-parallel group (EvictionEngine::JoinGroup) the members' kv
  // heads share Ada-KV's budget of a layer, and the pool-wide budget, so how
  // many tokens each stream keeps is agreed with the other members instead of
  // being computed on the device: the executor scores on the GPU, copies the
  // scores and positions to the host, asks the caller for the kept counts, and
  // keeps each stream's top count (Select's kTopB) as the device's own
  // selection would. Only counts cross between members.
  //
  // One job's streams, layer by layer ([layer]: that layer's kv heads, with the
  // job's protection): each stream's kept count, [layer][kv head].
  using AgreeLayerKept = std::function<absl::StatusOr<std::vector<int32_t>>(
      const Job& job, absl::Span<const std::vector<policy::StreamScores>> layers)>;
  // The pool budget's streams (every sequence of the call, [seq][layer][kv
  // head], as policy::GlobalKept takes them) and their floors: each one's count.
  using AgreeGlobalKept = std::function<absl::StatusOr<std::vector<int32_t>>(
      absl::Span<const policy::StreamScores> streams, absl::Span<const int32_t> floors)>;

  // Compresses every layer of every job's sequence. The sequences are pipelined:
  // every sequence's scores and keep sets are enqueued first, then each one's
  // kept counts are waited for in turn and its plan and compaction enqueued,
  // so the host's planning of one sequence overlaps the GPU's scoring of the
  // next. Each kept token's score goes to the score store (below). The engine
  // has validated the policy, the budgets and the query counts. Errors before
  // the first compaction change nothing; a ResourceExhausted from Evict (a
  // stream shared with a fork in a pool without room) leaves the sequences
  // and layers before the failing one compressed, as the host executor does.
  // With `agree_kept` (an Ada allocator in a group) each job's kept counts come
  // from it, called once per job in order, after the job's scoring; an error
  // it returns is returned as it is.
  [[nodiscard]] virtual absl::Status Compress(const PolicyConfig& config,
                                              absl::Span<const Job> jobs,
                                              const AgreeLayerKept& agree_kept) = 0;

  // The score store: one float per slot of the pool, beside the positions,
  // moved by every compaction the executor runs. A stream's scored tokens are
  // a prefix of its slots (scored[s] of them, kept by the engine); the tokens
  // after them were appended since the stream was last scored. One score per
  // slot cannot hold two sequences' scores, so the store is written only for
  // a sequence whose pages are its own: Compress stores nothing for a
  // sequence sharing pages (a fork, a shared prefix: its tokens count as
  // unscored), and ObserveDecode refuses one.
  static bool KeepsScores(const BlockManager& manager, SeqId seq);

  // One decode step of `seq` has been written: queries[l] holds layer l's one
  // new query (host or device memory, the cache's dtype). Adds its attention,
  // reduced over each group by config.reduce, into the stored scores (H2O's
  // running total; unscored tokens start from zero) and sets scored[s] to the
  // stream's length; then, with capacity > 0, evicts every stream longer than
  // `capacity` back to it, keeping `protection` and the highest totals, and
  // sets scored[s] to what it keeps. FailedPrecondition, changing nothing,
  // unless KeepsScores(seq).
  [[nodiscard]] virtual absl::Status ObserveDecode(const PolicyConfig& config, SeqId seq,
                                                   absl::Span<const LayerQueries> queries,
                                                   absl::Span<int32_t> scored, int32_t capacity,
                                                   const policy::Protection& protection) = 0;

  // DecodingPress's memory of the last `window` decode queries of `seq`, on
  // the device: Remember adds this step's (every layer's one query, as given
  // to ObserveDecode); Recent returns them as each layer's observed queries
  // (device memory, in no particular row order: every scorer sums over rows
  // or picks the highest position), valid until the next call for `seq`.
  [[nodiscard]] virtual absl::Status RememberQueries(SeqId seq,
                                                     absl::Span<const LayerQueries> queries,
                                                     int32_t window) = 0;
  [[nodiscard]] virtual absl::StatusOr<std::vector<LayerQueries>> RecentQueries(SeqId seq) = 0;
  virtual void Forget(SeqId seq) = 0;

  // The pool-wide budget over the stored scores (policy::GlobalKept, exactly
  // as the engine runs it on a host pool): every stream of `seqs` (scored[i]
  // are seqs[i]'s counts, updated to what each stream keeps) gives up its
  // globally least important scored tokens, keeping at least floor_tokens and
  // its last protect_recent tokens and every unscored one, until
  // pages_to_free pages are free or the floors stop it. With `agree_kept` (a
  // group) the counts come from it, called once (also for no sequences); its
  // streams hold each scored token's stored score (shifted to start at zero
  // where they go below it, as the device's selection weighs them) and 0 for
  // the unscored ones, which their protection keeps.
  [[nodiscard]] virtual absl::Status EnforcePoolBudget(absl::Span<const SeqId> seqs,
                                                       absl::Span<std::vector<int32_t>* const> scored,
                                                       int64_t pages_to_free, int32_t floor_tokens,
                                                       int32_t protect_recent,
                                                       const AgreeGlobalKept& agree_kept) = 0;

  // The stored scores of `seq`'s streams, [stream][slot] over each scored prefix.
  [[nodiscard]] virtual absl::StatusOr<std::vector<std::vector<float>>> StoredScores(
      SeqId seq, absl::Span<const int32_t> scored) = 0;

  // In a group of `members` (EvictionEngine::JoinGroup; 1: alone): scores are
  // computed in key chunks sized for members x this pool's streams
  // (WindowScoresArgs::plan_streams), so that each member's scores, and with
  // them its kept tokens, are bit for bit those of one executor over every head.
  virtual void SetGroupMembers(int32_t members) = 0;

  GpuStream stream() const { return stream_; }

 protected:
  explicit CudaExecutor(GpuStream stream) : stream_(stream) {}

 private:
  GpuStream stream_;
};

}  // namespace headpage

#endif  // HEADPAGE_EVICTION_CUDA_EXECUTOR_H_
