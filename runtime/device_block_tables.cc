// SPDX-License-Identifier: Apache-2.0
#include "runtime/device_block_tables.h"

#include <algorithm>
#include <cstring>
#include <limits>

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
  int64_t indptr = 0;
  int64_t page_ids = 0;
  int64_t page_capacity = 0;  // entries page_ids may grow to without moving
  int64_t lens = 0;
};

class DeviceBlockTablesImpl final : public DeviceBlockTables {
 public:
  DeviceBlockTablesImpl(const BlockManager* manager, GpuStream stream)
      : manager_(manager), stream_(stream) {}
  ~DeviceBlockTablesImpl() override {
    if (uploaded_ != nullptr) cudaEventSynchronize(uploaded_);
    if (uploaded_ != nullptr) cudaEventDestroy(uploaded_);
    if (device_ != nullptr) cudaFree(device_);
    if (pinned_ != nullptr) cudaFreeHost(pinned_);
  }

  absl::Status Init(absl::Span<const SeqId> seqs, int32_t headroom_pages) {
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaEventCreateWithFlags(&uploaded_, cudaEventDisableTiming),
                                        "creating an event"));
    const int32_t layers = manager_->geometry().num_layers;
    for (int32_t l = 0; l < layers; ++l) {
      HEADPAGE_ASSIGN_OR_RETURN(BlockTableCsr table,
                                manager_->BlockTable(l, seqs, BlockTableOptions{headroom_pages}));
      host_.push_back(std::move(table));
    }
    return Reallocate();
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
        whole += t.indptr().size() + t.page_ids().size() + t.lens().size();
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
    for (const int32_t l : rebuilt) {
      const BlockTableCsr& t = host_[l];
      const Region& r = regions_[l];
      for (const auto& [from, at] : {std::pair{t.indptr(), r.indptr}, std::pair{t.page_ids(), r.page_ids},
                                     std::pair{t.lens(), r.lens}}) {
        if (from.empty()) continue;
        std::memcpy(p, from.data(), sizeof(int32_t) * from.size());
        HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(device_ + at, p, sizeof(int32_t) * from.size(),
                                                            cudaMemcpyHostToDevice, stream_),
                                            "uploading a rebuilt table"));
        p += from.size();
        last_upload_bytes_ += static_cast<int64_t>(sizeof(int32_t) * from.size());
      }
    }
    HEADPAGE_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(uploaded_, stream_), "recording"));
    stale_ = false;
    return absl::OkStatus();
  }

  Layer layer(int32_t l) const override {
    const Region& r = regions_[l];
    return Layer{device_ + r.indptr, device_ + r.page_ids, device_ + r.lens, host_[l].num_rows(),
                 static_cast<int64_t>(host_[l].page_ids().size())};
  }
  int32_t num_layers() const override { return static_cast<int32_t>(host_.size()); }
  uint64_t generation() const override { return generation_; }
  int64_t last_upload_bytes() const override { return last_upload_bytes_; }
  bool last_refresh_rebuilt() const override { return last_rebuilt_; }

 private:
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

  // Lays every layer out anew with twice its page entries of capacity (and a
  // scratch area for a step's pairs: two ints per entry and per row), uploads
  // the whole image and moves the tables there: a new generation.
  absl::Status Reallocate() {
    std::vector<Region> regions(host_.size());
    int64_t at = 0, pair_capacity = 0;
    for (size_t l = 0; l < host_.size(); ++l) {
      const BlockTableCsr& t = host_[l];
      Region& r = regions[l];
      r.indptr = at;
      at += static_cast<int64_t>(t.indptr().size());
      r.page_ids = at;
      r.page_capacity = 2 * static_cast<int64_t>(t.page_ids().size()) + 16;
      at += r.page_capacity;
      r.lens = at;
      at += t.num_rows();
      pair_capacity += r.page_capacity + t.num_rows();
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
    for (size_t l = 0; l < host_.size(); ++l) {
      const BlockTableCsr& t = host_[l];
      std::copy(t.indptr().begin(), t.indptr().end(), pinned_ + regions[l].indptr);
      std::copy(t.page_ids().begin(), t.page_ids().end(), pinned_ + regions[l].page_ids);
      std::copy(t.lens().begin(), t.lens().end(), pinned_ + regions[l].lens);
    }
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
    GpuStream stream) {
  if (manager == nullptr || headroom_pages < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DeviceBlockTables: needs a block manager and headroom_pages >= 0, got ", headroom_pages));
  }
  auto tables = std::make_unique<DeviceBlockTablesImpl>(manager, stream);
  HEADPAGE_RETURN_IF_ERROR(tables->Init(seqs, headroom_pages));
  return std::unique_ptr<DeviceBlockTables>(std::move(tables));
}

#else  // !HEADPAGE_HAVE_CUDA

absl::StatusOr<std::unique_ptr<DeviceBlockTables>> DeviceBlockTables::Create(
    const BlockManager*, absl::Span<const SeqId>, int32_t, GpuStream) {
  return absl::UnimplementedError("DeviceBlockTables: this build of headpage has no CUDA");
}

#endif

}  // namespace headpage
