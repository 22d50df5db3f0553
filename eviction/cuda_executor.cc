// SPDX-License-Identifier: Apache-2.0
// The CUDA executor's compression pipeline: tables, scoring and selection of
// every sequence, then each one's plan and compaction as its counts arrive.
#include "eviction/cuda_executor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "core/status.h"

#if HEADPAGE_HAVE_CUDA
#include "eviction/cuda_executor_impl.h"
#include "kernels/compact.h"
#include "kernels/dbudget_cut.h"
#include "kernels/select.h"
#include "kernels/slot_scores.h"
#include "kernels/window_scores.h"
#endif

namespace headpage {

absl::Status CudaExecutor::Supports(const PolicyConfig& config) {
  if (config.scorer == PolicyConfig::Scorer::kH2O && config.reduce != policy::GroupReduce::kMean) {
    return absl::UnimplementedError(absl::StrCat(
        "policy ", config.name, ": H2O with the max group reduction does not run on the GPU "
        "(its sum over every prompt query is taken in chunks there, which only the mean "
        "commutes with); use reduce=mean or a host pool"));
  }
  if (config.allocator == PolicyConfig::Allocator::kDBudget &&
      config.dbudget_metric == PolicyConfig::DBudgetMetric::kFrobenius) {
    return absl::UnimplementedError(absl::StrCat(
        "policy ", config.name, ": DBudgetKV's Frobenius metric does not run on the GPU (it "
        "needs every prompt query's attention row, prompt x prompt per q head, which no kernel "
        "computes); use a host pool, or dbudget"));
  }
  if (config.ada.safe_counts_protected) {
    return absl::UnimplementedError(absl::StrCat(
        "policy ", config.name, ": the safeguard that counts protected tokens (kvpress's "
        "CriticalAdaKVPress) does not run on the GPU executor; use a host pool"));
  }
  if (config.needs_output_projection()) {
    return absl::UnimplementedError(absl::StrCat(
        "policy ", config.name, ": CriticalKV's and DefensiveKV's value norms do not run on the "
        "GPU executor yet (each is a product of every token's value with the layer's output "
        "projection, tokens x head_dim x hidden per q head, and DefensiveKV's worst case over "
        "the window needs its own reduction of the attention rows); use a host pool"));
  }
  if (config.allocator == PolicyConfig::Allocator::kAdaAcrossLayers) {
    return absl::UnimplementedError(absl::StrCat(
        "policy ", config.name, ": allocation across layers does not run on the GPU executor, "
        "which compacts each layer as soon as it is selected; use a host pool"));
  }
  return absl::OkStatus();
}

bool CudaExecutor::KeepsScores(const BlockManager& manager, SeqId seq) {
  const absl::StatusOr<bool> alone = manager.HoldsPagesAlone(seq);
  return alone.ok() && *alone;
}

#if HEADPAGE_HAVE_CUDA
namespace cuda_executor {

std::vector<std::vector<policy::StreamScores>> ByLayer(
    absl::Span<const policy::StreamScores> streams, int32_t layers, int32_t heads) {
  std::vector<std::vector<policy::StreamScores>> by_layer(layers);
  for (int32_t layer = 0; layer < layers; ++layer) {
    by_layer[layer].assign(streams.begin() + layer * heads, streams.begin() + (layer + 1) * heads);
  }
  return by_layer;
}

void Tables::Clear() {
  indptr.assign(1, 0);
  page_ids.clear();
  lens.clear();
  offsets.assign(1, 0);
  kept.clear();
  scored.clear();
  group_offsets.clear();
  max_len = 0;
}

absl::Status Tables::Append(const BlockManager& manager, SeqId seq,
                            absl::Span<const int32_t> layer_capacity,
                            absl::Span<const int32_t> scored_counts,
                            absl::Span<const int32_t> stream_capacity) {
  const CacheGeometry& g = manager.geometry();
  HEADPAGE_ASSIGN_OR_RETURN(const absl::Span<const uint32_t> stream_lens, manager.StreamLengths(seq));
  const int32_t heads = g.num_kv_heads;
  for (int32_t layer = 0; layer < g.num_layers; ++layer) {
    for (int32_t h = 0; h < heads; ++h) {
      const int32_t s = layer * heads + h;
      HEADPAGE_ASSIGN_OR_RETURN(const absl::Span<const PageId> pages,
                                manager.StreamPages(seq, layer, h));
      const auto n = static_cast<int32_t>(stream_lens[s]);
      if (page_ids.size() + pages.size() > std::numeric_limits<int32_t>::max() ||
          int64_t{offsets.back()} + n > std::numeric_limits<int32_t>::max()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "CudaExecutor: the streams hold more than 2^31 - 1 tokens or pages; int32 offsets "
            "address no more"));
      }
      page_ids.insert(page_ids.end(), pages.begin(), pages.end());
      indptr.push_back(static_cast<int32_t>(page_ids.size()));
      lens.push_back(n);
      offsets.push_back(offsets.back() + n);
      max_len = std::max(max_len, n);
      kept.push_back(!stream_capacity.empty() ? std::min(stream_capacity[s], n)
                     : layer_capacity.empty()  ? n
                                               : std::min(layer_capacity[layer], n));
      scored.push_back(scored_counts.empty() ? 0 : std::min(scored_counts[s], n));
    }
  }
  return absl::OkStatus();
}

void Tables::SetGroupOffsets(int32_t group) {
  const int32_t n = streams();
  group_offsets.resize(static_cast<size_t>(group) * (n + 1));
  for (int32_t g = 0; g < group; ++g) {
    for (int32_t s = 0; s <= n; ++s) {
      // Stream s's rows start at group * offsets[s]; row g after g of its length.
      group_offsets[g * (n + 1) + s] = group * offsets[s] + (s < n ? g * lens[s] : 0);
    }
  }
}

void Tables::CopyTo(int32_t* out) const {
  for (const auto* v : {&indptr, &page_ids, &lens, &offsets, &kept, &scored, &group_offsets}) {
    std::memcpy(out, v->data(), sizeof(int32_t) * v->size());
    out += v->size();
  }
}

DeviceTables::DeviceTables(const Tables& t, const int32_t* base) {
  indptr = base;
  page_ids = indptr + t.indptr.size();
  lens = page_ids + t.page_ids.size();
  offsets = lens + t.lens.size();
  kept = offsets + t.offsets.size();
  scored = kept + t.kept.size();
  group_offsets = scored + t.scored.size();
}

absl::StatusOr<Measured> Measure(const BlockManager& manager, SeqId seq) {
  const CacheGeometry& g = manager.geometry();
  HEADPAGE_ASSIGN_OR_RETURN(const absl::Span<const uint32_t> lens, manager.StreamLengths(seq));
  Measured m;
  m.streams = g.streams_per_sequence();
  int64_t tokens = 0;
  for (int32_t layer = 0; layer < g.num_layers; ++layer) {
    for (int32_t h = 0; h < g.num_kv_heads; ++h) {
      HEADPAGE_ASSIGN_OR_RETURN(const absl::Span<const PageId> pages,
                                manager.StreamPages(seq, layer, h));
      m.pages += static_cast<int64_t>(pages.size());
      const uint32_t n = lens[layer * g.num_kv_heads + h];
      tokens += n;
      m.max_len = std::max(m.max_len, static_cast<int32_t>(n));
    }
  }
  if (tokens > std::numeric_limits<int32_t>::max() || m.pages > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("CudaExecutor: sequence ", seq, " holds ", tokens,
                                                   " tokens in ", m.pages,
                                                   " pages; int32 offsets address at most 2^31 - 1"));
  }
  m.tokens = static_cast<int32_t>(tokens);
  return m;
}

CudaExecutorImpl::~CudaExecutorImpl() {
  // A compaction and its plan upload may still be queued on the scratch.
  cudaStreamSynchronize(stream());
  for (cudaEvent_t event : events_) cudaEventDestroy(event);
  if (uploaded_ != nullptr) cudaEventDestroy(uploaded_);
}

absl::Status CudaExecutorImpl::BeginCall(size_t events) {
  while (events_.size() < events) {
    cudaEvent_t event;
    HEADPAGE_RETURN_IF_ERROR(
        CudaStatus(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "creating an event"));
    events_.push_back(event);
  }
  if (uploaded_ == nullptr) {
    return CudaStatus(cudaEventCreateWithFlags(&uploaded_, cudaEventDisableTiming),
                      "creating an event");
  }
  return CudaStatus(cudaEventSynchronize(uploaded_), "the last upload");
}

absl::Status CudaExecutorImpl::Reserve(const Layout& device, const Layout& pinned) {
  if (device.total() <= device_.bytes() && pinned.total() <= pinned_.bytes()) {
    return absl::OkStatus();
  }
  // Nothing in flight may still read what a grown buffer replaces.
  HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream()), "synchronizing"));
  HEADPAGE_RETURN_IF_ERROR(device_.Reserve(device.total()));
  return pinned_.Reserve(pinned.total());
}

absl::StatusOr<float*> CudaExecutorImpl::Store() {
  HEADPAGE_RETURN_IF_ERROR(store_.Reserve(sizeof(float) * static_cast<size_t>(cache_.num_slots())));
  return reinterpret_cast<float*>(store_.data());
}

absl::StatusOr<DeviceTables> CudaExecutorImpl::Upload(const Tables& tables, size_t h_offset,
                                                      size_t d_offset) {
  int32_t* up = At<int32_t>(pinned_.data(), h_offset);
  tables.CopyTo(up);
  int32_t* down = At<int32_t>(device_.data(), d_offset);
  HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(down, up, sizeof(int32_t) * tables.ints(),
                                                      cudaMemcpyHostToDevice, stream()),
                                      "uploading the block tables"));
  HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(uploaded_, stream()), "recording"));
  return DeviceTables(tables, down);
}

void CudaExecutorImpl::SetScoresArgs(int32_t kernel_size, policy::Pooling pooling,
                                     policy::GroupReduce reduce) {
  const CacheGeometry& g = manager_->geometry();
  scores_args_ = WindowScoresArgs();
  scores_args_.cache = cache_;
  scores_args_.num_seqs = g.num_layers;
  scores_args_.num_q_heads = g.num_q_heads;
  scores_args_.num_kv_heads = g.num_kv_heads;
  scores_args_.sm_scale = 1.0f / std::sqrt(static_cast<float>(g.head_dim));
  scores_args_.kernel_size = kernel_size;
  scores_args_.pooling = pooling;
  scores_args_.reduce = reduce;
  // In a group, chunks as one executor over every head cuts them.
  scores_args_.plan_streams = group_members_ > 1 ? g.streams_per_sequence() * group_members_ : 0;
}

TokenScoresArgs CudaExecutorImpl::PositionsArgs(const Tables& t, const DeviceTables& d) const {
  TokenScoresArgs args;
  args.cache = cache_;
  args.num_streams = t.streams();
  args.indptr = d.indptr;
  args.page_ids = d.page_ids;
  args.num_page_ids = static_cast<int32_t>(t.page_ids.size());
  args.lens = d.lens;
  args.offsets = d.offsets;
  args.num_tokens = t.tokens();
  args.max_len = t.max_len;
  args.positions = At<int32_t>(device_.data(), d_positions_);
  args.scores = At<float>(device_.data(), d_scores_);
  return args;
}

SlotScoresArgs CudaExecutorImpl::StoreArgs(const Tables& t, const DeviceTables& d,
                                           SlotScoresOp op) const {
  SlotScoresArgs args;
  args.cache = cache_;
  args.num_streams = t.streams();
  args.indptr = d.indptr;
  args.page_ids = d.page_ids;
  args.num_page_ids = static_cast<int32_t>(t.page_ids.size());
  args.lens = d.lens;
  args.offsets = d.offsets;
  args.scored = d.scored;
  args.max_len = t.max_len;
  args.num_dense = t.tokens();
  args.op = op;
  args.slot_scores = reinterpret_cast<float*>(store_.data());
  args.dense = At<float>(device_.data(), d_scores_);
  return args;
}

// A call that fails part way may leave copies into and out of the pinned
// scratch queued: wait for them before the next call rewrites it.
absl::Status CudaExecutorImpl::Compress(const PolicyConfig& config, absl::Span<const Job> jobs,
                                        const AgreeLayerKept& agree_kept) {
  absl::Status status = CompressJobs(config, jobs, agree_kept);
  if (!status.ok()) cudaStreamSynchronize(stream());
  return status;
}

absl::Status CudaExecutorImpl::ScoreAndSelect(const PolicyConfig& config, const Job& job,
                                              const JobState& state,
                                              const AgreeLayerKept& agree_kept) {
  const CacheGeometry& g = manager_->geometry();
  const int32_t heads = g.num_kv_heads, layers = g.num_layers;
  const Tables& t = state.tables;
  char* d = device_.data();
  HEADPAGE_ASSIGN_OR_RETURN(const DeviceTables tables, Upload(t, state.h_tables, d_tables_));
  HEADPAGE_RETURN_IF_ERROR(Score(config, job, t, tables));
  if (config.allocator == PolicyConfig::Allocator::kDBudget) {
    HEADPAGE_RETURN_IF_ERROR(CutDBudget(config, job, t, tables));
  }

  // The scores are kept for later (H2O's decode steps, DecodingPress, the pool
  // budget); the compaction moves them with their tokens.
  if (job.keeps_scores) {
    HEADPAGE_RETURN_IF_ERROR(Store().status());
    HEADPAGE_RETURN_IF_ERROR(gpu::SlotScores(StoreArgs(t, tables, SlotScoresOp::kStore), stream()));
  }

  // Selection: keep sets at each stream's score offset, kept counts beside.
  SelectArgs select = select_;
  if (agree_kept) {
    // The counts the group agreed (over the streams layer by layer), in place
    // of the tables' capacities; each stream keeps its top count.
    const std::vector<policy::Protection> protection(t.streams(), job.protection);
    HEADPAGE_RETURN_IF_ERROR(AgreeAndUpload(
        t, protection, {},
        [&](absl::Span<const policy::StreamScores> streams) {
          return agree_kept(job, ByLayer(streams, layers, heads));
        },
        const_cast<int32_t*>(tables.kept)));  // the executor's own scratch
    select.mode = SelectMode::kTopB;
  }
  select.scores = At<float>(d, d_scores_);
  select.positions = At<int32_t>(d, d_positions_);
  select.keep = At<int32_t>(d, state.d_keep);
  select.sinks = job.protection.sinks;
  select.recent = job.protection.recent;
  select.capacity = job.layer_capacity[0];
  // Ada-Pyramid's layers differ in capacity: one Select per layer.
  const bool per_layer = config.allocator == PolicyConfig::Allocator::kAdaPyramid;
  for (int32_t layer = 0; layer < (per_layer ? layers : 1); ++layer) {
    const int32_t first = per_layer ? layer * heads : 0;
    select.score_offsets = tables.offsets + first;
    select.kept = tables.kept + first;
    select.kept_counts = At<int32_t>(d, state.d_counts) + first;
    if (per_layer) select.capacity = job.layer_capacity[layer];
    HEADPAGE_RETURN_IF_ERROR(gpu::Select(select, stream()));
  }
  return CudaStatus(cudaMemcpyAsync(pinned_.data() + state.h_counts, d + state.d_counts,
                                    sizeof(int32_t) * t.streams(), cudaMemcpyDeviceToHost, stream()),
                    "copying the kept counts");
}

absl::Status CudaExecutorImpl::PlanAndCompact(SeqId seq, const int32_t* counts,
                                              absl::Span<const int32_t> offsets, size_t d_keep,
                                              size_t h_plan, cudaEvent_t counted,
                                              float* scores, int32_t frozen) {
  const CacheGeometry& g = manager_->geometry();
  const int32_t heads = g.num_kv_heads;
  if (counted != nullptr) {
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaEventSynchronize(counted), "scoring and selecting"));
  }
  plan_.Clear();
  absl::Status planned = absl::OkStatus();
  for (int32_t layer = 0; layer < g.num_layers && planned.ok(); ++layer) {
    planned = manager_->Evict(seq, layer, absl::MakeConstSpan(counts + layer * heads, heads),
                              frozen, &plan_);
  }
  const int32_t rows = plan_.num_rows();
  absl::Status compacted = absl::OkStatus();
  if (rows > 0) {
    keep_offsets_.resize(rows);
    for (int32_t r = 0; r < rows; ++r) {
      // A row starts past the frozen tokens, whose keep entries come first:
      // the device selection keeps them as sinks (Protection), so the first
      // `frozen` entries are 0..frozen-1 by construction, unchecked here.
      keep_offsets_[r] = offsets[plan_.rows[r].layer * heads + plan_.rows[r].kv_head] + frozen;
    }
    int32_t* p = At<int32_t>(pinned_.data(), h_plan);
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
      args.num_src_page_ids = static_cast<int32_t>(plan_.src_page_ids.size());
      args.src_lens = q + part_at[2];
      args.dst_indptr = q + part_at[3];
      args.dst_page_ids = q + part_at[4];
      args.num_dst_page_ids = static_cast<int32_t>(plan_.dst_page_ids.size());
      args.keep_indptr = q + part_at[5];
      args.keep_offsets = q + part_at[6];
      args.keep = At<int32_t>(device_.data(), d_keep);
      args.num_keep = offsets.back();
      args.in_place = reinterpret_cast<const uint8_t*>(q + n);
      args.keep_base = frozen;
      args.slot_scores = scores;
      compacted = gpu::Compact(args, stream());
    }
  }
  // The compaction is enqueued (or failed to launch): what later allocations
  // write to the retired pages is ordered after it on the stream.
  manager_->ReleaseRetiredPages();
  HEADPAGE_RETURN_IF_ERROR(planned);
  return compacted;
}

absl::Status CudaExecutorImpl::CompressJobs(const PolicyConfig& config, absl::Span<const Job> jobs,
                                            const AgreeLayerKept& agree_kept) {
  using A = PolicyConfig::Allocator;
  using S = PolicyConfig::Scorer;
  HEADPAGE_RETURN_IF_ERROR(Supports(config));
  const CacheGeometry& g = manager_->geometry();
  const int32_t layers = g.num_layers, heads = g.num_kv_heads;
  const bool tova = config.scorer == S::kTova;
  // DBudgetKV reads the last query whatever its scorer.
  const bool reads_queries = config.scorer == S::kSnapKV || tova || config.scorer == S::kH2O ||
                             config.allocator == A::kDBudget;
  // The query rows staged at once: the window, the last query (TOVA), or a
  // chunk of every prompt query (H2O).
  int32_t max_rows = 0;
  for (const Job& job : jobs) {
    const int32_t rows = job.queries[0].num_queries;
    max_rows = std::max(max_rows, tova ? 1 : std::clamp(rows, 1, kMaxScoreWindow));
    // Every layer the same number of queries, of the cache's dtype.
    for (size_t l = 0; reads_queries && l < job.queries.size(); ++l) {
      if (job.queries[l].num_queries != rows || job.queries[l].dtype != g.dtype) {
        return absl::InvalidArgumentError(absl::StrCat(
            "CudaExecutor: layer ", l, " has ", job.queries[l].num_queries, " queries of ",
            DTypeName(job.queries[l].dtype), "; every layer needs ", rows, " of the cache's ",
            DTypeName(g.dtype)));
      }
    }
    if (config.scorer == S::kSnapKV && rows > kMaxScoreWindow) {
      return absl::InvalidArgumentError(absl::StrCat(
          "CudaExecutor: ", rows, " window queries; the GPU scores at most ", kMaxScoreWindow));
    }
  }
  const bool dbudget = config.allocator == A::kDBudget;
  const int32_t group = g.group_size();
  jobs_.resize(jobs.size());
  for (size_t j = 0; j < jobs.size(); ++j) {
    HEADPAGE_ASSIGN_OR_RETURN(jobs_[j].size, Measure(*manager_, jobs[j].seq));
    if (dbudget) {
      jobs_[j].size.group_offsets = group * (jobs_[j].size.streams + 1);
      // The attention rows: group_size of them per token, int32-indexed.
      if (int64_t{group} * jobs_[j].size.tokens > std::numeric_limits<int32_t>::max()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "CudaExecutor: DBudgetKV's ", group, " attention rows over the ",
            jobs_[j].size.tokens, " tokens of sequence ", jobs[j].seq,
            " exceed int32 offsets"));
      }
    }
  }
  HEADPAGE_RETURN_IF_ERROR(BeginCall(jobs.size()));

  // The arguments every sequence shares; pointers are set per sequence.
  const bool pooled = config.scorer == S::kSnapKV;
  SetScoresArgs(pooled ? config.snapkv.kernel_size : 1,
                pooled ? config.snapkv.pooling : policy::Pooling::kNone,
                pooled ? config.snapkv.reduce : (tova ? policy::GroupReduce::kMean : config.reduce));
  const bool ada = config.allocator == A::kAda || config.allocator == A::kAdaPyramid;
  select_ = SelectArgs();
  select_.num_seqs = config.allocator == A::kAdaPyramid ? 1 : layers;
  select_.num_kv_heads = heads;
  select_.alpha = config.ada.alpha;
  select_.floor = config.ada.floor;
  select_.mode = ada ? SelectMode::kAda : SelectMode::kTopB;

  // Scratch: shared sections sized for the largest sequence, and each
  // sequence's own.
  size_t table_ints = 0, plan_ints = 0, scores_ws = 0, dbudget_ws = 0;
  int32_t tokens = 0;
  for (const JobState& state : jobs_) {
    table_ints = std::max(table_ints, state.size.table_ints());
    plan_ints = std::max(plan_ints, state.size.plan_ints());
    tokens = std::max(tokens, state.size.tokens);
    if (reads_queries && state.size.max_len > 0) {
      // Without the job's plan_len: a longer planned length only lengthens the
      // chunks, so this bounds what the launch needs.
      WindowScoresArgs args = scores_args_;
      args.window = max_rows;
      args.max_len = state.size.max_len;
      args.num_scores = state.size.tokens;
      scores_ws = std::max(scores_ws, WindowScoresWorkspaceBytes(args));
    }
    if (dbudget && state.size.max_len > 0) {
      // The attention rows: each q head of a group as its own stream.
      WindowScoresArgs rows = scores_args_;
      rows.num_q_heads = heads;
      rows.reduce = policy::GroupReduce::kMean;
      rows.window = 1;
      rows.max_len = state.size.max_len;
      rows.num_scores = group * state.size.tokens;
      scores_ws = std::max(scores_ws, WindowScoresWorkspaceBytes(rows));
      DBudgetCutArgs cut;
      cut.num_seqs = layers;
      cut.num_kv_heads = heads;
      cut.group_size = group;
      cut.num_tokens = state.size.tokens;
      cut.by_position = config.dbudget_by_position;
      dbudget_ws = std::max(dbudget_ws, DBudgetCutWorkspaceBytes(cut));
    }
  }
  Layout dev;
  d_tables_ = dev.Add(sizeof(int32_t) * table_ints);
  d_positions_ = dev.Add(sizeof(int32_t) * tokens);
  d_scores_ = dev.Add(sizeof(float) * tokens);
  d_queries_ = dev.Add(reads_queries ? static_cast<size_t>(layers) * g.num_q_heads * max_rows *
                                           g.head_dim * SizeOf(g.dtype)
                                     : 0);
  d_query_positions_ = dev.Add(reads_queries ? sizeof(int32_t) * layers * max_rows : 0);
  d_scores_ws_ = dev.Add(scores_ws);
  d_plan_ = dev.Add(sizeof(int32_t) * plan_ints + static_cast<size_t>(layers) * heads);
  d_attention_ = dev.Add(dbudget ? sizeof(float) * group * tokens : 0);
  d_dbudget_ws_ = dev.Add(dbudget_ws);
  Layout host;
  if (agree_kept) {
    h_scored_ = host.Add((sizeof(float) + sizeof(int32_t)) * tokens);
    h_agreed_ = host.Add(sizeof(int32_t) * layers * heads);
  }
  for (JobState& state : jobs_) {
    state.d_keep = dev.Add(sizeof(int32_t) * state.size.tokens);
    state.d_counts = dev.Add(sizeof(int32_t) * state.size.streams);
    state.h_tables = host.Add(sizeof(int32_t) * state.size.table_ints());
    state.h_counts = host.Add(sizeof(int32_t) * state.size.streams);
    state.h_plan = host.Add(sizeof(int32_t) * state.size.plan_ints() + state.size.streams);
  }
  HEADPAGE_RETURN_IF_ERROR(Reserve(dev, host));

  // Every sequence's scoring and selection first, then each one's plan as its
  // counts arrive: the host plans sequence j while the GPU scores j + 1.
  // Each sequence's tables are built just before its scoring is enqueued, so
  // the GPU starts on the first while the host builds the next.
  for (size_t j = 0; j < jobs.size(); ++j) {
    JobState& state = jobs_[j];
    if (state.size.tokens == 0) {
      // Nothing to score or select; a group still meets for its agreement.
      if (agree_kept) {
        const std::vector<policy::StreamScores> empty(layers * heads,
                                                      policy::StreamScores{{}, {}, jobs[j].protection});
        HEADPAGE_RETURN_IF_ERROR(agree_kept(jobs[j], ByLayer(empty, layers, heads)).status());
      }
      continue;
    }
    state.tables.Clear();
    HEADPAGE_RETURN_IF_ERROR(state.tables.Append(*manager_, jobs[j].seq, jobs[j].layer_capacity, {},
                                                 jobs[j].stream_capacity));
    if (dbudget) state.tables.SetGroupOffsets(group);
    HEADPAGE_RETURN_IF_ERROR(ScoreAndSelect(config, jobs[j], state, agree_kept));
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(events_[j], stream()), "recording"));
  }
  for (size_t j = 0; j < jobs.size(); ++j) {
    const JobState& state = jobs_[j];
    if (state.size.tokens == 0) continue;
    HEADPAGE_RETURN_IF_ERROR(PlanAndCompact(
        jobs[j].seq, At<int32_t>(pinned_.data(), state.h_counts), state.tables.offsets,
        state.d_keep, state.h_plan, events_[j],
        jobs[j].keeps_scores ? reinterpret_cast<float*>(store_.data()) : nullptr,
        jobs[j].frozen_tokens));
  }
  return absl::OkStatus();
}

}  // namespace cuda_executor

absl::StatusOr<std::unique_ptr<CudaExecutor>> CudaExecutor::Create(BlockManager* manager,
                                                                   const PagedKV& cache,
                                                                   GpuStream stream) {
  if (manager == nullptr || cache.memory != MemoryKind::kDevice) {
    return absl::InvalidArgumentError(
        "CudaExecutor: needs a block manager and a cache view of device memory (a CudaArena)");
  }
  return std::unique_ptr<CudaExecutor>(new cuda_executor::CudaExecutorImpl(manager, cache, stream));
}

#else  // !HEADPAGE_HAVE_CUDA

absl::StatusOr<std::unique_ptr<CudaExecutor>> CudaExecutor::Create(BlockManager*, const PagedKV&,
                                                                   GpuStream) {
  return absl::UnimplementedError("CudaExecutor: this build of headpage has no CUDA");
}

#endif

}  // namespace headpage
