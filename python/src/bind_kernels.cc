// SPDX-License-Identifier: Apache-2.0
// File: python/src/bind_kernels.cc
//
// kernels: write_kv, decode_attention, compact, copy_pages (for either arena:
// kernels::ref on a HostArena, kernels::gpu on a CudaArena, enqueued on the
// stream the caller names), gather_kv (host only), and the sizing helpers.
// Every op checks its arrays first and names the one that is wrong; outputs are
// passed in (kernels never allocate).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/compact.h"
#include "kernels/copy_pages.h"
#include "kernels/decode_attention.h"
#include "kernels/gather_kv.h"
#include "kernels/supported.h"
#include "kernels/table_checks_host.h"
#include "kernels/write_kv.h"
#include "python/src/bind.h"

#if HEADPAGE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace headpage::bindings {
namespace {

// Runs `ref` on the host or `gpu` on the device, without the GIL.
template <typename Args, typename Ref, typename Gpu>
void Dispatch(const Place& place, const Args& args, uintptr_t stream, Ref ref, Gpu gpu) {
  absl::Status status;
  {
    nb::gil_scoped_release release;
    status = place.cuda ? gpu(args, StreamOf(stream)) : ref(args);
  }
  ThrowIfError(status);
}

// The length of a 1-D array as the Args carry it (int32).
int32_t Length32(const In& a, const char* name) {
  if (a.shape(0) > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    BadArgument(absl::StrCat(name, ": ", a.shape(0), " entries exceed int32"));
  }
  return static_cast<int32_t>(a.shape(0));
}

#if HEADPAGE_HAVE_CUDA
// Runs a table-reading op (DecodeAttention, Compact) on the device with its
// tables checked there first (kernels/table_checks.h), then waits and raises
// the fault, if any, as the CPU reference would have: ValueError naming the
// row and array, nothing written. The fault word lives on the op's stream.
template <typename Args, typename Gpu>
void DispatchChecked(Args args, uintptr_t stream, Gpu gpu) {
  absl::Status status;
  {
    nb::gil_scoped_release release;
    const GpuStream s = StreamOf(stream);
    void* word = nullptr;
    const cudaError_t allocated = cudaMallocAsync(&word, sizeof(uint64_t), s);
    if (allocated != cudaSuccess) {
      status = absl::ResourceExhaustedError(
          absl::StrCat("no device memory for the table checks' fault word: ",
                       cudaGetErrorString(allocated)));
    } else {
      args.fault = static_cast<uint64_t*>(word);
      status = gpu(args, s);
      if (status.ok()) {
        absl::StatusOr<TableFault> fault = gpu::ReadTableFault(args.fault, s);
        status = fault.ok() ? TableFaultStatus(args, *fault) : fault.status();
      }
      const cudaError_t freed = cudaFreeAsync(word, s);
      if (status.ok() && freed != cudaSuccess) {
        status = absl::InternalError(
            absl::StrCat("freeing the table checks' fault word: ", cudaGetErrorString(freed)));
      }
    }
  }
  ThrowIfError(status);
}

#define HEADPAGE_GPU_OP(op) [](const auto& args, GpuStream s) { return gpu::op(args, s); }
#else
#define HEADPAGE_GPU_OP(op)                                                           \
  [](const auto&, GpuStream) {                                                        \
    return absl::UnimplementedError("headpage was built without CUDA: no gpu::" #op); \
  }
#endif

// An op that reads through CSR tables: on the device with check (the
// default), through DispatchChecked; otherwise as any op (the CPU reference
// always checks; an unchecked device op trusts its tables).
template <typename Args, typename Ref, typename Gpu>
void RunTableOp(const Place& place, const Args& args, uintptr_t stream, bool check, Ref ref,
                Gpu gpu) {
#if HEADPAGE_HAVE_CUDA
  if (place.cuda && check) {
    DispatchChecked(args, stream, gpu);
    return;
  }
#endif
  Dispatch(place, args, stream, ref, gpu);
}

template <typename A>
void WriteKV(const A& arena, const In& keys, const In& values, const In& slot_mapping,
             const In& positions, uintptr_t stream) {
  const PagedKV& cache = ViewOf(arena);
  const Place place = PlaceOf(arena);
  CheckRows(keys, "keys", place, cache, {-1, -1});
  const int64_t tokens = keys.shape(0), heads = keys.shape(1);
  CheckRows(values, "values", place, cache, {tokens, heads});
  CheckPlace(slot_mapping, "slot_mapping", place);
  if (slot_mapping.dtype() != nb::dtype<int32_t>() || slot_mapping.ndim() != 2 ||
      static_cast<int64_t>(slot_mapping.shape(0)) != tokens ||
      static_cast<int64_t>(slot_mapping.shape(1)) != heads ||
      (heads > 1 && slot_mapping.stride(1) != 1)) {
    BadArgument(absl::StrCat(
        "slot_mapping: want int32 [", tokens, ", ", heads,
        "] with unit stride along kv heads (e.g. a Reserve mapping's [:, layer, :]), got ",
        ShapeOf(slot_mapping)));
  }
  WriteKVArgs args;
  args.cache = cache;
  args.num_tokens = static_cast<int32_t>(tokens);
  args.num_kv_heads = static_cast<int32_t>(heads);
  args.keys = keys.data();
  args.values = values.data();
  args.slot_mapping = static_cast<const int32_t*>(slot_mapping.data());
  args.slot_stride = tokens > 1 ? static_cast<int32_t>(slot_mapping.stride(0)) : args.num_kv_heads;
  args.positions = Int32s(positions, "positions", place, tokens);
  Dispatch(
      place, args, stream, [](const WriteKVArgs& a) { return ref::WriteKV(a); },
      HEADPAGE_GPU_OP(WriteKV));
}

template <typename A>
void DecodeAttention(const A& arena, const In& q, const In& indptr, const In& page_ids,
                     const In& lens, const Array& out, std::optional<float> sm_scale,
                     std::optional<Array> lse, int32_t num_splits, std::optional<Array> workspace,
                     uintptr_t stream, bool check, int32_t balanced_blocks,
                     std::optional<In> new_keys, std::optional<In> new_values,
                     std::optional<In> new_positions) {
  const PagedKV& cache = ViewOf(arena);
  const Place place = PlaceOf(arena);
  CheckRows(q, "q", place, cache, {-1, -1});
  const int64_t seqs = q.shape(0), q_heads = q.shape(1);
  CheckRows(out, "out", place, cache, {seqs, q_heads});
  Check(lens, "lens", place, {-1}, nb::dtype<int32_t>(), "int32");
  const int64_t streams = lens.shape(0);
  if (seqs == 0 || streams % seqs != 0) {
    BadArgument(absl::StrCat("lens: ", streams, " streams is not a multiple of ", seqs,
                             " sequences (q's first dimension)"));
  }
  DecodeAttentionArgs args;
  args.cache = cache;
  args.num_seqs = static_cast<int32_t>(seqs);
  args.num_q_heads = static_cast<int32_t>(q_heads);
  args.num_kv_heads = static_cast<int32_t>(streams / seqs);
  args.q = q.data();
  args.indptr = Int32s(indptr, "indptr", place, streams + 1);
  args.page_ids = Int32s(page_ids, "page_ids", place);
  args.num_page_ids = Length32(page_ids, "page_ids");
  args.lens = static_cast<const int32_t*>(lens.data());
  args.sm_scale = sm_scale ? *sm_scale : 1.0f / std::sqrt(static_cast<float>(cache.head_dim));
  args.out = out.data();
  if (lse) {
    Check(*lse, "lse", place, {seqs, q_heads}, nb::dtype<float>(), "float32");
    args.lse = static_cast<float*>(lse->data());
  }
  args.num_splits = num_splits;
  args.balanced_blocks = balanced_blocks;
  if (workspace) {
    CheckPlace(*workspace, "workspace", place);
    if (!IsRowMajor(*workspace)) BadArgument("workspace: want a contiguous tensor");
    args.workspace = workspace->data();
    args.workspace_bytes = workspace->nbytes();
  }
  if (new_keys || new_values || new_positions) {
    if (!new_keys || !new_values || !new_positions) {
      BadArgument("new_keys, new_values and new_positions: give all three or none");
    }
    CheckRows(*new_keys, "new_keys", place, cache, {seqs, args.num_kv_heads});
    CheckRows(*new_values, "new_values", place, cache, {seqs, args.num_kv_heads});
    args.new_tokens.keys = new_keys->data();
    args.new_tokens.values = new_values->data();
    args.new_tokens.positions = Int32s(*new_positions, "new_positions", place, seqs);
  }
  RunTableOp(
      place, args, stream, check,
      [](const DecodeAttentionArgs& a) { return ref::DecodeAttention(a); },
      HEADPAGE_GPU_OP(DecodeAttention));
}

template <typename A>
void Compact(const A& arena, const In& src_indptr, const In& src_page_ids, const In& src_lens,
             const In& dst_indptr, const In& dst_page_ids, const In& keep_indptr, const In& keep,
             const In& in_place, uintptr_t stream, bool check) {
  const Place place = PlaceOf(arena);
  CompactArgs args;
  args.cache = ViewOf(arena);
  args.src_lens = Int32s(src_lens, "src_lens", place);
  const int64_t rows = src_lens.shape(0);
  args.num_rows = static_cast<int32_t>(rows);
  args.src_indptr = Int32s(src_indptr, "src_indptr", place, rows + 1);
  args.src_page_ids = Int32s(src_page_ids, "src_page_ids", place);
  args.num_src_page_ids = Length32(src_page_ids, "src_page_ids");
  args.dst_indptr = Int32s(dst_indptr, "dst_indptr", place, rows + 1);
  args.dst_page_ids = Int32s(dst_page_ids, "dst_page_ids", place);
  args.num_dst_page_ids = Length32(dst_page_ids, "dst_page_ids");
  args.keep_indptr = Int32s(keep_indptr, "keep_indptr", place, rows + 1);
  args.keep = Int32s(keep, "keep", place);
  args.num_keep = Length32(keep, "keep");
  Check(in_place, "in_place", place, {rows}, nb::dtype<uint8_t>(), "uint8");
  args.in_place = static_cast<const uint8_t*>(in_place.data());
  RunTableOp(
      place, args, stream, check, [](const CompactArgs& a) { return ref::Compact(a); },
      HEADPAGE_GPU_OP(Compact));
}

template <typename A>
void CopyPages(const A& arena, const In& src, const In& dst, uintptr_t stream) {
  const Place place = PlaceOf(arena);
  CopyPagesArgs args;
  args.cache = ViewOf(arena);
  args.src_pages = Int32s(src, "src", place);
  args.num_copies = static_cast<int32_t>(src.shape(0));
  args.dst_pages = Int32s(dst, "dst", place, src.shape(0));
  Dispatch(
      place, args, stream, [](const CopyPagesArgs& a) { return ref::CopyPages(a); },
      HEADPAGE_GPU_OP(CopyPages));
}

// Host only: GatherKV has no CUDA version.
void GatherKV(const HostArena& arena, const In& indptr, const In& page_ids, const In& lens,
              std::optional<Array> keys, std::optional<Array> values,
              std::optional<Array> positions) {
  const PagedKV& cache = arena.view();
  const Place host;
  GatherKVArgs args;
  args.cache = cache;
  args.lens = Int32s(lens, "lens", host);
  const int64_t rows = lens.shape(0);
  args.num_rows = static_cast<int32_t>(rows);
  args.indptr = Int32s(indptr, "indptr", host, rows + 1);
  args.page_ids = Int32s(page_ids, "page_ids", host);
  args.num_page_ids = Length32(page_ids, "page_ids");
  int64_t total = 0;
  for (int64_t r = 0; r < rows; ++r) total += std::max(args.lens[r], 0);
  if (keys) {
    CheckRows(*keys, "keys", host, cache, {total});
    args.keys = keys->data();
  }
  if (values) {
    CheckRows(*values, "values", host, cache, {total});
    args.values = values->data();
  }
  if (positions) {
    Check(*positions, "positions", host, {total}, nb::dtype<int32_t>(), "int32");
    args.positions = static_cast<int32_t*>(positions->data());
  }
  Dispatch(
      host, args, 0, [](const GatherKVArgs& a) { return ref::GatherKV(a); },
      [](const GatherKVArgs&, GpuStream) { return absl::OkStatus(); });
}

// The ops that run on either arena: one overload per arena type.
template <typename A>
void DefArenaKernels(nb::module_& m) {
  m.def("write_kv", &WriteKV<A>, nb::arg("arena"), nb::arg("keys"), nb::arg("values"),
        nb::arg("slot_mapping"), nb::arg("positions"), nb::arg("stream") = 0,
        "Scatters new tokens' K/V ([tokens][kv_heads][head_dim], the model's dtype) to their "
        "slots and stores their positions beside them; fp8 pages store each row quantized, "
        "with its scale.");
  m.def("decode_attention", &DecodeAttention<A>, nb::arg("arena"), nb::arg("q"), nb::arg("indptr"),
        nb::arg("page_ids"), nb::arg("lens"), nb::arg("out"), nb::arg("sm_scale") = nb::none(),
        nb::arg("lse") = nb::none(), nb::arg("num_splits") = 1, nb::arg("workspace") = nb::none(),
        nb::arg("stream") = 0, nb::arg("check") = true, nb::arg("balanced_blocks") = 0,
        nb::arg("new_keys") = nb::none(), nb::arg("new_values") = nb::none(),
        nb::arg("new_positions") = nb::none(),
        "One query per sequence ([seqs][q_heads][head_dim]) against head-wise block tables "
        "(CSR over streams, seq-major, kv-head-minor); writes out (and lse, natural log). "
        "With new_keys and new_values ([seqs][kv_heads][head_dim]) and new_positions ([seqs], "
        "int32), it first stores each non-empty stream's new row in the slot of its last "
        "token (where BlockManager.reserve put the step's token) and the position beside it, "
        "as write_kv would, then attends: a decode step's write and attention in one launch; "
        "a seq whose position is negative has no new token and nothing of it is written. "
        "The work is divided in num_splits ranges per stream, or, with balanced_blocks > 0 "
        "(and num_splits 1), among that many blocks that each read an equal run of all the "
        "streams' pages (decode_attention_balanced_blocks); either way past one range per "
        "stream it needs a workspace (decode_attention_workspace_bytes, "
        "decode_attention_balanced_workspace_bytes). "
        "The tables are checked first (indptr from 0, ascending, inside page_ids; lens inside "
        "their pages; page ids inside the pool) and a bad one raises ValueError, writing "
        "nothing. On a CudaArena the check runs on the device and waits for the stream (so "
        "not inside a CUDA graph capture); check=False skips it, for tables the caller built "
        "from a BlockManager: they are then trusted, and a bad one is read as given.");
  m.def("compact", &Compact<A>, nb::arg("arena"), nb::arg("src_indptr"), nb::arg("src_page_ids"),
        nb::arg("src_lens"), nb::arg("dst_indptr"), nb::arg("dst_page_ids"), nb::arg("keep_indptr"),
        nb::arg("keep"), nb::arg("in_place"), nb::arg("stream") = 0, nb::arg("check") = true,
        "Executes a compaction plan: each row's keep set moves to its destination pages. "
        "The plan is checked first, as decode_attention's tables are (keep sets strictly "
        "ascending inside their rows, destinations long enough, in-place rows' destination "
        "a prefix of their source); check=False skips the device check.");
  m.def(
      "decode_attention_balanced_blocks",
      [](const A& arena, int32_t num_sms) {
        return DecodeAttentionBalancedBlocks(ViewOf(arena), num_sms);
      },
      nb::arg("arena"), nb::arg("num_sms"),
      "decode_attention's balanced_blocks that fill `num_sms` multiprocessors once with "
      "resident blocks of the pass over the arena's pages.");
  m.def(
      "decode_attention_resident_blocks",
      [](const A& arena) { return DecodeAttentionResidentBlocks(ViewOf(arena)); },
      nb::arg("arena"),
      "Blocks of decode_attention's pass over the arena's pages that one multiprocessor "
      "holds at once (decode_attention_splits' resident_blocks).");
  m.def("copy_pages", &CopyPages<A>, nb::arg("arena"), nb::arg("src"), nb::arg("dst"),
        nb::arg("stream") = 0, "Copies whole pages (copy-on-write).");
}

}  // namespace

void DefKernels(nb::module_& m) {
  {
    std::vector<int32_t> dims(std::begin(kSupportedHeadDims), std::end(kSupportedHeadDims));
    m.attr("supported_head_dims") = nb::tuple(nb::cast(dims));
  }
  DefArenaKernels<HostArena>(m);
  DefArenaKernels<DeviceArena>(m);
  m.def("gather_kv", &GatherKV, nb::arg("arena"), nb::arg("indptr"), nb::arg("page_ids"),
        nb::arg("lens"), nb::arg("keys") = nb::none(), nb::arg("values") = nb::none(),
        nb::arg("positions") = nb::none(),
        "Copies the rows' tokens out of a HostArena, row after row ([sum lens][head_dim] of "
        "the model's dtype: fp8 pages are dequantized with their scales).");
  m.def("decode_attention_workspace_bytes",
        static_cast<size_t (*)(int32_t, int32_t, int32_t, int32_t)>(
            &DecodeAttentionWorkspaceBytes),
        nb::arg("num_seqs"), nb::arg("num_q_heads"), nb::arg("head_dim"), nb::arg("num_splits"));
  m.def("decode_attention_balanced_workspace_bytes", &DecodeAttentionBalancedWorkspaceBytes,
        nb::arg("num_seqs"), nb::arg("num_q_heads"), nb::arg("num_kv_heads"),
        nb::arg("head_dim"), nb::arg("balanced_blocks"));
  m.def("decode_attention_splits", &DecodeAttentionSplits, nb::arg("max_len"),
        nb::arg("num_streams"), nb::arg("num_sms"), nb::arg("resident_blocks") = 2,
        nb::arg("min_len") = 0,
        "decode_attention's num_splits for streams of at most max_len tokens: about six "
        "blocks per multiprocessor in whole waves of resident_blocks "
        "(decode_attention_resident_blocks of the arena; 2: the 16-bit pass's), fewer "
        "waves where splits would fall under 512 tokens, and one wave of splits of at "
        "least 256 where even one would. min_len, where known (0: unknown), is the "
        "shortest stream's length: streams within an eighth of one length take one wave.");
  m.attr("decode_max_splits") = kDecodeMaxSplits;
}

}  // namespace headpage::bindings
