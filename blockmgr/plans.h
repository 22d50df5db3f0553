// SPDX-License-Identifier: Apache-2.0
// File: blockmgr/plans.h
//
// The data movement that BlockManager operations return. BlockManager never
// touches K/V bytes: it returns these plain structs, and a kernel backend
// (kernels::ref on the host, kernels::gpu on the device) executes them in stream
// order. Every index array is int32, ready to be copied to the device as is.
#ifndef HEADPAGE_BLOCKMGR_PLANS_H_
#define HEADPAGE_BLOCKMGR_PLANS_H_

#include <cstdint>
#include <vector>

namespace headpage {

// Sequence ids are assigned by BlockManager and never reused.
using SeqId = uint64_t;

// Whole-page copies (copy-on-write of shared tail pages). Execute them before
// the WriteKV of the same step.
struct PageCopies {
  std::vector<int32_t> src;
  std::vector<int32_t> dst;

  int32_t size() const { return static_cast<int32_t>(src.size()); }
  void clear() {
    src.clear();
    dst.clear();
  }
};

// Where Reserve() writes slot ids, so that a batch of sequences shares one slot
// mapping [batch_tokens][num_layers][num_kv_heads]: each token has one record of
// its slots in every stream, and slot (token t of this call, layer, kv_head)
// goes to
//   data[((first_token + t) * num_layers + layer) * num_kv_heads + kv_head].
// WriteKV reads one layer's [token][kv_head] from it with a token stride of
// num_layers * num_kv_heads (WriteKVArgs::slot_stride), matching its K/V input
// [token][kv_head][head_dim]. A token's record is contiguous, so a decode step
// writes 1 KiB in a row per Llama-3-8B sequence; layer-major layouts put one
// sequence's 256 writes a power-of-two stride apart, onto a few L1 sets, and
// were 3x slower (docs/performance.md).
struct SlotMappingOut {
  int32_t* data = nullptr;
  int64_t batch_tokens = 0;  // tokens of the whole batch
  int64_t first_token = 0;   // where this sequence's tokens start in the batch
};

struct ReservePlan {
  std::vector<int32_t> slot_mapping;  // [num_tokens][num_layers][num_kv_heads]
  PageCopies page_copies;
  int64_t first_position = 0;  // position of the first reserved token
};

// A compaction plan: one row per (sequence, layer, kv_head) stream that Evict()
// was called for, in call order and kv_head order. Row r moves the kept tokens of
// its stream (which ones: the keep sets, supplied separately, usually from the
// device) to slots 0..kept[r]-1 of its destination block table. See
// kernels/compact_args.h for the exact contract.
struct CompactionPlan {
  struct Row {
    SeqId seq = 0;
    int32_t layer = 0;
    int32_t kv_head = 0;
  };
  std::vector<Row> rows;
  std::vector<int32_t> src_indptr{0};  // [rows + 1]
  std::vector<int32_t> src_page_ids;
  std::vector<int32_t> src_lens;       // [rows]
  std::vector<int32_t> dst_indptr{0};  // [rows + 1]
  std::vector<int32_t> dst_page_ids;
  std::vector<int32_t> kept;           // [rows] tokens each row keeps
  std::vector<int32_t> keep_indptr{0};  // [rows + 1] exclusive prefix sum of kept: the
                                        // layout the keep sets must have
  std::vector<uint8_t> in_place;       // [rows] 1: destination is a prefix of the source

  int32_t num_rows() const { return static_cast<int32_t>(rows.size()); }
  // Empties the plan but keeps its memory, so that a plan reused for every
  // eviction allocates only while it grows.
  void Clear() {
    rows.clear();
    for (auto* v : {&src_page_ids, &src_lens, &dst_page_ids, &kept}) v->clear();
    for (auto* v : {&src_indptr, &dst_indptr, &keep_indptr}) v->assign(1, 0);
    in_place.clear();
  }
};

}  // namespace headpage

#endif  // HEADPAGE_BLOCKMGR_PLANS_H_
