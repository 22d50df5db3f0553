// SPDX-License-Identifier: Apache-2.0
// File: python/src/bind_runtime.cc
//
// runtime: DeviceBlockTables, every layer's block tables for a batch kept in
// CUDA memory and refreshed with one upload a step. layer(l) hands out the
// device arrays as DLPack views that decode_attention takes as they are; they
// stay valid until `generation` changes (a rebuilt table outgrew them). reset()
// moves the tables to another batch in the same arrays, and layer(l, rows)
// reads a layer padded with empty rows: what a CUDA graph of a padded batch
// captures.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#include "blockmgr/block_manager.h"
#include "python/src/bind.h"
#include "runtime/device_block_tables.h"

namespace headpage::bindings {
namespace {

// The tables plus the CUDA device they live on (the DLPack views name it).
struct Tables {
  std::unique_ptr<DeviceBlockTables> tables;
  int32_t device = 0;
  const BlockManager* manager = nullptr;  // read while the GIL is released
};

Array DeviceInts(const int32_t* data, size_t n, int32_t device, nb::handle owner) {
  const size_t shape[1] = {n};
  return Array(const_cast<int32_t*>(data), 1, shape, owner, nullptr, nb::dtype<int32_t>(),
               nb::device::cuda::value, device);
}

}  // namespace

void DefRuntime(nb::module_& m) {
  nb::class_<Tables>(m, "DeviceBlockTables",
                     "Every layer's block tables for a batch, resident in CUDA memory, brought up "
                     "to date from the BlockManager with one upload a step (refresh()).")
      .def(
          "__init__",
          [](Tables* t, const BlockManager* manager, std::vector<SeqId> seqs,
             int32_t headroom_pages, uintptr_t stream, int32_t device, int32_t row_capacity,
             int64_t page_capacity) {
            if (manager == nullptr) BadArgument("manager: want a BlockManager, got None");
            absl::StatusOr<std::unique_ptr<DeviceBlockTables>> created;
            {
              const InUse busy(*manager, "DeviceBlockTables");
              nb::gil_scoped_release release;
              created = DeviceBlockTables::Create(manager, seqs, headroom_pages, StreamOf(stream),
                                                  {row_capacity, page_capacity});
            }
            new (t) Tables{ValueOrThrow(std::move(created)), device, manager};
          },
          nb::arg("manager"), nb::arg("seqs"), nb::arg("headroom_pages") = 8,
          nb::arg("stream") = 0, nb::arg("device") = 0, nb::arg("row_capacity") = 0,
          nb::arg("page_capacity") = 0, nb::keep_alive<1, 2>(),
          "The tables of `seqs` (that order) on the current CUDA device (`device` names it "
          "for the DLPack views), enqueued on `stream`. The arrays hold at least "
          "`row_capacity` rows (streams: sequences x KV heads) and `page_capacity` page "
          "entries per layer, for later batches (reset) and growth.")
      .def(
          "reset",
          [](Tables& t, std::vector<SeqId> seqs) {
            absl::Status status;
            {
              const InUse busy(*t.manager, "DeviceBlockTables.reset");
              nb::gil_scoped_release release;
              status = t.tables->Reset(seqs);
            }
            ThrowIfError(status);
          },
          nb::arg("seqs"),
          "The tables of another batch `seqs`, uploaded whole into the same arrays when "
          "they fit (`generation` stays), else into new ones. KeyError (NotFound) for an "
          "unknown sequence; on any error the tables stay those of the old batch.")
      .def(
          "refresh",
          [](Tables& t) {
            absl::Status status;
            {
              const InUse busy(*t.manager, "DeviceBlockTables.refresh");
              nb::gil_scoped_release release;
              status = t.tables->Refresh();
            }
            ThrowIfError(status);
          },
          "Brings every layer up to date with the manager: one upload and one scatter for "
          "the layers that only grew, a whole copy of each rebuilt one.")
      .def(
          "layer",
          [](nb::handle self, int32_t layer, std::optional<int32_t> rows) {
            const Tables& t = nb::cast<const Tables&>(self);
            if (layer < 0 || layer >= t.tables->num_layers()) {
              BadArgument(absl::StrCat("layer ", layer, " is out of range [0, ",
                                       t.tables->num_layers(), ")"));
            }
            const DeviceBlockTables::Layer l = t.tables->layer(layer);
            const int32_t n = rows.value_or(l.num_rows);
            if (n < l.num_rows || n > l.row_capacity) {
              BadArgument(absl::StrCat("rows ", n, " is outside [", l.num_rows, ", ",
                                       l.row_capacity, "]: the batch's rows up to the capacity"));
            }
            // Past the batch's rows, page_ids is read through its capacity: a
            // graph's launch keeps reading it as the tables grow in place.
            const int64_t page_entries =
                rows.has_value() ? l.page_capacity : l.num_page_entries;
            return std::make_tuple(DeviceInts(l.indptr, n + 1, t.device, self),
                                   DeviceInts(l.page_ids, static_cast<size_t>(page_entries),
                                              t.device, self),
                                   DeviceInts(l.lens, n, t.device, self));
          },
          nb::arg("layer"), nb::arg("rows") = nb::none(),
          "(indptr, page_ids, lens) of one layer as CUDA DLPack arrays, what decode_attention "
          "takes; valid while `generation` stays the same. With `rows`, padded to that many "
          "rows (empty past the batch's, up to row_capacity) and page_ids over its whole "
          "capacity, for a CUDA graph that outlives this batch.")
      .def_prop_ro("row_capacity",
                   [](const Tables& t) { return t.tables->layer(0).row_capacity; },
                   "Rows every layer's arrays hold (layer(l, rows) pads up to it).")
      .def_prop_ro("generation", [](const Tables& t) { return t.tables->generation(); },
                   "Changes whenever the device arrays move: views and captured CUDA graphs "
                   "taken before are stale.")
      .def_prop_ro("last_upload_bytes", [](const Tables& t) { return t.tables->last_upload_bytes(); })
      .def_prop_ro("last_refresh_rebuilt",
                   [](const Tables& t) { return t.tables->last_refresh_rebuilt(); });
}

}  // namespace headpage::bindings
