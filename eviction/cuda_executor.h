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

  // Whether the GPU runs `config`'s scorer and allocator (SnapKV window scores,
  // TOVA, recency, key norm and random scores; uniform, pyramid, Ada and
  // Ada-Pyramid budgets). Unimplemented naming the missing part otherwise.
  [[nodiscard]] static absl::Status Supports(const PolicyConfig& config);

  // One sequence of a batch: layer l keeps layer_capacity[l] tokens per stream
  // on average (uniform: each at most that), protecting `protection`;
  // queries[l] are layer l's observed queries, host or device memory, of the
  // cache's dtype.
  struct Job {
    SeqId seq = 0;
    absl::Span<const int32_t> layer_capacity;
    policy::Protection protection;
    absl::Span<const LayerQueries> queries;
  };

  // Compresses every layer of every job's sequence. The sequences are pipelined:
  // every sequence's scores and keep sets are enqueued first, then each one's
  // kept counts are waited for in turn and its plan and compaction enqueued,
  // so the host's planning of one sequence overlaps the GPU's scoring of the
  // next. The engine has validated the policy, the budgets and the query
  // counts. Errors before the first compaction change nothing; a
  // ResourceExhausted from Evict (a stream shared with a fork in a pool without
  // room) leaves the sequences and layers before the failing one compressed,
  // as the host executor does.
  [[nodiscard]] virtual absl::Status Compress(const PolicyConfig& config,
                                              absl::Span<const Job> jobs) = 0;

  GpuStream stream() const { return stream_; }

 protected:
  explicit CudaExecutor(GpuStream stream) : stream_(stream) {}

 private:
  GpuStream stream_;
};

}  // namespace headpage

#endif  // HEADPAGE_EVICTION_CUDA_EXECUTOR_H_
