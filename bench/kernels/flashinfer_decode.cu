// SPDX-License-Identifier: Apache-2.0
// FlashInfer's paged decode on CUDA cores from the pinned wheel's headers (see
// flashinfer_decode.h). What FlashInfer's JIT would generate for the wrapper's
// defaults is written out here by hand: batch_decode_customize_config.jinja's
// Params, rendered as gen_batch_decode_module renders it (the additional params
// maybe_alibi_slopes, logits_soft_cap, sm_scale, rope_rcp_scale, rope_rcp_theta),
// and csrc/batch_decode.cu's plan and run, without the TVM FFI around them; what
// the tensor-core decode does alike is in flashinfer_common.cuh. Compiled with
// the JIT's flags (bench/CMakeLists.txt): -use_fast_math,
// --expt-relaxed-constexpr, the wheel's libcu++ ahead of the toolkit's.
#include <cuda_bf16.h>

#include <memory>
#include <string>
#include <vector>

#include <flashinfer/attention/decode.cuh>
#include <flashinfer/attention/scheduler.cuh>
#include <flashinfer/page.cuh>

#include "bench/kernels/flashinfer_common.cuh"
#include "bench/kernels/flashinfer_decode.h"

namespace headpage::bench {
namespace {

using flashinfer_common::CatchFlashInferErrors;
using flashinfer_common::CudaResult;
using flashinfer_common::kPosEncoding;
using flashinfer_common::Variant;

// The config's Params with its template arguments filled in, field for field in
// the same order (the kernel takes it by value as a __grid_constant__).
struct DecodeParams {
  using DTypeQ = nv_bfloat16;
  using DTypeKV = nv_bfloat16;
  using DTypeO = nv_bfloat16;
  using IdType = int32_t;

  DTypeQ* q;
  flashinfer::paged_kv_t<DTypeKV, IdType> paged_kv;
  DTypeO* o;
  float* lse;

  float* maybe_alibi_slopes;
  double logits_soft_cap;
  double sm_scale;
  double rope_rcp_scale;
  double rope_rcp_theta;

  uint32_t padded_batch_size;
  uint32_t num_qo_heads;
  IdType q_stride_n;
  IdType q_stride_h;
  int32_t window_left;
  bool enable_pdl;

  IdType* request_indices;
  IdType* kv_tile_indices;
  IdType* o_indptr;
  IdType* kv_chunk_size_ptr;
  bool* block_valid_mask;
  bool partition_kv;

  __host__ __device__ __forceinline__ int32_t get_qo_len(int32_t batch_idx) const { return 1; }
  __host__ __device__ __forceinline__ int32_t get_kv_len(int32_t batch_idx) const {
    return paged_kv.get_length(batch_idx);
  }
};

// One thread per 16 bytes (8 bf16) of a destination row; see FillFlashInferPages.
__global__ void FillFlashInferPagesKernel(const uint4* __restrict__ headwise,
                                          const int32_t* __restrict__ source_pages,
                                          int64_t num_vectors, int32_t num_kv_heads,
                                          int32_t page_size, bool hnd, uint4* __restrict__ pages) {
  constexpr int32_t kRowVectors = kFlashInferHeadDim * 2 / 16;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= num_vectors) return;
  // i walks the destination in its own order: page, K/V, then the layout's two
  // inner dims, then the row's vectors.
  const int32_t vector = static_cast<int32_t>(i % kRowVectors);
  int64_t row = i / kRowVectors;
  const int32_t inner =
      static_cast<int32_t>(row % (static_cast<int64_t>(num_kv_heads) * page_size));
  row /= static_cast<int64_t>(num_kv_heads) * page_size;
  const int32_t kv = static_cast<int32_t>(row % 2);
  const int64_t page = row / 2;
  const int32_t head = hnd ? inner / page_size : inner % num_kv_heads;
  const int32_t token = hnd ? inner % page_size : inner / num_kv_heads;
  const int32_t source = source_pages[page * num_kv_heads + head];
  uint4 value = make_uint4(0, 0, 0, 0);
  if (source >= 0) {
    value = headwise[((static_cast<int64_t>(source) * 2 + kv) * page_size + token) * kRowVectors +
                     vector];
  }
  pages[i] = value;
}

// BatchDecodeWithPagedKVCacheWrapper on CUDA cores: see flashinfer_decode.h.
class CudaCoreDecoder final : public FlashInferDecoder {
 public:
  FlashInferResult Plan(const FlashInferDecodeProblem& problem, cudaStream_t stream) override;
  FlashInferResult Run(cudaStream_t stream) const override;

  bool split_kv() const override { return state_.plan_info.split_kv; }
  int64_t padded_batch_size() const override { return state_.plan_info.padded_batch_size; }
  int64_t cta_tile_q() const override { return 0; }

 private:
  flashinfer_common::WrapperState<DecodeParams, flashinfer::DecodePlanInfo> state_;
};

FlashInferResult CudaCoreDecoder::Plan(const FlashInferDecodeProblem& problem,
                                       cudaStream_t stream) {
  state_.planned = false;
  FlashInferResult result = flashinfer_common::CheckProblem(problem, "CudaCoreDecoder::Plan");
  if (!result.ok()) return result;
  const int32_t group = problem.num_qo_heads / problem.num_kv_heads;
  if (group != 1 && group != 2 && group != 3 && group != 4 && group != 6 && group != 8 &&
      group != 16) {
    return {"CudaCoreDecoder::Plan: FlashInfer's decode has no GQA group " + std::to_string(group)};
  }
  result = state_.PrepareWorkspaces();
  if (!result.ok()) return result;

  // DecodePlan reads the indptr through a non-const pointer.
  std::vector<int32_t> indptr_h = problem.host_indptr;
  state_.plan_info = flashinfer::DecodePlanInfo();
  result = CatchFlashInferErrors("flashinfer::DecodePlan", [&] {
    cudaError_t status = cudaSuccess;
    DISPATCH_GQA_GROUP_SIZE(group, GROUP_SIZE, {
      auto work_estimation = flashinfer::BatchDecodeWithPagedKVCacheWorkEstimationDispatched<
          GROUP_SIZE, kFlashInferHeadDim, kPosEncoding, Variant, DecodeParams>;
      status = flashinfer::DecodePlan<kFlashInferHeadDim, kPosEncoding, Variant, DecodeParams>(
          state_.float_workspace.get(), state_.float_workspace.bytes(), state_.int_workspace.get(),
          state_.page_locked, state_.int_workspace.bytes(), state_.plan_info, indptr_h.data(),
          static_cast<uint32_t>(problem.batch_size), static_cast<uint32_t>(problem.num_qo_heads),
          static_cast<uint32_t>(problem.page_size),
          /*enable_cuda_graph=*/false, stream, work_estimation);
    });
    return status;
  });
  if (!result.ok()) return result;
  // The upload of the schedule reads the page-locked buffer asynchronously.
  result = CudaResult(cudaStreamSynchronize(stream), "cudaStreamSynchronize after DecodePlan");
  if (!result.ok()) return result;

  // batch_decode.cu's run: the params both runs fill alike, then the decode
  // module's own.
  state_.SetParams(problem);
  DecodeParams& params = state_.params;
  params.maybe_alibi_slopes = nullptr;
  params.enable_pdl = state_.enable_pdl;
  params.block_valid_mask = nullptr;
  if (state_.plan_info.split_kv && state_.plan_info.enable_cuda_graph) {
    params.block_valid_mask = flashinfer::GetPtrFromBaseOffset<bool>(
        state_.int_workspace.get(), state_.plan_info.block_valid_mask_offset);
  }
  state_.planned = true;
  return {};
}

FlashInferResult CudaCoreDecoder::Run(cudaStream_t stream) const {
  if (!state_.planned) return {"CudaCoreDecoder::Run before a successful Plan"};
  return CatchFlashInferErrors("flashinfer::BatchDecodeWithPagedKVCacheDispatched", [&] {
    return flashinfer::BatchDecodeWithPagedKVCacheDispatched<kFlashInferHeadDim, kPosEncoding,
                                                             Variant>(
        state_.params, state_.tmp_v, state_.tmp_s, state_.enable_pdl, stream);
  });
}

}  // namespace

std::unique_ptr<FlashInferDecoder> MakeFlashInferCudaCoreDecoder() {
  return std::make_unique<CudaCoreDecoder>();
}

FlashInferResult FillFlashInferPages(const void* headwise_data, const int32_t* source_pages,
                                     int32_t num_pages, int32_t num_kv_heads, int32_t page_size,
                                     FlashInferKvLayout layout, void* pages, cudaStream_t stream) {
  const int64_t num_vectors = static_cast<int64_t>(num_pages) * 2 * num_kv_heads * page_size *
                              (kFlashInferHeadDim * 2 / 16);
  if (num_vectors == 0) return {};
  constexpr int kThreads = 256;
  const int64_t blocks = (num_vectors + kThreads - 1) / kThreads;
  FillFlashInferPagesKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<const uint4*>(headwise_data), source_pages, num_vectors, num_kv_heads, page_size,
      layout == FlashInferKvLayout::kHND, static_cast<uint4*>(pages));
  return CudaResult(cudaGetLastError(), "FillFlashInferPagesKernel");
}

}  // namespace headpage::bench
