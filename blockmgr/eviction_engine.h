// SPDX-License-Identifier: Apache-2.0
// File: blockmgr/eviction_engine.h
//
// EvictionEngine runs a policy (blockmgr/policy/) against the block manager
// and a pool whose bytes live on the host: it gathers each stream's keys out of
// the pool (kernels::ref::GatherKV), scores them, allocates budgets, selects keep
// sets, has BlockManager::Evict() plan the compaction, executes the plan
// (kernels::ref::Compact) and releases the retired pages. Memory freed by a
// policy is really back in the pool when a call returns.
//
// It also remembers a score for every token it has seen (the policy's score at
// the last compression, plus the attention of every decode query given to
// ObserveDecode(), H2O-style), which H2O's streaming eviction, decode-time
// compression and the pool-wide budget (EnforcePoolBudget) work from. Tokens
// appended after the engine last saw a sequence have no score yet and are
// protected.
//
// Layering: a target of its own (headpage::eviction) over blockmgr, policy and
// kernels, so that BlockManager itself never depends on a kernel backend.
// Thread-compatible, like the manager it drives.
#ifndef HEADPAGE_BLOCKMGR_EVICTION_ENGINE_H_
#define HEADPAGE_BLOCKMGR_EVICTION_ENGINE_H_

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "blockmgr/block_manager.h"
#include "blockmgr/policy/budget.h"
#include "blockmgr/policy/scores.h"
#include "core/paged_kv.h"

namespace headpage {

// A policy: how tokens are scored and how many each stream keeps.
struct PolicyConfig {
  enum class Scorer : uint8_t { kNone, kSnapKV, kH2O, kRecency, kTova, kKeyNorm, kRandom };
  enum class Allocator : uint8_t { kNone, kUniform, kPyramid, kAda, kAdaPyramid, kDBudget };

  std::string name;
  Scorer scorer = Scorer::kSnapKV;
  Allocator allocator = Allocator::kUniform;
  int32_t window = 32;  // observation window: the last `window` tokens, always kept
  int32_t sinks = 0;    // attention sinks (positions < sinks), always kept
  policy::SnapKVOptions snapkv;
  policy::GroupReduce reduce = policy::GroupReduce::kMean;  // H2O's group reduction
  policy::AdaOptions ada;
  double pyramid_beta = 20.0;
  double dbudget_threshold = 0.05;
  bool dbudget_by_position = false;
  uint64_t seed = 0;  // the random scorer's
};

// The named policies of the simulator and the command line, with the papers'
// defaults: full, uniform-snapkv, pyramid, ada-snapkv, ada-pyramid, dbudget, h2o,
// streamingllm, tova, knorm, random. InvalidArgument naming the known ones.
[[nodiscard]] absl::StatusOr<PolicyConfig> PolicyByName(absl::string_view name);
// InvalidArgument for options out of range (window < 0, alpha outside [0, 1],
// beta <= 0, threshold < 0, an even pooling kernel, ...).
[[nodiscard]] absl::Status Validate(const PolicyConfig& config);

// How many tokens a KV head keeps on average: a count per head that includes
// the window (the papers' 128, 256, 512, 1024), or a fraction of the prompt.
struct Budget {
  enum class Kind : uint8_t { kTokensPerHead, kFraction };
  Kind kind = Kind::kFraction;
  double value = 1.0;

  // "128" or "20%". InvalidArgument for anything else, 0, negative, > 100%.
  [[nodiscard]] static absl::StatusOr<Budget> Parse(absl::string_view text);
  static Budget TokensPerHead(int32_t tokens) { return {Kind::kTokensPerHead, double(tokens)}; }
  static Budget Fraction(double f) { return {Kind::kFraction, f}; }
  // Tokens per head for a prompt of prompt_len tokens (at least 1).
  int32_t CapacityFor(int32_t prompt_len) const;
  std::string ToString() const;
};

// One layer's queries for one sequence, dense, q-head-major, so that the group
// of KV head h is the contiguous block of q heads [h * G, (h + 1) * G).
struct LayerQueries {
  const void* data = nullptr;          // [num_q_heads][num_queries][head_dim] of dtype
  const int32_t* positions = nullptr;  // [num_queries]
  int32_t num_queries = 0;
  DType dtype = DType::kF32;
};

struct CompressResult {
  int64_t tokens_before = 0;  // sum of the sequence's stream lengths
  int64_t tokens_after = 0;
  int64_t pages_freed = 0;    // pool pages back on the free list
  std::vector<int32_t> kept;  // [num_layers][num_kv_heads] stream lengths after
};

// Decode-time compression, as kvpress's DecodingPress: every `interval` decode
// steps, compress every stream to `target` tokens, scoring with the queries of
// the last `window` decode steps.
struct DecodeSchedule {
  int32_t interval = 0;  // 0: never
  int32_t target = 0;    // tokens per head after each compression
  int32_t window = 32;
};

class EvictionEngine {
 public:
  // InvalidArgument if manager is null or the cache view does not match the
  // manager's geometry. REQUIRES: both outlive the engine, `cache` is host memory.
  [[nodiscard]] static absl::StatusOr<EvictionEngine> Create(BlockManager* manager,
                                                             const PagedKV& cache);

  // Compresses `seq` once, at the end of its prefill: queries[l] are layer l's
  // observation window (SnapKV & co.: the last `window` prompt queries; H2O: every
  // prompt query; TOVA, DBudgetKV: the last query is read from them). After it
  // returns, each stream holds exactly the tokens the policy chose, in position
  // order, and the pages it gave up are free.
  // Errors, changing nothing: NotFound (seq), InvalidArgument (queries for the
  // wrong number of layers, no queries, a bad policy or budget, a window longer
  // than the prompt), FailedPrecondition (TOVA on a layer whose heads hold
  // different tokens). ResourceExhausted when the pool cannot even compact in
  // place (streams shared with a fork): each layer is compacted and its pages
  // released before the next, which keeps the extra memory to one layer's fresh
  // pages, so the layers before the failing one stay compressed.
  [[nodiscard]] absl::StatusOr<CompressResult> Compress(SeqId seq, const PolicyConfig& config,
                                                        const Budget& budget,
                                                        absl::Span<const LayerQueries> queries);

  // One decode step of `seq` has been written (Reserve + WriteKV): `queries[l]`
  // holds layer l's new query (num_queries == 1). Accumulates its attention into
  // the token scores (H2O), then applies the policy's decode-time eviction: H2O
  // evicts the lowest-scoring non-recent tokens of each stream longer than its
  // capacity at Compress (`capacity` below, 0 = none); `schedule` compresses
  // every `interval` steps. Same errors as Compress.
  [[nodiscard]] absl::Status ObserveDecode(SeqId seq, const PolicyConfig& config,
                                           absl::Span<const LayerQueries> queries,
                                           const DecodeSchedule& schedule = DecodeSchedule());

  // The pool-wide budget: evicts the globally least important tokens of every
  // sequence the engine has scores for (policy::GlobalKept, one threshold over
  // all of them), keeping at least `floor_tokens` in every stream, and its last
  // `protect_recent` tokens, until pages_to_free pages are back in the pool or
  // the floors stop it. A stream's negative scores (knorm's) are shifted to start
  // at zero first. Returns the pages freed. InvalidArgument for negative arguments.
  [[nodiscard]] absl::StatusOr<int64_t> EnforcePoolBudget(int64_t pages_to_free,
                                                          int32_t floor_tokens = 0,
                                                          int32_t protect_recent = 0);

  // Forgets what the engine keeps about `seq` (call when the sequence is freed;
  // state of sequences the manager no longer has is also dropped lazily).
  void Forget(SeqId seq) { states_.erase(seq); }

 private:
  // What the engine keeps per sequence.
  struct SeqState {
    std::vector<std::vector<float>> scores;  // [stream] one per scored slot (a prefix)
    std::vector<int32_t> capacity;           // [stream] H2O's streaming budget; 0 = none
    int64_t decode_steps = 0;
    // The last DecodeSchedule::window decode queries of each layer,
    // [layer][step][num_q_heads * head_dim], oldest first.
    std::vector<std::vector<std::vector<float>>> recent_queries;
    std::vector<int32_t> recent_positions;
  };

  EvictionEngine(BlockManager* manager, const PagedKV& cache);

  // Dense keys and positions of one layer's streams of `seq`.
  struct LayerData {
    std::vector<char> keys;           // [sum lens][head_dim] of the cache dtype, raw
    std::vector<int32_t> positions;   // [sum lens]
    std::vector<int32_t> offsets;     // [kv_heads + 1] into both
  };
  absl::Status GatherLayer(SeqId seq, int32_t layer, LayerData* out) const;
  absl::Status ValidateQueries(absl::Span<const LayerQueries> queries, bool one_each) const;
  // Evicts to the given keep sets ([layer][kv_head] order over `layers`), runs the
  // compaction on the host pool and releases the retired pages; moves the stored
  // scores along.
  absl::Status ApplyKeepSets(SeqId seq, absl::Span<const int32_t> layers,
                             const std::vector<std::vector<int32_t>>& keep_sets);
  SeqState& StateFor(SeqId seq);

  BlockManager* manager_;
  PagedKV cache_;
  absl::flat_hash_map<SeqId, SeqState> states_;
};

}  // namespace headpage

#endif  // HEADPAGE_BLOCKMGR_EVICTION_ENGINE_H_
