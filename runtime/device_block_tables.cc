// SPDX-License-Identifier: Apache-2.0
#include "runtime/device_block_tables.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status.h"

#if HEADPAGE_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "kernels/scatter.h"
#endif

namespace headpage {

#if HEADPAGE_HAVE_CUDA
namespace {

absl::Status CudaStatus(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();  // an allocation failure is not sticky: clear it
  const auto code = error == cudaErrorMemoryAllocation ? absl::StatusCode::kResourceExhausted
                                                       : absl::StatusCode::kInternal;
  return absl::Status(code, absl::StrCat("DeviceBlockTables: ", what, ": ",
                                         cudaGetErrorName(error)));
}

// Where one layer's arrays lie in the device image, in int32 elements.
struct Region {
  int64_t indptr = 0;         // row_capacity + 1 entries
  int64_t page_ids = 0;
  int64_t page_capacity = 0;  // entries page_ids may grow to without moving
  int64_t lens = 0;           // row_capacity entries
  int32_t row_capacity = 0;
};

class DeviceBlockTablesImpl final : public DeviceBlockTables {
 public:
  DeviceBlockTablesImpl(const BlockManager* manager, GpuStream stream, int32_t headroom_pages,
                        Capacity capacity)
      : manager_(manager), stream_(stream), headroom_pages_(headroom_pages), capacity_(capacity) {}
  ~DeviceBlockTablesImpl() override {
    if (uploaded_ != nullptr) cudaEventSynchronize(uploaded_);
    if (uploaded_ != nullptr) cudaEventDestroy(uploaded_);
    if (device_ != nullptr) cudaFree(device_);
    if (pinned_ != nullptr) cudaFreeHost(pinned_);
  }

  absl::Status Init(absl::Span<const SeqId> seqs) {
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaEventCreateWithFlags(&uploaded_, cudaEventDisableTiming),
                                        "creating an event"));
    HEADPAGE_ASSIGN_OR_RETURN(host_, HostTables(seqs));
    return Reallocate();
  }

  absl::Status Reset(absl::Span<const SeqId> seqs) override {
    HEADPAGE_ASSIGN_OR_RETURN(std::vector<BlockTableCsr> fresh, HostTables(seqs));
    // The last upload reads the pinned memory this one rewrites.
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaEventSynchronize(uploaded_), "the last upload"));
    bool fits = true;
    for (size_t l = 0; l < fresh.size(); ++l) {
      fits &= fresh[l].num_rows() <= regions_[l].row_capacity &&
              static_cast<int64_t>(fresh[l].page_ids().size()) <= regions_[l].page_capacity;
    }
    std::vector<BlockTableCsr> old = std::exchange(host_, std::move(fresh));
    absl::Status status;
    if (!fits) {
      // New arrays; on failure the old ones still hold the old batch.
      status = Reallocate();
    } else {
      // One copy of the whole image into the same arrays: kernels enqueued
      // before on the stream read the old batch, those after the new one.
      status = ReservePinned(static_cast<size_t>(scratch_));
      if (status.ok()) {
        for (size_t l = 0; l < host_.size(); ++l) WriteImage(host_[l], regions_[l], pinned_);
        status = CudaStatus(cudaMemcpyAsync(device_, pinned_, sizeof(int32_t) * scratch_,
                                            cudaMemcpyHostToDevice, stream_),
                            "uploading the tables");
      }
      if (status.ok()) {
        last_upload_bytes_ = static_cast<int64_t>(sizeof(int32_t) * scratch_);
        status = CudaStatus(cudaEventRecord(uploaded_, stream_), "recording");
      }
    }
    if (!status.ok()) {
      host_ = std::move(old);  // the device arrays were not (knowingly) changed
      return status;
    }
    last_rebuilt_ = true;
    stale_ = false;
    return absl::OkStatus();
  }

  absl::Status Refresh() override {
    // The last refresh's upload reads the pinned memory this one rewrites.
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaEventSynchronize(uploaded_), "the last upload"));
    last_upload_bytes_ = 0;
    last_rebuilt_ = false;
    // The host tables hand out their changes once: until this refresh is fully
    // enqueued, the device copy is stale, and a failed refresh leaves it so. The
    // next one then uploads everything anew.
    const bool was_stale = stale_;
    stale_ = true;
    std::vector<int32_t> rebuilt;
    bool outgrown = was_stale;
    for (int32_t l = 0; l < num_layers(); ++l) {
      HEADPAGE_RETURN_IF_ERROR(manager_->RefreshBlockTable(&host_[l]));
      if (!host_[l].rebuilt()) continue;
      rebuilt.push_back(l);
      outgrown |= static_cast<int64_t>(host_[l].page_ids().size()) > regions_[l].page_capacity;
    }
    last_rebuilt_ = !rebuilt.empty();
    if (outgrown) {
      HEADPAGE_RETURN_IF_ERROR(Reallocate());
      stale_ = false;
      return absl::OkStatus();
    }

    // The pairs: changed page entries and every length of the layers that only
    // grew; then the rebuilt layers' arrays, each copied whole.
    size_t pairs = 0, whole = 0;
    for (int32_t l = 0; l < num_layers(); ++l) {
      const BlockTableCsr& t = host_[l];
      if (t.rebuilt()) {
        whole += regions_[l].row_capacity + 1 + t.page_ids().size() + t.lens().size();
      } else {
        pairs += t.changed_entries().size() + t.lens().size();
      }
    }
    HEADPAGE_RETURN_IF_ERROR(ReservePinned(2 * pairs + whole));
    int32_t* p = pinned_;
    for (int32_t l = 0; l < num_layers(); ++l) {
      const BlockTableCsr& t = host_[l];
      if (t.rebuilt()) continue;
      for (const int32_t e : t.changed_entries()) {
        *p++ = static_cast<int32_t>(regions_[l].page_ids + e);
        *p++ = t.page_ids()[e];
      }
      for (int32_t r = 0; r < t.num_rows(); ++r) {
        *p++ = static_cast<int32_t>(regions_[l].lens + r);
        *p++ = t.lens()[r];
      }
    }
    if (pairs > 0) {
      HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(device_ + scratch_, pinned_,
                                                          sizeof(int32_t) * 2 * pairs,
                                                          cudaMemcpyHostToDevice, stream_),
                                          "uploading the changes"));
      ScatterInt32Args scatter;
      scatter.dst = device_;
      scatter.dst_size = scratch_;
      scatter.pairs = device_ + scratch_;
      scatter.count = static_cast<int32_t>(pairs);
      HEADPAGE_RETURN_IF_ERROR(gpu::ScatterInt32(scatter, stream_));
      last_upload_bytes_ += static_cast<int64_t>(sizeof(int32_t) * 2 * pairs);
    }
    // Each rebuilt layer's arrays, staged in the pinned buffer and copied whole;
    // indptr with its padding rows, since the table's page count may have changed.
    auto upload = [&](const int32_t* staged, size_t n, int64_t at) {
      last_upload_bytes_ += static_cast<int64_t>(sizeof(int32_t) * n);
      return CudaStatus(cudaMemcpyAsync(device_ + at, staged, sizeof(int32_t) * n,
                                        cudaMemcpyHostToDevice, stream_),
                        "uploading a rebuilt table");
    };
    for (const int32_t l : rebuilt) {
      const BlockTableCsr& t = host_[l];
      const Region& r = regions_[l];
      const size_t indptr_size = static_cast<size_t>(r.row_capacity) + 1;
      std::copy(t.indptr().begin(), t.indptr().end(), p);
      std::fill(p + t.indptr().size(), p + indptr_size, t.indptr().back());
      HEADPAGE_RETURN_IF_ERROR(upload(p, indptr_size, r.indptr));
      p += indptr_size;
      for (const auto& [from, at] : {std::pair{t.page_ids(), r.page_ids}, std::pair{t.lens(), r.lens}}) {
        if (from.empty()) continue;
        std::copy(from.begin(), from.end(), p);
        HEADPAGE_RETURN_IF_ERROR(upload(p, from.size(), at));
        p += from.size();
      }
    }
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(uploaded_, stream_), "recording"));
    stale_ = false;
    return absl::OkStatus();
  }

  Layer layer(int32_t l) const override {
    const Region& r = regions_[l];
    return Layer{device_ + r.indptr, device_ + r.page_ids, device_ + r.lens, host_[l].num_rows(),
                 static_cast<int64_t>(host_[l].page_ids().size()), r.row_capacity,
                 r.page_capacity};
  }
  int32_t num_layers() const override { return static_cast<int32_t>(host_.size()); }
  uint64_t generation() const override { return generation_; }
  int64_t last_upload_bytes() const override { return last_upload_bytes_; }
  bool last_refresh_rebuilt() const override { return last_rebuilt_; }

 private:
  absl::StatusOr<std::vector<BlockTableCsr>> HostTables(absl::Span<const SeqId> seqs) const {
    std::vector<BlockTableCsr> tables;
    const int32_t layers = manager_->geometry().num_layers;
    for (int32_t l = 0; l < layers; ++l) {
      HEADPAGE_ASSIGN_OR_RETURN(BlockTableCsr table,
                                manager_->BlockTable(l, seqs, BlockTableOptions{headroom_pages_}));
      tables.push_back(std::move(table));
    }
    return tables;
  }

  // One layer's arrays at their place in `image`, its rows past the table's
  // empty (indptr flat, length 0).
  static void WriteImage(const BlockTableCsr& t, const Region& r, int32_t* image) {
    std::copy(t.indptr().begin(), t.indptr().end(), image + r.indptr);
    std::fill(image + r.indptr + t.indptr().size(), image + r.indptr + r.row_capacity + 1,
              t.indptr().back());
    std::copy(t.page_ids().begin(), t.page_ids().end(), image + r.page_ids);
    std::copy(t.lens().begin(), t.lens().end(), image + r.lens);
    std::fill(image + r.lens + t.lens().size(), image + r.lens + r.row_capacity, 0);
  }

  absl::Status ReservePinned(size_t ints) {
    if (ints <= pinned_ints_) return absl::OkStatus();
    if (pinned_ != nullptr) cudaFreeHost(pinned_);
    pinned_ = nullptr;
    pinned_ints_ = 0;
    void* p = nullptr;
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaMallocHost(&p, sizeof(int32_t) * ints), "pinned memory"));
    pinned_ = static_cast<int32_t*>(p);
    pinned_ints_ = ints;
    return absl::OkStatus();
  }

  // Lays every layer out anew with twice its page entries of capacity, at
  // least the capacity asked for and what the arrays held before (and a
  // scratch area for a step's pairs: two ints per entry and per row), uploads
  // the whole image and moves the tables there: a new generation.
  absl::Status Reallocate() {
    std::vector<Region> regions(host_.size());
    int64_t at = 0, pair_capacity = 0;
    for (size_t l = 0; l < host_.size(); ++l) {
      const BlockTableCsr& t = host_[l];
      const Region before = l < regions_.size() ? regions_[l] : Region{};
      Region& r = regions[l];
      r.row_capacity = std::max({t.num_rows(), capacity_.rows, before.row_capacity});
      r.indptr = at;
      at += r.row_capacity + 1;
      r.page_ids = at;
      r.page_capacity = std::max({2 * static_cast<int64_t>(t.page_ids().size()) + 16,
                                  capacity_.page_entries, before.page_capacity});
      at += r.page_capacity;
      r.lens = at;
      at += r.row_capacity;
      pair_capacity += r.page_capacity + r.row_capacity;
    }
    at = (at + 1) / 2 * 2;  // the pairs are read as 8-byte vectors
    const int64_t scratch = at;
    const int64_t total = at + 2 * pair_capacity;
    if (scratch > std::numeric_limits<int32_t>::max()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "DeviceBlockTables: ", scratch, " table entries; int32 indices address at most 2^31 - 1"));
    }
    HEADPAGE_RETURN_IF_ERROR(ReservePinned(static_cast<size_t>(scratch)));
    std::fill(pinned_, pinned_ + scratch, -1);
    for (size_t l = 0; l < host_.size(); ++l) WriteImage(host_[l], regions[l], pinned_);
    void* fresh = nullptr;
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaMalloc(&fresh, sizeof(int32_t) * total), "device tables"));
    const absl::Status uploaded = CudaStatus(
        cudaMemcpyAsync(fresh, pinned_, sizeof(int32_t) * scratch, cudaMemcpyHostToDevice, stream_),
        "uploading the tables");
    if (!uploaded.ok()) {
      cudaFree(fresh);
      return uploaded;
    }
    // Kernels enqueued before may still read the old arrays: free them after.
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream_), "synchronizing"));
    if (device_ != nullptr) cudaFree(device_);
    device_ = static_cast<int32_t*>(fresh);
    regions_ = std::move(regions);
    scratch_ = scratch;
    ++generation_;
    last_upload_bytes_ = static_cast<int64_t>(sizeof(int32_t) * scratch);
    return CudaStatus(cudaEventRecord(uploaded_, stream_), "recording");
  }

  const BlockManager* manager_;
  GpuStream stream_;
  int32_t headroom_pages_;
  Capacity capacity_;
  std::vector<BlockTableCsr> host_;
  std::vector<Region> regions_;
  int32_t* device_ = nullptr;
  int64_t scratch_ = 0;  // where the pairs land, after the last layer
  int32_t* pinned_ = nullptr;
  size_t pinned_ints_ = 0;
  cudaEvent_t uploaded_ = nullptr;
  uint64_t generation_ = 0;
  int64_t last_upload_bytes_ = 0;
  bool last_rebuilt_ = false;
  bool stale_ = false;  // a refresh failed after the host tables moved on
};

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceBlockTables>> DeviceBlockTables::Create(
    const BlockManager* manager, absl::Span<const SeqId> seqs, int32_t headroom_pages,
    GpuStream stream, Capacity capacity) {
  if (manager == nullptr || headroom_pages < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DeviceBlockTables: needs a block manager and headroom_pages >= 0, got ", headroom_pages));
  }
  if (capacity.rows < 0 || capacity.page_entries < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("DeviceBlockTables: capacity of ", capacity.rows, " rows and ",
                     capacity.page_entries, " page entries; want both >= 0"));
  }
  auto tables = std::make_unique<DeviceBlockTablesImpl>(manager, stream, headroom_pages, capacity);
  HEADPAGE_RETURN_IF_ERROR(tables->Init(seqs));
  return std::unique_ptr<DeviceBlockTables>(std::move(tables));
}

#else  // !HEADPAGE_HAVE_CUDA

absl::StatusOr<std::unique_ptr<DeviceBlockTables>> DeviceBlockTables::Create(
    const BlockManager*, absl::Span<const SeqId>, int32_t, GpuStream, Capacity) {
  return absl::UnimplementedError("DeviceBlockTables: this build of headpage has no CUDA");
}

#endif

}  // namespace headpage
