// SPDX-License-Identifier: Apache-2.0
// The CUDA executor while a sequence decodes: each step's attention folded
// into the stored scores, H2O's eviction back to its budget, and DecodingPress's
// last queries kept on the device.
#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "eviction/cuda_executor_impl.h"
#include "kernels/select.h"
#include "kernels/slot_scores.h"
#include "kernels/token_scores.h"
#include "kernels/window_scores.h"

namespace headpage::cuda_executor {
namespace {

// A decode step's queries are copied as they are: they must be the cache's dtype.
absl::Status CheckDecodeDTypes(const CacheGeometry& g, absl::Span<const LayerQueries> queries) {
  for (size_t l = 0; l < queries.size(); ++l) {
    if (queries[l].dtype != g.dtype) {
      return absl::InvalidArgumentError(absl::StrCat("CudaExecutor: layer ", l, "'s decode query is ",
                                                     DTypeName(queries[l].dtype), ", not the cache's ",
                                                     DTypeName(g.dtype)));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CudaExecutorImpl::ObserveDecode(const PolicyConfig& config, SeqId seq,
                                             absl::Span<const LayerQueries> queries,
                                             absl::Span<int32_t> scored, int32_t capacity,
                                             const policy::Protection& protection) {
  const CacheGeometry& g = manager_->geometry();
  const int32_t layers = g.num_layers, heads = g.num_kv_heads;
  HEADPAGE_RETURN_IF_ERROR(CheckDecodeDTypes(g, queries));
  HEADPAGE_ASSIGN_OR_RETURN(const Measured size, Measure(*manager_, seq));
  if (!KeepsScores(*manager_, seq)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CudaExecutor: sequence ", seq, " shares pages with another sequence (a fork or a shared "
        "prefix); the device score store keeps one score per slot and cannot hold both "
        "sequences' decode scores; use a host pool"));
  }
  if (size.tokens == 0) return absl::OkStatus();
  HEADPAGE_RETURN_IF_ERROR(BeginCall(0));
  tables_.Clear();
  HEADPAGE_RETURN_IF_ERROR(tables_.Append(*manager_, seq, {}, scored));
  bool evicts = false;
  if (capacity > 0) {
    for (int32_t& kept : tables_.kept) {
      evicts |= kept > capacity;
      kept = std::min(kept, capacity);
    }
  }

  SetScoresArgs(1, policy::Pooling::kNone, config.reduce);
  WindowScoresArgs sizing = scores_args_;
  sizing.window = 1;
  sizing.max_len = size.max_len;
  sizing.num_scores = size.tokens;
  Layout dev, host;
  d_tables_ = dev.Add(sizeof(int32_t) * size.table_ints());
  d_positions_ = dev.Add(sizeof(int32_t) * size.tokens);
  d_scores_ = dev.Add(sizeof(float) * size.tokens);
  d_queries_ = dev.Add(static_cast<size_t>(layers) * g.num_q_heads * g.head_dim * SizeOf(g.dtype));
  d_query_positions_ = dev.Add(sizeof(int32_t) * layers);
  d_scores_ws_ = dev.Add(WindowScoresWorkspaceBytes(sizing));
  d_plan_ = dev.Add(sizeof(int32_t) * size.plan_ints() + static_cast<size_t>(layers) * heads);
  // The keep sets, then Select's kept counts (the host knows them already).
  const size_t d_keep = dev.Add(sizeof(int32_t) * (static_cast<size_t>(size.tokens) + size.streams));
  const size_t h_tables = host.Add(sizeof(int32_t) * size.table_ints());
  const size_t h_plan = host.Add(sizeof(int32_t) * size.plan_ints() + size.streams);
  HEADPAGE_RETURN_IF_ERROR(Reserve(dev, host));
  HEADPAGE_RETURN_IF_ERROR(Store().status());

  absl::Status status = [&]() -> absl::Status {
    HEADPAGE_ASSIGN_OR_RETURN(const DeviceTables d, Upload(tables_, h_tables, d_tables_));
    // This step's attention, reduced over each group, then added to the totals.
    HEADPAGE_RETURN_IF_ERROR(StageQueries(queries, 0, 1, /*last_only=*/false));
    HEADPAGE_RETURN_IF_ERROR(gpu::WindowScores(ScoresArgs(tables_, d, 1), stream()));
    const SlotScoresArgs add = StoreArgs(tables_, d, SlotScoresOp::kAdd);
    HEADPAGE_RETURN_IF_ERROR(gpu::SlotScores(add, stream()));
    for (int32_t s = 0; s < tables_.streams(); ++s) scored[s] = tables_.lens[s];
    if (!evicts) return absl::OkStatus();

    // H2O: back to the budget, the highest totals outside the protected tokens.
    const TokenScoresArgs positions = PositionsArgs(tables_, d);
    HEADPAGE_RETURN_IF_ERROR(gpu::TokenScores(positions, stream()));
    SelectArgs select;
    select.num_seqs = layers;
    select.num_kv_heads = heads;
    select.score_offsets = d.offsets;
    select.scores = At<float>(device_.data(), d_scores_);
    select.positions = At<int32_t>(device_.data(), d_positions_);
    select.sinks = protection.sinks;
    select.recent = protection.recent;
    select.mode = SelectMode::kTopB;
    select.kept = d.kept;
    select.keep = At<int32_t>(device_.data(), d_keep);
    select.kept_counts = At<int32_t>(device_.data(), d_keep) + tables_.tokens();
    HEADPAGE_RETURN_IF_ERROR(gpu::Select(select, stream()));
    // The kept counts are the host's own: no copy back, no wait.
    HEADPAGE_RETURN_IF_ERROR(PlanAndCompact(seq, tables_.kept.data(), tables_.offsets, d_keep,
                                            h_plan, nullptr,
                                            reinterpret_cast<float*>(store_.data())));
    for (int32_t s = 0; s < tables_.streams(); ++s) scored[s] = tables_.kept[s];
    return absl::OkStatus();
  }();
  if (!status.ok()) cudaStreamSynchronize(stream());
  return status;
}

absl::Status CudaExecutorImpl::RememberQueries(SeqId seq, absl::Span<const LayerQueries> queries,
                                               int32_t window) {
  const CacheGeometry& g = manager_->geometry();
  const size_t row = static_cast<size_t>(g.head_dim) * SizeOf(g.dtype);
  const size_t layer_bytes = static_cast<size_t>(g.num_q_heads) * window * row;
  HEADPAGE_RETURN_IF_ERROR(CheckDecodeDTypes(g, queries));
  std::unique_ptr<QueryRing>& slot = rings_[seq];
  if (slot == nullptr) slot = std::make_unique<QueryRing>();
  QueryRing& ring = *slot;
  if (ring.window != window) {
    // A new window starts an empty ring (the host keeps the last rows that
    // fit; schedules do not change windows mid-sequence). The old rows may
    // still be read by queued work.
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream()), "synchronizing"));
    HEADPAGE_RETURN_IF_ERROR(
        ring.memory.Reserve(layer_bytes * g.num_layers + sizeof(int32_t) * window));
    ring.window = window;
    ring.count = 0;
    ring.next = 0;
  }
  int32_t* positions = At<int32_t>(ring.memory.data(), layer_bytes * g.num_layers);
  for (size_t l = 0; l < queries.size(); ++l) {
    const LayerQueries& q = queries[l];
    const cudaMemcpyKind kind =
        q.memory == MemoryKind::kDevice ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice;
    // [q_heads][1][d] into row `next` of [q_heads][window][d].
    char* to = ring.memory.data() + l * layer_bytes + ring.next * row;
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpy2DAsync(to, window * row, q.data, row, row, g.num_q_heads, kind, stream()),
        "remembering the decode queries"));
    if (l == 0) {
      HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(positions + ring.next, q.positions,
                                                          sizeof(int32_t), kind, stream()),
                                          "remembering the decode position"));
    }
  }
  // Host queries are copied from pageable memory: done when the call returns.
  ring.count = std::min(ring.count + 1, window);
  ring.next = (ring.next + 1) % window;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<LayerQueries>> CudaExecutorImpl::RecentQueries(SeqId seq) {
  const auto it = rings_.find(seq);
  if (it == rings_.end() || it->second->count == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("CudaExecutor: no decode queries remembered for sequence ", seq));
  }
  QueryRing& ring = *it->second;
  const CacheGeometry& g = manager_->geometry();
  const size_t row = static_cast<size_t>(g.head_dim) * SizeOf(g.dtype);
  const size_t layer_bytes = static_cast<size_t>(g.num_q_heads) * ring.window * row;
  const int32_t* positions = At<int32_t>(ring.memory.data(), layer_bytes * g.num_layers);
  std::vector<LayerQueries> out(g.num_layers);
  if (ring.count == ring.window) {
    for (int32_t l = 0; l < g.num_layers; ++l) {
      out[l] = {ring.memory.data() + l * layer_bytes, positions, ring.window, g.dtype,
                MemoryKind::kDevice, {}};
    }
    return out;
  }
  // Not full yet: rows 0..count-1 hold the steps so far; pack them.
  const size_t packed_layer = static_cast<size_t>(g.num_q_heads) * ring.count * row;
  if (ring.packed.bytes() < packed_layer * g.num_layers) {
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream()), "synchronizing"));
    HEADPAGE_RETURN_IF_ERROR(ring.packed.Reserve(static_cast<size_t>(g.num_q_heads) * ring.window *
                                                 row * g.num_layers));
  }
  for (int32_t l = 0; l < g.num_layers; ++l) {
    char* to = ring.packed.data() + l * packed_layer;
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpy2DAsync(to, ring.count * row, ring.memory.data() + l * layer_bytes,
                          ring.window * row, ring.count * row, g.num_q_heads,
                          cudaMemcpyDeviceToDevice, stream()),
        "packing the decode queries"));
    out[l] = {to, positions, ring.count, g.dtype, MemoryKind::kDevice, {}};
  }
  return out;
}

}  // namespace headpage::cuda_executor
