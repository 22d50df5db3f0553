// SPDX-License-Identifier: Apache-2.0
// File: python/src/bind_core.cc
//
// core: the exceptions a non-OK Status becomes, dtypes, has_cuda and
// CacheGeometry.
//
// The library never throws; ThrowIfError turns a non-OK Status into a Python
// exception carrying its message: ValueError (InvalidArgument, OutOfRange),
// headpage.ResourceExhausted (a MemoryError), NotImplementedError
// (Unimplemented), KeyError (NotFound), RuntimeError otherwise.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <stdexcept>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "blockmgr/block_manager.h"
#include "core/geometry.h"
#include "python/src/bind.h"

namespace headpage::bindings {
namespace {

struct ResourceExhaustedError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct NotImplementedErr : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct NotFoundErr : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace

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

void BadArgument(const std::string& message) { throw nb::value_error(message.c_str()); }

namespace {

// Managers and pools in use by a call that released the GIL, and that call's
// name. Read and written with the GIL held only.
absl::flat_hash_map<const void*, const char*>& Busy() {
  static auto* busy = new absl::flat_hash_map<const void*, const char*>();
  return *busy;
}

void RaiseIfBusy(const void* object, const char* kind) {
  const auto it = Busy().find(object);
  if (it == Busy().end()) return;
  throw std::runtime_error(absl::StrCat(
      "this ", kind, " is in use by ", it->second,
      " in another thread; a BlockManager, its pool and the engines over it are "
      "single-threaded: call them from one thread, or serialize the calls"));
}

}  // namespace

InUse::InUse(const BlockManager& manager, const char* what)
    : manager_(&manager), pool_(&manager.pool()) {
  RaiseIfBusy(manager_, "BlockManager");
  RaiseIfBusy(pool_, "PagePool");
  Busy()[manager_] = what;
  Busy()[pool_] = what;
}

InUse::~InUse() {
  Busy().erase(manager_);
  Busy().erase(pool_);
}

void NotInUse(const BlockManager& manager) { RaiseIfBusy(&manager, "BlockManager"); }
void NotInUse(const PagePool& pool) { RaiseIfBusy(&pool, "PagePool"); }

DType ParseDType(const std::string& name) {
  if (name == "f32" || name == "float32") return DType::kF32;
  if (name == "f16" || name == "float16") return DType::kF16;
  if (name == "bf16" || name == "bfloat16") return DType::kBF16;
  BadArgument("unknown dtype '" + name + "': want f32, f16 or bf16");
}

KvDType ParseKvDType(const std::string& name) {
  if (name == "auto") return KvDType::kAuto;
  if (name == "fp8" || name == "fp8_e4m3") return KvDType::kFP8E4M3;
  BadArgument("unknown kv_dtype '" + name + "': want auto (the model's dtype), fp8 or fp8_e4m3");
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

void DefCore(nb::module_& m) {
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

  nb::class_<CacheGeometry>(m, "CacheGeometry",
                            "One model's KV cache: layers, heads, head_dim, dtype, page size, and "
                            "how pages store K/V (kv_dtype: 'auto', the model's dtype, or 'fp8', "
                            "fp8 e4m3 with a float scale per token and stream).")
      .def(
          "__init__",
          [](CacheGeometry* g, int32_t num_layers, int32_t num_kv_heads, int32_t num_q_heads,
             int32_t head_dim, const std::string& dtype, int32_t page_size,
             const std::string& kv_dtype) {
            // Parsed and validated before the object exists: a bad argument leaves
            // nothing half made.
            CacheGeometry geometry;
            geometry.num_layers = num_layers;
            geometry.num_kv_heads = num_kv_heads;
            geometry.num_q_heads = num_q_heads;
            geometry.head_dim = head_dim;
            geometry.dtype = ParseDType(dtype);
            geometry.page_size = page_size;
            geometry.kv_dtype = ParseKvDType(kv_dtype);
            ThrowIfError(Validate(geometry));
            new (g) CacheGeometry(geometry);
          },
          nb::kw_only(), nb::arg("num_layers"), nb::arg("num_kv_heads"), nb::arg("num_q_heads"),
          nb::arg("head_dim"), nb::arg("dtype") = "bf16", nb::arg("page_size") = 16,
          nb::arg("kv_dtype") = "auto")
      .def_ro("num_layers", &CacheGeometry::num_layers)
      .def_ro("num_kv_heads", &CacheGeometry::num_kv_heads)
      .def_ro("num_q_heads", &CacheGeometry::num_q_heads)
      .def_ro("head_dim", &CacheGeometry::head_dim)
      .def_ro("page_size", &CacheGeometry::page_size)
      .def_prop_ro("dtype", [](const CacheGeometry& g) { return std::string(DTypeName(g.dtype)); })
      .def_prop_ro("kv_dtype",
                   [](const CacheGeometry& g) { return std::string(KvDTypeName(g.kv_dtype)); },
                   "'auto' (pages store the model's dtype) or 'fp8_e4m3'.")
      .def_prop_ro("page_bytes", &CacheGeometry::page_bytes,
                   "Bytes of a page's K and V (without fp8 scales).")
      .def_prop_ro("page_scale_bytes", &CacheGeometry::page_scale_bytes,
                   "Bytes of a page's per-token K and V scales (0 unless fp8).")
      .def_prop_ro("page_memory_bytes", &CacheGeometry::page_memory_bytes,
                   "What a page costs in memory, scales included: divide a KV memory "
                   "budget by it to get pages.")
      .def_prop_ro("streams_per_sequence", &CacheGeometry::streams_per_sequence)
      .def("__repr__", &CacheGeometry::DebugString);
}

}  // namespace headpage::bindings
