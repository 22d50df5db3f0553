// SPDX-License-Identifier: Apache-2.0
// File: bench/kernels/flashinfer_decode.h
//
// FlashInfer's paged decode, for bench_flashinfer (issue #18): the CUDA-core
// BatchDecodeWithPagedKVCache of the pinned flashinfer-python 0.7.4 wheel and
// its tensor-core decode, built from the wheel's headers
// (scripts/fetch-flashinfer) in flashinfer_decode.cu and flashinfer_prefill.cu.
// Those files are the only ones that see FlashInfer's templates, the libcu++ it
// vendors and the exceptions its host code throws; this interface is plain C++
// (a .cu file includes no Abseil), so the benchmarks stay ordinary.
//
// The CUDA-core decoder is the instantiation FlashInfer's JIT builds for
// BatchDecodeWithPagedKVCacheWrapper with its defaults (backend "auto", no tensor
// cores, which on an H200 is this kernel): bf16 q, kv and o, int32 indices,
// head_dim 128, PosEncodingMode::kNone, DefaultAttention<false, false, false,
// false> (no custom mask, sliding window, soft cap or ALiBi). Plan is the
// wrapper's plan() (DecodePlan: work estimation and the split-KV schedule, into
// a 128 MiB float and an 8 MiB int workspace through an 8 MiB page-locked
// buffer, without CUDA graphs), Run its run() (no lse; PDL on sm_90 and later,
// as its enable_pdl=None picks).
//
// The tensor-core decoder is the same wrapper built with use_tensor_cores=True,
// whose plan() and run() are the batch *prefill* module's: PrefillPlan over
// qo_indptr 0, 1, ..., batch_size (one query row per request, the request's
// group of query heads packed into the rows of one query tile), then
// BatchPrefillWithPagedKVCacheDispatched without a mask.
#ifndef HEADPAGE_BENCH_KERNELS_FLASHINFER_DECODE_H_
#define HEADPAGE_BENCH_KERNELS_FLASHINFER_DECODE_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace headpage::bench {

// The one head_dim compiled in.
inline constexpr int32_t kFlashInferHeadDim = 128;

// FlashInfer's page layouts (layout.cuh's QKVLayout): within a page, tokens
// then heads (NHD, its wrappers' default) or heads then tokens (HND).
enum class FlashInferKvLayout : uint8_t { kNHD = 0, kHND = 1 };

// Empty message: success. Otherwise CUDA's message, or the text of the
// flashinfer::Error that FlashInfer's host code threw (caught in the .cu file:
// no exception leaves it).
struct FlashInferResult {
  std::string message;
  bool ok() const { return message.empty(); }
};

// A batch of decode requests (one query token each) over a paged cache, as the
// wrapper's plan() and run() take them. Device pointers unless `host_`; bf16
// elements; strides in elements.
struct FlashInferDecodeProblem {
  int32_t batch_size = 0;
  int32_t num_qo_heads = 0;  // a multiple of num_kv_heads: group 1, 2, 3, 4, 6, 8 or 16
  int32_t num_kv_heads = 0;
  int32_t page_size = 0;
  FlashInferKvLayout layout = FlashInferKvLayout::kNHD;
  // K and V of page p, head h, token t start at k_data / v_data + p * stride_page
  // + h * stride_h + t * stride_n; head_dim contiguous. V takes K's strides (the
  // kernel reads both through one set).
  const void* k_data = nullptr;
  const void* v_data = nullptr;
  int64_t stride_page = 0;
  int64_t stride_h = 0;
  int64_t stride_n = 0;
  // CSR over requests: request b reads pages indices[indptr[b] .. indptr[b+1]),
  // the last of them holding last_page_len[b] tokens (1..page_size).
  std::vector<int32_t> host_indptr;  // [batch_size + 1]: plan() schedules from it
  const int32_t* indptr = nullptr;   // the same on the device
  const int32_t* indices = nullptr;
  const int32_t* last_page_len = nullptr;  // [batch_size]
  // Query head h of request b at q + b * q_stride_n + h * q_stride_h.
  const void* q = nullptr;
  int64_t q_stride_n = 0;
  int64_t q_stride_h = 0;
  void* o = nullptr;  // [batch_size][num_qo_heads][head_dim]
  double sm_scale = 0.0;
};

// One of the wrapper's two paths, planned once and then run as often as
// wanted, as an engine plans once per step for all its layers. Made by the
// functions below; FlashInfer's types stay behind this interface, in the .cu
// files.
class FlashInferDecoder {
 public:
  FlashInferDecoder() = default;
  virtual ~FlashInferDecoder() = default;
  FlashInferDecoder(const FlashInferDecoder&) = delete;
  FlashInferDecoder& operator=(const FlashInferDecoder&) = delete;

  // The wrapper's plan(): allocates the workspaces on first use, schedules
  // `problem` (which must stay alive, with its buffers, while Run is used) and
  // uploads the schedule on `stream`, then waits for it.
  [[nodiscard]] virtual FlashInferResult Plan(const FlashInferDecodeProblem& problem,
                                              cudaStream_t stream) = 0;
  // The wrapper's run(): enqueues the kernel and, with split-KV, the merge of
  // the partial states on `stream`. REQUIRES: Plan succeeded.
  [[nodiscard]] virtual FlashInferResult Run(cudaStream_t stream) const = 0;

  // What Plan chose: whether the KV was split into chunks, and how many blocks
  // per KV head the kernel launches: requests, or (request, KV chunk) pairs
  // when split; on tensor cores (request, query tile, KV chunk) triples.
  virtual bool split_kv() const = 0;
  virtual int64_t padded_batch_size() const = 0;
  // On tensor cores, the query tile height in packed (row, head) pairs, the
  // kernel's CTA_TILE_Q; 0 on CUDA cores, whose kernel has no query tile.
  virtual int64_t cta_tile_q() const = 0;
};

// BatchDecodeWithPagedKVCacheWrapper with its defaults, on CUDA cores
// (flashinfer_decode.cu). Plan takes GQA groups 1, 2, 3, 4, 6, 8 and 16, the
// ones FlashInfer's decode dispatches.
std::unique_ptr<FlashInferDecoder> MakeFlashInferCudaCoreDecoder();

// BatchDecodeWithPagedKVCacheWrapper(use_tensor_cores=True) with backend "auto",
// which decode.py resolves to "fa2" for bf16 (it consults
// determine_attention_backend, and so can pick the Hopper "fa3" kernels, only
// for fp8 queries or caches): the FA2 prefill kernel, mma.sync on tensor cores,
// instantiated as the JIT's batch_prefill_paged_kernel_inst.jinja does for
// bf16, head_dim 128, no RoPE, DefaultAttention<false, false, false, false>, K
// and V sharing strides (its "equal" primary module). Plan is plan(): PrefillPlan
// with one row per request, the decode wrapper's arguments (no fixed split, no
// CUDA graph, uniform_q_len 1), into 128 MiB / 8 MiB workspaces, for any GQA
// group (the kernel packs a group's heads into its query tile); Run is run()
// with MaskMode::kNone, no lse, PDL on sm_90 and later: the prefill kernel,
// then with split-KV the merge (flashinfer_prefill.cu).
std::unique_ptr<FlashInferDecoder> MakeFlashInferTensorCoreDecoder();

// FlashInfer's native cache of `num_pages` pages, each [2][...] (K then V, as
// its single-tensor (num_pages, 2, ...) cache), the layout's [page_size]
// [num_kv_heads][head_dim] or [num_kv_heads][page_size][head_dim] inside, filled
// from head-wise pages [2][page_size][head_dim] (headpage's): head h of page d
// comes from head-wise page source_pages[d * num_kv_heads + h] (device; -1:
// zeros). bf16; enqueued on `stream`.
[[nodiscard]] FlashInferResult FillFlashInferPages(const void* headwise_data,
                                                   const int32_t* source_pages, int32_t num_pages,
                                                   int32_t num_kv_heads, int32_t page_size,
                                                   FlashInferKvLayout layout, void* pages,
                                                   cudaStream_t stream);

}  // namespace headpage::bench

#endif  // HEADPAGE_BENCH_KERNELS_FLASHINFER_DECODE_H_
