// SPDX-License-Identifier: Apache-2.0
// File: policy/head_classes.h
//
// Retrieval and streaming heads, after DuoAttention (Xiao et al., arXiv
// 2410.10819) and RazorAttention (Tang et al., arXiv 2407.15891): only some
// heads read the whole context; the others attend to the first tokens (the
// attention sinks) and a recent window. A profile gives every (layer, KV head)
// a score, higher meaning more of a retrieval head; the policy keeps every
// token of the retrieval heads and, of the streaming heads, the sinks and the
// recent window, which frees most of their memory on a long prompt.
//
// Profiles come from a file in DuoAttention's format (its trained gates,
// attn_patterns/<model>/full_attention_heads.tsv: one row per layer, one
// tab-separated value per KV head, clipped to [0, 1] on load, as
// duo_attn/utils.py load_attn_pattern does), from RazorAttention's
// echo/induction scores on a calibration input (tools/profile_heads.py writes
// them in the same format), or from a trace (`headpage trace heads`: the
// attention mass the observed queries put outside the sinks and the window).
#ifndef HEADPAGE_POLICY_HEAD_CLASSES_H_
#define HEADPAGE_POLICY_HEAD_CLASSES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace headpage::policy {

class HeadClasses {
 public:
  // scores: [num_layers][num_kv_heads], finite. InvalidArgument otherwise.
  [[nodiscard]] static absl::StatusOr<HeadClasses> FromScores(int32_t num_layers,
                                                              int32_t num_kv_heads,
                                                              std::vector<float> scores);
  // DuoAttention's TSV: one line per layer, the same number of values on every
  // line, separated by tabs or spaces; lines starting with '#' and blank lines
  // are skipped (a '#' after values is not a comment here, unlike
  // numpy.loadtxt). Values are clipped to [0, 1].
  // InvalidArgument naming the line for anything else.
  [[nodiscard]] static absl::StatusOr<HeadClasses> ParseTsv(absl::string_view text);
  // ParseTsv of a file's contents; NotFound when it cannot be read,
  // InvalidArgument for anything but a regular file of at most 64 MiB.
  [[nodiscard]] static absl::StatusOr<HeadClasses> Load(const std::string& path);

  int32_t num_layers() const { return num_layers_; }
  int32_t num_kv_heads() const { return num_kv_heads_; }
  float score(int32_t layer, int32_t kv_head) const {
    return scores_[static_cast<size_t>(layer) * num_kv_heads_ + kv_head];
  }
  // The profile restricted to some layers, in the order given (a trace holds a
  // few of a model's layers). InvalidArgument for a layer out of range.
  [[nodiscard]] absl::StatusOr<HeadClasses> Rows(const std::vector<int32_t>& layers) const;

  // Which heads are retrieval heads when a share `sparsity` of them streams:
  // DuoAttention's sparsify_attention_heads (duo_attn/utils.py), the threshold
  // t = numpy.quantile(scores, sparsity) (linear interpolation) over every
  // layer's heads, retrieval iff score >= t; sparsity 0 keeps every head
  // whole, 1 none (the released code's own cases: threshold -1 and 2). (The released code adds U(0, 1e-6) noise to break ties;
  // here tied heads stay on the same side.) A negative sparsity takes the
  // profile's own classes, retrieval iff score >= 0.5 (DuoAttention's
  // threshold rule on trained gates; a RazorAttention profile written as 1 and
  // 0 by tools/profile_heads.py). [layer][kv_head], 1 = retrieval.
  std::vector<uint8_t> Retrieval(double sparsity) const;

  // The TSV ParseTsv reads, with `comment` as a first '#' line when non-empty.
  std::string ToTsv(absl::string_view comment = "") const;

 private:
  HeadClasses() = default;
  int32_t num_layers_ = 0;
  int32_t num_kv_heads_ = 0;
  std::vector<float> scores_;
};

}  // namespace headpage::policy

#endif  // HEADPAGE_POLICY_HEAD_CLASSES_H_
