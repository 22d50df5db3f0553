// SPDX-License-Identifier: Apache-2.0
// File: python/src/headpage_ext.cc
//
// The Python module headpage._ext (nanobind): the page pool, the arenas, the
// block manager, the eviction engine and the kernels. python/headpage/__init__.py
// re-exports it; that file's docstring is the user's guide.
//
// Tensors cross in both directions through DLPack, without copies: every kernel
// takes any object with __dlpack__ (torch tensors, numpy arrays), host memory for
// a HostArena (kernels::ref) and CUDA memory on the arena's device for a CudaArena
// (kernels::gpu, enqueued on the stream the caller names); HostArena.kv and
// CudaArena.kv are views of the pool's own memory. Arrays the bookkeeping returns
// (slot mappings, block tables, plans) are numpy views of the returning object.
//
// The library never throws; this file turns a non-OK Status into a Python
// exception carrying its message: ValueError (InvalidArgument, OutOfRange),
// headpage.ResourceExhausted (a MemoryError), NotImplementedError
// (Unimplemented), KeyError (NotFound), RuntimeError otherwise.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "allocator/arena.h"
#include "allocator/page_pool.h"
#include "blockmgr/block_manager.h"
#include "eviction/cuda_executor.h"
#include "eviction/engine.h"
#include "core/geometry.h"
#include "kernels/compact.h"
#include "kernels/copy_pages.h"
#include "kernels/decode_attention.h"
#include "kernels/gather_kv.h"
#include "kernels/supported.h"
#include "kernels/write_kv.h"

#if HEADPAGE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace nb = nanobind;

namespace headpage {
namespace {

// ---------------------------------------------------------------------------
// Status -> Python exception.

struct ResourceExhaustedError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct NotImplementedErr : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct NotFoundErr : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void ThrowIfError(const absl::Status& status) {
  if (status.ok()) return;
  std::string message(status.message());
  if (message.empty() && status.code() == absl::StatusCode::kResourceExhausted) {
    message = "not enough free pages in the pool";
  } else if (message.empty()) {
    message = absl::StatusCodeToString(status.code());
  }
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      throw nb::value_error(message.c_str());
    case absl::StatusCode::kResourceExhausted:
      throw ResourceExhaustedError(message);
    case absl::StatusCode::kUnimplemented:
      throw NotImplementedErr(message);
    case absl::StatusCode::kNotFound:
      throw NotFoundErr(message);
    default:
      throw std::runtime_error(message);
  }
}

template <typename T>
T ValueOrThrow(absl::StatusOr<T> result) {
  ThrowIfError(result.status());
  return std::move(result).value();
}

// Bad arguments found by the binding itself.
[[noreturn]] void BadArgument(const std::string& message) {
  throw nb::value_error(message.c_str());
}

// ---------------------------------------------------------------------------
// dtypes.

DType ParseDType(const std::string& name) {
  if (name == "f32" || name == "float32") return DType::kF32;
  if (name == "f16" || name == "float16") return DType::kF16;
  if (name == "bf16" || name == "bfloat16") return DType::kBF16;
  BadArgument("unknown dtype '" + name + "': want f32, f16 or bf16");
}

nb::dlpack::dtype DLPackOf(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return nb::dtype<float>();
    case DType::kF16:
      return {static_cast<uint8_t>(nb::dlpack::dtype_code::Float), 16, 1};
    case DType::kBF16:
      return {static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat), 16, 1};
  }
  return nb::dtype<float>();
}

std::optional<DType> DTypeOf(const nb::dlpack::dtype& d) {
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
    if (DLPackOf(t) == d) return t;
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------
// Arrays in: checked against what a kernel or call needs, with the argument's name.

// Inputs are read-only (so numpy views of plans are accepted); outputs writable.
using In = nb::ndarray<nb::ro>;
using Array = nb::ndarray<>;

// Where an op runs: the host (kernels::ref) or one CUDA device (kernels::gpu).
struct Place {
  bool cuda = false;
  int32_t device = 0;
};

template <typename A>
std::string ShapeOf(const A& a) {
  std::string s = "[";
  for (size_t i = 0; i < a.ndim(); ++i) absl::StrAppend(&s, i ? ", " : "", a.shape(i));
  return s + "]";
}

template <typename A>
void CheckPlace(const A& a, const char* name, const Place& place) {
  if (place.cuda) {
    if (a.device_type() != nb::device::cuda::value || a.device_id() != place.device) {
      BadArgument(
          absl::StrCat(name, ": want a CUDA tensor on device ", place.device, " (the arena's)"));
    }
  } else if (a.device_type() != nb::device::cpu::value) {
    BadArgument(absl::StrCat(name, ": want a CPU tensor (the arena is in host memory)"));
  }
}

template <typename A>
bool IsRowMajor(const A& a) {
  int64_t expected = 1;
  for (size_t i = a.ndim(); i-- > 0;) {
    if (a.shape(i) != 1 && a.stride(i) != expected) return false;
    expected *= static_cast<int64_t>(a.shape(i));
  }
  return true;
}

// Checks place, rank, contiguity and (when `dtype` is set) the dtype; a shape
// entry of -1 is free.
template <typename A>
void Check(const A& a, const char* name, const Place& place, std::vector<int64_t> shape,
           std::optional<nb::dlpack::dtype> dtype, const char* dtype_name) {
  CheckPlace(a, name, place);
  if (dtype && a.dtype() != *dtype) BadArgument(absl::StrCat(name, ": want dtype ", dtype_name));
  bool ok = a.ndim() == shape.size();
  for (size_t i = 0; ok && i < shape.size(); ++i) {
    ok = shape[i] < 0 || static_cast<int64_t>(a.shape(i)) == shape[i];
  }
  if (!ok) {
    std::string want = "[";
    for (size_t i = 0; i < shape.size(); ++i) {
      absl::StrAppend(&want, i ? ", " : "",
                      shape[i] < 0 ? std::string("*") : absl::StrCat(shape[i]));
    }
    BadArgument(absl::StrCat(name, ": want shape ", want, "], got ", ShapeOf(a)));
  }
  if (!IsRowMajor(a)) BadArgument(absl::StrCat(name, ": want a contiguous (row-major) tensor"));
}

// A tensor of the cache's dtype whose last dimension is head_dim: `leading` gives
// the dimensions before it (-1: any size).
template <typename A>
void CheckRows(const A& a, const char* name, const Place& place, const PagedKV& cache,
               std::vector<int64_t> leading) {
  leading.push_back(cache.head_dim);
  Check(a, name, place, std::move(leading), DLPackOf(cache.dtype), DTypeName(cache.dtype));
}

const int32_t* Int32s(const In& a, const char* name, const Place& place, int64_t size = -1) {
  Check(a, name, place, {size}, nb::dtype<int32_t>(), "int32");
  return static_cast<const int32_t*>(a.data());
}

// ---------------------------------------------------------------------------
// Arrays out: numpy views whose owner keeps the memory alive.

template <typename T>
nb::ndarray<nb::numpy, const T> View(const T* data, std::vector<size_t> shape, nb::handle owner) {
  return nb::ndarray<nb::numpy, const T>(data, shape.size(), shape.data(), owner);
}

template <typename T>
nb::ndarray<nb::numpy, const T> View1(const std::vector<T>& v, nb::handle owner) {
  return View<T>(v.data(), {v.size()}, owner);
}

// An array that owns a copy of `v`.
template <typename T>
nb::ndarray<nb::numpy, T> Owned(std::vector<T> v, std::vector<size_t> shape) {
  auto* heap = new std::vector<T>(std::move(v));
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T>(heap->data(), shape.size(), shape.data(), owner);
}

// ---------------------------------------------------------------------------
// Arenas.

// CudaArena plus the device it was made on (the DLPack views name it).
struct DeviceArena {
  CudaArena arena;
  int32_t device = 0;
};

Place PlaceOf(const HostArena&) { return Place{}; }
Place PlaceOf(const DeviceArena& a) { return Place{true, a.device}; }
const PagedKV& ViewOf(const HostArena& a) { return a.view(); }
const PagedKV& ViewOf(const DeviceArena& a) { return a.arena.view(); }

// The arena's K/V, [num_pages][2][page_size][head_dim], or its slot positions,
// as a DLPack array whose owner (the arena's Python object) keeps it alive.
template <typename A>
Array ArenaArray(const A& arena, bool positions, nb::handle owner) {
  const PagedKV& v = ViewOf(arena);
  const Place place = PlaceOf(arena);
  const int32_t device_type = place.cuda ? nb::device::cuda::value : nb::device::cpu::value;
  if (positions) {
    const size_t shape[1] = {static_cast<size_t>(v.num_slots())};
    return Array(v.positions, 1, shape, owner, nullptr, nb::dtype<int32_t>(), device_type,
                 place.device);
  }
  const size_t shape[4] = {static_cast<size_t>(v.num_pages), 2, static_cast<size_t>(v.page_size),
                           static_cast<size_t>(v.head_dim)};
  return Array(v.data, 4, shape, owner, nullptr, DLPackOf(v.dtype), device_type, place.device);
}

// What HostArena.kv and .positions return: an object that DLPack consumers
// (torch.from_dlpack, numpy.from_dlpack) import without a copy. A DLPack capsule
// can be consumed once, so every __dlpack__ call makes a fresh one.
struct ArenaView {
  nb::object arena;
  bool positions = false;

  Array Get() const {
    if (nb::isinstance<HostArena>(arena))
      return ArenaArray(nb::cast<const HostArena&>(arena), positions, arena);
    return ArenaArray(nb::cast<const DeviceArena&>(arena), positions, arena);
  }
};

// ---------------------------------------------------------------------------
// Kernels: one body per op, for either arena.

GpuStream StreamOf(uintptr_t stream) { return reinterpret_cast<GpuStream>(stream); }

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

#if HEADPAGE_HAVE_CUDA
#define HEADPAGE_GPU_OP(op) [](const auto& args, GpuStream s) { return gpu::op(args, s); }
#else
#define HEADPAGE_GPU_OP(op)                                                           \
  [](const auto&, GpuStream) {                                                        \
    return absl::UnimplementedError("headpage was built without CUDA: no gpu::" #op); \
  }
#endif

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
                     uintptr_t stream) {
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
  args.lens = static_cast<const int32_t*>(lens.data());
  args.sm_scale = sm_scale ? *sm_scale : 1.0f / std::sqrt(static_cast<float>(cache.head_dim));
  args.out = out.data();
  if (lse) {
    Check(*lse, "lse", place, {seqs, q_heads}, nb::dtype<float>(), "float32");
    args.lse = static_cast<float*>(lse->data());
  }
  args.num_splits = num_splits;
  if (workspace) {
    CheckPlace(*workspace, "workspace", place);
    if (!IsRowMajor(*workspace)) BadArgument("workspace: want a contiguous tensor");
    args.workspace = workspace->data();
    args.workspace_bytes = workspace->nbytes();
  }
  Dispatch(
      place, args, stream, [](const DecodeAttentionArgs& a) { return ref::DecodeAttention(a); },
      HEADPAGE_GPU_OP(DecodeAttention));
}

template <typename A>
void Compact(const A& arena, const In& src_indptr, const In& src_page_ids, const In& src_lens,
             const In& dst_indptr, const In& dst_page_ids, const In& keep_indptr, const In& keep,
             const In& in_place, uintptr_t stream) {
  const Place place = PlaceOf(arena);
  CompactArgs args;
  args.cache = ViewOf(arena);
  args.src_lens = Int32s(src_lens, "src_lens", place);
  const int64_t rows = src_lens.shape(0);
  args.num_rows = static_cast<int32_t>(rows);
  args.src_indptr = Int32s(src_indptr, "src_indptr", place, rows + 1);
  args.src_page_ids = Int32s(src_page_ids, "src_page_ids", place);
  args.dst_indptr = Int32s(dst_indptr, "dst_indptr", place, rows + 1);
  args.dst_page_ids = Int32s(dst_page_ids, "dst_page_ids", place);
  args.keep_indptr = Int32s(keep_indptr, "keep_indptr", place, rows + 1);
  args.keep = Int32s(keep, "keep", place);
  Check(in_place, "in_place", place, {rows}, nb::dtype<uint8_t>(), "uint8");
  args.in_place = static_cast<const uint8_t*>(in_place.data());
  Dispatch(
      place, args, stream, [](const CompactArgs& a) { return ref::Compact(a); },
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

template <typename A>
void DefKernels(nb::module_& m) {
  m.def("write_kv", &WriteKV<A>, nb::arg("arena"), nb::arg("keys"), nb::arg("values"),
        nb::arg("slot_mapping"), nb::arg("positions"), nb::arg("stream") = 0,
        "Scatters new tokens' K/V ([tokens][kv_heads][head_dim]) to their slots and stores "
        "their positions beside them.");
  m.def("decode_attention", &DecodeAttention<A>, nb::arg("arena"), nb::arg("q"), nb::arg("indptr"),
        nb::arg("page_ids"), nb::arg("lens"), nb::arg("out"), nb::arg("sm_scale") = nb::none(),
        nb::arg("lse") = nb::none(), nb::arg("num_splits") = 1, nb::arg("workspace") = nb::none(),
        nb::arg("stream") = 0,
        "One query per sequence ([seqs][q_heads][head_dim]) against head-wise block tables "
        "(CSR over streams, seq-major, kv-head-minor); writes out (and lse, natural log).");
  m.def("compact", &Compact<A>, nb::arg("arena"), nb::arg("src_indptr"), nb::arg("src_page_ids"),
        nb::arg("src_lens"), nb::arg("dst_indptr"), nb::arg("dst_page_ids"), nb::arg("keep_indptr"),
        nb::arg("keep"), nb::arg("in_place"), nb::arg("stream") = 0,
        "Executes a compaction plan: each row's keep set moves to its destination pages.");
  m.def("copy_pages", &CopyPages<A>, nb::arg("arena"), nb::arg("src"), nb::arg("dst"),
        nb::arg("stream") = 0, "Copies whole pages (copy-on-write).");
}

// ---------------------------------------------------------------------------
// Policies and budgets.

template <typename E>
struct Named {
  E value;
  const char* name;
};

using Scorer = PolicyConfig::Scorer;
using Allocator = PolicyConfig::Allocator;
constexpr Named<Scorer> kScorers[] = {{Scorer::kNone, "none"},    {Scorer::kSnapKV, "snapkv"},
                                      {Scorer::kH2O, "h2o"},      {Scorer::kRecency, "recency"},
                                      {Scorer::kTova, "tova"},    {Scorer::kKeyNorm, "knorm"},
                                      {Scorer::kRandom, "random"}};
constexpr Named<Allocator> kAllocators[] = {{Allocator::kNone, "none"},
                                            {Allocator::kUniform, "uniform"},
                                            {Allocator::kPyramid, "pyramid"},
                                            {Allocator::kAda, "ada"},
                                            {Allocator::kAdaPyramid, "ada-pyramid"},
                                            {Allocator::kDBudget, "dbudget"}};

template <typename E, size_t N>
const char* NameOf(E value, const Named<E> (&names)[N]) {
  for (const Named<E>& n : names) {
    if (n.value == value) return n.name;
  }
  return "unknown";
}

PolicyConfig PolicyOf(const nb::handle& policy) {
  if (nb::isinstance<nb::str>(policy)) {
    return ValueOrThrow(PolicyByName(nb::cast<std::string>(policy)));
  }
  if (nb::isinstance<PolicyConfig>(policy)) return nb::cast<PolicyConfig>(policy);
  throw nb::type_error("policy: want a name (str) or a headpage.PolicyConfig");
}

// "20%" or "128" (str), a fraction in (0, 1] (float) or tokens per head (int).
Budget BudgetOf(const nb::handle& budget) {
  if (nb::isinstance<nb::str>(budget))
    return ValueOrThrow(Budget::Parse(nb::cast<std::string>(budget)));
  if (nb::isinstance<nb::bool_>(budget)) throw nb::type_error("budget: want str, int or float");
  if (nb::isinstance<nb::int_>(budget)) {
    const int64_t tokens = nb::cast<int64_t>(budget);
    if (tokens < 1 || tokens > INT32_MAX)
      BadArgument(absl::StrCat("budget ", tokens, " is out of range"));
    return Budget::TokensPerHead(static_cast<int32_t>(tokens));
  }
  if (nb::isinstance<nb::float_>(budget)) {
    const double f = nb::cast<double>(budget);
    if (!(f > 0.0 && f <= 1.0))
      BadArgument(absl::StrCat("budget fraction ", f, " is not in (0, 1]"));
    return Budget::Fraction(f);
  }
  throw nb::type_error(
      "budget: want '20%' or '128' (str), a fraction (float) or tokens per head (int)");
}

// ---------------------------------------------------------------------------
// Bookkeeping results as Python values.

// A dict of named numbers.
nb::dict DictOf(std::initializer_list<std::pair<const char*, nb::object>> items) {
  nb::dict d;
  for (const auto& [name, value] : items) d[name] = value;
  return d;
}

template <typename T>
nb::object Py(T value) {
  return nb::cast(value);
}

// Each field of BlockManagerStats under its own name.
nb::dict StatsDict(const BlockManagerStats& s) {
#define HEADPAGE_FIELD(f) {#f, Py(s.f)}
  // clang-format off
  return DictOf({HEADPAGE_FIELD(num_sequences), HEADPAGE_FIELD(num_streams),
                 HEADPAGE_FIELD(pages_total), HEADPAGE_FIELD(pages_free), HEADPAGE_FIELD(pages_in_use),
                 HEADPAGE_FIELD(pages_retired), HEADPAGE_FIELD(peak_pages_used),
                 HEADPAGE_FIELD(allocated_slots), HEADPAGE_FIELD(used_slots),
                 HEADPAGE_FIELD(internal_fragmentation), HEADPAGE_FIELD(stream_tokens),
                 HEADPAGE_FIELD(min_stream_len), HEADPAGE_FIELD(max_stream_len),
                 HEADPAGE_FIELD(mean_stream_len)});
  // clang-format on
#undef HEADPAGE_FIELD
}

// EvictionEngine plus the manager it drives (for the geometry) and where its
// arena lives (queries may be there too).
struct Engine {
  EvictionEngine engine;
  BlockManager* manager;
  Place place;
};

// The engine's queries: one [num_q_heads][num_queries][head_dim] host array per
// layer, and their positions (one int32 [num_queries] array for all layers, or
// one per layer).
std::vector<LayerQueries> QueriesOf(const CacheGeometry& g, const std::vector<In>& queries,
                                    const std::vector<In>& positions, const Place& engine) {
  if (static_cast<int32_t>(queries.size()) != g.num_layers) {
    BadArgument(absl::StrCat("queries: ", queries.size(), " layers; the model has ", g.num_layers));
  }
  if (positions.size() != 1 && positions.size() != queries.size()) {
    BadArgument(absl::StrCat("positions: want one array for every layer or one per layer, got ",
                             positions.size()));
  }
  std::vector<LayerQueries> out(queries.size());
  // A CUDA engine reads queries where they are, on its device or on the host
  // (all of one kind); a host engine reads host memory only.
  const bool on_device = engine.cuda && !queries.empty() &&
                         queries[0].device_type() == nb::device::cuda::value;
  const Place place = on_device ? engine : Place{};
  for (size_t l = 0; l < queries.size(); ++l) {
    const std::string name = absl::StrCat("queries[", l, "]");
    Check(queries[l], name.c_str(), place, {g.num_q_heads, -1, g.head_dim}, std::nullopt, "");
    const std::optional<DType> dtype = DTypeOf(queries[l].dtype());
    if (!dtype) BadArgument(name + ": want float32, float16 or bfloat16");
    const int64_t n = queries[l].shape(1);
    const In& pos = positions.size() == 1 ? positions[0] : positions[l];
    out[l].data = queries[l].data();
    out[l].positions = Int32s(pos, "positions", place, n);
    out[l].num_queries = static_cast<int32_t>(n);
    out[l].dtype = *dtype;
    out[l].memory = on_device ? MemoryKind::kDevice : MemoryKind::kHost;
  }
  return out;
}

}  // namespace
}  // namespace headpage

NB_MODULE(_ext, m) {
  using namespace headpage;
  m.doc() = "headpage: a paged KV cache with a block table per (sequence, layer, kv head)";

  nb::exception<ResourceExhaustedError>(m, "ResourceExhausted", PyExc_MemoryError);
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const NotImplementedErr& e) {
      PyErr_SetString(PyExc_NotImplementedError, e.what());
    } catch (const NotFoundErr& e) {
      PyErr_SetString(PyExc_KeyError, e.what());
    }
  });

#if HEADPAGE_HAVE_CUDA
  m.attr("has_cuda") = true;
#else
  m.attr("has_cuda") = false;
#endif
  {
    std::vector<int32_t> dims(std::begin(kSupportedHeadDims), std::end(kSupportedHeadDims));
    m.attr("supported_head_dims") = nb::tuple(nb::cast(dims));
  }

  // -- CacheGeometry --------------------------------------------------------
  nb::class_<CacheGeometry>(m, "CacheGeometry",
                            "One model's KV cache: layers, heads, head_dim, dtype and page size.")
      .def(
          "__init__",
          [](CacheGeometry* g, int32_t num_layers, int32_t num_kv_heads, int32_t num_q_heads,
             int32_t head_dim, const std::string& dtype, int32_t page_size) {
            new (g) CacheGeometry();
            g->num_layers = num_layers;
            g->num_kv_heads = num_kv_heads;
            g->num_q_heads = num_q_heads;
            g->head_dim = head_dim;
            g->dtype = ParseDType(dtype);
            g->page_size = page_size;
            ThrowIfError(Validate(*g));
          },
          nb::kw_only(), nb::arg("num_layers"), nb::arg("num_kv_heads"), nb::arg("num_q_heads"),
          nb::arg("head_dim"), nb::arg("dtype") = "bf16", nb::arg("page_size") = 16)
      .def_ro("num_layers", &CacheGeometry::num_layers)
      .def_ro("num_kv_heads", &CacheGeometry::num_kv_heads)
      .def_ro("num_q_heads", &CacheGeometry::num_q_heads)
      .def_ro("head_dim", &CacheGeometry::head_dim)
      .def_ro("page_size", &CacheGeometry::page_size)
      .def_prop_ro("dtype", [](const CacheGeometry& g) { return std::string(DTypeName(g.dtype)); })
      .def_prop_ro("page_bytes", &CacheGeometry::page_bytes)
      .def_prop_ro("streams_per_sequence", &CacheGeometry::streams_per_sequence)
      .def("__repr__", &CacheGeometry::DebugString);

  // -- PagePool -------------------------------------------------------------
  nb::class_<PagePool>(m, "PagePool", "Page ids and their reference counts.")
      .def(
          "__init__",
          [](PagePool* p, int64_t num_pages, double watermark) {
            PagePoolOptions options;
            options.num_pages = num_pages;
            options.watermark = watermark;
            new (p) PagePool(ValueOrThrow(PagePool::Create(options)));
          },
          nb::arg("num_pages"), nb::arg("watermark") = 0.0)
      .def_prop_ro("num_pages", &PagePool::num_pages)
      .def_prop_ro("free_pages", &PagePool::free_pages)
      .def_prop_ro("used_pages", &PagePool::used_pages)
      .def(
          "can_allocate", [](const PagePool& p, int64_t n) { return p.CanAllocate(n); },
          nb::arg("n"), "True when n pages can be allocated with the watermark still free.")
      .def("refcount",
           [](const PagePool& p, int64_t page) {
             if (page < 0 || page >= p.num_pages())
               BadArgument(absl::StrCat("page ", page, " is out of range"));
             return p.refcount(static_cast<PageId>(page));
           })
      .def("stats",
           [](const PagePool& p) {
             const PagePoolStats s = p.Stats();
             return DictOf({{"num_pages", Py(s.num_pages)},
                            {"free_pages", Py(s.free_pages)},
                            {"used_pages", Py(s.used_pages)},
                            {"peak_used_pages", Py(s.peak_used_pages)},
                            {"watermark_pages", Py(s.watermark_pages)}});
           })
      .def("reset_peak", &PagePool::ResetPeak)
      .def("check_invariants", [](const PagePool& p) { ThrowIfError(p.CheckInvariants()); });

  // -- Arenas ---------------------------------------------------------------
  nb::class_<ArenaView>(m, "ArenaView", "A zero-copy DLPack view of an arena's memory.")
      .def(
          "__dlpack__", [](const ArenaView& v, nb::kwargs) { return v.Get(); },
          "A fresh DLPack capsule of the memory (stream and version arguments are ignored: "
          "the memory is always ready).")
      .def("__dlpack_device__",
           [](const ArenaView& v) {
             const Array a = v.Get();
             return nb::make_tuple(a.device_type(), a.device_id());
           })
      .def_prop_ro("shape", [](const ArenaView& v) {
        const Array a = v.Get();
        std::vector<size_t> shape(a.ndim());
        for (size_t i = 0; i < a.ndim(); ++i) shape[i] = a.shape(i);
        return nb::tuple(nb::cast(shape));
      });

  nb::class_<HostArena>(m, "HostArena",
                        "The pool's bytes in host memory; kv and positions are zero-copy views.")
      .def(
          "__init__",
          [](HostArena* a, const CacheGeometry& g, int64_t num_pages) {
            new (a) HostArena(ValueOrThrow(HostArena::Create(g, num_pages)));
          },
          nb::arg("geometry"), nb::arg("num_pages"))
      .def_prop_ro(
          "kv",
          [](nb::object self) {
            return ArenaView{self, false};
          },
          "[num_pages][2][page_size][head_dim]: K then V of every page (DLPack, no copy).")
      .def_prop_ro(
          "positions",
          [](nb::object self) {
            return ArenaView{self, true};
          },
          "int32 [num_pages * page_size]: each slot's token position, -1 for none.")
      .def_prop_ro("num_pages", [](const HostArena& a) { return a.view().num_pages; })
      .def_prop_ro("kv_bytes", &HostArena::kv_bytes);

  nb::class_<DeviceArena>(
      m, "CudaArena", "The pool's bytes in CUDA memory (the current device); views as HostArena's.")
      .def(
          "__init__",
          [](DeviceArena* a, const CacheGeometry& g, int64_t num_pages) {
            int device = 0;
#if HEADPAGE_HAVE_CUDA
            if (cudaGetDevice(&device) != cudaSuccess) {
              cudaGetLastError();
              device = 0;
            }
#endif
            CudaArena arena = ValueOrThrow(CudaArena::Create(g, num_pages));
            new (a) DeviceArena{std::move(arena), device};
          },
          nb::arg("geometry"), nb::arg("num_pages"))
      .def_prop_ro("kv",
                   [](nb::object self) {
                     return ArenaView{self, false};
                   })
      .def_prop_ro("positions",
                   [](nb::object self) {
                     return ArenaView{self, true};
                   })
      .def_prop_ro("num_pages", [](const DeviceArena& a) { return a.arena.view().num_pages; })
      .def_prop_ro("device", [](const DeviceArena& a) { return a.device; })
      .def_prop_ro("kv_bytes", [](const DeviceArena& a) { return a.arena.kv_bytes(); });

  // -- Plans and block tables ------------------------------------------------
  nb::class_<CompactionPlan>(
      m, "CompactionPlan", "Rows that BlockManager.evict appended; kernel_args() feeds compact().")
      .def(nb::init<>())
      .def_prop_ro("num_rows", &CompactionPlan::num_rows)
      .def_prop_ro("rows",
                   [](const CompactionPlan& p) {
                     nb::list rows;
                     for (const auto& r : p.rows)
                       rows.append(nb::make_tuple(r.seq, r.layer, r.kv_head));
                     return rows;
                   })
      .def(
          "kernel_args",
          [](nb::handle self) {
            const auto& p = nb::cast<const CompactionPlan&>(self);
            nb::dict d;
            d["src_indptr"] = View1(p.src_indptr, self);
            d["src_page_ids"] = View1(p.src_page_ids, self);
            d["src_lens"] = View1(p.src_lens, self);
            d["dst_indptr"] = View1(p.dst_indptr, self);
            d["dst_page_ids"] = View1(p.dst_page_ids, self);
            d["keep_indptr"] = View1(p.keep_indptr, self);
            d["in_place"] = View1(p.in_place, self);
            return d;
          },
          "The plan's arrays by compact()'s argument names (numpy views of the plan).")
      .def_prop_ro(
          "kept",
          [](nb::handle self) { return View1(nb::cast<const CompactionPlan&>(self).kept, self); })
      .def("clear", &CompactionPlan::Clear);

  nb::class_<BlockTableCsr>(m, "BlockTable",
                            "One layer's block tables for a batch, CSR over streams (seq-major).")
      .def_prop_ro("layer", &BlockTableCsr::layer)
      .def_prop_ro("num_rows", &BlockTableCsr::num_rows)
      .def_prop_ro("seqs",
                   [](const BlockTableCsr& t) {
                     return std::vector<SeqId>(t.seqs().begin(), t.seqs().end());
                   })
      .def_prop_ro("indptr",
                   [](nb::handle self) {
                     auto s = nb::cast<const BlockTableCsr&>(self).indptr();
                     return View<int32_t>(s.data(), {s.size()}, self);
                   })
      .def_prop_ro("page_ids",
                   [](nb::handle self) {
                     auto s = nb::cast<const BlockTableCsr&>(self).page_ids();
                     return View<int32_t>(s.data(), {s.size()}, self);
                   })
      .def_prop_ro("lens",
                   [](nb::handle self) {
                     auto s = nb::cast<const BlockTableCsr&>(self).lens();
                     return View<int32_t>(s.data(), {s.size()}, self);
                   })
      .def_prop_ro("rebuilt", &BlockTableCsr::rebuilt)
      .def_prop_ro("changed_entries", [](const BlockTableCsr& t) {
        auto s = t.changed_entries();
        return std::vector<int32_t>(s.begin(), s.end());
      });

  // -- BlockManager -----------------------------------------------------------
  nb::class_<BlockManager>(m, "BlockManager",
                           "Sequences -> streams -> block tables over one PagePool.")
      .def(
          "__init__",
          [](BlockManager* bm, const CacheGeometry& g, PagePool* pool) {
            new (bm) BlockManager(ValueOrThrow(BlockManager::Create(g, pool)));
          },
          nb::arg("geometry"), nb::arg("pool"), nb::keep_alive<1, 3>())
      .def("add_sequence", &BlockManager::AddSequence)
      .def(
          "reserve",
          [](BlockManager& bm, SeqId seq, int64_t num_tokens) {
            ReservePlan plan = ValueOrThrow(bm.Reserve(seq, num_tokens));
            const CacheGeometry& g = bm.geometry();
            nb::dict d;
            d["slot_mapping"] =
                Owned(std::move(plan.slot_mapping),
                      {static_cast<size_t>(num_tokens), static_cast<size_t>(g.num_layers),
                       static_cast<size_t>(g.num_kv_heads)});
            d["copy_src"] = Owned(std::move(plan.page_copies.src), {plan.page_copies.src.size()});
            d["copy_dst"] = Owned(std::move(plan.page_copies.dst), {plan.page_copies.dst.size()});
            d["first_position"] = plan.first_position;
            return d;
          },
          nb::arg("seq"), nb::arg("num_tokens"),
          "Room for num_tokens new tokens in every stream of seq: a dict with slot_mapping "
          "(int32 [tokens][layers][kv_heads]), copy_src/copy_dst (copy-on-write pages to "
          "copy first) and first_position.")
      .def(
          "pages_needed",
          [](const BlockManager& bm, SeqId seq, int64_t n) {
            return ValueOrThrow(bm.PagesNeeded(seq, n));
          },
          nb::arg("seq"), nb::arg("num_tokens"))
      .def(
          "fork", [](BlockManager& bm, SeqId seq) { return ValueOrThrow(bm.Fork(seq)); },
          nb::arg("seq"))
      .def(
          "free", [](BlockManager& bm, SeqId seq) { ThrowIfError(bm.Free(seq)); }, nb::arg("seq"))
      .def(
          "evict",
          [](BlockManager& bm, SeqId seq, int32_t layer, std::vector<int32_t> kept,
             CompactionPlan& plan) { ThrowIfError(bm.Evict(seq, layer, kept, &plan)); },
          nb::arg("seq"), nb::arg("layer"), nb::arg("kept_counts"), nb::arg("plan"),
          "Shrinks stream (seq, layer, h) to kept_counts[h] tokens; appends the rows to plan.")
      .def("release_retired_pages", &BlockManager::ReleaseRetiredPages)
      .def(
          "block_table",
          [](const BlockManager& bm, int32_t layer, std::vector<SeqId> seqs,
             int32_t headroom_pages) {
            BlockTableOptions options;
            options.headroom_pages = headroom_pages;
            return ValueOrThrow(bm.BlockTable(layer, seqs, options));
          },
          nb::arg("layer"), nb::arg("seqs"), nb::arg("headroom_pages") = 0)
      .def(
          "refresh_block_table",
          [](const BlockManager& bm, BlockTableCsr& table) {
            ThrowIfError(bm.RefreshBlockTable(&table));
          },
          nb::arg("table"))
      .def("stats", [](const BlockManager& bm) { return StatsDict(bm.Stats()); })
      .def("contains", &BlockManager::Contains, nb::arg("seq"))
      .def_prop_ro("num_sequences", &BlockManager::num_sequences)
      .def_prop_ro("geometry", &BlockManager::geometry)
      .def(
          "num_tokens",
          [](const BlockManager& bm, SeqId seq) { return ValueOrThrow(bm.NumTokens(seq)); },
          nb::arg("seq"))
      .def(
          "stream_lengths",
          [](const BlockManager& bm, SeqId seq) {
            auto lens = ValueOrThrow(bm.StreamLengths(seq));
            const CacheGeometry& g = bm.geometry();
            return Owned(std::vector<uint32_t>(lens.begin(), lens.end()),
                         {static_cast<size_t>(g.num_layers), static_cast<size_t>(g.num_kv_heads)});
          },
          nb::arg("seq"), "uint32 [layers][kv_heads]")
      .def(
          "stream_pages",
          [](const BlockManager& bm, SeqId seq, int32_t layer, int32_t kv_head) {
            auto pages = ValueOrThrow(bm.StreamPages(seq, layer, kv_head));
            return std::vector<uint32_t>(pages.begin(), pages.end());
          },
          nb::arg("seq"), nb::arg("layer"), nb::arg("kv_head"))
      .def("check_invariants", [](const BlockManager& bm) { ThrowIfError(bm.CheckInvariants()); });

  // -- Policies and the eviction engine ---------------------------------------
  nb::class_<PolicyConfig>(m, "PolicyConfig", "A policy: scorer + budget allocator, with options.")
      .def_rw("name", &PolicyConfig::name)
      .def_rw("window", &PolicyConfig::window)
      .def_rw("sinks", &PolicyConfig::sinks)
      .def_rw("pyramid_beta", &PolicyConfig::pyramid_beta)
      .def_rw("dbudget_threshold", &PolicyConfig::dbudget_threshold)
      .def_prop_rw(
          "ada_alpha", [](const PolicyConfig& c) { return c.ada.alpha; },
          [](PolicyConfig& c, double a) { c.ada.alpha = a; })
      .def_prop_rw(
          "snapkv_kernel_size", [](const PolicyConfig& c) { return c.snapkv.kernel_size; },
          [](PolicyConfig& c, int32_t k) { c.snapkv.kernel_size = k; })
      .def_prop_ro("scorer",
                   [](const PolicyConfig& c) { return std::string(NameOf(c.scorer, kScorers)); })
      .def_prop_ro(
          "allocator",
          [](const PolicyConfig& c) { return std::string(NameOf(c.allocator, kAllocators)); })
      .def_prop_ro("compresses", &PolicyConfig::compresses,
                   "Whether the policy evicts anything ('full' does not).")
      .def_prop_ro("evicts_while_decoding",
                   [](const PolicyConfig& c) { return c.evicts_while_decoding; },
                   "Whether the policy evicts at decode steps too (H2O).")
      .def("observed_queries", &PolicyConfig::ObservedQueries, nb::arg("prompt_queries"),
           "How many of the last prompt queries the compression at the end of the prefill "
           "observes.")
      .def_prop_ro("runs_on_gpu", [](const PolicyConfig& c) { return CudaExecutor::Supports(c).ok(); },
                   "Whether an EvictionEngine over a CudaArena runs this policy on the GPU.")
      .def("validate", [](const PolicyConfig& c) { ThrowIfError(Validate(c)); })
      .def("__repr__", [](const PolicyConfig& c) {
        return absl::StrCat("PolicyConfig(name='", c.name, "', scorer=", NameOf(c.scorer, kScorers),
                            ", allocator=", NameOf(c.allocator, kAllocators), ", window=", c.window,
                            ", sinks=", c.sinks, ")");
      });
  m.def(
      "policy_by_name", [](const std::string& name) { return ValueOrThrow(PolicyByName(name)); },
      nb::arg("name"), "The named policy, with the papers' defaults (see policy_names()).");
  m.def("policy_names", &PolicyNames, "The names policy_by_name knows, in the registry's order.");
  m.def(
      "budget_capacity",
      [](nb::handle budget, int32_t prompt_len) {
        return BudgetOf(budget).CapacityFor(prompt_len);
      },
      nb::arg("budget"), nb::arg("prompt_len"),
      "Tokens per head that a budget ('20%', '128', 0.2 or 128) gives a prompt.");

  nb::class_<Engine>(m, "EvictionEngine",
                     "Runs a policy against a BlockManager and its arena: a HostArena through the "
                     "CPU kernels, a CudaArena through the GPU kernels on `stream` (only the kept "
                     "counts cross to the host).")
      .def(
          "__init__",
          [](Engine* e, BlockManager* manager, const HostArena& arena) {
            if (manager == nullptr) BadArgument("manager: want a BlockManager, got None");
            new (e) Engine{ValueOrThrow(EvictionEngine::Create(manager, arena.view())), manager,
                           Place{}};
          },
          nb::arg("manager"), nb::arg("arena"), nb::keep_alive<1, 2>(), nb::keep_alive<1, 3>())
      .def(
          "__init__",
          [](Engine* e, BlockManager* manager, const DeviceArena& arena, uintptr_t stream) {
            if (manager == nullptr) BadArgument("manager: want a BlockManager, got None");
            new (e) Engine{
                ValueOrThrow(EvictionEngine::Create(manager, arena.arena.view(), StreamOf(stream))),
                manager, PlaceOf(arena)};
          },
          nb::arg("manager"), nb::arg("arena"), nb::arg("stream") = 0, nb::keep_alive<1, 2>(),
          nb::keep_alive<1, 3>())
      .def_prop_ro("on_device", [](const Engine& e) { return e.place.cuda; },
                   "Whether the engine compresses on the GPU (its arena is a CudaArena).")
      .def(
          "compress",
          [](Engine& e, SeqId seq, nb::handle policy, nb::handle budget, std::vector<In> queries,
             std::vector<In> positions) {
            const BlockManager& manager = *e.manager;
            const PolicyConfig config = PolicyOf(policy);
            const Budget b = BudgetOf(budget);
            const std::vector<LayerQueries> q = QueriesOf(manager.geometry(), queries, positions, e.place);
            absl::StatusOr<CompressResult> result;
            {
              nb::gil_scoped_release release;
              result = e.engine.Compress(seq, config, b, q);
            }
            const CompressResult r = ValueOrThrow(std::move(result));
            const CacheGeometry& g = manager.geometry();
            nb::dict d;
            d["tokens_before"] = r.tokens_before;
            d["tokens_after"] = r.tokens_after;
            d["pages_freed"] = r.pages_freed;
            d["kept"] = Owned(
                r.kept, {static_cast<size_t>(g.num_layers), static_cast<size_t>(g.num_kv_heads)});
            return d;
          },
          nb::arg("seq"), nb::arg("policy"), nb::arg("budget"), nb::arg("queries"),
          nb::arg("positions"),
          "Compresses seq at the end of its prefill. queries: one [q_heads][n][head_dim] "
          "array per layer (the observation window; host arrays, or for a CUDA engine also "
          "tensors on its device); positions: int32 [n], one for all layers or one per layer, "
          "where the queries are. Returns tokens_before, tokens_after, pages_freed, kept.")
      .def(
          "forget", [](Engine& e, SeqId seq) { e.engine.Forget(seq); }, nb::arg("seq"));

  // -- Kernels ---------------------------------------------------------------
  DefKernels<HostArena>(m);
  DefKernels<DeviceArena>(m);
  m.def("gather_kv", &GatherKV, nb::arg("arena"), nb::arg("indptr"), nb::arg("page_ids"),
        nb::arg("lens"), nb::arg("keys") = nb::none(), nb::arg("values") = nb::none(),
        nb::arg("positions") = nb::none(),
        "Copies the rows' tokens out of a HostArena, row after row ([sum lens][head_dim]).");
  m.def("decode_attention_workspace_bytes", &DecodeAttentionWorkspaceBytes, nb::arg("num_seqs"),
        nb::arg("num_q_heads"), nb::arg("head_dim"), nb::arg("num_splits"));
  m.def("decode_attention_splits", &DecodeAttentionSplits, nb::arg("max_len"),
        nb::arg("num_streams"), nb::arg("num_sms"));
}
