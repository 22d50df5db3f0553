// SPDX-License-Identifier: Apache-2.0
// File: runtime/device_block_tables.h
//
// DeviceBlockTables keeps every layer's block tables for one batch of
// sequences resident in device memory, in the CSR layout DecodeAttention reads
// (BlockManager::BlockTable: rows seq-major, kv-head-minor), and brings them up
// to date from what each step changed instead of rebuilding them.
//
// Each layer's host table is a BlockTableCsr with headroom (spare page entries
// per row, block_table.h), refreshed by BlockManager::RefreshBlockTable. A
// decode step appends at most one page per stream, which lands in the row's
// headroom: Refresh() then packs, for every layer, the changed page entries and
// every row's length into one pinned buffer as (index, value) pairs, sends it
// with one copy and applies it with one ScatterInt32 launch. A layer whose
// table was rebuilt (after an eviction, or a row that outgrew its headroom) is
// copied whole instead; the device arrays keep their addresses while the
// rebuilt table fits the capacity they were allocated with, so a CUDA graph
// that captured them stays valid. generation() changes when they move.
//
// Everything is enqueued on the stream given at creation, so kernels enqueued
// after Refresh() on that stream read the new tables. Thread-compatible.
#ifndef HEADPAGE_RUNTIME_DEVICE_BLOCK_TABLES_H_
#define HEADPAGE_RUNTIME_DEVICE_BLOCK_TABLES_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "blockmgr/block_manager.h"
#include "kernels/gpu_launch.h"

namespace headpage {

class DeviceBlockTables {
 public:
  // One layer's device CSR.
  struct Layer {
    const int32_t* indptr = nullptr;    // [num_rows + 1]
    const int32_t* page_ids = nullptr;  // the rows' pages, with headroom (-1 unused)
    const int32_t* lens = nullptr;      // [num_rows]
    int32_t num_rows = 0;
    int64_t num_page_entries = 0;       // indptr[num_rows]: page_ids' length
  };

  // The tables of every layer of `seqs` (that order), built and uploaded once.
  // InvalidArgument for a null manager or headroom < 0, NotFound for an unknown
  // sequence, Unimplemented in a build without CUDA, ResourceExhausted when the
  // device has no memory for them. REQUIRES: manager outlives the tables.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<DeviceBlockTables>> Create(
      const BlockManager* manager, absl::Span<const SeqId> seqs, int32_t headroom_pages,
      GpuStream stream);
  virtual ~DeviceBlockTables() = default;

  // Brings every layer's device copy up to date with the manager (one packed
  // upload and one scatter for the layers that only grew; a whole copy of each
  // rebuilt layer). Errors leave the tables as they were before the call, as
  // far as the host can tell; a CUDA error is sticky and Internal.
  [[nodiscard]] virtual absl::Status Refresh() = 0;

  virtual Layer layer(int32_t layer) const = 0;
  virtual int32_t num_layers() const = 0;
  // Changes whenever the device arrays move (a rebuilt table outgrew them).
  virtual uint64_t generation() const = 0;
  // Bytes uploaded by the last Refresh(), and whether it copied a layer whole.
  virtual int64_t last_upload_bytes() const = 0;
  virtual bool last_refresh_rebuilt() const = 0;
};

}  // namespace headpage

#endif  // HEADPAGE_RUNTIME_DEVICE_BLOCK_TABLES_H_
