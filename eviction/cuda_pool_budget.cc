// SPDX-License-Identifier: Apache-2.0
// The CUDA executor's pool-wide budget over the stored scores, and reading the
// score store back.
#include <algorithm>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "eviction/cuda_executor_impl.h"
#include "kernels/global_kept.h"
#include "kernels/select.h"
#include "kernels/slot_scores.h"
#include "kernels/token_scores.h"

namespace headpage::cuda_executor {
absl::StatusOr<std::vector<std::vector<float>>> CudaExecutorImpl::StoredScores(
    SeqId seq, absl::Span<const int32_t> scored) {
  HEADPAGE_ASSIGN_OR_RETURN(const Measured size, Measure(*manager_, seq));
  HEADPAGE_RETURN_IF_ERROR(BeginCall(0));
  tables_.Clear();
  HEADPAGE_RETURN_IF_ERROR(tables_.Append(*manager_, seq, {}, scored));
  Layout dev, host;
  d_tables_ = dev.Add(sizeof(int32_t) * size.table_ints());
  d_scores_ = dev.Add(sizeof(float) * size.tokens);
  const size_t h_tables = host.Add(sizeof(int32_t) * size.table_ints());
  const size_t h_scores = host.Add(sizeof(float) * size.tokens);
  HEADPAGE_RETURN_IF_ERROR(Reserve(dev, host));
  HEADPAGE_RETURN_IF_ERROR(Store().status());
  HEADPAGE_ASSIGN_OR_RETURN(const DeviceTables d, Upload(tables_, h_tables, d_tables_));
  HEADPAGE_RETURN_IF_ERROR(gpu::SlotScores(StoreArgs(tables_, d, SlotScoresOp::kLoad), stream()));
  float* out = At<float>(pinned_.data(), h_scores);
  HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(out, device_.data() + d_scores_,
                                                      sizeof(float) * tables_.tokens(),
                                                      cudaMemcpyDeviceToHost, stream()),
                                      "reading the scores"));
  HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream()), "reading the scores"));
  std::vector<std::vector<float>> scores(tables_.streams());
  for (int32_t s = 0; s < tables_.streams(); ++s) {
    scores[s].assign(out + tables_.offsets[s], out + tables_.offsets[s] + tables_.scored[s]);
  }
  return scores;
}

absl::Status CudaExecutorImpl::EnforcePoolBudget(absl::Span<const SeqId> seqs,
                                                 absl::Span<std::vector<int32_t>* const> scored,
                                                 int64_t pages_to_free, int32_t floor_tokens,
                                                 int32_t protect_recent,
                                                 const AgreeGlobalKept& agree_kept) {
  const CacheGeometry& g = manager_->geometry();
  const int32_t per_seq = g.streams_per_sequence();
  if (pages_to_free == 0) return absl::OkStatus();
  // A group meets for its agreement even when this member scored nothing.
  if (seqs.empty()) return agree_kept ? agree_kept({}, {}).status() : absl::OkStatus();
  HEADPAGE_RETURN_IF_ERROR(BeginCall(0));
  tables_.Clear();
  int64_t plan_ints = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    HEADPAGE_ASSIGN_OR_RETURN(const Measured size, Measure(*manager_, seqs[i]));
    plan_ints = std::max<int64_t>(plan_ints, size.plan_ints());
    HEADPAGE_RETURN_IF_ERROR(tables_.Append(*manager_, seqs[i], {}, *scored[i]));
  }
  const int32_t streams = tables_.streams();
  // Each stream's candidates: its scored tokens before the last protect_recent
  // (the unscored ones are the most recent and protected too), and its floor.
  std::vector<int32_t> candidates_and_floors(2 * static_cast<size_t>(streams));
  for (int32_t s = 0; s < streams; ++s) {
    const int32_t n = tables_.lens[s];
    candidates_and_floors[s] = n - std::max(std::min(protect_recent, n), n - tables_.scored[s]);
    candidates_and_floors[streams + s] = std::min(floor_tokens, n);
  }

  GlobalKeptArgs global;
  global.num_streams = streams;
  global.num_scores = tables_.tokens();
  global.page_size = g.page_size;
  global.pages_to_free = pages_to_free;
  Layout dev, host;
  d_tables_ = dev.Add(sizeof(int32_t) * tables_.ints());
  d_scores_ = dev.Add(sizeof(float) * tables_.tokens());
  d_positions_ = dev.Add(sizeof(int32_t) * tables_.tokens());
  const size_t d_keep = dev.Add(sizeof(int32_t) * tables_.tokens());
  const size_t d_candidates_and_floors = dev.Add(sizeof(int32_t) * candidates_and_floors.size());
  const size_t d_kept = dev.Add(sizeof(int32_t) * streams);
  const size_t d_counts = dev.Add(sizeof(int32_t) * streams);
  const size_t d_global_ws = dev.Add(GlobalKeptWorkspaceBytes(global));
  d_plan_ = dev.Add(sizeof(int32_t) * plan_ints + per_seq);
  const size_t h_tables = host.Add(sizeof(int32_t) * tables_.ints());
  const size_t h_candidates_and_floors = host.Add(sizeof(int32_t) * candidates_and_floors.size());
  const size_t h_counts = host.Add(sizeof(int32_t) * streams);
  const size_t h_plan = host.Add(sizeof(int32_t) * plan_ints + per_seq);
  if (agree_kept) {
    h_scored_ = host.Add((sizeof(float) + sizeof(int32_t)) * tables_.tokens());
    h_agreed_ = host.Add(sizeof(int32_t) * streams);
  }
  HEADPAGE_RETURN_IF_ERROR(Reserve(dev, host));
  HEADPAGE_RETURN_IF_ERROR(Store().status());
  char* d = device_.data();

  absl::Status status = [&]() -> absl::Status {
    HEADPAGE_ASSIGN_OR_RETURN(const DeviceTables tables, Upload(tables_, h_tables, d_tables_));
    std::copy(candidates_and_floors.begin(), candidates_and_floors.end(), At<int32_t>(pinned_.data(), h_candidates_and_floors));
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpyAsync(d + d_candidates_and_floors, pinned_.data() + h_candidates_and_floors, sizeof(int32_t) * candidates_and_floors.size(),
                        cudaMemcpyHostToDevice, stream()),
        "uploading the floors"));
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(uploaded_, stream()), "recording"));
    // The stored scores, each stream's shifted to start at zero where they go
    // below it (GlobalKept weighs shares of a stream's mass); unscored tokens
    // rank above everything, so that Select keeps them.
    SlotScoresArgs load = StoreArgs(tables_, tables, SlotScoresOp::kLoad);
    load.shift_to_zero = true;
    load.unscored = std::numeric_limits<float>::infinity();
    HEADPAGE_RETURN_IF_ERROR(gpu::SlotScores(load, stream()));
    const TokenScoresArgs positions = PositionsArgs(tables_, tables);
    HEADPAGE_RETURN_IF_ERROR(gpu::TokenScores(positions, stream()));
    if (agree_kept) {
      // The group's GlobalKept, on the host streams the engine's host path
      // builds: unscored tokens score 0 and sit in the protected recent window.
      std::vector<policy::Protection> protection(streams);
      for (int32_t s = 0; s < streams; ++s) {
        protection[s].recent = std::max(protect_recent, tables_.lens[s] - tables_.scored[s]);
      }
      const absl::Span<const int32_t> floors =
          absl::MakeConstSpan(candidates_and_floors).subspan(streams);
      HEADPAGE_RETURN_IF_ERROR(AgreeAndUpload(
          tables_, protection, tables_.scored,
          [&](absl::Span<const policy::StreamScores> each) { return agree_kept(each, floors); },
          At<int32_t>(d, d_kept)));
    } else {
      global.score_offsets = tables.offsets;
      global.scores = At<float>(d, d_scores_);
      global.candidate_counts = At<int32_t>(d, d_candidates_and_floors);
      global.floors = At<int32_t>(d, d_candidates_and_floors) + streams;
      global.kept_counts = At<int32_t>(d, d_kept);
      global.workspace = d + d_global_ws;
      global.workspace_bytes = GlobalKeptWorkspaceBytes(global);
      HEADPAGE_RETURN_IF_ERROR(gpu::GlobalKept(global, stream()));
    }
    SelectArgs select;
    select.num_seqs = streams / g.num_kv_heads;
    select.num_kv_heads = g.num_kv_heads;
    select.score_offsets = tables.offsets;
    select.scores = At<float>(d, d_scores_);
    select.positions = At<int32_t>(d, d_positions_);
    select.recent = protect_recent;
    select.mode = SelectMode::kTopB;
    select.kept = At<int32_t>(d, d_kept);
    select.keep = At<int32_t>(d, d_keep);
    select.kept_counts = At<int32_t>(d, d_counts);
    HEADPAGE_RETURN_IF_ERROR(gpu::Select(select, stream()));
    int32_t* counts = At<int32_t>(pinned_.data(), h_counts);
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(counts, d + d_counts, sizeof(int32_t) * streams,
                                                        cudaMemcpyDeviceToHost, stream()),
                                        "copying the kept counts"));
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream()), "the pool budget"));
    for (size_t i = 0; i < seqs.size(); ++i) {
      const int32_t first = static_cast<int32_t>(i) * per_seq;
      bool changes = false;
      for (int32_t s = first; s < first + per_seq; ++s) changes |= counts[s] != tables_.lens[s];
      if (!changes) continue;
      // The last sequence's plan upload reads the pinned plan this one rewrites.
      HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaEventSynchronize(uploaded_), "the last upload"));
      // Shared pages are only read: a stream sharing them is compacted into
      // fresh pages of its own.
      const absl::Status compacted = PlanAndCompact(
          seqs[i], counts + first, absl::MakeConstSpan(tables_.offsets).subspan(first), d_keep,
          h_plan, nullptr, reinterpret_cast<float*>(store_.data()));
      if (!compacted.ok()) {
        // Some of its layers may be compacted: its scores no longer line up.
        std::fill(scored[i]->begin(), scored[i]->end(), 0);
        return compacted;
      }
      // Every unscored token is kept: the scored ones are what is left.
      std::vector<int32_t>& still_scored = *scored[i];
      for (int32_t s = 0; s < per_seq; ++s) {
        const int32_t n = tables_.lens[first + s];
        still_scored[s] = std::max(0, counts[first + s] - (n - tables_.scored[first + s]));
      }
    }
    return absl::OkStatus();
  }();
  if (!status.ok()) cudaStreamSynchronize(stream());
  return status;
}

}  // namespace headpage::cuda_executor
