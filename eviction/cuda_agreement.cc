// SPDX-License-Identifier: Apache-2.0
// The CUDA executor in a tensor-parallel group: the kept counts a group agrees
// on (Ada-KV's layer budget, the pool-wide budget) are computed on the host
// from the scores the GPU computed, and only they go back to the device, where
// Select keeps each stream's top count (cuda_executor.h, AgreeLayerKept).
#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "eviction/cuda_executor_impl.h"

namespace headpage::cuda_executor {

absl::Status CudaExecutorImpl::AgreeAndUpload(
    const Tables& t, absl::Span<const policy::Protection> protection,
    absl::Span<const int32_t> scores_count,
    const std::function<absl::StatusOr<std::vector<int32_t>>(
        absl::Span<const policy::StreamScores>)>& agree,
    int32_t* kept) {
  const int32_t streams = t.streams(), tokens = t.tokens();
  float* scores = At<float>(pinned_.data(), h_scored_);
  auto* positions = reinterpret_cast<int32_t*>(scores + tokens);
  if (tokens > 0) {
    const char* d = device_.data();
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpyAsync(scores, d + d_scores_, sizeof(float) * tokens, cudaMemcpyDeviceToHost,
                        stream()),
        "copying the scores for the group"));
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpyAsync(positions, d + d_positions_, sizeof(int32_t) * tokens,
                        cudaMemcpyDeviceToHost, stream()),
        "copying the positions for the group"));
  }
  // Also orders the last upload out of h_agreed_ before it is rewritten.
  HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream()), "scoring for the group"));
  std::vector<policy::StreamScores> each(streams);
  for (int32_t s = 0; s < streams; ++s) {
    const int32_t first = t.offsets[s], n = t.lens[s];
    if (!scores_count.empty()) {
      std::fill(scores + first + std::min(scores_count[s], n), scores + first + n, 0.0f);
    }
    each[s] = policy::StreamScores{absl::MakeConstSpan(scores + first, n),
                                   absl::MakeConstSpan(positions + first, n), protection[s]};
  }
  HEADPAGE_ASSIGN_OR_RETURN(const std::vector<int32_t> counts, agree(each));
  if (counts.size() != static_cast<size_t>(streams)) {
    return absl::InternalError(absl::StrCat("CudaExecutor: the group agreed ", counts.size(),
                                            " kept counts for ", streams, " streams"));
  }
  int32_t* staged = At<int32_t>(pinned_.data(), h_agreed_);
  for (int32_t s = 0; s < streams; ++s) {
    if (counts[s] < 0 || counts[s] > t.lens[s]) {
      return absl::InternalError(absl::StrCat("CudaExecutor: the group agreed to keep ", counts[s],
                                              " of stream ", s, "'s ", t.lens[s], " tokens"));
    }
    staged[s] = counts[s];
  }
  if (streams == 0) return absl::OkStatus();
  HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(kept, staged, sizeof(int32_t) * streams,
                                                      cudaMemcpyHostToDevice, stream()),
                                      "uploading the agreed counts"));
  return CudaStatus(cudaEventRecord(uploaded_, stream()), "recording");
}

}  // namespace headpage::cuda_executor
