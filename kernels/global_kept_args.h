// SPDX-License-Identifier: Apache-2.0
// File: kernels/global_kept_args.h
//
// GlobalKept is the pool-wide budget of the eviction engine
// (policy::GlobalKept), computed over scores that live on the device. The input
// is the token scores of every stream in the pool, for every layer of every
// sequence. The output is how many tokens each stream keeps, so that together
// the streams free pages_to_free pages. Only these counts go to the host,
// which passes them to BlockManager::Evict. Plain C++ so that .cu files can
// include it.
#ifndef HEADPAGE_KERNELS_GLOBAL_KEPT_ARGS_H_
#define HEADPAGE_KERNELS_GLOBAL_KEPT_ARGS_H_

#include <cstddef>
#include <cstdint>

#include "kernels/gpu_launch.h"

namespace headpage {

struct GlobalKeptArgs {
  int32_t num_streams = 0;
  // [num_streams + 1], non-decreasing from >= 0, at most num_scores. Stream s's
  // scores are scores[score_offsets[s] .. score_offsets[s + 1]), one per slot,
  // in slot order.
  const int32_t* score_offsets = nullptr;
  // The number of elements in `scores`, as the host knows it (usually
  // score_offsets[num_streams]). It sizes the workspace.
  int32_t num_scores = 0;
  // Attention mass: finite and >= 0 on every candidate. A Knorm score is
  // negative and does not qualify.
  const float* scores = nullptr;
  // [num_streams]: stream s's candidates are its first candidate_counts[s]
  // slots, a number in [0, length]. The remaining slots are protected: the
  // engine's recent window (it uses no sinks, so the candidates form a prefix).
  const int32_t* candidate_counts = nullptr;
  // [num_streams], each >= 0: the fewest tokens stream s keeps (capped at its
  // length).
  const int32_t* floors = nullptr;
  int32_t page_size = 0;      // > 0
  int64_t pages_to_free = 0;  // >= 0
  int32_t* kept_counts = nullptr;  // [num_streams], the output

  // Used only by gpu:: (ref:: ignores both): device memory of at least
  // GlobalKeptWorkspaceBytes(args) bytes, 16-byte aligned. Its contents do not
  // matter.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// The order in which gpu:: evicts tokens is given by each token's share,
// score / (the stream's candidate mass), a double in [0, 1]. Its bits are the
// sort key. The top two bits of a share's bits are always zero, so a sort over
// 62 bits is enough. Keys are masked to 62 bits and padding gets the largest
// 62-bit key.
inline constexpr int kGlobalKeptKeyBits = 62;

namespace gpu::internal {
// Implemented in global_kept.cu. Sets *bytes to the workspace needed for the
// host-side sizes in `args` (num_streams, num_scores, page_size). This includes
// CUB's scratch space, which depends on the current device.
LaunchResult GlobalKeptWorkspaceBytesOnDevice(const GlobalKeptArgs& args, size_t* bytes);
// Implemented in global_kept.cu. gpu::GlobalKept (global_kept.h) validates the
// arguments first and then calls this.
LaunchResult LaunchGlobalKept(const GlobalKeptArgs& args, GpuStream stream);
}  // namespace gpu::internal

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_GLOBAL_KEPT_ARGS_H_
