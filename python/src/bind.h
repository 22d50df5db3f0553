// SPDX-License-Identifier: Apache-2.0
// File: python/src/bind.h
//
// What the parts of the module headpage._ext share: one Def*(m) per part
// (module.cc calls them in dependency order), the Status -> exception helpers,
// and the argument checks every binding runs on arrays that come in.
//
// Tensors come in through DLPack (nb::ndarray), are checked against what a call
// needs (place, rank, shape, dtype, contiguity) and named in the error. Arrays go
// out as read-only numpy views whose owner keeps the memory alive: the owner is
// either an immutable result object that holds its own copy, or an object whose
// memory the caller knows to be live (an arena, a block table).
#ifndef HEADPAGE_PYTHON_SRC_BIND_H_
#define HEADPAGE_PYTHON_SRC_BIND_H_

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "allocator/arena.h"
#include "core/geometry.h"
#include "kernels/gpu_launch.h"
#include "policy/config.h"

namespace headpage {
class BlockManager;
class PagePool;
}  // namespace headpage

namespace headpage::bindings {

namespace nb = nanobind;

// One per part, in this order (each may name the classes of the ones before).
void DefCore(nb::module_& m);       // exceptions, has_cuda, CacheGeometry
void DefAllocator(nb::module_& m);  // PagePool, HostArena, CudaArena, their DLPack views
void DefBlockMgr(nb::module_& m);   // BlockManager, block tables, plans
void DefPolicy(nb::module_& m);     // PolicyConfig, policy_by_name, budgets
void DefEviction(nb::module_& m);   // EvictionEngine
void DefKernels(nb::module_& m);    // write_kv, decode_attention, compact, ...
void DefRuntime(nb::module_& m);    // DeviceBlockTables

// ---------------------------------------------------------------------------
// Status -> Python exception (bind_core.cc): ValueError (InvalidArgument,
// OutOfRange), headpage.ResourceExhausted (a MemoryError), NotImplementedError
// (Unimplemented), KeyError (NotFound), RuntimeError otherwise.

void ThrowIfError(const absl::Status& status);

template <typename T>
T ValueOrThrow(absl::StatusOr<T> result) {
  ThrowIfError(result.status());
  return std::move(result).value();
}

// Bad arguments found by the binding itself: ValueError.
[[noreturn]] void BadArgument(const std::string& message);

// ---------------------------------------------------------------------------
// Threads (bind_core.cc). A block manager, its pool and the engines and device
// tables over it are single-threaded by contract. A call that releases the GIL
// while it uses a manager holds an InUse for it (made and dropped with the GIL
// held), and every call on the manager or its pool first asks NotInUse(),
// which raises RuntimeError naming the other call rather than let two threads
// race: the GIL serializes everything else.

class InUse {
 public:
  // RuntimeError if the manager is already in use (`what` names this call).
  InUse(const BlockManager& manager, const char* what);
  ~InUse();
  InUse(const InUse&) = delete;
  InUse& operator=(const InUse&) = delete;

 private:
  const void* manager_;
  const void* pool_;
};
void NotInUse(const BlockManager& manager);
void NotInUse(const PagePool& pool);

// ---------------------------------------------------------------------------
// dtypes (bind_core.cc).

DType ParseDType(const std::string& name);  // "f32"/"float32", "f16", "bf16"
// How pages store K/V: "auto" (the model's dtype), "fp8" or "fp8_e4m3". The one
// place the names are read; ValueError naming the choices otherwise.
KvDType ParseKvDType(const std::string& name);
nb::dlpack::dtype DLPackOf(DType dtype);
std::optional<DType> DTypeOf(const nb::dlpack::dtype& d);

// ---------------------------------------------------------------------------
// Arrays in.

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
  // An empty tensor has no layout to get wrong (torch gives it any strides).
  for (size_t i = 0; i < a.ndim(); ++i) {
    if (a.shape(i) == 0) return true;
  }
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

// A contiguous int32 vector (of `size` entries unless -1): its data.
inline const int32_t* Int32s(const In& a, const char* name, const Place& place,
                             int64_t size = -1) {
  Check(a, name, place, {size}, nb::dtype<int32_t>(), "int32");
  return static_cast<const int32_t*>(a.data());
}

// ---------------------------------------------------------------------------
// Arrays out: read-only numpy views whose owner keeps the memory alive.

template <typename T>
nb::ndarray<nb::numpy, const T> View(const T* data, std::vector<size_t> shape, nb::handle owner) {
  return nb::ndarray<nb::numpy, const T>(data, shape.size(), shape.data(), owner);
}

template <typename T>
nb::ndarray<nb::numpy, const T> View1(const std::vector<T>& v, nb::handle owner) {
  return View<T>(v.data(), {v.size()}, owner);
}

// ---------------------------------------------------------------------------
// Results: small read-only classes rather than dicts.

template <typename T, typename M>
std::pair<const char*, M T::*> Field(const char* name, M T::*member) {
  return {name, member};
}

// Binds T, a C++ struct of numbers returned by value (its Python object owns
// it), as a read-only class: each field by def_ro, __repr__ "Name(a=1, b=2.5)",
// and __eq__ field by field. Fields are given as Field("name", &T::name).
template <typename T, typename... M>
nb::class_<T> DefValueClass(nb::module_& m, const char* name, const char* doc,
                            std::pair<const char*, M T::*>... fields) {
  nb::class_<T> cls(m, name, doc);
  (cls.def_ro(fields.first, fields.second), ...);
  cls.def("__repr__", [type = std::string(name), fields...](const T& v) {
    std::string s = type + "(";
    const char* sep = "";
    ((absl::StrAppend(&s, sep, fields.first, "=", v.*(fields.second)), sep = ", "), ...);
    return s + ")";
  });
  cls.def(
      "__eq__",
      [fields...](const T& a, const T& b) {
        return ((a.*(fields.second) == b.*(fields.second)) && ...);
      },
      nb::is_operator());
  return cls;
}

// ---------------------------------------------------------------------------
// Arenas (bind_allocator.cc), which the engine and the kernels take.

// CudaArena plus the device it was made on (the DLPack views name it).
struct DeviceArena {
  CudaArena arena;
  int32_t device = 0;
};

inline Place PlaceOf(const HostArena&) { return Place{}; }
inline Place PlaceOf(const DeviceArena& a) { return Place{true, a.device}; }
inline const PagedKV& ViewOf(const HostArena& a) { return a.view(); }
inline const PagedKV& ViewOf(const DeviceArena& a) { return a.arena.view(); }

// A cudaStream_t passed from Python as an int (0: the legacy default stream).
inline GpuStream StreamOf(uintptr_t stream) { return reinterpret_cast<GpuStream>(stream); }

// ---------------------------------------------------------------------------
// Policies and budgets as Python passes them (bind_policy.cc).

// A name (str) or a headpage.PolicyConfig; TypeError otherwise.
PolicyConfig PolicyOf(const nb::handle& policy);
// "20%" or "128" (str), a fraction in (0, 1] (float) or tokens per head (int).
Budget BudgetOf(const nb::handle& budget);

}  // namespace headpage::bindings

#endif  // HEADPAGE_PYTHON_SRC_BIND_H_
