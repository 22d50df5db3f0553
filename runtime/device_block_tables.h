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
// A serving engine whose batch of decoding sequences changes from step to step
// keeps one DeviceBlockTables and calls Reset() with the new batch: the tables
// are rebuilt into the same arrays while they fit. With a row capacity above
// the batch's rows, every layer also reads as a padded table (rows past the
// batch empty: length 0, no pages), so a CUDA graph captured for a padded
// batch size serves any batch up to it.
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

// What a DeviceBlockTables' device arrays hold at least, beyond what its first
// batch needs: rows of every layer (sequences x KV heads) and page entries of
// every layer.
struct DeviceBlockTablesCapacity {
  int32_t rows = 0;
  int64_t page_entries = 0;
};

class DeviceBlockTables {
 public:
  // One layer's device CSR.
  struct Layer {
    const int32_t* indptr = nullptr;    // [num_rows + 1]
    const int32_t* page_ids = nullptr;  // the rows' pages, with headroom (-1 unused)
    const int32_t* lens = nullptr;      // [num_rows]
    int32_t num_rows = 0;
    int64_t num_page_entries = 0;       // indptr[num_rows]: page_ids' length
    // Rows indptr and lens hold: those past num_rows are empty (indptr stays at
    // num_page_entries, lens 0), so a kernel may read up to row_capacity rows.
    int32_t row_capacity = 0;
    int64_t page_capacity = 0;  // entries page_ids holds (it grows in place up to this)
  };

  using Capacity = DeviceBlockTablesCapacity;

  // The tables of every layer of `seqs` (that order), built and uploaded once.
  // InvalidArgument for a null manager or headroom < 0, NotFound for an unknown
  // sequence, Unimplemented in a build without CUDA, ResourceExhausted when the
  // device has no memory for them. `capacity` sizes the arrays for later
  // batches (Reset) and growth; each layer gets at least its table's rows and
  // twice its page entries plus 16. InvalidArgument for a negative capacity.
  // REQUIRES: manager outlives the tables.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<DeviceBlockTables>> Create(
      const BlockManager* manager, absl::Span<const SeqId> seqs, int32_t headroom_pages,
      GpuStream stream, Capacity capacity = {});
  virtual ~DeviceBlockTables() = default;

  // The tables of another batch, `seqs` (that order), rebuilt and uploaded whole
  // into the same device arrays when every layer fits their capacity (the
  // generation stays), else into new ones (a new generation). NotFound for an
  // unknown sequence; on any error the tables stay those of the old batch.
  [[nodiscard]] virtual absl::Status Reset(absl::Span<const SeqId> seqs) = 0;

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
