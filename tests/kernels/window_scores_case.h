// SPDX-License-Identifier: Apache-2.0
// File: tests/kernels/window_scores_case.h
//
// A random WindowScores problem on top of the shared PagedCase: the pool (one
// stream per (sequence, kv head), seq-major), window queries, their positions
// near the end of each sequence's streams (so that the causal mask, keys past
// some queries and queries that see nothing all occur), and tight score
// offsets. The CPU test checks ref:: on it against policy::SnapKVScores; the GPU
// test uploads the same bytes and checks gpu:: against ref::.
#ifndef HEADPAGE_TESTS_KERNELS_WINDOW_SCORES_CASE_H_
#define HEADPAGE_TESTS_KERNELS_WINDOW_SCORES_CASE_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/window_scores_args.h"
#include "tests/kernels/paged_case.h"

namespace headpage::testing {

struct WindowScoresShape {
  int32_t num_seqs = 1;
  int32_t num_q_heads = 4;
  int32_t num_kv_heads = 1;
  int32_t window = 8;
  float query_scale = 3.0f;  // queries uniform in [-scale, scale]: peaked softmax rows
};

class WindowScoresCase {
 public:
  // spec.lens holds num_seqs * num_kv_heads lengths, seq-major.
  WindowScoresCase(const PagedCaseSpec& spec, const WindowScoresShape& shape, uint64_t seed)
      : pool_(spec, seed), shape_(shape) {
    std::mt19937_64& rng = pool_.rng();
    const size_t q_elements = static_cast<size_t>(shape.num_seqs) * shape.num_q_heads *
                              shape.window * spec.head_dim;
    queries_ = RandomRows(q_elements, spec.dtype, shape.query_scale, rng);
    score_offsets_.push_back(0);
    for (int32_t len : spec.lens) {
      score_offsets_.push_back(score_offsets_.back() + len);
      max_len_ = std::max(max_len_, len);
    }
    for (int32_t s = 0; s < shape.num_seqs; ++s) {
      int32_t last = 0;  // the highest key position of the sequence's streams
      for (int32_t h = 0; h < shape.num_kv_heads; ++h) {
        const size_t stream = static_cast<size_t>(s) * shape.num_kv_heads + h;
        if (spec.lens[stream] > 0) {
          last = std::max(last, pool_.Position(stream, spec.lens[stream] - 1));
        }
      }
      std::uniform_int_distribution<int32_t> near_end(last - 3 * shape.window, last + 2);
      for (int32_t w = 0; w < shape.window; ++w) query_positions_.push_back(near_end(rng));
    }
  }

  // Arguments over the host arrays (the caller sets the options and `scores`).
  WindowScoresArgs HostArgs() {
    WindowScoresArgs args;
    args.cache = pool_.view();
    args.num_seqs = shape_.num_seqs;
    args.num_q_heads = shape_.num_q_heads;
    args.num_kv_heads = shape_.num_kv_heads;
    args.window = shape_.window;
    args.queries = queries_.data();
    args.query_positions = query_positions_.data();
    args.indptr = pool_.indptr().data();
    args.page_ids = pool_.page_ids().data();
    args.num_page_ids = static_cast<int32_t>(pool_.page_ids().size());
    args.lens = pool_.lens().data();
    args.score_offsets = score_offsets_.data();
    args.max_len = max_len_;
    args.num_scores = score_offsets_.back();
    args.sm_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(pool_.spec().head_dim)));
    return args;
  }

  PagedCase& pool() { return pool_; }
  const WindowScoresShape& shape() const { return shape_; }
  const std::vector<uint8_t>& queries() const { return queries_; }
  const std::vector<int32_t>& query_positions() const { return query_positions_; }
  const std::vector<int32_t>& score_offsets() const { return score_offsets_; }
  int32_t num_scores() const { return score_offsets_.back(); }

 private:
  PagedCase pool_;
  WindowScoresShape shape_;
  std::vector<uint8_t> queries_;
  std::vector<int32_t> query_positions_;
  std::vector<int32_t> score_offsets_;
  int32_t max_len_ = 0;
};

}  // namespace headpage::testing

#endif  // HEADPAGE_TESTS_KERNELS_WINDOW_SCORES_CASE_H_
