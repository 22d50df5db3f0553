// SPDX-License-Identifier: Apache-2.0
// File: kernels/write_kv_args.h
//
// WriteKV scatters the K/V of new tokens of one layer into the pool, where the
// block manager's slot mapping says, and stores each token's position beside it.
// fp8 pages (cache.kv_dtype kFP8E4M3) get every (token, head) K and V row
// quantized with a scale of its own (core/dtype.h QuantizeRowFp8), stored in
// cache.scales beside the position; the GPU's bytes and scales equal the host's.
// Plain C++: .cu files include it.
#ifndef HEADPAGE_KERNELS_WRITE_KV_ARGS_H_
#define HEADPAGE_KERNELS_WRITE_KV_ARGS_H_

#include <cstdint>

#include "core/paged_kv.h"
#include "kernels/gpu_launch.h"

namespace headpage {

struct WriteKVArgs {
  PagedKV cache;
  int32_t num_tokens = 0;
  int32_t num_kv_heads = 0;
  const void* keys = nullptr;            // [num_tokens][num_kv_heads][head_dim] of cache.dtype
  const void* values = nullptr;          // [num_tokens][num_kv_heads][head_dim] of cache.dtype
  // Flat slot ids, -1 = skip: token t, head h at slot_mapping[t * slot_stride + h].
  // BlockManager::Reserve's [token][layer][kv_head] gives layer l with
  // slot_mapping = base + l * num_kv_heads, slot_stride = num_layers * num_kv_heads.
  const int32_t* slot_mapping = nullptr;
  int32_t slot_stride = 0;               // >= num_kv_heads
  const int32_t* positions = nullptr;    // [num_tokens] token positions stored beside the K/V
};

namespace gpu::internal {
// write_kv.cu; gpu::WriteKV (write_kv.h) validates, then calls it.
LaunchResult LaunchWriteKV(const WriteKVArgs& args, GpuStream stream);
}  // namespace gpu::internal

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_WRITE_KV_ARGS_H_
