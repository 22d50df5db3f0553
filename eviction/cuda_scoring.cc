// SPDX-License-Identifier: Apache-2.0
// The CUDA executor's scorers: one dense score per token of a sequence's
// streams, in the layout of its tables' offsets.
#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "eviction/cuda_executor_impl.h"
#include "kernels/dbudget_cut.h"
#include "kernels/token_scores.h"
#include "kernels/window_scores.h"

namespace headpage::cuda_executor {
namespace {

TokenScore TokenScoreOf(PolicyConfig::Scorer scorer) {
  switch (scorer) {
    case PolicyConfig::Scorer::kRecency: return TokenScore::kPosition;
    case PolicyConfig::Scorer::kKeyNorm: return TokenScore::kKeyNorm;
    case PolicyConfig::Scorer::kRandom: return TokenScore::kRandom;
    default: return TokenScore::kNone;
  }
}

}  // namespace

WindowScoresArgs CudaExecutorImpl::ScoresArgs(const Tables& t, const DeviceTables& d,
                                              int32_t window, int32_t plan_len) const {
  WindowScoresArgs args = scores_args_;
  args.window = window;
  args.max_len = t.max_len;
  args.plan_max_len = plan_len;
  args.num_scores = t.tokens();
  args.queries = device_.data() + d_queries_;
  args.query_positions = At<int32_t>(device_.data(), d_query_positions_);
  args.indptr = d.indptr;
  args.page_ids = d.page_ids;
  args.num_page_ids = static_cast<int32_t>(t.page_ids.size());
  args.lens = d.lens;
  args.score_offsets = d.offsets;
  args.scores = At<float>(device_.data(), d_scores_);
  args.workspace = device_.data() + d_scores_ws_;
  args.workspace_bytes = WindowScoresWorkspaceBytes(args);
  return args;
}

absl::StatusOr<int32_t> CudaExecutorImpl::LastRow(const LayerQueries& q) {
  const int32_t* where = q.positions;
  std::vector<int32_t> host_positions;
  if (q.memory == MemoryKind::kDevice) {
    host_positions.resize(q.num_queries);
    // On the executor's stream, after whatever wrote the positions there.
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(host_positions.data(), q.positions,
                                                        sizeof(int32_t) * q.num_queries,
                                                        cudaMemcpyDeviceToHost, stream()),
                                        "reading the query positions"));
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream()), "reading the query positions"));
    where = host_positions.data();
  }
  return static_cast<int32_t>(std::max_element(where, where + q.num_queries) - where);
}

absl::Status CudaExecutorImpl::StageQueries(absl::Span<const LayerQueries> queries, int32_t first,
                                            int32_t rows, bool last_only) {
  const CacheGeometry& g = manager_->geometry();
  const size_t row = static_cast<size_t>(g.head_dim) * SizeOf(g.dtype);
  const int32_t staged = last_only ? 1 : rows;
  const size_t layer_bytes = static_cast<size_t>(g.num_q_heads) * staged * row;
  int32_t* positions = At<int32_t>(device_.data(), d_query_positions_);
  for (size_t l = 0; l < queries.size(); ++l) {
    const LayerQueries& q = queries[l];
    const cudaMemcpyKind kind =
        q.memory == MemoryKind::kDevice ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice;
    char* to = device_.data() + d_queries_ + l * layer_bytes;
    int32_t from = first;
    if (last_only) {
      HEADPAGE_ASSIGN_OR_RETURN(from, LastRow(q));
    }
    // Rows [from, from + staged) of every q head: [q_heads][N][d] -> [q_heads][staged][d].
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpy2DAsync(to, staged * row, static_cast<const char*>(q.data) + from * row,
                          row * q.num_queries, staged * row, g.num_q_heads, kind, stream()),
        "copying the queries"));
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(positions + l * staged, q.positions + from,
                                                        sizeof(int32_t) * staged, kind, stream()),
                                        "copying the query positions"));
  }
  return absl::OkStatus();
}

absl::Status CudaExecutorImpl::StageGroupMember(absl::Span<const LayerQueries> queries,
                                                absl::Span<const int32_t> last_rows,
                                                int32_t member) {
  const CacheGeometry& g = manager_->geometry();
  const size_t row = static_cast<size_t>(g.head_dim) * SizeOf(g.dtype);
  const int32_t group = g.group_size();
  int32_t* positions = At<int32_t>(device_.data(), d_query_positions_);
  for (size_t l = 0; l < queries.size(); ++l) {
    const LayerQueries& q = queries[l];
    const cudaMemcpyKind kind =
        q.memory == MemoryKind::kDevice ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice;
    const int32_t last = last_rows[l];
    // q head h * group + member of [q_heads][N][d], for every kv head h.
    const char* from = static_cast<const char*>(q.data) +
                       (static_cast<size_t>(member) * q.num_queries + last) * row;
    char* to = device_.data() + d_queries_ + l * g.num_kv_heads * row;
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaMemcpy2DAsync(to, row, from, group * q.num_queries * row,
                                                          row, g.num_kv_heads, kind, stream()),
                                        "copying the last queries"));
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(positions + l, q.positions + last,
                                                        sizeof(int32_t), kind, stream()),
                                        "copying the last query positions"));
  }
  return absl::OkStatus();
}

absl::Status CudaExecutorImpl::CutDBudget(const PolicyConfig& config, const Job& job,
                                          const Tables& t, const DeviceTables& d) {
  const CacheGeometry& g = manager_->geometry();
  const int32_t group = g.group_size();
  float* attention = At<float>(device_.data(), d_attention_);
  // Each layer's last query, found once (device positions are read back).
  std::vector<int32_t> last_rows(job.queries.size());
  for (size_t l = 0; l < job.queries.size(); ++l) {
    HEADPAGE_ASSIGN_OR_RETURN(last_rows[l], LastRow(job.queries[l]));
  }
  // Row g of each stream's group: the q heads at position g of every group
  // make a batch of kv_heads streams with one q head each.
  for (int32_t member = 0; member < group; ++member) {
    HEADPAGE_RETURN_IF_ERROR(StageGroupMember(job.queries, last_rows, member));
    WindowScoresArgs rows = ScoresArgs(t, d, 1);
    rows.num_q_heads = g.num_kv_heads;
    rows.reduce = policy::GroupReduce::kMean;
    rows.kernel_size = 1;
    rows.pooling = policy::Pooling::kNone;
    rows.score_offsets = d.group_offsets + member * (t.streams() + 1);
    rows.num_scores = group * t.tokens();
    rows.scores = attention;
    rows.workspace_bytes = WindowScoresWorkspaceBytes(rows);
    HEADPAGE_RETURN_IF_ERROR(gpu::WindowScores(rows, stream()));
  }
  DBudgetCutArgs cut;
  cut.num_seqs = g.num_layers;
  cut.num_kv_heads = g.num_kv_heads;
  cut.group_size = group;
  cut.score_offsets = d.offsets;
  cut.num_tokens = t.tokens();
  cut.scores = At<float>(device_.data(), d_scores_);
  cut.positions = At<int32_t>(device_.data(), d_positions_);
  cut.sinks = job.protection.sinks;
  cut.recent = job.protection.recent;
  cut.attention = attention;
  cut.threshold = config.dbudget_threshold;
  cut.by_position = config.dbudget_by_position;
  // Select reads the kept counts from the tables' device copy.
  cut.kept = const_cast<int32_t*>(d.kept);
  cut.workspace = device_.data() + d_dbudget_ws_;
  cut.workspace_bytes = DBudgetCutWorkspaceBytes(cut);
  return gpu::DBudgetCut(cut, stream());
}

absl::Status CudaExecutorImpl::ScoreAllQueries(const Job& job, const Tables& t,
                                               const DeviceTables& d) {
  HEADPAGE_RETURN_IF_ERROR(CudaStatus(
      cudaMemsetAsync(device_.data() + d_scores_, 0, sizeof(float) * t.tokens(), stream()),
      "clearing the scores"));
  // Softmax rows are independent and the group's mean commutes with their sum,
  // so chunks of rows add up to policy::AccumulateAttention over all of them.
  const int32_t total = job.queries[0].num_queries;
  for (int32_t first = 0; first < total; first += kMaxScoreWindow) {
    const int32_t rows = std::min(kMaxScoreWindow, total - first);
    HEADPAGE_RETURN_IF_ERROR(StageQueries(job.queries, first, rows, /*last_only=*/false));
    WindowScoresArgs args = ScoresArgs(t, d, rows, job.plan_len);
    args.accumulate = true;
    HEADPAGE_RETURN_IF_ERROR(gpu::WindowScores(args, stream()));
  }
  return absl::OkStatus();
}

absl::Status CudaExecutorImpl::Score(const PolicyConfig& config, const Job& job, const Tables& t,
                                     const DeviceTables& d) {
  using S = PolicyConfig::Scorer;
  const CacheGeometry& g = manager_->geometry();
  // The dense positions Select reads, and the scores that need only the token.
  TokenScoresArgs token = PositionsArgs(t, d);
  token.score = TokenScoreOf(config.scorer);
  token.seed = config.seed;
  HEADPAGE_RETURN_IF_ERROR(gpu::TokenScores(token, stream()));
  if (config.scorer == S::kH2O) return ScoreAllQueries(job, t, d);
  const bool tova = config.scorer == S::kTova;
  if (config.scorer != S::kSnapKV && !tova) return absl::OkStatus();
  // SnapKV: the window's attention, pooled. TOVA: the last query's, unpooled,
  // averaged over each group ...
  const int32_t rows = tova ? 1 : job.queries[0].num_queries;
  HEADPAGE_RETURN_IF_ERROR(StageQueries(job.queries, 0, rows, tova));
  HEADPAGE_RETURN_IF_ERROR(gpu::WindowScores(ScoresArgs(t, d, rows, job.plan_len), stream()));
  if (!tova) return absl::OkStatus();
  // ... then over the layer's groups: one score per token for every head.
  MeanOverHeadsArgs mean;
  mean.num_groups = g.num_layers;
  mean.heads_per_group = g.num_kv_heads;
  mean.offsets = d.offsets;
  mean.lens = d.lens;
  mean.max_len = t.max_len;
  mean.num_scores = t.tokens();
  mean.scores = At<float>(device_.data(), d_scores_);
  return gpu::MeanOverHeads(mean, stream());
}

}  // namespace headpage::cuda_executor
