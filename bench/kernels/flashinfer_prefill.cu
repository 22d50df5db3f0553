// SPDX-License-Identifier: Apache-2.0
// FlashInfer's tensor-core decode (MakeFlashInferTensorCoreDecoder in
// flashinfer_decode.h): BatchDecodeWithPagedKVCacheWrapper(use_tensor_cores=True)
// runs the batch prefill module with one query row per request. What the JIT
// would generate for it is written out here by hand: the PagedParams of
// batch_prefill_customize_config.jinja as gen_batch_prefill_module renders them
// for fa2 (its additional params, in its order), the CTA_TILE_Q values that
// batch_prefill_paged_kernel_inst.jinja instantiates, and the plan and paged run
// of csrc/batch_prefill.cu and batch_prefill_paged.cuh without the TVM FFI; what
// the CUDA-core decode does alike is in flashinfer_common.cuh. Compiled with the
// same JIT flags as flashinfer_decode.cu.
#include <cuda_bf16.h>

#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include <flashinfer/attention/mask.cuh>
#include <flashinfer/attention/prefill.cuh>
#include <flashinfer/attention/scheduler.cuh>
#include <flashinfer/fastdiv.cuh>
#include <flashinfer/page.cuh>

#include "bench/kernels/flashinfer_common.cuh"
#include "bench/kernels/flashinfer_decode.h"

namespace headpage::bench {
namespace {

using flashinfer::MaskMode;
using flashinfer_common::CatchFlashInferErrors;
using flashinfer_common::CudaResult;
using flashinfer_common::DeviceBuffer;
using flashinfer_common::kPosEncoding;
using flashinfer_common::Variant;

// The config's PagedParams with its template arguments filled in, field for
// field in the same order: the kernel takes it by value as a __grid_constant__.
struct TensorCoreParams {
  using DTypeQ = nv_bfloat16;
  using DTypeKV = nv_bfloat16;
  using DTypeO = nv_bfloat16;
  using IdType = int32_t;

  DTypeQ* q;
  flashinfer::paged_kv_t<DTypeKV, IdType> paged_kv;
  IdType* q_indptr;
  DTypeO* o;
  float* lse;
  flashinfer::uint_fastdiv group_size;

  // The fa2 additional params: the tensors, then the scalars.
  uint8_t* maybe_custom_mask;
  int32_t* maybe_mask_indptr;
  float* maybe_alibi_slopes;
  uint32_t* maybe_prefix_len_ptr;
  uint16_t* maybe_token_pos_in_items_ptr;
  uint16_t* maybe_max_item_len_ptr;
  uint8_t* maybe_k_cache_sf;  // NVFP4 scale factors: uint8_t without token-head scales
  uint8_t* maybe_v_cache_sf;
  double logits_soft_cap;
  double sm_scale;
  double rope_rcp_scale;
  double rope_rcp_theta;
  int64_t token_pos_in_items_len;

  uint32_t num_qo_heads;
  IdType q_stride_n;
  IdType q_stride_h;
  uint32_t k_sf_stride_page;
  uint32_t k_sf_stride_n;
  uint32_t k_sf_stride_h;
  uint32_t v_sf_stride_page;
  uint32_t v_sf_stride_n;
  uint32_t v_sf_stride_h;
  int32_t window_left;

  IdType* request_indices;
  IdType* qo_tile_indices;
  IdType* kv_tile_indices;
  IdType* merge_indptr;
  IdType* o_indptr;
  bool* block_valid_mask;
  IdType* kv_chunk_size_ptr;
  uint32_t max_total_num_rows;
  uint32_t* total_num_rows;
  uint32_t padded_batch_size;
  bool partition_kv;

  __host__ __device__ __forceinline__ uint32_t get_qo_len(uint32_t batch_idx) const {
    return q_indptr[batch_idx + 1] - q_indptr[batch_idx];
  }
  __host__ __device__ __forceinline__ uint32_t get_kv_len(uint32_t batch_idx) const {
    return paged_kv.get_length(batch_idx);
  }
};

// run()'s mask for one query row per request: MaskMode.NON_CAUSAL.
constexpr MaskMode kMask = MaskMode::kNone;

// One instantiation of the paged prefill kernel's launcher, as the JIT's
// "equal" primary module has them: K and V share their strides here.
template <uint32_t kCtaTileQ>
cudaError_t LaunchPrefill(const TensorCoreParams& params, nv_bfloat16* tmp_v, float* tmp_s,
                          bool enable_pdl, cudaStream_t stream) {
  return flashinfer::BatchPrefillWithPagedKVCacheDispatched<
      /*SAME_KV_STRIDES=*/true, kCtaTileQ, kFlashInferHeadDim, kFlashInferHeadDim, kPosEncoding,
      /*USE_FP16_QK_REDUCTION=*/false, kMask, /*USE_TOKEN_HEAD_SF=*/false, Variant>(
      params, tmp_v, tmp_s, enable_pdl, stream);
}

// BatchDecodeWithPagedKVCacheWrapper(use_tensor_cores=True): see
// flashinfer_decode.h.
class TensorCoreDecoder final : public FlashInferDecoder {
 public:
  FlashInferResult Plan(const FlashInferDecodeProblem& problem, cudaStream_t stream) override;
  FlashInferResult Run(cudaStream_t stream) const override;

  bool split_kv() const override { return state_.plan_info.split_kv; }
  int64_t padded_batch_size() const override { return state_.plan_info.padded_batch_size; }
  int64_t cta_tile_q() const override { return state_.plan_info.cta_tile_q; }

 private:
  flashinfer_common::WrapperState<TensorCoreParams, flashinfer::PrefillPlanInfo> state_;
  DeviceBuffer qo_indptr_;  // 0, 1, ..., batch_size: one query row per request
};

FlashInferResult TensorCoreDecoder::Plan(const FlashInferDecodeProblem& problem,
                                         cudaStream_t stream) {
  state_.planned = false;
  FlashInferResult result = flashinfer_common::CheckProblem(problem, "TensorCoreDecoder::Plan");
  if (!result.ok()) return result;
  result = state_.PrepareWorkspaces();
  if (!result.ok()) return result;

  // The decode wrapper's plan(): qo_indptr is a range, and the KV indptr it
  // hands PrefillPlan is the page indptr (the planner counts KV in pages and
  // multiplies its chunk size by page_size at the end).
  std::vector<int32_t> qo_indptr_h(static_cast<size_t>(problem.batch_size) + 1);
  std::iota(qo_indptr_h.begin(), qo_indptr_h.end(), 0);
  std::vector<int32_t> kv_indptr_h = problem.host_indptr;  // PrefillPlan takes non-const
  qo_indptr_ = DeviceBuffer(qo_indptr_h);
  state_.plan_info = flashinfer::PrefillPlanInfo();
  result = CatchFlashInferErrors("flashinfer::PrefillPlan", [&] {
    return flashinfer::PrefillPlan<int32_t>(
        state_.float_workspace.get(), state_.float_workspace.bytes(), state_.int_workspace.get(),
        state_.page_locked, state_.int_workspace.bytes(), state_.plan_info, qo_indptr_h.data(),
        kv_indptr_h.data(), /*total_num_rows=*/static_cast<uint32_t>(problem.batch_size),
        static_cast<uint32_t>(problem.batch_size), static_cast<uint32_t>(problem.num_qo_heads),
        static_cast<uint32_t>(problem.num_kv_heads), kFlashInferHeadDim, kFlashInferHeadDim,
        static_cast<uint32_t>(problem.page_size), /*enable_cuda_graph=*/false,
        /*sizeof_dtype_o=*/2, /*window_left=*/-1, /*fixed_split_size=*/-1,
        /*disable_split_kv=*/false, /*num_colocated_ctas=*/0, /*uniform_q_len=*/1,
        /*fixed_uniform_q_len=*/true, stream, /*kv_dtype_bytes=*/sizeof(nv_bfloat16));
  });
  if (!result.ok()) return result;
  // The upload of the schedule reads the page-locked buffer asynchronously.
  result = CudaResult(cudaStreamSynchronize(stream), "cudaStreamSynchronize after PrefillPlan");
  if (!result.ok()) return result;

  // batch_prefill_paged.cuh's run: the params both runs fill alike, then the
  // prefill module's own. The mask, ALiBi, multi-item and scale-factor tensors
  // stay null: nothing this instantiation compiles reads them (run() passes an
  // ALiBi slope buffer that only use_alibi would read).
  state_.SetParams(problem);
  TensorCoreParams& params = state_.params;
  const flashinfer::PrefillPlanInfo& info = state_.plan_info;
  params.q_indptr = qo_indptr_.get<int32_t>();
  params.group_size =
      flashinfer::uint_fastdiv(static_cast<uint32_t>(problem.num_qo_heads / problem.num_kv_heads));
  params.token_pos_in_items_len = 0;
  params.qo_tile_indices = flashinfer::GetPtrFromBaseOffset<int32_t>(state_.int_workspace.get(),
                                                                     info.qo_tile_indices_offset);
  if (info.split_kv) {
    params.merge_indptr = flashinfer::GetPtrFromBaseOffset<int32_t>(state_.int_workspace.get(),
                                                                    info.merge_indptr_offset);
  }
  params.max_total_num_rows = static_cast<uint32_t>(info.total_num_rows);
  state_.planned = true;
  return {};
}

FlashInferResult TensorCoreDecoder::Run(cudaStream_t stream) const {
  if (!state_.planned) return {"TensorCoreDecoder::Run before a successful Plan"};
  // The CTA_TILE_Q values the JIT instantiates below head_dim 512 (its
  // DISPATCH_CTA_TILE_Q also names 32, which FA2DetermineCtaTileQ returns only
  // for head_dim 512).
  const int64_t tile = state_.plan_info.cta_tile_q;
  const auto launch = tile == 16    ? &LaunchPrefill<16>
                      : tile == 64  ? &LaunchPrefill<64>
                      : tile == 128 ? &LaunchPrefill<128>
                                    : nullptr;
  if (launch == nullptr) {
    return {"TensorCoreDecoder::Run: PrefillPlan chose cta_tile_q " + std::to_string(tile) +
            ", which the JIT does not build"};
  }
  return CatchFlashInferErrors("flashinfer::BatchPrefillWithPagedKVCacheDispatched", [&] {
    return launch(state_.params, state_.tmp_v, state_.tmp_s, state_.enable_pdl, stream);
  });
}

}  // namespace

std::unique_ptr<FlashInferDecoder> MakeFlashInferTensorCoreDecoder() {
  return std::make_unique<TensorCoreDecoder>();
}

}  // namespace headpage::bench
