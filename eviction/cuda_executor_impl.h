// SPDX-License-Identifier: Apache-2.0
// File: eviction/cuda_executor_impl.h
//
// Internal to the CUDA executor (CUDA builds only): the implementation class,
// whose steps are spread over cuda_executor.cc (the compression pipeline),
// cuda_scoring.cc (the scorers), cuda_decode.cc (decode-time scores and
// eviction, DecodingPress's queries) and cuda_pool_budget.cc (the pool-wide
// budget and reading the score store).
#ifndef HEADPAGE_EVICTION_CUDA_EXECUTOR_IMPL_H_
#define HEADPAGE_EVICTION_CUDA_EXECUTOR_IMPL_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "eviction/cuda_executor.h"
#include "eviction/cuda_scratch.h"
#include "kernels/select_args.h"
#include "kernels/slot_scores_args.h"
#include "kernels/token_scores_args.h"
#include "kernels/window_scores_args.h"

namespace headpage::cuda_executor {

// Block tables of some streams (one sequence's, layer-major over its (layer,
// kv head) streams, or several sequences' in a row) as the kernels read them,
// and where their arrays lie in the scratch buffers.
struct Tables {
  std::vector<int32_t> indptr{0}, page_ids, lens, offsets{0}, kept, scored;
  // DBudgetKV: where q head g of each stream's group puts its attention row,
  // [group][streams + 1] (DBudgetCutArgs::attention's layout).
  std::vector<int32_t> group_offsets;
  int32_t max_len = 0;

  int32_t streams() const { return static_cast<int32_t>(lens.size()); }
  int32_t tokens() const { return offsets.back(); }
  void Clear();
  // Appends `seq`'s streams: their pages, lengths and dense offsets; kept[s]
  // = min(length, the stream's own capacity, or else its layer's) (the length,
  // without capacities); scored[s] from `scored` (or 0). InvalidArgument past
  // int32 offsets.
  absl::Status Append(const BlockManager& manager, SeqId seq,
                      absl::Span<const int32_t> layer_capacity,
                      absl::Span<const int32_t> scored,
                      absl::Span<const int32_t> stream_capacity = {});
  // Fills group_offsets for `group` q heads per stream.
  void SetGroupOffsets(int32_t group);
  // The arrays, back to back: indptr, page_ids, lens, offsets, kept, scored,
  // group_offsets.
  size_t ints() const {
    return indptr.size() + page_ids.size() + lens.size() + offsets.size() + kept.size() +
           scored.size() + group_offsets.size();
  }
  void CopyTo(int32_t* out) const;
};

// The device copies of a Tables' arrays (CopyTo's order).
struct DeviceTables {
  const int32_t* indptr = nullptr;
  const int32_t* page_ids = nullptr;
  const int32_t* lens = nullptr;
  const int32_t* offsets = nullptr;
  const int32_t* kept = nullptr;
  const int32_t* scored = nullptr;
  const int32_t* group_offsets = nullptr;
  DeviceTables(const Tables& t, const int32_t* base);
};

// Sizes measured before the tables are built, to lay out the scratch.
struct Measured {
  int32_t streams = 0;
  int64_t pages = 0;
  int32_t tokens = 0;
  int32_t max_len = 0;
  int32_t group_offsets = 0;  // DBudgetKV's, [group][streams + 1]
  size_t table_ints() const { return 6 * static_cast<size_t>(streams) + 2 + pages + group_offsets; }
  // A compaction plan's arrays: at most one row per stream, every page twice.
  size_t plan_ints() const { return 7 * (static_cast<size_t>(streams) + 1) + 2 * pages; }
};
absl::StatusOr<Measured> Measure(const BlockManager& manager, SeqId seq);

// A sequence's streams ([layer][kv head], end to end) split by layer, as a
// group's AgreeLayerKept takes them.
std::vector<std::vector<policy::StreamScores>> ByLayer(
    absl::Span<const policy::StreamScores> streams, int32_t layers, int32_t heads);

// One job of a Compress call: its tables and its own scratch sections (its
// keep sets and counts are read by its compaction, after later jobs' scoring
// ran; its tables, counts and plan in pinned memory may have copies pending).
struct JobState {
  Measured size;
  Tables tables;
  size_t d_keep = 0, d_counts = 0;
  size_t h_tables = 0, h_counts = 0, h_plan = 0;
};

// DecodingPress's last decode queries of one sequence, on the device:
// [layers][q_heads][window][head_dim] of the cache dtype and [window]
// positions, rows written round robin.
struct QueryRing {
  Scratch<false> memory;
  int32_t window = 0;
  int32_t count = 0;  // rows held, <= window
  int32_t next = 0;   // the row the next step writes
  Scratch<false> packed;  // the rows held, packed, while the ring is not full
};

class CudaExecutorImpl final : public CudaExecutor {
 public:
  CudaExecutorImpl(BlockManager* manager, const PagedKV& cache, GpuStream stream)
      : CudaExecutor(stream), manager_(manager), cache_(cache) {}
  ~CudaExecutorImpl() override;

  absl::Status Compress(const PolicyConfig& config, absl::Span<const Job> jobs,
                        const AgreeLayerKept& agree_kept) override;
  absl::Status ObserveDecode(const PolicyConfig& config, SeqId seq,
                             absl::Span<const LayerQueries> queries, absl::Span<int32_t> scored,
                             int32_t capacity, const policy::Protection& protection) override;
  absl::Status RememberQueries(SeqId seq, absl::Span<const LayerQueries> queries,
                               int32_t window) override;
  absl::StatusOr<std::vector<LayerQueries>> RecentQueries(SeqId seq) override;
  void Forget(SeqId seq) override { rings_.erase(seq); }
  void SetGroupMembers(int32_t members) override { group_members_ = members; }
  absl::Status EnforcePoolBudget(absl::Span<const SeqId> seqs,
                                 absl::Span<std::vector<int32_t>* const> scored,
                                 int64_t pages_to_free, int32_t floor_tokens,
                                 int32_t protect_recent,
                                 const AgreeGlobalKept& agree_kept) override;
  absl::StatusOr<std::vector<std::vector<float>>> StoredScores(
      SeqId seq, absl::Span<const int32_t> scored) override;

 private:
  // cuda_executor.cc: the compression pipeline.
  absl::Status CompressJobs(const PolicyConfig& config, absl::Span<const Job> jobs,
                            const AgreeLayerKept& agree_kept);
  // Scores and selects one sequence, stores its scores, and starts the copy of
  // its kept counts; with agree_kept, selects the counts it returns.
  absl::Status ScoreAndSelect(const PolicyConfig& config, const Job& job, const JobState& state,
                              const AgreeLayerKept& agree_kept);
  // A group's agreement over `t`'s streams: copies their dense scores and
  // positions (d_scores_, d_positions_) to pinned memory at h_scored_, waits,
  // hands each stream's StreamScores (stream s protected by protection[s], its
  // first scores_count[s] scores as copied and the rest 0; all of them when
  // scores_count is empty) to `agree`, checks the counts it returns (one per
  // stream, in [0, length]) and uploads them through pinned memory at
  // h_agreed_ to `kept` on the device.
  absl::Status AgreeAndUpload(
      const Tables& t, absl::Span<const policy::Protection> protection,
      absl::Span<const int32_t> scores_count,
      const std::function<absl::StatusOr<std::vector<int32_t>>(
          absl::Span<const policy::StreamScores>)>& agree,
      int32_t* kept);
  // Waits for `counted` (unless null), evicts `seq` to the kept counts (host
  // memory, [layer][kv head]), uploads the plan from pinned memory at h_plan
  // and enqueues the compaction, reading keep sets at d_keep + offsets[s] and
  // moving the stored `scores` (unless null); releases the retired pages. The
  // first `frozen` tokens of every stream stay where they are (the counts and
  // keep sets cover whole streams, and keep them).
  absl::Status PlanAndCompact(SeqId seq, const int32_t* counts, absl::Span<const int32_t> offsets,
                              size_t d_keep, size_t h_plan, cudaEvent_t counted, float* scores,
                              int32_t frozen = 0);
  // Waits for the last upload out of pinned memory, so that a call may
  // rewrite it; creates the events on first use.
  absl::Status BeginCall(size_t events);
  // Grows the scratch buffers to the layouts (waiting for the stream first).
  absl::Status Reserve(const Layout& device, const Layout& pinned);
  // The score store, allocated on first use.
  absl::StatusOr<float*> Store();
  // The arguments the steps share, over `t` (uploaded as `d`): WindowScores'
  // common ones (num_seqs: the layers), and the dense scores at d_scores_ and
  // positions at d_positions_ as the other kernels read them.
  void SetScoresArgs(int32_t kernel_size, policy::Pooling pooling, policy::GroupReduce reduce);
  TokenScoresArgs PositionsArgs(const Tables& t, const DeviceTables& d) const;
  // REQUIRES: the store exists (Store() succeeded).
  SlotScoresArgs StoreArgs(const Tables& t, const DeviceTables& d, SlotScoresOp op) const;
  // One upload of `tables` from pinned memory at h_offset to device_ at d_offset.
  absl::StatusOr<DeviceTables> Upload(const Tables& tables, size_t h_offset, size_t d_offset);

  // cuda_scoring.cc: the policy's scores of one sequence's streams into the
  // dense d_scores_ (and their positions into d_positions_).
  absl::Status Score(const PolicyConfig& config, const Job& job, const Tables& t,
                     const DeviceTables& d);
  // H2O: attention summed over every query given, in chunks of
  // kMaxScoreWindow rows, reduced over the group by its mean.
  absl::Status ScoreAllQueries(const Job& job, const Tables& t, const DeviceTables& d);
  // Copies rows [first, first + rows) of every layer's queries into one
  // [layers][q_heads][rows][head_dim] array at d_queries_ (what WindowScores
  // reads with layers as its sequences); with last_only, each layer's last
  // query (the highest position) alone.
  absl::Status StageQueries(absl::Span<const LayerQueries> queries, int32_t first, int32_t rows,
                            bool last_only);
  // plan_len: the stream length the key chunks are planned for (Job::plan_len).
  WindowScoresArgs ScoresArgs(const Tables& t, const DeviceTables& d, int32_t window,
                              int32_t plan_len = 0) const;
  // DBudgetKV: the last query's attention row of every q head (one WindowScores
  // per position in the group, each over the q heads at that position), then
  // the cut, which overwrites the tables' kept counts on the device.
  absl::Status CutDBudget(const PolicyConfig& config, const Job& job, const Tables& t,
                          const DeviceTables& d);
  // Copies q head h * group + member's row last_rows[l] (the last query) of
  // every kv head h and layer l into [layers][kv_heads][1][head_dim] at d_queries_.
  absl::Status StageGroupMember(absl::Span<const LayerQueries> queries,
                                absl::Span<const int32_t> last_rows, int32_t member);
  // The row of `q`'s highest position (read from the device when it is there).
  absl::StatusOr<int32_t> LastRow(const LayerQueries& q);

  BlockManager* manager_;
  PagedKV cache_;
  std::vector<JobState> jobs_;
  Tables tables_;  // ObserveDecode's and the pool budget's
  CompactionPlan plan_;
  std::vector<int32_t> keep_offsets_;
  std::vector<cudaEvent_t> events_;
  // Recorded after every upload out of pinned memory: the next call waits for
  // it before it rewrites that memory.
  cudaEvent_t uploaded_ = nullptr;
  Scratch<false> device_;
  Scratch<true> pinned_;
  Scratch<false> store_;
  absl::flat_hash_map<SeqId, std::unique_ptr<QueryRing>> rings_;
  // Sections of device_ that a call's sequences reuse in turn (stream order
  // keeps one sequence's kernels before the next one's writes).
  size_t d_tables_ = 0, d_positions_ = 0, d_scores_ = 0, d_queries_ = 0, d_query_positions_ = 0,
         d_scores_ws_ = 0, d_plan_ = 0, d_attention_ = 0, d_dbudget_ws_ = 0;
  // Sections of pinned_ for a group's agreement (AgreeAndUpload).
  size_t h_scored_ = 0, h_agreed_ = 0;
  WindowScoresArgs scores_args_;
  SelectArgs select_;
  int32_t group_members_ = 1;
};

}  // namespace headpage::cuda_executor

#endif  // HEADPAGE_EVICTION_CUDA_EXECUTOR_IMPL_H_
