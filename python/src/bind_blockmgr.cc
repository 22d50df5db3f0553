// SPDX-License-Identifier: Apache-2.0
// File: python/src/bind_blockmgr.cc
//
// blockmgr: BlockManager (sequences -> streams -> block tables), its results
// (ReservePlan, BlockManagerStats), CompactionPlan and the CompactionArgs its
// kernel_args() returns, and BlockTable (one layer's CSR block tables).
//
// Results are read-only objects that own their arrays: a ReservePlan's
// slot_mapping stays what Reserve returned whatever the manager does next.
// CompactionPlan and BlockTable are the caller's mutable objects (evict() appends
// to a plan, refresh_block_table() updates a table): their array properties are
// views of the object as it is now, to use before the next call that changes it.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "blockmgr/block_manager.h"
#include "blockmgr/plans.h"
#include "python/src/bind.h"

namespace headpage::bindings {
namespace {

// BlockManager.reserve()'s result (Python: headpage.ReservePlan): the plan, and
// the shape of its slot mapping.
struct Reservation {
  ReservePlan plan;
  size_t num_tokens = 0;
  size_t num_layers = 0;
  size_t num_kv_heads = 0;
};

// CompactionPlan.kernel_args()'s result: the plan's arrays by compact()'s
// argument names, copied, so that they outlive later evict() calls on the plan.
struct CompactionArgs {
  std::vector<int32_t> src_indptr;
  std::vector<int32_t> src_page_ids;
  std::vector<int32_t> src_lens;
  std::vector<int32_t> dst_indptr;
  std::vector<int32_t> dst_page_ids;
  std::vector<int32_t> keep_indptr;
  std::vector<uint8_t> in_place;
};

void DefResults(nb::module_& m) {
  using S = BlockManagerStats;
  DefValueClass<S>(m, "BlockManagerStats", "BlockManager.stats(): pages, slots, stream lengths.",
                   Field("num_sequences", &S::num_sequences), Field("num_streams", &S::num_streams),
                   Field("pages_total", &S::pages_total), Field("pages_free", &S::pages_free),
                   Field("pages_in_use", &S::pages_in_use),
                   Field("pages_retired", &S::pages_retired),
                   Field("pages_cached", &S::pages_cached),
                   Field("pages_cached_only", &S::pages_cached_only),
                   Field("cached_blocks", &S::cached_blocks),
                   Field("cached_blocks_unused", &S::cached_blocks_unused),
                   Field("peak_pages_used", &S::peak_pages_used),
                   Field("allocated_slots", &S::allocated_slots),
                   Field("used_slots", &S::used_slots),
                   Field("internal_fragmentation", &S::internal_fragmentation),
                   Field("stream_tokens", &S::stream_tokens),
                   Field("min_stream_len", &S::min_stream_len),
                   Field("max_stream_len", &S::max_stream_len),
                   Field("mean_stream_len", &S::mean_stream_len));

  nb::class_<Reservation>(m, "ReservePlan",
                          "BlockManager.reserve(): where the new tokens go, and the pages to "
                          "copy first (copy-on-write).")
      .def_prop_ro(
          "slot_mapping",
          [](nb::handle self) {
            const auto& r = nb::cast<const Reservation&>(self);
            return View<int32_t>(r.plan.slot_mapping.data(),
                                 {r.num_tokens, r.num_layers, r.num_kv_heads}, self);
          },
          "int32 [tokens][layers][kv_heads]: each new token's flat slot id in every stream.")
      .def_prop_ro(
          "copy_src",
          [](nb::handle self) {
            return View1(nb::cast<const Reservation&>(self).plan.page_copies.src, self);
          },
          "int32 [copies]: shared pages to copy (copy_pages) before this step's write_kv.")
      .def_prop_ro(
          "copy_dst",
          [](nb::handle self) {
            return View1(nb::cast<const Reservation&>(self).plan.page_copies.dst, self);
          },
          "int32 [copies]: where each copy goes.")
      .def_prop_ro(
          "first_position", [](const Reservation& r) { return r.plan.first_position; },
          "The position of the first reserved token.")
      .def_ro("num_tokens", &Reservation::num_tokens)
      .def("__repr__", [](const Reservation& r) {
        return absl::StrCat("ReservePlan(num_tokens=", r.num_tokens,
                            ", first_position=", r.plan.first_position,
                            ", copies=", r.plan.page_copies.src.size(), ")");
      });

  nb::class_<CompactionArgs>(m, "CompactionArgs",
                             "CompactionPlan.kernel_args(): the plan's arrays by compact()'s "
                             "argument names, copied when it was called.")
      .def_prop_ro("src_indptr",
                   [](nb::handle self) {
                     return View1(nb::cast<const CompactionArgs&>(self).src_indptr, self);
                   })
      .def_prop_ro("src_page_ids",
                   [](nb::handle self) {
                     return View1(nb::cast<const CompactionArgs&>(self).src_page_ids, self);
                   })
      .def_prop_ro("src_lens",
                   [](nb::handle self) {
                     return View1(nb::cast<const CompactionArgs&>(self).src_lens, self);
                   })
      .def_prop_ro("dst_indptr",
                   [](nb::handle self) {
                     return View1(nb::cast<const CompactionArgs&>(self).dst_indptr, self);
                   })
      .def_prop_ro("dst_page_ids",
                   [](nb::handle self) {
                     return View1(nb::cast<const CompactionArgs&>(self).dst_page_ids, self);
                   })
      .def_prop_ro("keep_indptr",
                   [](nb::handle self) {
                     return View1(nb::cast<const CompactionArgs&>(self).keep_indptr, self);
                   })
      .def_prop_ro("in_place",
                   [](nb::handle self) {
                     return View1(nb::cast<const CompactionArgs&>(self).in_place, self);
                   })
      .def_prop_ro("num_rows",
                   [](const CompactionArgs& a) { return a.src_lens.size(); })
      .def("__repr__", [](const CompactionArgs& a) {
        return absl::StrCat("CompactionArgs(num_rows=", a.src_lens.size(),
                            ", src_pages=", a.src_page_ids.size(),
                            ", dst_pages=", a.dst_page_ids.size(), ")");
      });
}

// An array that owns a copy of `v` (numpy, writable).
template <typename T>
nb::ndarray<nb::numpy, T> Owned(std::vector<T> v, std::vector<size_t> shape) {
  auto* heap = new std::vector<T>(std::move(v));
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T>(heap->data(), shape.size(), shape.data(), owner);
}

void DefPlansAndTables(nb::module_& m) {
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
          [](const CompactionPlan& p) {
            return CompactionArgs{p.src_indptr,   p.src_page_ids, p.src_lens, p.dst_indptr,
                                  p.dst_page_ids, p.keep_indptr,  p.in_place};
          },
          "A CompactionArgs: the plan's arrays by compact()'s argument names (a copy); "
          "with the keep sets, they are compact()'s arguments.")
      .def_prop_ro(
          "kept",
          [](const CompactionPlan& p) { return Owned(p.kept, {p.kept.size()}); },
          nb::rv_policy::automatic,
          "int32 [rows]: tokens each row keeps (a copy: a later evict() into the plan "
          "reallocates its arrays).")
      .def("clear", &CompactionPlan::Clear);

  // Copies, not views: refresh_block_table() may reallocate the table's arrays,
  // and a view would then read freed memory.
  nb::class_<BlockTableCsr>(m, "BlockTable",
                            "One layer's block tables for a batch, CSR over streams (seq-major); "
                            "indptr, page_ids and lens are copies of the table as it is now.")
      .def_prop_ro("layer", &BlockTableCsr::layer)
      .def_prop_ro("num_rows", &BlockTableCsr::num_rows)
      .def_prop_ro("seqs",
                   [](const BlockTableCsr& t) {
                     return std::vector<SeqId>(t.seqs().begin(), t.seqs().end());
                   })
      .def_prop_ro("indptr",
                   [](const BlockTableCsr& t) {
                     auto s = t.indptr();
                     return Owned(std::vector<int32_t>(s.begin(), s.end()), {s.size()});
                   },
                   nb::rv_policy::automatic)
      .def_prop_ro("page_ids",
                   [](const BlockTableCsr& t) {
                     auto s = t.page_ids();
                     return Owned(std::vector<int32_t>(s.begin(), s.end()), {s.size()});
                   },
                   nb::rv_policy::automatic)
      .def_prop_ro("lens",
                   [](const BlockTableCsr& t) {
                     auto s = t.lens();
                     return Owned(std::vector<int32_t>(s.begin(), s.end()), {s.size()});
                   },
                   nb::rv_policy::automatic)
      .def_prop_ro("rebuilt", &BlockTableCsr::rebuilt)
      .def_prop_ro("changed_entries", [](const BlockTableCsr& t) {
        auto s = t.changed_entries();
        return std::vector<int32_t>(s.begin(), s.end());
      });
}

void DefBlockManager(nb::module_& m) {
  nb::class_<BlockManager>(m, "BlockManager",
                           "Sequences -> streams -> block tables over one PagePool.")
      .def(
          "__init__",
          [](BlockManager* bm, const CacheGeometry& g, PagePool* pool) {
            new (bm) BlockManager(ValueOrThrow(BlockManager::Create(g, pool)));
          },
          nb::arg("geometry"), nb::arg("pool"), nb::keep_alive<1, 3>())
      .def("add_sequence",
           [](BlockManager& bm) {
             NotInUse(bm);
             return bm.AddSequence();
           })
      .def(
          "reserve",
          [](BlockManager& bm, SeqId seq, int64_t num_tokens) {
            NotInUse(bm);
            ReservePlan plan = ValueOrThrow(bm.Reserve(seq, num_tokens));
            const CacheGeometry& g = bm.geometry();
            return Reservation{std::move(plan), static_cast<size_t>(num_tokens),
                               static_cast<size_t>(g.num_layers),
                               static_cast<size_t>(g.num_kv_heads)};
          },
          nb::arg("seq"), nb::arg("num_tokens"),
          "Room for num_tokens new tokens in every stream of seq: a ReservePlan with "
          "slot_mapping (int32 [tokens][layers][kv_heads]), copy_src/copy_dst (copy-on-write "
          "pages to copy first) and first_position.")
      .def(
          "pages_needed",
          [](const BlockManager& bm, SeqId seq, int64_t n) {
            NotInUse(bm);
            return ValueOrThrow(bm.PagesNeeded(seq, n));
          },
          nb::arg("seq"), nb::arg("num_tokens"))
      .def(
          "fork",
          [](BlockManager& bm, SeqId seq) {
            NotInUse(bm);
            return ValueOrThrow(bm.Fork(seq));
          },
          nb::arg("seq"))
      .def(
          "free",
          [](BlockManager& bm, SeqId seq) {
            NotInUse(bm);
            ThrowIfError(bm.Free(seq));
          },
          nb::arg("seq"))
      .def(
          "evict",
          [](BlockManager& bm, SeqId seq, int32_t layer, std::vector<int32_t> kept,
             CompactionPlan& plan, int64_t frozen_tokens) {
            NotInUse(bm);
            ThrowIfError(bm.Evict(seq, layer, kept, frozen_tokens, &plan));
          },
          nb::arg("seq"), nb::arg("layer"), nb::arg("kept_counts"), nb::arg("plan"),
          nb::arg("frozen_tokens") = 0,
          "Shrinks stream (seq, layer, h) to kept_counts[h] tokens; appends the rows to plan. "
          "frozen_tokens (a multiple of the page size) stay where they are, and the rows "
          "cover what follows them.")
      .def(
          "cached_prefix_tokens",
          [](const BlockManager& bm, std::vector<int32_t> tokens, uint64_t salt) {
            NotInUse(bm);
            return bm.CachedPrefixTokens(tokens, salt);
          },
          nb::arg("tokens"), nb::arg("salt") = 0,
          "Tokens at the start of `tokens` whose blocks are cached under salt.")
      .def(
          "add_sequence_with_prefix",
          [](BlockManager& bm, std::vector<int32_t> tokens, uint64_t salt) {
            NotInUse(bm);
            const BlockManager::PrefixHit hit = bm.AddSequenceWithPrefix(tokens, salt);
            return nb::make_tuple(hit.seq, hit.cached_tokens);
          },
          nb::arg("tokens"), nb::arg("salt") = 0,
          "(seq, cached_tokens): a new sequence holding the cached pages of the longest "
          "cached prefix of tokens; pass a prompt without its last token.")
      .def(
          "cache_prefix",
          [](BlockManager& bm, SeqId seq, std::vector<int32_t> tokens, uint64_t salt) {
            NotInUse(bm);
            return ValueOrThrow(bm.CachePrefix(seq, tokens, salt));
          },
          nb::arg("seq"), nb::arg("tokens"), nb::arg("salt") = 0,
          "Offers the full blocks of seq's first len(tokens) tokens (written already) to the "
          "prefix cache; returns seq's tokens now cached.")
      .def(
          "reclaim_cached_pages",
          [](BlockManager& bm, int64_t free_pages) {
            NotInUse(bm);
            return bm.ReclaimCachedPages(free_pages);
          },
          nb::arg("free_pages"),
          "Frees unused cached blocks, oldest first, until free_pages pages are free; returns "
          "the pages freed.")
      .def_prop_ro("available_pages",
                   [](const BlockManager& bm) {
                     NotInUse(bm);
                     return bm.AvailablePages();
                   })
      .def_prop_ro("cached_pages",
                   [](const BlockManager& bm) {
                     NotInUse(bm);
                     return bm.CachedPages();
                   })
      .def("release_retired_pages",
           [](BlockManager& bm) {
             NotInUse(bm);
             bm.ReleaseRetiredPages();
           })
      .def(
          "block_table",
          [](const BlockManager& bm, int32_t layer, std::vector<SeqId> seqs,
             int32_t headroom_pages) {
            NotInUse(bm);
            BlockTableOptions options;
            options.headroom_pages = headroom_pages;
            return ValueOrThrow(bm.BlockTable(layer, seqs, options));
          },
          nb::arg("layer"), nb::arg("seqs"), nb::arg("headroom_pages") = 0)
      .def(
          "refresh_block_table",
          [](const BlockManager& bm, BlockTableCsr& table) {
            NotInUse(bm);
            ThrowIfError(bm.RefreshBlockTable(&table));
          },
          nb::arg("table"))
      .def(
          "stats",
          [](const BlockManager& bm) {
            NotInUse(bm);
            return bm.Stats();
          },
          "A BlockManagerStats.")
      .def(
          "contains",
          [](const BlockManager& bm, SeqId seq) {
            NotInUse(bm);
            return bm.Contains(seq);
          },
          nb::arg("seq"))
      .def_prop_ro("num_sequences",
                   [](const BlockManager& bm) {
                     NotInUse(bm);
                     return bm.num_sequences();
                   })
      .def_prop_ro("geometry", &BlockManager::geometry)
      .def(
          "num_tokens",
          [](const BlockManager& bm, SeqId seq) {
            NotInUse(bm);
            return ValueOrThrow(bm.NumTokens(seq));
          },
          nb::arg("seq"))
      .def(
          "stream_lengths",
          [](const BlockManager& bm, SeqId seq) {
            NotInUse(bm);
            auto lens = ValueOrThrow(bm.StreamLengths(seq));
            const CacheGeometry& g = bm.geometry();
            return Owned(std::vector<uint32_t>(lens.begin(), lens.end()),
                         {static_cast<size_t>(g.num_layers), static_cast<size_t>(g.num_kv_heads)});
          },
          nb::arg("seq"), "uint32 [layers][kv_heads]")
      .def(
          "stream_pages",
          [](const BlockManager& bm, SeqId seq, int32_t layer, int32_t kv_head) {
            NotInUse(bm);
            auto pages = ValueOrThrow(bm.StreamPages(seq, layer, kv_head));
            return std::vector<uint32_t>(pages.begin(), pages.end());
          },
          nb::arg("seq"), nb::arg("layer"), nb::arg("kv_head"))
      .def("check_invariants", [](const BlockManager& bm) {
        NotInUse(bm);
        ThrowIfError(bm.CheckInvariants());
      });
}

}  // namespace

void DefBlockMgr(nb::module_& m) {
  DefResults(m);
  DefPlansAndTables(m);
  DefBlockManager(m);
}

}  // namespace headpage::bindings
