// SPDX-License-Identifier: Apache-2.0
// File: kernels/table_checks.cu
//
// The checks of table_checks.h on the device: a team of warps per row, sized on
// the host from the arrays' average entries per row (so that one 128K-token
// stream is not checked by a single warp). Every lane of the team runs the row
// checks (the same few loads, served from cache), then the team's lanes split
// the row's entries; each lane records its first fault of the row and the
// fault word keeps the least of all (atomicMin on the packed order), which is
// the fault the CPU's loop finds first.
#include "kernels/cuda_common.cuh"
#include "kernels/table_checks.h"

namespace headpage::gpu::internal {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = kThreads / kWarpSize;
constexpr int64_t kMaxBlocks = 4096;
// Entries a lane checks per row, on average, before a row gets another warp.
constexpr int64_t kEntriesPerLane = 8;
constexpr int32_t kMaxTeamWarps = 64;

// Where this thread works: rows `row`, `row + RowStride()`, ...; within a row,
// entries `lane_in_team`, `lane_in_team + team_lanes`, ...
struct Team {
  int32_t first_row;
  int32_t row_stride;
  int32_t lane_in_team;
  int32_t team_lanes;
  bool leader;  // records the row checks' fault
};

__device__ __forceinline__ Team TeamOfThisThread(int32_t team_warps) {
  const int32_t warp = static_cast<int32_t>(blockIdx.x) * kWarpsPerBlock +
                       static_cast<int32_t>(threadIdx.x) / kWarpSize;
  const int32_t lane = static_cast<int32_t>(threadIdx.x) % kWarpSize;
  Team t;
  t.row_stride = static_cast<int32_t>(gridDim.x) * kWarpsPerBlock / team_warps;
  // Warps past the last whole team start past every row.
  t.first_row = warp < t.row_stride * team_warps ? warp / team_warps : INT32_MAX;
  t.lane_in_team = (warp % team_warps) * kWarpSize + lane;
  t.team_lanes = team_warps * kWarpSize;
  t.leader = t.lane_in_team == 0;
  return t;
}

__device__ __forceinline__ void Record(uint64_t* fault, int32_t row, int32_t entry,
                                       TableCheck check) {
  TableFault f;
  f.row = row;
  f.entry = entry;
  f.check = check;
  atomicMin(reinterpret_cast<unsigned long long*>(fault),
            static_cast<unsigned long long>(PackTableFault(f)));
}

// Runs the row checks of every row (row_check(row) -> TableCheck) and, on the
// rows that pass, entry_checks(row), which records its own faults.
template <typename RowCheck, typename EntryChecks>
__device__ __forceinline__ void CheckRows(const Team& team, int32_t num_rows, uint64_t* fault,
                                          RowCheck row_check, EntryChecks entry_checks) {
  for (int64_t next = team.first_row; next < num_rows; next += team.row_stride) {
    const auto row = static_cast<int32_t>(next);
    const TableCheck check = row_check(row);
    if (check != TableCheck::kNone) {
      if (team.leader) Record(fault, row, 0, check);
      continue;
    }
    entry_checks(row);
  }
}

// The thread's first entry i (of `count`, stepping by the team) failing `ok`.
template <typename Ok>
__device__ __forceinline__ int32_t FirstFailing(const Team& team, int64_t count, Ok ok) {
  for (int64_t i = team.lane_in_team; i < count; i += team.team_lanes) {
    if (!ok(static_cast<int32_t>(i))) return static_cast<int32_t>(i);
  }
  return -1;
}

__global__ void __launch_bounds__(kThreads)
    CheckTablesKernel(BlockTableArrays t, int32_t num_rows, int32_t page_size, int32_t num_pages,
                      int32_t team_warps, uint64_t* fault) {
  AllowDependentLaunch();  // DecodeAttention's pass waits for the fault word itself
  const Team team = TeamOfThisThread(team_warps);
  CheckRows(
      team, num_rows, fault, [&](int32_t row) { return CheckTableRow(t, row, page_size); },
      [&](int32_t row) {
        const int32_t i =
            FirstFailing(team, PagesFor(t.lens[row], page_size),
                         [&](int32_t e) { return PageInsidePool(t, row, e, num_pages); });
        if (i >= 0) Record(fault, row, i, TableCheck::kPageOutsidePool);
      });
}

__global__ void __launch_bounds__(kThreads)
    CheckCompactKernel(CompactPlanArrays p, int32_t num_rows, int32_t page_size, int32_t num_pages,
                       int32_t team_warps, uint64_t* fault) {
  const Team team = TeamOfThisThread(team_warps);
  CheckRows(
      team, num_rows, fault, [&](int32_t row) { return CheckCompactRow(p, row, page_size); },
      [&](int32_t row) {
        const int32_t kept = KeptOf(p, row);
        const int64_t src_pages = PagesFor(p.src.lens[row], page_size);
        const int64_t dst_pages = PagesFor(kept, page_size);
        // In TableCheck's order: a thread's first fault of an earlier kind
        // beats any of a later kind, so it stops there.
        int32_t i = FirstFailing(
            team, src_pages, [&](int32_t e) { return PageInsidePool(p.src, row, e, num_pages); });
        if (i >= 0) {
          Record(fault, row, i, TableCheck::kPageOutsidePool);
          return;
        }
        i = FirstFailing(team, dst_pages,
                         [&](int32_t e) { return DstPageInsidePool(p, row, e, num_pages); });
        if (i >= 0) {
          Record(fault, row, i, TableCheck::kDstPageOutsidePool);
          return;
        }
        i = FirstFailing(team, kept, [&](int32_t e) { return KeepEntryValid(p, row, e); });
        if (i >= 0) {
          Record(fault, row, i, TableCheck::kKeepEntry);
          return;
        }
        i = FirstFailing(team, dst_pages,
                         [&](int32_t e) { return InPlacePageMatches(p, row, e); });
        if (i >= 0) Record(fault, row, i, TableCheck::kInPlaceNotPrefix);
      });
}

// Warps per row, from the most entries of one kind a row has on average.
int32_t TeamWarps(int64_t entries, int32_t num_rows) {
  const int64_t per_row = CeilDiv(entries, num_rows > 0 ? num_rows : 1);
  const int64_t warps = CeilDiv(per_row, kWarpSize * kEntriesPerLane);
  return static_cast<int32_t>(warps < 1 ? 1 : (warps > kMaxTeamWarps ? kMaxTeamWarps : warps));
}

// Enough blocks for a team per row, up to kMaxBlocks (teams then take several
// rows each). The grid's warps need not be a multiple of the team's: the
// warps past the last whole team have nothing to do (TeamOfThisThread).
unsigned BlocksFor(int32_t num_rows, int32_t team_warps) {
  const int64_t warps = static_cast<int64_t>(num_rows > 0 ? num_rows : 1) * team_warps;
  const int64_t blocks = CeilDiv(warps, kWarpsPerBlock);
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

}  // namespace

LaunchResult LaunchCheckTables(const BlockTableArrays& table, int32_t num_rows, int32_t page_size,
                               int32_t num_pages, uint64_t* fault, GpuStream stream) {
  // Every byte 0xff: kNoTableFault.
  const cudaError_t reset = cudaMemsetAsync(fault, 0xff, sizeof(uint64_t), stream);
  if (reset != cudaSuccess) return CudaErrorResult(reset);
  if (num_rows == 0) return LaunchResult{};
  const int32_t team = TeamWarps(table.num_page_ids, num_rows);
  CheckTablesKernel<<<BlocksFor(num_rows, team), kThreads, 0, stream>>>(
      table, num_rows, page_size, num_pages, team, fault);
  return CheckLaunch();
}

LaunchResult LaunchCheckCompact(const CompactPlanArrays& plan, int32_t num_rows, int32_t page_size,
                                int32_t num_pages, uint64_t* fault, GpuStream stream) {
  const cudaError_t reset = cudaMemsetAsync(fault, 0xff, sizeof(uint64_t), stream);
  if (reset != cudaSuccess) return CudaErrorResult(reset);
  if (num_rows == 0) return LaunchResult{};
  int64_t entries = plan.num_keep;
  if (plan.src.num_page_ids > entries) entries = plan.src.num_page_ids;
  if (plan.num_dst_page_ids > entries) entries = plan.num_dst_page_ids;
  const int32_t team = TeamWarps(entries, num_rows);
  CheckCompactKernel<<<BlocksFor(num_rows, team), kThreads, 0, stream>>>(
      plan, num_rows, page_size, num_pages, team, fault);
  return CheckLaunch();
}

LaunchResult CopyTableFault(const uint64_t* fault, uint64_t* word, GpuStream stream) {
  const cudaError_t copied =
      cudaMemcpyAsync(word, fault, sizeof(uint64_t), cudaMemcpyDeviceToHost, stream);
  if (copied != cudaSuccess) return CudaErrorResult(copied);
  return CudaErrorResult(cudaStreamSynchronize(stream));
}

}  // namespace headpage::gpu::internal
