// SPDX-License-Identifier: Apache-2.0
// File: tests/kernels/dbudget_cut_case.h
//
// Random inputs for DBudgetCut, shared by the CPU test (ref:: against the
// policy) and the GPU test (gpu:: against ref::): one layer of sequences whose
// streams have equally many candidates but different lengths (each its own
// number of sink slots, positions with gaps as after a compaction), scores
// continuous or drawn from a few values (ties, -0 beside +0), and softmax-like
// attention rows in which some candidates get exactly zero attention in every
// q head. Also the test's own dense measure of the loss ratio, to judge a
// GPU/CPU difference at the threshold.
#ifndef HEADPAGE_TESTS_KERNELS_DBUDGET_CUT_CASE_H_
#define HEADPAGE_TESTS_KERNELS_DBUDGET_CUT_CASE_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/dbudget_cut_args.h"

namespace headpage::testing {

struct DBudgetCutCaseSpec {
  int32_t num_seqs = 1;
  int32_t num_kv_heads = 1;
  int32_t group_size = 1;
  std::vector<int32_t> candidates;  // one per sequence
  int32_t sinks = 0;
  int32_t recent = 0;
  int32_t distinct = 0;        // > 0: scores take this many values (and -0); 0: continuous
  double zero_fraction = 0.0;  // candidates with zero attention in every q head
  int32_t lead = 0;            // unused entries in front of the first stream
};

class DBudgetCutCase {
 public:
  DBudgetCutCase(const DBudgetCutCaseSpec& spec, uint64_t seed) : spec_(spec), rng_(seed) {
    const int32_t heads = spec.num_kv_heads, group = spec.group_size;
    offsets_.push_back(spec.lead);
    std::vector<int32_t> sink_slots;
    for (int32_t seq = 0; seq < spec.num_seqs; ++seq) {
      for (int32_t h = 0; h < heads; ++h) {
        // Each stream its own number of slots below `sinks` (sinks of 0 have
        // none); the length follows, so the candidates are as specified.
        const int32_t sink_count =
            spec.sinks > 0 ? static_cast<int32_t>(rng_() % (std::min(spec.sinks, 3) + 1)) : 0;
        const int32_t n = spec.candidates[static_cast<size_t>(seq)];
        sink_slots.push_back(sink_count);
        offsets_.push_back(offsets_.back() + sink_count + n + std::max(spec.recent, 0));
      }
    }
    const size_t size = static_cast<size_t>(offsets_.back());
    scores_.assign(size, 0.0f);
    positions_.assign(size, -7);
    attention_.assign(static_cast<size_t>(group) * size, -3.0f);  // the lead's stays unread

    std::vector<float> palette;
    for (int32_t i = 0; i < spec.distinct; ++i) palette.push_back(0.25f * static_cast<float>(i));
    if (spec.distinct > 0) palette.push_back(-0.0f);
    std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
    std::normal_distribution<double> normal(0.0, 2.0);
    for (int32_t s = 0; s < num_streams(); ++s) {
      const int32_t first = offsets_[s], n = length(s);
      for (int32_t j = 0; j < n; ++j) {
        scores_[static_cast<size_t>(first + j)] =
            palette.empty() ? uniform(rng_) : palette[rng_() % palette.size()];
      }
      // Sink slots at distinct positions below sinks, the rest from sinks on.
      const int32_t sink_count = sink_slots[static_cast<size_t>(s)];
      std::vector<int32_t> below(static_cast<size_t>(std::max(spec.sinks, 0)));
      std::iota(below.begin(), below.end(), 0);
      std::shuffle(below.begin(), below.end(), rng_);
      std::sort(below.begin(), below.begin() + sink_count);
      int32_t position = std::max(spec.sinks, 0) + static_cast<int32_t>(rng_() % 3);
      for (int32_t j = 0; j < n; ++j) {
        if (j < sink_count) {
          positions_[static_cast<size_t>(first + j)] = below[static_cast<size_t>(j)];
          continue;
        }
        positions_[static_cast<size_t>(first + j)] = position;
        position += 1 + static_cast<int32_t>(rng_() % 3 == 0 ? rng_() % 4 : 0);
      }
      // Zero attention on some candidate slots, the same in every q head.
      std::vector<char> zero(static_cast<size_t>(n), 0);
      for (int32_t j = sink_count; j < n - std::max(spec.recent, 0); ++j) {
        zero[static_cast<size_t>(j)] =
            std::generate_canonical<double, 53>(rng_) < spec.zero_fraction;
      }
      for (int32_t g = 0; g < group; ++g) {
        float* row =
            attention_.data() + static_cast<size_t>(group) * first + static_cast<size_t>(g) * n;
        double sum = 0.0;
        std::vector<double> weights(static_cast<size_t>(n));
        for (int32_t j = 0; j < n; ++j) {
          weights[static_cast<size_t>(j)] =
              zero[static_cast<size_t>(j)] ? 0.0 : std::exp(normal(rng_));
          sum += weights[static_cast<size_t>(j)];
        }
        for (int32_t j = 0; j < n; ++j) {
          row[j] = sum > 0.0 ? static_cast<float>(weights[static_cast<size_t>(j)] / sum) : 0.0f;
        }
      }
    }
  }

  int32_t num_streams() const { return spec_.num_seqs * spec_.num_kv_heads; }
  int32_t size() const { return offsets_.back(); }
  int32_t length(int32_t s) const { return offsets_[s + 1] - offsets_[s]; }
  // The stream's candidates: [begin, end) of its slots.
  int32_t CandidateBegin(int32_t s) const {
    int32_t begin = 0;
    while (begin < length(s) &&
           positions_[static_cast<size_t>(offsets_[s] + begin)] < spec_.sinks) {
      ++begin;
    }
    return begin;
  }
  int32_t CandidateEnd(int32_t s) const {
    const int32_t begin = CandidateBegin(s);
    return static_cast<int32_t>(
        std::clamp<int64_t>(int64_t{length(s)} - spec_.recent, begin, length(s)));
  }
  int32_t NumProtected(int32_t s) const {
    return length(s) - (CandidateEnd(s) - CandidateBegin(s));
  }

  // Args over this case's host arrays; threshold, mode and outputs are the caller's.
  DBudgetCutArgs HostArgs() const {
    DBudgetCutArgs args;
    args.num_seqs = spec_.num_seqs;
    args.num_kv_heads = spec_.num_kv_heads;
    args.group_size = spec_.group_size;
    args.score_offsets = offsets_.data();
    args.num_tokens = size();
    args.scores = scores_.data();
    args.positions = positions_.data();
    args.sinks = spec_.sinks;
    args.recent = spec_.recent;
    args.attention = attention_.data();
    return args;
  }

  // The loss ratio (base - kept_sum[k] / heads) / base of sequence `seq` after
  // cutting k candidates, computed densely here (sorting, then summing each
  // row's kept squares afresh), independently of the policy's suffix sums.
  double Ratio(int32_t seq, int32_t k, bool by_position) const {
    double base = 0.0, kept = 0.0;
    const int32_t group = spec_.group_size;
    for (int32_t h = 0; h < spec_.num_kv_heads; ++h) {
      const int32_t s = seq * spec_.num_kv_heads + h;
      const int32_t first = offsets_[s], n = length(s);
      std::vector<int32_t> order(static_cast<size_t>(CandidateEnd(s) - CandidateBegin(s)));
      std::iota(order.begin(), order.end(), CandidateBegin(s));
      if (!by_position) {
        // Least important first: score ascending, equal scores the higher slot first.
        std::sort(order.begin(), order.end(), [&](int32_t x, int32_t y) {
          const float a = scores_[static_cast<size_t>(first + x)];
          const float b = scores_[static_cast<size_t>(first + y)];
          return a < b || (a == b && x > y);
        });
      }
      for (int32_t g = 0; g < group; ++g) {
        const float* row =
            attention_.data() + static_cast<size_t>(group) * first + static_cast<size_t>(g) * n;
        double all = 0.0, rest = 0.0;
        for (size_t i = 0; i < order.size(); ++i) {
          const double x = row[order[i]];
          all += x * x;
          if (static_cast<int64_t>(i) >= k) rest += x * x;
        }
        base += std::sqrt(all);
        kept += std::sqrt(rest);
      }
    }
    return (base - kept) / base;
  }

  const DBudgetCutCaseSpec& spec() const { return spec_; }
  const std::vector<int32_t>& offsets() const { return offsets_; }
  std::vector<int32_t>& mutable_offsets() { return offsets_; }
  const std::vector<float>& scores() const { return scores_; }
  std::vector<float>& mutable_scores() { return scores_; }
  const std::vector<int32_t>& positions() const { return positions_; }
  const std::vector<float>& attention() const { return attention_; }
  std::vector<float>& mutable_attention() { return attention_; }

 private:
  DBudgetCutCaseSpec spec_;
  std::mt19937_64 rng_;
  std::vector<int32_t> offsets_;
  std::vector<float> scores_;
  std::vector<int32_t> positions_;
  std::vector<float> attention_;
};

}  // namespace headpage::testing

#endif  // HEADPAGE_TESTS_KERNELS_DBUDGET_CUT_CASE_H_
