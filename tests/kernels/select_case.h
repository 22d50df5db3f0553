// SPDX-License-Identifier: Apache-2.0
// File: tests/kernels/select_case.h
//
// Random inputs for Select, shared by the CPU test (ref:: against the policy
// functions) and the GPU test (gpu:: against ref::): one layer's streams of
// given lengths in CSR (score_offsets, possibly not starting at 0), positions
// strictly ascending with gaps (as after a compaction, so that sinks are
// positions, not slots), and scores either continuous or drawn from a few
// values (heavy ties, -0 beside +0, the infinities, equal scores across
// streams).
#ifndef HEADPAGE_TESTS_KERNELS_SELECT_CASE_H_
#define HEADPAGE_TESTS_KERNELS_SELECT_CASE_H_

#include <algorithm>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "kernels/select_args.h"

namespace headpage::testing {

struct SelectCaseSpec {
  int32_t num_seqs = 1;
  int32_t num_kv_heads = 1;
  std::vector<int32_t> lens;  // one per stream, seq-major
  int32_t distinct = 0;       // > 0: scores take this many values; 0: continuous
  int32_t sinks = 0;
  int32_t recent = 0;
  int32_t lead = 0;           // unused entries in front of the first stream
};

class SelectCase {
 public:
  SelectCase(const SelectCaseSpec& spec, uint64_t seed) : spec_(spec), rng_(seed) {
    const int32_t num_streams = spec.num_seqs * spec.num_kv_heads;
    offsets_.push_back(spec.lead);
    for (int32_t s = 0; s < num_streams; ++s) offsets_.push_back(offsets_.back() + spec.lens[s]);
    const size_t size = static_cast<size_t>(offsets_.back());
    scores_.resize(size);
    positions_.assign(size, -7);
    std::vector<float> palette;
    if (spec.distinct > 0) {
      // A few values around 0: -0 and +0 both, the infinities at the ends.
      for (int32_t i = 0; i < spec.distinct; ++i) {
        palette.push_back(0.25f * static_cast<float>(i - spec.distinct / 2));
      }
      palette.push_back(-0.0f);
      if (spec.distinct >= 4) {
        palette.push_back(std::numeric_limits<float>::infinity());
        palette.push_back(-std::numeric_limits<float>::infinity());
      }
    }
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    for (size_t i = 0; i < size; ++i) {
      scores_[i] = palette.empty() ? uniform(rng_) : palette[rng_() % palette.size()];
    }
    for (int32_t s = 0; s < num_streams; ++s) {
      int32_t position = static_cast<int32_t>(rng_() % 3);
      for (int32_t i = offsets_[s]; i < offsets_[s + 1]; ++i) {
        positions_[static_cast<size_t>(i)] = position;
        position += 1 + static_cast<int32_t>(rng_() % 3 == 0 ? rng_() % 4 : 0);
      }
    }
  }

  int32_t num_streams() const { return spec_.num_seqs * spec_.num_kv_heads; }
  int32_t size() const { return offsets_.back(); }
  int32_t length(int32_t s) const { return offsets_[s + 1] - offsets_[s]; }
  // The stream's protected slots: positions below sinks (a prefix) and the
  // last `recent` slots.
  int32_t NumProtected(int32_t s) const {
    const int32_t n = length(s);
    int32_t begin = 0;
    while (begin < n && positions_[static_cast<size_t>(offsets_[s] + begin)] < spec_.sinks) ++begin;
    const int64_t end = std::clamp<int64_t>(int64_t{n} - spec_.recent, begin, n);
    return n - static_cast<int32_t>(end - begin);
  }
  // Kept counts for kTopB: per stream the protected count, the length, or
  // something between.
  std::vector<int32_t> RandomKept() {
    std::vector<int32_t> kept(static_cast<size_t>(num_streams()));
    for (int32_t s = 0; s < num_streams(); ++s) {
      const int32_t low = NumProtected(s), high = length(s);
      const uint64_t pick = rng_() % 4;
      kept[s] = pick == 0 ? low
                : pick == 1 ? high
                            : low + static_cast<int32_t>(rng_() % (high - low + 1));
    }
    return kept;
  }

  // Args over this case's host arrays; outputs and mode are the caller's.
  SelectArgs HostArgs() const {
    SelectArgs args;
    args.num_seqs = spec_.num_seqs;
    args.num_kv_heads = spec_.num_kv_heads;
    args.score_offsets = offsets_.data();
    args.scores = scores_.data();
    args.positions = positions_.data();
    args.sinks = spec_.sinks;
    args.recent = spec_.recent;
    return args;
  }

  const SelectCaseSpec& spec() const { return spec_; }
  const std::vector<int32_t>& offsets() const { return offsets_; }
  const std::vector<float>& scores() const { return scores_; }
  std::vector<float>& mutable_scores() { return scores_; }
  const std::vector<int32_t>& positions() const { return positions_; }
  std::vector<int32_t>& mutable_positions() { return positions_; }
  std::mt19937_64& rng() { return rng_; }

 private:
  SelectCaseSpec spec_;
  std::mt19937_64 rng_;
  std::vector<int32_t> offsets_;
  std::vector<float> scores_;
  std::vector<int32_t> positions_;
};

}  // namespace headpage::testing

#endif  // HEADPAGE_TESTS_KERNELS_SELECT_CASE_H_
