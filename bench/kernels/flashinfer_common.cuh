// SPDX-License-Identifier: Apache-2.0
// File: bench/kernels/flashinfer_common.cuh
//
// What the two decoders of flashinfer_decode.h share, both being the same
// Python wrapper driven by hand: flashinfer_decode.cu (CUDA cores, the decode
// module) and flashinfer_prefill.cu (tensor cores, the prefill module). Their
// variant and workspaces, what the wrapper keeps between plan() and run(), the
// cache view and the params both runs fill alike, and turning what FlashInfer's
// host code throws into a FlashInferResult. It includes FlashInfer's headers,
// so only those two .cu files include it: flashinfer_decode.h stays plain C++.
#ifndef HEADPAGE_BENCH_KERNELS_FLASHINFER_COMMON_CUH_
#define HEADPAGE_BENCH_KERNELS_FLASHINFER_COMMON_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>

#include <flashinfer/allocator.h>
#include <flashinfer/attention/variants.cuh>
#include <flashinfer/layout.cuh>
#include <flashinfer/page.cuh>
#include <flashinfer/pos_enc.cuh>

#include "bench/kernels/flashinfer_decode.h"
#include "tests/kernels/device_buffer.h"

namespace headpage::bench::flashinfer_common {

using testing::DeviceBuffer;

// Both modules' AttentionVariant for the wrapper's defaults: no custom mask,
// sliding window, soft cap or ALiBi (pos_encoding_mode 0, not 2), no RoPE.
using Variant =
    flashinfer::DefaultAttention</*use_custom_mask=*/false, /*use_sliding_window=*/false,
                                 /*use_logits_soft_cap=*/false, /*use_alibi=*/false>;
constexpr flashinfer::PosEncodingMode kPosEncoding = flashinfer::PosEncodingMode::kNone;

// The wrapper's buffers: float_workspace_buffer is the caller's (128 MiB is
// what FlashInfer's docs and its users allocate), the int one and its
// page-locked twin are 8 MiB in BatchDecodeWithPagedKVCacheWrapper.__init__.
constexpr size_t kFloatWorkspaceBytes = size_t{128} << 20;
constexpr size_t kIntWorkspaceBytes = size_t{8} << 20;

inline FlashInferResult CudaResult(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return {};
  return {std::string(what) + ": " + cudaGetErrorString(error)};
}

// `call()`'s cudaError_t as a result named `what`, or the text of the
// flashinfer::Error (or other exception) it threw: none leaves the .cu files.
template <typename Call>
FlashInferResult CatchFlashInferErrors(const char* what, Call&& call) {
  try {
    return CudaResult(call(), what);
  } catch (const std::exception& e) {
    return {std::string(what) + ": " + e.what()};
  }
}

// What both plans require of a problem before FlashInfer sees it; `plan_name`
// starts the message.
inline FlashInferResult CheckProblem(const FlashInferDecodeProblem& problem,
                                     const char* plan_name) {
  if (problem.num_kv_heads <= 0 || problem.num_qo_heads % problem.num_kv_heads != 0 ||
      problem.batch_size <= 0 || problem.page_size <= 0 ||
      problem.host_indptr.size() != static_cast<size_t>(problem.batch_size) + 1) {
    return {std::string(plan_name) + ": inconsistent problem"};
  }
  return {};
}

// The problem's cache as both runs view it, from the cache tensor's strides
// (page, then the layout's two inner dims). K and V share them: the prefill
// run hands them to the constructor with separate V strides twice, which sets
// the same fields as this one.
inline flashinfer::paged_kv_t<nv_bfloat16, int32_t> PagedKvView(
    const FlashInferDecodeProblem& problem) {
  const bool hnd = problem.layout == FlashInferKvLayout::kHND;
  const int64_t strides[3] = {problem.stride_page, hnd ? problem.stride_h : problem.stride_n,
                              hnd ? problem.stride_n : problem.stride_h};
  return flashinfer::paged_kv_t<nv_bfloat16, int32_t>(
      static_cast<uint32_t>(problem.num_kv_heads), static_cast<uint32_t>(problem.page_size),
      kFlashInferHeadDim, static_cast<uint32_t>(problem.batch_size),
      static_cast<flashinfer::QKVLayout>(problem.layout),
      static_cast<nv_bfloat16*>(const_cast<void*>(problem.k_data)),
      static_cast<nv_bfloat16*>(const_cast<void*>(problem.v_data)), strides,
      const_cast<int32_t*>(problem.indices), const_cast<int32_t*>(problem.indptr),
      const_cast<int32_t*>(problem.last_page_len));
}

// What the wrapper keeps between plan() and run(), for either module. Params:
// the module's params struct (bf16 q, kv and o, int32 indices); PlanInfo: what
// its plan() fills, DecodePlanInfo or PrefillPlanInfo. Both name the fields
// used here alike.
template <typename Params, typename PlanInfo>
struct WrapperState {
  DeviceBuffer float_workspace;
  DeviceBuffer int_workspace;
  void* page_locked = nullptr;  // cudaMallocHost
  PlanInfo plan_info;
  Params params{};
  nv_bfloat16* tmp_v = nullptr;  // with split-KV: the partial outputs and their lse
  float* tmp_s = nullptr;
  bool enable_pdl = false;
  bool planned = false;

  WrapperState() = default;
  WrapperState(const WrapperState&) = delete;
  WrapperState& operator=(const WrapperState&) = delete;
  ~WrapperState() {
    if (page_locked != nullptr) cudaFreeHost(page_locked);
  }

  // The workspaces on first use, then enable_pdl as FlashInfer's own
  // device_support_pdl sets it: programmatic dependent launch from sm_90.
  FlashInferResult PrepareWorkspaces() {
    if (page_locked == nullptr) {
      float_workspace = DeviceBuffer(kFloatWorkspaceBytes);
      int_workspace = DeviceBuffer(kIntWorkspaceBytes);
      FlashInferResult result =
          CudaResult(cudaMallocHost(&page_locked, kIntWorkspaceBytes), "cudaMallocHost");
      if (!result.ok()) return result;
    }
    int device = 0, major = 0;
    FlashInferResult result = CudaResult(cudaGetDevice(&device), "cudaGetDevice");
    if (!result.ok()) return result;
    result = CudaResult(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device),
                        "cudaDeviceGetAttribute");
    if (!result.ok()) return result;
    enable_pdl = major >= 9;
    return {};
  }

  // After plan(): params afresh, with the fields both runs set alike from the
  // problem and from the schedule, and the split-KV buffers.
  void SetParams(const FlashInferDecodeProblem& problem) {
    params = Params{};
    params.q = static_cast<nv_bfloat16*>(const_cast<void*>(problem.q));
    params.paged_kv = PagedKvView(problem);
    params.o = static_cast<nv_bfloat16*>(problem.o);
    params.lse = nullptr;  // run(return_lse=False), the default
    params.logits_soft_cap = 0.0;
    params.sm_scale = problem.sm_scale;
    params.rope_rcp_scale = 1.0;        // 1 / rope_scale, unused without RoPE
    params.rope_rcp_theta = 1.0 / 1e4;  // 1 / rope_theta, likewise
    params.num_qo_heads = static_cast<uint32_t>(problem.num_qo_heads);
    params.q_stride_n = static_cast<int32_t>(problem.q_stride_n);
    params.q_stride_h = static_cast<int32_t>(problem.q_stride_h);
    params.window_left = -1;

    void* int_buffer = int_workspace.get();
    void* float_buffer = float_workspace.get();
    params.request_indices =
        flashinfer::GetPtrFromBaseOffset<int32_t>(int_buffer, plan_info.request_indices_offset);
    params.kv_tile_indices =
        flashinfer::GetPtrFromBaseOffset<int32_t>(int_buffer, plan_info.kv_tile_indices_offset);
    params.o_indptr =
        flashinfer::GetPtrFromBaseOffset<int32_t>(int_buffer, plan_info.o_indptr_offset);
    params.kv_chunk_size_ptr =
        flashinfer::GetPtrFromBaseOffset<int32_t>(int_buffer, plan_info.kv_chunk_size_ptr_offset);
    params.padded_batch_size = static_cast<uint32_t>(plan_info.padded_batch_size);
    params.partition_kv = false;  // the launcher sets it from tmp_v
    tmp_v = nullptr;
    tmp_s = nullptr;
    if (plan_info.split_kv) {
      tmp_v = flashinfer::GetPtrFromBaseOffset<nv_bfloat16>(float_buffer, plan_info.v_offset);
      tmp_s = flashinfer::GetPtrFromBaseOffset<float>(float_buffer, plan_info.s_offset);
    }
  }
};

}  // namespace headpage::bench::flashinfer_common

#endif  // HEADPAGE_BENCH_KERNELS_FLASHINFER_COMMON_CUH_
