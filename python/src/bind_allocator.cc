// SPDX-License-Identifier: Apache-2.0
// File: python/src/bind_allocator.cc
//
// allocator: PagePool (page ids and refcounts, its PagePoolStats), HostArena and
// CudaArena (the bytes), and ArenaView, the zero-copy DLPack view of an arena's
// K/V, slot positions or fp8 scales that arena.kv, arena.positions and
// arena.scales return.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "allocator/arena.h"
#include "allocator/page_pool.h"
#include "python/src/bind.h"

#if HEADPAGE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace headpage::bindings {
namespace {

// DLPack's float8 e4m3fn (kDLFloat8_e4m3fn, DLPack 1.1): torch.from_dlpack
// imports it as torch.float8_e4m3fn. nanobind has no name for the code.
constexpr nb::dlpack::dtype kDLPackFp8E4M3{10, 8, 1};

// Which memory of an arena a view shows.
enum class ArenaPart : uint8_t { kKV, kPositions, kScales };

// The arena's K/V, [num_pages][2][page_size][head_dim] of the stored element
// (the model's dtype, or float8 e4m3fn for fp8 pages), its slot positions, or
// its fp8 scales [num_pages][page_size][2] (K then V, float32), as a DLPack
// array whose owner (the arena's Python object) keeps it alive.
template <typename A>
Array ArenaArray(const A& arena, ArenaPart part, nb::handle owner) {
  const PagedKV& v = ViewOf(arena);
  const Place place = PlaceOf(arena);
  const int32_t device_type = place.cuda ? nb::device::cuda::value : nb::device::cpu::value;
  switch (part) {
    case ArenaPart::kPositions: {
      const size_t shape[1] = {static_cast<size_t>(v.num_slots())};
      return Array(v.positions, 1, shape, owner, nullptr, nb::dtype<int32_t>(), device_type,
                   place.device);
    }
    case ArenaPart::kScales: {
      const size_t shape[3] = {static_cast<size_t>(v.num_pages), static_cast<size_t>(v.page_size),
                               2};
      return Array(v.scales, 3, shape, owner, nullptr, nb::dtype<float>(), device_type,
                   place.device);
    }
    case ArenaPart::kKV:
      break;
  }
  const size_t shape[4] = {static_cast<size_t>(v.num_pages), 2, static_cast<size_t>(v.page_size),
                           static_cast<size_t>(v.head_dim)};
  return Array(v.data, 4, shape, owner, nullptr, v.fp8() ? kDLPackFp8E4M3 : DLPackOf(v.dtype),
               device_type, place.device);
}

// What HostArena.kv, .positions and .scales return: an object that DLPack
// consumers (torch.from_dlpack, numpy.from_dlpack) import without a copy. A
// DLPack capsule can be consumed once, so every __dlpack__ call makes a fresh
// one.
struct ArenaView {
  nb::object arena;
  ArenaPart part = ArenaPart::kKV;

  Array Get() const {
    if (nb::isinstance<HostArena>(arena))
      return ArenaArray(nb::cast<const HostArena&>(arena), part, arena);
    return ArenaArray(nb::cast<const DeviceArena&>(arena), part, arena);
  }
};

// arena.scales: the fp8 scales' view, None for pages that store the model's dtype.
template <typename A>
nb::object ScalesOf(nb::object self) {
  if (!ViewOf(nb::cast<const A&>(self)).fp8()) return nb::none();
  return nb::cast(ArenaView{self, ArenaPart::kScales});
}

template <typename A>
std::string KvDTypeOf(const A& arena) {
  return KvDTypeName(ViewOf(arena).kv_dtype);
}

void DefPagePool(nb::module_& m) {
  DefValueClass<PagePoolStats>(m, "PagePoolStats", "PagePool.stats(): page counts.",
                               Field("num_pages", &PagePoolStats::num_pages),
                               Field("free_pages", &PagePoolStats::free_pages),
                               Field("used_pages", &PagePoolStats::used_pages),
                               Field("peak_used_pages", &PagePoolStats::peak_used_pages),
                               Field("watermark_pages", &PagePoolStats::watermark_pages));

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
      .def_prop_ro("free_pages",
                   [](const PagePool& p) {
                     NotInUse(p);
                     return p.free_pages();
                   })
      .def_prop_ro("used_pages",
                   [](const PagePool& p) {
                     NotInUse(p);
                     return p.used_pages();
                   })
      .def(
          "can_allocate",
          [](const PagePool& p, int64_t n) {
            // CanAllocate computes free - n: a negative n says yes, and INT64_MIN overflows.
            if (n < 0) BadArgument(absl::StrCat("n ", n, " is negative: want a page count"));
            NotInUse(p);
            return p.CanAllocate(n);
          },
          nb::arg("n"), "True when n pages can be allocated with the watermark still free.")
      .def("refcount",
           [](const PagePool& p, int64_t page) {
             if (page < 0 || page >= p.num_pages())
               BadArgument(absl::StrCat("page ", page, " is out of range"));
             NotInUse(p);
             return p.refcount(static_cast<PageId>(page));
           })
      .def(
          "stats",
          [](const PagePool& p) {
            NotInUse(p);
            return p.Stats();
          },
          "A PagePoolStats: num_pages, free_pages, used_pages, peak_used_pages, "
          "watermark_pages.")
      .def("reset_peak",
           [](PagePool& p) {
             NotInUse(p);
             p.ResetPeak();
           })
      .def("check_invariants", [](const PagePool& p) {
        NotInUse(p);
        ThrowIfError(p.CheckInvariants());
      });
}

void DefArenas(nb::module_& m) {
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
          "kv", [](nb::object self) { return ArenaView{self, ArenaPart::kKV}; },
          "[num_pages][2][page_size][head_dim]: K then V of every page (DLPack, no copy), "
          "of the model's dtype, or float8 e4m3fn for fp8 pages (torch.float8_e4m3fn; "
          "numpy cannot import it): a row reads back as its values times its scale.")
      .def_prop_ro(
          "positions", [](nb::object self) { return ArenaView{self, ArenaPart::kPositions}; },
          "int32 [num_pages * page_size]: each slot's token position, -1 for none.")
      .def_prop_ro("scales", &ScalesOf<HostArena>,
                   "fp8 pages: float32 [num_pages][page_size][2], each slot's K then V scale "
                   "(DLPack, no copy); None for pages of the model's dtype.")
      .def_prop_ro("kv_dtype", &KvDTypeOf<HostArena>, "'auto' or 'fp8_e4m3', as the geometry's.")
      .def_prop_ro("num_pages", [](const HostArena& a) { return a.view().num_pages; })
      .def_prop_ro("kv_bytes", &HostArena::kv_bytes,
                   "Bytes of the K/V block (the scales of fp8 pages and the positions apart).");

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
      .def_prop_ro("kv", [](nb::object self) { return ArenaView{self, ArenaPart::kKV}; })
      .def_prop_ro("positions",
                   [](nb::object self) { return ArenaView{self, ArenaPart::kPositions}; })
      .def_prop_ro("scales", &ScalesOf<DeviceArena>,
                   "As HostArena.scales, in CUDA memory; None for pages of the model's dtype.")
      .def_prop_ro("kv_dtype", &KvDTypeOf<DeviceArena>, "'auto' or 'fp8_e4m3', as the geometry's.")
      .def_prop_ro("num_pages", [](const DeviceArena& a) { return a.arena.view().num_pages; })
      .def_prop_ro("device", [](const DeviceArena& a) { return a.device; })
      .def_prop_ro("kv_bytes", [](const DeviceArena& a) { return a.arena.kv_bytes(); });
}

}  // namespace

void DefAllocator(nb::module_& m) {
  DefPagePool(m);
  DefArenas(m);
}

}  // namespace headpage::bindings
