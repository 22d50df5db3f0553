// SPDX-License-Identifier: Apache-2.0
#include "eviction/cuda_executor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

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
    case S::kTova:
    case S::kRecency:
    case S::kKeyNorm:
    case S::kRandom:
    case S::kNone:
      break;
    case S::kH2O:
      return absl::UnimplementedError(absl::StrCat(
          "policy ", config.name, ": its scorer (the attention of every prompt query, kept up "
          "while decoding) does not run on the GPU yet; use a host pool"));
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

// One sequence's tables, layer-major over its (layer, kv head) streams, and
// where its arrays lie in the scratch buffers.
struct SeqTables {
  std::vector<int32_t> indptr, page_ids, lens, offsets, kept;
  // Measured before the tables are built, to lay out the scratch.
  int32_t streams = 0;
  int64_t pages = 0;
  int32_t num_tokens = 0;
  int32_t max_len = 0;
  int32_t tokens() const { return num_tokens; }
  size_t table_ints() const { return 4 * static_cast<size_t>(streams) + 2 + pages; }
  // The compaction plan's arrays: at most one row per stream, every page twice.
  size_t plan_ints() const { return 7 * (static_cast<size_t>(streams) + 1) + 2 * pages; }

  // Per sequence: its keep sets and kept counts on the device (read by its
  // compaction, after later sequences' scoring ran), its tables, counts and
  // plan in pinned memory (their copies may still be pending).
  size_t d_keep = 0, d_counts = 0;
  size_t h_tables = 0, h_counts = 0, h_plan = 0;
};

class CudaExecutorImpl final : public CudaExecutor {
 public:
  CudaExecutorImpl(BlockManager* manager, const PagedKV& cache, GpuStream stream)
      : CudaExecutor(stream), manager_(manager), cache_(cache) {}
  ~CudaExecutorImpl() override {
    // A compaction and its plan upload may still be queued on the scratch.
    cudaStreamSynchronize(stream());
    for (cudaEvent_t event : events_) cudaEventDestroy(event);
    if (uploaded_ != nullptr) cudaEventDestroy(uploaded_);
  }

  // A call that fails part way may leave copies into and out of the pinned
  // scratch queued: wait for them before the next call rewrites it.
  absl::Status Compress(const PolicyConfig& config, absl::Span<const Job> jobs) override {
    absl::Status status = CompressJobs(config, jobs);
    if (!status.ok()) cudaStreamSynchronize(stream());
    return status;
  }

 private:
  // The sizes of a sequence's tables (streams, pages, tokens, longest stream).
  absl::Status Measure(const Job& job, SeqTables* out) const;
  absl::Status CompressJobs(const PolicyConfig& config, absl::Span<const Job> jobs);
  absl::Status BuildTables(const Job& job, const PolicyConfig& config, SeqTables* out) const;
  // Copies the queries of every layer into one [layers][q_heads][W][head_dim]
  // array (what WindowScores reads with layers as its sequences); with
  // `last_only`, each layer's last query (the highest position) alone, W = 1.
  absl::Status StageQueries(absl::Span<const LayerQueries> queries, bool last_only, void* data,
                            int32_t* positions);
  // Scores and selects one sequence, and starts the copy of its kept counts.
  absl::Status ScoreAndSelect(const PolicyConfig& config, const Job& job, const SeqTables& t);
  // Waits for one sequence's kept counts, evicts to them, uploads the plan and
  // enqueues the compaction; releases the retired pages.
  absl::Status PlanAndCompact(const Job& job, const SeqTables& t, cudaEvent_t counted);
  absl::Status Events(size_t n);

  BlockManager* manager_;
  PagedKV cache_;
  std::vector<SeqTables> tables_;
  CompactionPlan plan_;
  std::vector<int32_t> keep_offsets_;
  std::vector<cudaEvent_t> events_;
  // Recorded after each plan's upload: the next call waits for it before it
  // writes the pinned memory that upload reads.
  cudaEvent_t uploaded_ = nullptr;
  Scratch<false> device_;
  Scratch<true> pinned_;
  // Sections of device_ that every sequence reuses in turn (stream order keeps
  // one sequence's kernels before the next one's writes).
  size_t d_tables_ = 0, d_positions_ = 0, d_scores_ = 0, d_queries_ = 0, d_query_positions_ = 0,
         d_scores_ws_ = 0, d_select_ws_ = 0, d_plan_ = 0;
  WindowScoresArgs scores_args_;
  SelectArgs select_;
};

absl::Status CudaExecutorImpl::Events(size_t n) {
  while (events_.size() < n) {
    cudaEvent_t event;
    HEADPAGE_RETURN_IF_ERROR(
        CudaStatus(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "creating an event"));
    events_.push_back(event);
  }
  return absl::OkStatus();
}

absl::Status CudaExecutorImpl::Measure(const Job& job, SeqTables* t) const {
  const CacheGeometry& g = manager_->geometry();
  HEADPAGE_ASSIGN_OR_RETURN(const absl::Span<const uint32_t> lens, manager_->StreamLengths(job.seq));
  t->streams = g.streams_per_sequence();
  t->pages = 0;
  int64_t tokens = 0;
  uint32_t longest = 0;
  for (int32_t layer = 0; layer < g.num_layers; ++layer) {
    for (int32_t h = 0; h < g.num_kv_heads; ++h) {
      HEADPAGE_ASSIGN_OR_RETURN(const absl::Span<const PageId> pages,
                                manager_->StreamPages(job.seq, layer, h));
      t->pages += static_cast<int64_t>(pages.size());
      tokens += lens[layer * g.num_kv_heads + h];
      longest = std::max(longest, lens[layer * g.num_kv_heads + h]);
    }
  }
  if (tokens > std::numeric_limits<int32_t>::max() || t->pages > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("CudaExecutor: sequence ", job.seq, " holds ",
                                                   tokens, " tokens in ", t->pages,
                                                   " pages; int32 offsets address at most 2^31 - 1"));
  }
  t->num_tokens = static_cast<int32_t>(tokens);
  t->max_len = static_cast<int32_t>(longest);
  return absl::OkStatus();
}

absl::Status CudaExecutorImpl::BuildTables(const Job& job, const PolicyConfig& config,
                                           SeqTables* t) const {
  const CacheGeometry& g = manager_->geometry();
  HEADPAGE_ASSIGN_OR_RETURN(const absl::Span<const uint32_t> lens, manager_->StreamLengths(job.seq));
  const int32_t heads = g.num_kv_heads;
  t->indptr.assign(1, 0);
  t->page_ids.clear();
  t->lens.clear();
  t->offsets.assign(1, 0);
  t->kept.clear();
  t->max_len = 0;
  for (int32_t layer = 0; layer < g.num_layers; ++layer) {
    for (int32_t h = 0; h < heads; ++h) {
      HEADPAGE_ASSIGN_OR_RETURN(const absl::Span<const PageId> pages,
                                manager_->StreamPages(job.seq, layer, h));
      t->page_ids.insert(t->page_ids.end(), pages.begin(), pages.end());
      t->indptr.push_back(static_cast<int32_t>(t->page_ids.size()));
      const auto n = static_cast<int32_t>(lens[layer * heads + h]);
      t->lens.push_back(n);
      t->offsets.push_back(t->offsets.back() + n);
      t->max_len = std::max(t->max_len, n);
      // The protected tokens are at most the recent window plus the sinks; a
      // budget below them is refused, as UniformKept and AdaKept refuse it.
      const int32_t capacity = job.layer_capacity[layer];
      const int64_t protect =
          std::min<int64_t>(n, int64_t{job.protection.recent} + job.protection.sinks);
      if (capacity < protect) {
        return absl::InvalidArgumentError(absl::StrCat(
            "policy ", config.name, ": layer ", layer, "'s capacity ", capacity,
            " is smaller than the ", protect, " protected tokens of kv head ", h));
      }
      t->kept.push_back(std::min(capacity, n));
    }
  }
  return absl::OkStatus();
}

absl::Status CudaExecutorImpl::StageQueries(absl::Span<const LayerQueries> queries, bool last_only,
                                            void* data, int32_t* positions) {
  const CacheGeometry& g = manager_->geometry();
  const int32_t window = queries[0].num_queries;
  const size_t row = static_cast<size_t>(g.head_dim) * SizeOf(g.dtype);
  const size_t layer_bytes = static_cast<size_t>(g.num_q_heads) * (last_only ? 1 : window) * row;
  std::vector<int32_t> host_positions;
  for (size_t l = 0; l < queries.size(); ++l) {
    const LayerQueries& q = queries[l];
    const cudaMemcpyKind kind =
        q.memory == MemoryKind::kDevice ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice;
    char* to = static_cast<char*>(data) + l * layer_bytes;
    if (!last_only) {
      HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(to, q.data, layer_bytes, kind, stream()),
                                          "copying the queries"));
      HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(positions + l * window, q.positions,
                                                          sizeof(int32_t) * window, kind, stream()),
                                          "copying the query positions"));
      continue;
    }
    // The last query's row of every q head: [q_heads][W][d] -> [q_heads][1][d].
    const int32_t* where = q.positions;
    if (q.memory == MemoryKind::kDevice) {
      host_positions.resize(q.num_queries);
      // On the executor's stream, after whatever wrote the positions there.
      HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(host_positions.data(), q.positions,
                                                          sizeof(int32_t) * q.num_queries,
                                                          cudaMemcpyDeviceToHost, stream()),
                                          "reading the query positions"));
      HEADPAGE_RETURN_IF_ERROR(
          CudaStatus(cudaStreamSynchronize(stream()), "reading the query positions"));
      where = host_positions.data();
    }
    const auto last = static_cast<int32_t>(std::max_element(where, where + q.num_queries) - where);
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpy2DAsync(to, row, static_cast<const char*>(q.data) + last * row,
                          row * q.num_queries, row, g.num_q_heads, kind, stream()),
        "copying the last queries"));
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(positions + l, q.positions + last,
                                                        sizeof(int32_t), kind, stream()),
                                        "copying the last query positions"));
  }
  return absl::OkStatus();
}

absl::Status CudaExecutorImpl::ScoreAndSelect(const PolicyConfig& config, const Job& job,
                                              const SeqTables& t) {
  const CacheGeometry& g = manager_->geometry();
  const int32_t heads = g.num_kv_heads, layers = g.num_layers;
  char* d = device_.data();
  char* h = pinned_.data();
  // One upload of every table.
  int32_t* up = At<int32_t>(h, t.h_tables);
  size_t at = 0;
  for (const auto* v : {&t.indptr, &t.page_ids, &t.lens, &t.offsets, &t.kept}) {
    std::memcpy(up + at, v->data(), sizeof(int32_t) * v->size());
    at += v->size();
  }
  const int32_t* d_indptr = At<int32_t>(d, d_tables_);
  const int32_t* d_page_ids = d_indptr + t.indptr.size();
  const int32_t* d_lens = d_page_ids + t.page_ids.size();
  const int32_t* d_offsets = d_lens + t.lens.size();
  const int32_t* d_kept = d_offsets + t.offsets.size();
  HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(d + d_tables_, up, sizeof(int32_t) * at,
                                                      cudaMemcpyHostToDevice, stream()),
                                      "uploading the block tables"));

  // Scores, and the dense positions Select reads.
  TokenScoresArgs token;
  token.cache = cache_;
  token.num_streams = static_cast<int32_t>(t.lens.size());
  token.indptr = d_indptr;
  token.page_ids = d_page_ids;
  token.lens = d_lens;
  token.offsets = d_offsets;
  token.num_tokens = t.tokens();
  token.max_len = t.max_len;
  token.score = TokenScoreOf(config.scorer);
  token.seed = config.seed;
  token.positions = At<int32_t>(d, d_positions_);
  token.scores = At<float>(d, d_scores_);
  HEADPAGE_RETURN_IF_ERROR(gpu::TokenScores(token, stream()));
  const bool tova = config.scorer == PolicyConfig::Scorer::kTova;
  if (config.scorer == PolicyConfig::Scorer::kSnapKV || tova) {
    HEADPAGE_RETURN_IF_ERROR(
        StageQueries(job.queries, tova, d + d_queries_, At<int32_t>(d, d_query_positions_)));
    // TOVA: the last query's attention, unpooled, averaged over each group.
    WindowScoresArgs args = scores_args_;
    args.window = tova ? 1 : job.queries[0].num_queries;
    args.max_len = t.max_len;
    args.num_scores = t.tokens();
    args.queries = d + d_queries_;
    args.query_positions = At<int32_t>(d, d_query_positions_);
    args.indptr = d_indptr;
    args.page_ids = d_page_ids;
    args.lens = d_lens;
    args.score_offsets = d_offsets;
    args.scores = At<float>(d, d_scores_);
    args.workspace = d + d_scores_ws_;
    args.workspace_bytes = WindowScoresWorkspaceBytes(args);
    HEADPAGE_RETURN_IF_ERROR(gpu::WindowScores(args, stream()));
  }
  if (tova) {
    // ... then over the layer's groups: one score per token for every head.
    MeanOverHeadsArgs mean;
    mean.num_groups = layers;
    mean.heads_per_group = heads;
    mean.offsets = d_offsets;
    mean.lens = d_lens;
    mean.max_len = t.max_len;
    mean.num_scores = t.tokens();
    mean.scores = At<float>(d, d_scores_);
    HEADPAGE_RETURN_IF_ERROR(gpu::MeanOverHeads(mean, stream()));
  }

  // Selection: keep sets at each stream's score offset, kept counts beside.
  SelectArgs select = select_;
  select.scores = At<float>(d, d_scores_);
  select.positions = At<int32_t>(d, d_positions_);
  select.keep = At<int32_t>(d, t.d_keep);
  select.capacity = job.layer_capacity[0];
  select.workspace = SelectWorkspaceBytes(select) > 0 ? d + d_select_ws_ : nullptr;
  // Ada-Pyramid's layers differ in capacity: one Select per layer.
  const bool per_layer = config.allocator == PolicyConfig::Allocator::kAdaPyramid;
  for (int32_t layer = 0; layer < (per_layer ? layers : 1); ++layer) {
    const int32_t first = per_layer ? layer * heads : 0;
    select.score_offsets = d_offsets + first;
    select.kept = d_kept + first;
    select.kept_counts = At<int32_t>(d, t.d_counts) + first;
    if (per_layer) select.capacity = job.layer_capacity[layer];
    HEADPAGE_RETURN_IF_ERROR(gpu::Select(select, stream()));
  }
  return CudaStatus(cudaMemcpyAsync(h + t.h_counts, d + t.d_counts, sizeof(int32_t) * t.lens.size(),
                                    cudaMemcpyDeviceToHost, stream()),
                    "copying the kept counts");
}

absl::Status CudaExecutorImpl::PlanAndCompact(const Job& job, const SeqTables& t,
                                              cudaEvent_t counted) {
  const int32_t heads = manager_->geometry().num_kv_heads;
  HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaEventSynchronize(counted), "scoring and selecting"));
  const int32_t* counts = At<int32_t>(pinned_.data(), t.h_counts);
  plan_.Clear();
  absl::Status planned = absl::OkStatus();
  for (int32_t layer = 0; layer < manager_->geometry().num_layers && planned.ok(); ++layer) {
    planned = manager_->Evict(job.seq, layer, absl::MakeConstSpan(counts + layer * heads, heads),
                              &plan_);
  }
  const int32_t rows = plan_.num_rows();
  absl::Status compacted = absl::OkStatus();
  if (rows > 0) {
    keep_offsets_.resize(rows);
    for (int32_t r = 0; r < rows; ++r) {
      keep_offsets_[r] = t.offsets[plan_.rows[r].layer * heads + plan_.rows[r].kv_head];
    }
    int32_t* p = At<int32_t>(pinned_.data(), t.h_plan);
    const std::vector<int32_t>* parts[] = {&plan_.src_indptr, &plan_.src_page_ids, &plan_.src_lens,
                                           &plan_.dst_indptr, &plan_.dst_page_ids,
                                           &plan_.keep_indptr, &keep_offsets_};
    size_t part_at[7];
    size_t n = 0;
    for (int i = 0; i < 7; ++i) {
      part_at[i] = n;
      std::memcpy(p + n, parts[i]->data(), sizeof(int32_t) * parts[i]->size());
      n += parts[i]->size();
    }
    std::memcpy(p + n, plan_.in_place.data(), plan_.in_place.size());
    char* dp = device_.data() + d_plan_;
    compacted = CudaStatus(cudaMemcpyAsync(dp, p, sizeof(int32_t) * n + plan_.in_place.size(),
                                           cudaMemcpyHostToDevice, stream()),
                           "uploading the compaction plan");
    if (compacted.ok()) compacted = CudaStatus(cudaEventRecord(uploaded_, stream()), "recording");
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
      args.keep = At<int32_t>(device_.data(), t.d_keep);
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

absl::Status CudaExecutorImpl::CompressJobs(const PolicyConfig& config, absl::Span<const Job> jobs) {
  using A = PolicyConfig::Allocator;
  HEADPAGE_RETURN_IF_ERROR(Supports(config));
  const CacheGeometry& g = manager_->geometry();
  const int32_t layers = g.num_layers, heads = g.num_kv_heads;
  const bool tova = config.scorer == PolicyConfig::Scorer::kTova;
  const bool window_scores = config.scorer == PolicyConfig::Scorer::kSnapKV || tova;
  int32_t max_window = 0;
  for (const Job& job : jobs) {
    const int32_t window = tova ? 1 : job.queries[0].num_queries;
    max_window = std::max(max_window, window);
    // Every layer the same number of queries (TOVA reads only the last), of
    // the cache's dtype.
    const int32_t rows = job.queries[0].num_queries;
    for (size_t l = 0; window_scores && l < job.queries.size(); ++l) {
      if (job.queries[l].num_queries != rows || job.queries[l].dtype != g.dtype) {
        return absl::InvalidArgumentError(absl::StrCat(
            "CudaExecutor: layer ", l, " has ", job.queries[l].num_queries, " queries of ",
            DTypeName(job.queries[l].dtype), "; every layer needs ", rows, " of the cache's ",
            DTypeName(g.dtype)));
      }
    }
    if (window_scores && !tova && window > kMaxScoreWindow) {
      return absl::InvalidArgumentError(absl::StrCat(
          "CudaExecutor: ", window, " window queries; the GPU scores at most ", kMaxScoreWindow));
    }
  }
  tables_.resize(jobs.size());
  for (size_t j = 0; j < jobs.size(); ++j) {
    HEADPAGE_RETURN_IF_ERROR(Measure(jobs[j], &tables_[j]));
  }
  HEADPAGE_RETURN_IF_ERROR(Events(jobs.size()));
  if (uploaded_ == nullptr) {
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(
        cudaEventCreateWithFlags(&uploaded_, cudaEventDisableTiming), "creating an event"));
  } else {
    // The last call's plan upload reads pinned memory this call rewrites.
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaEventSynchronize(uploaded_), "the last upload"));
  }

  // The arguments every sequence shares; pointers are set per sequence.
  scores_args_ = WindowScoresArgs();
  scores_args_.cache = cache_;
  scores_args_.num_seqs = layers;
  scores_args_.num_q_heads = g.num_q_heads;
  scores_args_.num_kv_heads = heads;
  scores_args_.sm_scale = 1.0f / std::sqrt(static_cast<float>(g.head_dim));
  scores_args_.kernel_size = tova ? 1 : config.snapkv.kernel_size;
  scores_args_.pooling = tova ? policy::Pooling::kNone : config.snapkv.pooling;
  scores_args_.reduce = tova ? policy::GroupReduce::kMean : config.snapkv.reduce;
  const bool ada = config.allocator == A::kAda || config.allocator == A::kAdaPyramid;
  select_ = SelectArgs();
  select_.num_seqs = config.allocator == A::kAdaPyramid ? 1 : layers;
  select_.num_kv_heads = heads;
  select_.sinks = jobs.empty() ? 0 : jobs[0].protection.sinks;
  select_.recent = jobs.empty() ? 0 : jobs[0].protection.recent;
  select_.alpha = config.ada.alpha;
  select_.floor = config.ada.floor;
  select_.mode = ada ? SelectMode::kAda : SelectMode::kTopB;

  // Scratch: shared sections sized for the largest sequence, and each
  // sequence's own.
  size_t table_ints = 0, plan_ints = 0, scores_ws = 0;
  int32_t tokens = 0;
  for (const SeqTables& t : tables_) {
    table_ints = std::max(table_ints, t.table_ints());
    plan_ints = std::max(plan_ints, t.plan_ints());
    tokens = std::max(tokens, t.tokens());
    if (window_scores) {
      WindowScoresArgs args = scores_args_;
      args.window = max_window;
      args.max_len = t.max_len;
      args.num_scores = t.tokens();
      scores_ws = std::max(scores_ws, WindowScoresWorkspaceBytes(args));
    }
  }
  Layout dev;
  d_tables_ = dev.Add(sizeof(int32_t) * table_ints);
  d_positions_ = dev.Add(sizeof(int32_t) * tokens);
  d_scores_ = dev.Add(sizeof(float) * tokens);
  d_queries_ = dev.Add(window_scores ? static_cast<size_t>(layers) * g.num_q_heads * max_window *
                                           g.head_dim * SizeOf(g.dtype)
                                     : 0);
  d_query_positions_ = dev.Add(window_scores ? sizeof(int32_t) * layers * max_window : 0);
  d_scores_ws_ = dev.Add(scores_ws);
  d_select_ws_ = dev.Add(SelectWorkspaceBytes(select_));
  d_plan_ = dev.Add(sizeof(int32_t) * plan_ints + static_cast<size_t>(layers) * heads);
  Layout host;
  for (SeqTables& t : tables_) {
    t.d_keep = dev.Add(sizeof(int32_t) * t.tokens());
    t.d_counts = dev.Add(sizeof(int32_t) * t.streams);
    t.h_tables = host.Add(sizeof(int32_t) * t.table_ints());
    t.h_counts = host.Add(sizeof(int32_t) * t.streams);
    t.h_plan = host.Add(sizeof(int32_t) * t.plan_ints() + t.streams);
  }
  if (dev.total() > device_.bytes() || host.total() > pinned_.bytes()) {
    // Nothing in flight may still read what a grown buffer replaces.
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream()), "synchronizing"));
    HEADPAGE_RETURN_IF_ERROR(device_.Reserve(dev.total()));
    HEADPAGE_RETURN_IF_ERROR(pinned_.Reserve(host.total()));
  }

  // Every sequence's scoring and selection first, then each one's plan as its
  // counts arrive: the host plans sequence j while the GPU scores j + 1.
  // Each sequence's tables are built just before its scoring is enqueued, so
  // the GPU starts on the first while the host builds the next.
  for (size_t j = 0; j < jobs.size(); ++j) {
    if (tables_[j].tokens() == 0) continue;
    SeqTables& t = tables_[j];
    HEADPAGE_RETURN_IF_ERROR(BuildTables(jobs[j], config, &t));
    for (size_t s = 0; tova && s < t.lens.size(); ++s) {
      // TOVA keeps one token set per layer (the GPU compares lengths; the host
      // executor compares positions too).
      if (t.lens[s] != t.lens[s - s % heads]) {
        return absl::FailedPreconditionError(absl::StrCat(
            "TOVA: layer ", s / heads, "'s kv heads hold different tokens (", t.lens[s], " vs ",
            t.lens[s - s % heads], "); TOVA keeps one token set per layer"));
      }
    }
    HEADPAGE_RETURN_IF_ERROR(ScoreAndSelect(config, jobs[j], t));
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(events_[j], stream()), "recording"));
  }
  for (size_t j = 0; j < jobs.size(); ++j) {
    if (tables_[j].tokens() == 0) continue;
    HEADPAGE_RETURN_IF_ERROR(PlanAndCompact(jobs[j], tables_[j], events_[j]));
  }
  return absl::OkStatus();
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
