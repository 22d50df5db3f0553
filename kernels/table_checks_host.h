// SPDX-License-Identifier: Apache-2.0
// File: kernels/table_checks_host.h
//
// The host side of table_checks.h: the checks run over host arrays (what the
// CPU reference calls before it reads), the message a fault gives, and the
// GPU check that gates an op on the device. Host only (Abseil).
#ifndef HEADPAGE_KERNELS_TABLE_CHECKS_HOST_H_
#define HEADPAGE_KERNELS_TABLE_CHECKS_HOST_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/table_checks.h"

namespace headpage {

// The first fault of `num_rows` rows of host arrays, in the order
// table_checks.h states; ok() when there is none.
TableFault FirstTableFault(const BlockTableArrays& table, int32_t num_rows, int32_t page_size,
                           int32_t num_pages);
TableFault FirstCompactFault(const CompactPlanArrays& plan, int32_t num_rows, int32_t page_size,
                             int32_t num_pages);

// What a message about a fault names: the op, what it calls a row ("stream",
// "row"), and the array lengths the checks held it to.
struct TableFaultContext {
  const char* op = "";
  const char* row_noun = "row";
  int32_t num_page_ids = 0;
  int32_t num_dst_page_ids = 0;
  int32_t num_keep = 0;
  int32_t num_pages = 0;
};

// OutOfRange naming the op, the row, the array and the entry (never a value
// read from the arrays: a GPU fault is reported from the packed word alone);
// OK for no fault.
[[nodiscard]] absl::Status TableFaultStatus(const TableFault& fault, const TableFaultContext& c);

#if HEADPAGE_HAVE_CUDA
namespace gpu {

// Enqueues the checks of every row on `stream`: `fault` (device memory, one
// word) is set to kNoTableFault, then receives the first fault packed
// (PackTableFault). An op launched after it on the same stream with the same
// `fault` does nothing when a fault was found.
[[nodiscard]] absl::Status CheckTablesOnDevice(const BlockTableArrays& table, int32_t num_rows,
                                               int32_t page_size, int32_t num_pages,
                                               uint64_t* fault, GpuStream stream);
[[nodiscard]] absl::Status CheckCompactOnDevice(const CompactPlanArrays& plan, int32_t num_rows,
                                                int32_t page_size, int32_t num_pages,
                                                uint64_t* fault, GpuStream stream);

// Waits for `stream` and reads the fault word back.
[[nodiscard]] absl::StatusOr<TableFault> ReadTableFault(const uint64_t* fault, GpuStream stream);
}  // namespace gpu
#endif

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_TABLE_CHECKS_HOST_H_
