// SPDX-License-Identifier: Apache-2.0
#include "eviction/cuda_executor.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/status.h"

#if HEADPAGE_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "kernels/compact.h"
#include "kernels/select.h"
#include "kernels/token_scores.h"
#include "kernels/window_scores.h"
#endif

namespace headpage {

absl::Status CudaExecutor::Supports(const PolicyConfig& config) {
  using S = PolicyConfig::Scorer;
  using A = PolicyConfig::Allocator;
  switch (config.scorer) {
    case S::kSnapKV:
    case S::kRecency:
    case S::kKeyNorm:
    case S::kRandom:
    case S::kNone:
      break;
    case S::kH2O:
    case S::kTova:
      return absl::UnimplementedError(absl::StrCat(
          "policy ", config.name, ": its scorer (attention of every prompt query, or TOVA's "
          "last-query attention) does not run on the GPU yet; use a host pool"));
  }
  if (config.allocator == A::kDBudget) {
    return absl::UnimplementedError(absl::StrCat(
        "policy ", config.name, ": DBudgetKV's budget does not run on the GPU yet; use a host pool"));
  }
  return absl::OkStatus();
}

#if HEADPAGE_HAVE_CUDA
namespace {

absl::Status CudaStatus(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return absl::OkStatus();
  const auto code = error == cudaErrorMemoryAllocation ? absl::StatusCode::kResourceExhausted
                                                       : absl::StatusCode::kInternal;
  return absl::Status(code, absl::StrCat("CudaExecutor: ", what, ": ", cudaGetErrorName(error),
                                         " (", cudaGetErrorString(error), ")"));
}

// Memory that only grows: device (cudaMalloc) or pinned host (cudaMallocHost,
// so that copies from and to it are truly asynchronous).
template <bool kPinned>
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { Free(); }

  // Makes room for `bytes`. The old contents are lost; the caller has
  // synchronized the stream so that nothing in flight still uses them.
  absl::Status Reserve(size_t bytes) {
    if (bytes <= bytes_) return absl::OkStatus();
    Free();
    const cudaError_t error = kPinned ? cudaMallocHost(&data_, bytes) : cudaMalloc(&data_, bytes);
    if (error != cudaSuccess) {
      data_ = nullptr;
      cudaGetLastError();  // not sticky: clear it
      return CudaStatus(error, kPinned ? "pinned host scratch" : "device scratch");
    }
    bytes_ = bytes;
    return absl::OkStatus();
  }
  char* data() const { return static_cast<char*>(data_); }
  size_t bytes() const { return bytes_; }

 private:
  void Free() {
    if (data_ != nullptr) kPinned ? cudaFreeHost(data_) : cudaFree(data_);
    data_ = nullptr;
    bytes_ = 0;
  }
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Sections of one scratch buffer, each 256-byte aligned.
class Layout {
 public:
  size_t Add(size_t bytes) {
    const size_t at = total_;
    total_ += (bytes + 255) / 256 * 256;
    return at;
  }
  size_t total() const { return total_; }

 private:
  size_t total_ = 0;
};

template <typename T>
T* At(char* base, size_t offset) {
  return reinterpret_cast<T*>(base + offset);
}

TokenScore TokenScoreOf(PolicyConfig::Scorer scorer) {
  switch (scorer) {
    case PolicyConfig::Scorer::kRecency: return TokenScore::kPosition;
    case PolicyConfig::Scorer::kKeyNorm: return TokenScore::kKeyNorm;
    case PolicyConfig::Scorer::kRandom: return TokenScore::kRandom;
    default: return TokenScore::kNone;
  }
}

class CudaExecutorImpl final : public CudaExecutor {
 public:
  CudaExecutorImpl(BlockManager* manager, const PagedKV& cache, GpuStream stream)
      : CudaExecutor(stream), manager_(manager), cache_(cache) {}

  absl::Status Compress(SeqId seq, const PolicyConfig& config,
                        absl::Span<const int32_t> layer_capacity,
                        const policy::Protection& protection,
                        absl::Span<const LayerQueries> queries) override;

 private:
  // Host side of one call: the tables of every stream, layer-major.
  absl::Status BuildTables(SeqId seq, const PolicyConfig& config,
                           absl::Span<const int32_t> layer_capacity,
                           const policy::Protection& protection);
  // Copies the queries of every layer into one [layers][q_heads][W][head_dim]
  // array (what WindowScores reads with layers as its sequences).
  absl::Status StageQueries(absl::Span<const LayerQueries> queries, void* data, int32_t* positions);
  // Evicts to the kept counts, uploads the plan and enqueues the compaction.
  absl::Status PlanAndCompact(SeqId seq, const int32_t* kept_counts, const int32_t* keep);

  BlockManager* manager_;
  PagedKV cache_;
  // Host tables, layer-major over (layer, kv head) streams.
  std::vector<int32_t> indptr_, page_ids_, lens_, offsets_, kept_;
  int32_t max_len_ = 0;
  CompactionPlan plan_;
  std::vector<int32_t> keep_offsets_;
  Scratch<false> device_, device_plan_;
  Scratch<true> pinned_;
};

absl::Status CudaExecutorImpl::BuildTables(SeqId seq, const PolicyConfig& config,
                                           absl::Span<const int32_t> layer_capacity,
                                           const policy::Protection& protection) {
  const CacheGeometry& g = manager_->geometry();
  HEADPAGE_ASSIGN_OR_RETURN(const absl::Span<const uint32_t> lens, manager_->StreamLengths(seq));
  const int32_t heads = g.num_kv_heads;
  indptr_.assign(1, 0);
  page_ids_.clear();
  lens_.clear();
  offsets_.assign(1, 0);
  kept_.clear();
  max_len_ = 0;
  for (int32_t layer = 0; layer < g.num_layers; ++layer) {
    for (int32_t h = 0; h < heads; ++h) {
      HEADPAGE_ASSIGN_OR_RETURN(const absl::Span<const PageId> pages,
                                manager_->StreamPages(seq, layer, h));
      page_ids_.insert(page_ids_.end(), pages.begin(), pages.end());
      indptr_.push_back(static_cast<int32_t>(page_ids_.size()));
      const auto n = static_cast<int32_t>(lens[layer * heads + h]);
      lens_.push_back(n);
      offsets_.push_back(offsets_.back() + n);
      max_len_ = std::max(max_len_, n);
      // The protected tokens are at most the recent window plus the sinks;
      // a budget below them is refused, as UniformKept and AdaKept refuse it.
      const int32_t capacity = layer_capacity[layer];
      const int64_t protect = std::min<int64_t>(n, int64_t{protection.recent} + protection.sinks);
      if (capacity < protect) {
        return absl::InvalidArgumentError(absl::StrCat(
            "policy ", config.name, ": layer ", layer, "'s capacity ", capacity,
            " is smaller than the ", protect, " protected tokens of kv head ", h));
      }
      kept_.push_back(std::min(capacity, n));
    }
  }
  return absl::OkStatus();
}

absl::Status CudaExecutorImpl::StageQueries(absl::Span<const LayerQueries> queries, void* data,
                                            int32_t* positions) {
  const CacheGeometry& g = manager_->geometry();
  const int32_t window = queries[0].num_queries;
  const size_t bytes = static_cast<size_t>(g.num_q_heads) * window * g.head_dim * SizeOf(g.dtype);
  for (size_t l = 0; l < queries.size(); ++l) {
    const LayerQueries& q = queries[l];
    const cudaMemcpyKind kind =
        q.memory == MemoryKind::kDevice ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice;
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpyAsync(static_cast<char*>(data) + l * bytes, q.data, bytes, kind, stream()),
        "copying the queries"));
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(positions + l * window, q.positions,
                                                        sizeof(int32_t) * window, kind, stream()),
                                        "copying the query positions"));
  }
  return absl::OkStatus();
}

absl::Status CudaExecutorImpl::Compress(SeqId seq, const PolicyConfig& config,
                                        absl::Span<const int32_t> layer_capacity,
                                        const policy::Protection& protection,
                                        absl::Span<const LayerQueries> queries) {
  using A = PolicyConfig::Allocator;
  HEADPAGE_RETURN_IF_ERROR(Supports(config));
  const CacheGeometry& g = manager_->geometry();
  const int32_t layers = g.num_layers, heads = g.num_kv_heads;
  const bool window_scores = config.scorer == PolicyConfig::Scorer::kSnapKV;
  const int32_t window = queries[0].num_queries;
  if (window_scores) {
    for (size_t l = 0; l < queries.size(); ++l) {
      if (queries[l].num_queries != window || queries[l].dtype != g.dtype) {
        return absl::InvalidArgumentError(absl::StrCat(
            "CudaExecutor: layer ", l, " has ", queries[l].num_queries, " queries of ",
            DTypeName(queries[l].dtype), "; every layer needs ", window, " of the cache's ",
            DTypeName(g.dtype)));
      }
    }
    if (window > kMaxScoreWindow) {
      return absl::InvalidArgumentError(absl::StrCat("CudaExecutor: ", window,
                                                     " window queries; the GPU scores at most ",
                                                     kMaxScoreWindow));
    }
  }
  HEADPAGE_RETURN_IF_ERROR(BuildTables(seq, config, layer_capacity, protection));
  const int32_t streams = layers * heads;
  const int32_t tokens = offsets_.back();
  if (tokens == 0) return absl::OkStatus();

  // The arguments, with pointers filled in once the scratch is laid out.
  WindowScoresArgs scores_args;
  scores_args.cache = cache_;
  scores_args.num_seqs = layers;
  scores_args.num_q_heads = g.num_q_heads;
  scores_args.num_kv_heads = heads;
  scores_args.window = window;
  scores_args.max_len = max_len_;
  scores_args.num_scores = tokens;
  scores_args.sm_scale = 1.0f / std::sqrt(static_cast<float>(g.head_dim));
  scores_args.kernel_size = config.snapkv.kernel_size;
  scores_args.pooling = config.snapkv.pooling;
  scores_args.reduce = config.snapkv.reduce;

  SelectArgs select;
  select.num_seqs = layers;
  select.num_kv_heads = heads;
  select.sinks = protection.sinks;
  select.recent = protection.recent;
  select.alpha = config.ada.alpha;
  select.floor = config.ada.floor;
  const bool ada = config.allocator == A::kAda || config.allocator == A::kAdaPyramid;
  select.mode = ada ? SelectMode::kAda : SelectMode::kTopB;
  select.capacity = layer_capacity[0];
  // Ada-Pyramid's layers differ in capacity: one Select per layer.
  const bool per_layer = config.allocator == A::kAdaPyramid;
  if (per_layer) select.num_seqs = 1;

  // Device scratch: the uploaded tables, then what the kernels produce.
  const size_t table_ints = indptr_.size() + page_ids_.size() + lens_.size() + offsets_.size() +
                            kept_.size();
  Layout dev;
  const size_t d_tables = dev.Add(sizeof(int32_t) * table_ints);
  const size_t d_counts = dev.Add(sizeof(int32_t) * streams);
  const size_t d_positions = dev.Add(sizeof(int32_t) * tokens);
  const size_t d_scores = dev.Add(sizeof(float) * tokens);
  const size_t d_keep = dev.Add(sizeof(int32_t) * tokens);
  const size_t query_bytes =
      window_scores ? static_cast<size_t>(layers) * g.num_q_heads * window * g.head_dim * SizeOf(g.dtype) : 0;
  const size_t d_queries = dev.Add(query_bytes);
  const size_t d_query_positions = dev.Add(window_scores ? sizeof(int32_t) * layers * window : 0);
  const size_t d_scores_ws = dev.Add(window_scores ? WindowScoresWorkspaceBytes(scores_args) : 0);
  const size_t d_select_ws = dev.Add(SelectWorkspaceBytes(select));
  Layout host;
  const size_t h_tables = host.Add(sizeof(int32_t) * table_ints);
  const size_t h_counts = host.Add(sizeof(int32_t) * streams);
  // The plan's arrays, at most one row per stream and every page twice.
  const size_t plan_ints = 4 * (static_cast<size_t>(streams) + 1) + 3 * streams + 2 * page_ids_.size();
  const size_t h_plan = host.Add(sizeof(int32_t) * plan_ints + streams);
  Layout plan_layout;
  plan_layout.Add(sizeof(int32_t) * plan_ints + streams);
  if (dev.total() > device_.bytes() || host.total() > pinned_.bytes() ||
      plan_layout.total() > device_plan_.bytes()) {
    // Nothing in flight may still read what a grown buffer replaces.
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream()), "synchronizing"));
    HEADPAGE_RETURN_IF_ERROR(device_.Reserve(dev.total()));
    HEADPAGE_RETURN_IF_ERROR(device_plan_.Reserve(plan_layout.total()));
    HEADPAGE_RETURN_IF_ERROR(pinned_.Reserve(host.total()));
  }
  char* d = device_.data();
  char* h = pinned_.data();

  // One upload of every table.
  int32_t* up = At<int32_t>(h, h_tables);
  size_t at = 0;
  const size_t indptr_at = at;
  for (const auto* v : {&indptr_, &page_ids_, &lens_, &offsets_, &kept_}) {
    std::memcpy(up + at, v->data(), sizeof(int32_t) * v->size());
    at += v->size();
  }
  const int32_t* tables = At<int32_t>(d, d_tables);
  const int32_t* d_indptr = tables + indptr_at;
  const int32_t* d_page_ids = d_indptr + indptr_.size();
  const int32_t* d_lens = d_page_ids + page_ids_.size();
  const int32_t* d_offsets = d_lens + lens_.size();
  const int32_t* d_kept = d_offsets + offsets_.size();
  HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(d + d_tables, up, sizeof(int32_t) * table_ints,
                                                      cudaMemcpyHostToDevice, stream()),
                                      "uploading the block tables"));

  // Scores, and the dense positions Select reads.
  TokenScoresArgs token;
  token.cache = cache_;
  token.num_streams = streams;
  token.indptr = d_indptr;
  token.page_ids = d_page_ids;
  token.lens = d_lens;
  token.offsets = d_offsets;
  token.num_tokens = tokens;
  token.max_len = max_len_;
  token.score = TokenScoreOf(config.scorer);
  token.seed = config.seed;
  token.positions = At<int32_t>(d, d_positions);
  token.scores = At<float>(d, d_scores);
  HEADPAGE_RETURN_IF_ERROR(gpu::TokenScores(token, stream()));
  if (window_scores) {
    HEADPAGE_RETURN_IF_ERROR(StageQueries(queries, d + d_queries, At<int32_t>(d, d_query_positions)));
    scores_args.queries = d + d_queries;
    scores_args.query_positions = At<int32_t>(d, d_query_positions);
    scores_args.indptr = d_indptr;
    scores_args.page_ids = d_page_ids;
    scores_args.lens = d_lens;
    scores_args.score_offsets = d_offsets;
    scores_args.scores = At<float>(d, d_scores);
    scores_args.workspace = d + d_scores_ws;
    scores_args.workspace_bytes = WindowScoresWorkspaceBytes(scores_args);
    HEADPAGE_RETURN_IF_ERROR(gpu::WindowScores(scores_args, stream()));
  }

  // Selection: keep sets at each stream's score offset, kept counts beside.
  select.scores = At<float>(d, d_scores);
  select.positions = At<int32_t>(d, d_positions);
  select.keep = At<int32_t>(d, d_keep);
  select.workspace = SelectWorkspaceBytes(select) > 0 ? d + d_select_ws : nullptr;
  for (int32_t layer = 0; layer < (per_layer ? layers : 1); ++layer) {
    const int32_t first = per_layer ? layer * heads : 0;
    select.score_offsets = d_offsets + first;
    select.kept = d_kept + first;
    select.kept_counts = At<int32_t>(d, d_counts) + first;
    if (per_layer) select.capacity = layer_capacity[layer];
    HEADPAGE_RETURN_IF_ERROR(gpu::Select(select, stream()));
  }

  // The one copy back and the one synchronization: the kept counts.
  int32_t* counts = At<int32_t>(h, h_counts);
  HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(counts, d + d_counts, sizeof(int32_t) * streams,
                                                      cudaMemcpyDeviceToHost, stream()),
                                      "copying the kept counts"));
  HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream()), "scoring and selecting"));

  // The plan, from host arrays into pinned memory, then one upload.
  plan_.Clear();
  absl::Status planned = absl::OkStatus();
  for (int32_t layer = 0; layer < layers && planned.ok(); ++layer) {
    planned = manager_->Evict(seq, layer, absl::MakeConstSpan(counts + layer * heads, heads), &plan_);
  }
  const int32_t rows = plan_.num_rows();
  absl::Status compacted = absl::OkStatus();
  if (rows > 0) {
    keep_offsets_.resize(rows);
    for (int32_t r = 0; r < rows; ++r) {
      keep_offsets_[r] = offsets_[plan_.rows[r].layer * heads + plan_.rows[r].kv_head];
    }
    int32_t* p = At<int32_t>(h, h_plan);
    const std::vector<int32_t>* parts[] = {&plan_.src_indptr,   &plan_.src_page_ids, &plan_.src_lens,
                                           &plan_.dst_indptr,   &plan_.dst_page_ids, &plan_.keep_indptr,
                                           &keep_offsets_};
    size_t part_at[7];
    size_t n = 0;
    for (int i = 0; i < 7; ++i) {
      part_at[i] = n;
      std::memcpy(p + n, parts[i]->data(), sizeof(int32_t) * parts[i]->size());
      n += parts[i]->size();
    }
    std::memcpy(p + n, plan_.in_place.data(), plan_.in_place.size());
    const size_t plan_bytes = sizeof(int32_t) * n + plan_.in_place.size();
    char* dp = device_plan_.data();
    compacted = CudaStatus(cudaMemcpyAsync(dp, p, plan_bytes, cudaMemcpyHostToDevice, stream()),
                           "uploading the compaction plan");
    if (compacted.ok()) {
      const int32_t* q = At<int32_t>(dp, 0);
      CompactArgs args;
      args.cache = cache_;
      args.num_rows = rows;
      args.src_indptr = q + part_at[0];
      args.src_page_ids = q + part_at[1];
      args.src_lens = q + part_at[2];
      args.dst_indptr = q + part_at[3];
      args.dst_page_ids = q + part_at[4];
      args.keep_indptr = q + part_at[5];
      args.keep_offsets = q + part_at[6];
      args.keep = At<int32_t>(d, d_keep);
      args.in_place = reinterpret_cast<const uint8_t*>(q + n);
      compacted = gpu::Compact(args, stream());
    }
  }
  // The compaction is enqueued (or failed to launch): what later allocations
  // write to the retired pages is ordered after it on the stream.
  manager_->ReleaseRetiredPages();
  HEADPAGE_RETURN_IF_ERROR(planned);
  return compacted;
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaExecutor>> CudaExecutor::Create(BlockManager* manager,
                                                                   const PagedKV& cache,
                                                                   GpuStream stream) {
  if (manager == nullptr || cache.memory != MemoryKind::kDevice) {
    return absl::InvalidArgumentError(
        "CudaExecutor: needs a block manager and a cache view of device memory (a CudaArena)");
  }
  return std::unique_ptr<CudaExecutor>(new CudaExecutorImpl(manager, cache, stream));
}

#else  // !HEADPAGE_HAVE_CUDA

absl::StatusOr<std::unique_ptr<CudaExecutor>> CudaExecutor::Create(BlockManager*, const PagedKV&,
                                                                   GpuStream) {
  return absl::UnimplementedError("CudaExecutor: this build of headpage has no CUDA");
}

#endif

}  // namespace headpage
