// SPDX-License-Identifier: Apache-2.0
#include "policy/head_classes.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sys/stat.h>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace headpage::policy {
namespace {

// A profile is one float per (layer, kv head): a few KiB for any real model.
constexpr int64_t kMaxProfileBytes = int64_t{64} << 20;

}  // namespace

absl::StatusOr<HeadClasses> HeadClasses::FromScores(int32_t num_layers, int32_t num_kv_heads,
                                                    std::vector<float> scores) {
  if (num_layers < 1 || num_kv_heads < 1 ||
      scores.size() != static_cast<size_t>(num_layers) * num_kv_heads) {
    return absl::InvalidArgumentError(absl::StrCat("head profile: ", scores.size(),
                                                   " scores for ", num_layers, " layers x ",
                                                   num_kv_heads, " kv heads"));
  }
  for (size_t i = 0; i < scores.size(); ++i) {
    if (!std::isfinite(scores[i])) {
      return absl::InvalidArgumentError(absl::StrCat("head profile: score ", scores[i],
                                                     " of layer ", i / num_kv_heads,
                                                     " kv head ", i % num_kv_heads));
    }
  }
  HeadClasses h;
  h.num_layers_ = num_layers;
  h.num_kv_heads_ = num_kv_heads;
  h.scores_ = std::move(scores);
  return h;
}

absl::StatusOr<HeadClasses> HeadClasses::ParseTsv(absl::string_view text) {
  std::vector<float> scores;
  int32_t layers = 0, heads = 0, line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    int32_t count = 0;
    for (absl::string_view field : absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty())) {
      double value = 0;
      if (!absl::SimpleAtod(field, &value) || !std::isfinite(value)) {
        return absl::InvalidArgumentError(absl::StrCat("head profile line ", line_number, ": '",
                                                       field, "' is not a finite number"));
      }
      scores.push_back(static_cast<float>(std::clamp(value, 0.0, 1.0)));
      ++count;
    }
    if (layers > 0 && count != heads) {
      return absl::InvalidArgumentError(absl::StrCat("head profile line ", line_number, ": ",
                                                     count, " kv heads where the first layer has ",
                                                     heads));
    }
    heads = count;
    ++layers;
  }
  if (layers == 0) return absl::InvalidArgumentError("head profile: no layer (no value line)");
  return FromScores(layers, heads, std::move(scores));
}

absl::StatusOr<HeadClasses> HeadClasses::Load(const std::string& path) {
  // A regular file of sane size only: a FIFO or a device would block or never end.
  struct stat info;
  if (stat(path.c_str(), &info) != 0) {
    return absl::NotFoundError(absl::StrCat("head profile ", path, ": cannot be read"));
  }
  if (!S_ISREG(info.st_mode) || info.st_size > kMaxProfileBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head profile ", path, ": not a regular file of at most ", kMaxProfileBytes >> 20,
        " MiB"));
  }
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("head profile ", path, ": cannot be read"));
  std::stringstream text;
  text << in.rdbuf();
  absl::StatusOr<HeadClasses> parsed = ParseTsv(text.str());
  if (!parsed.ok()) {
    return absl::Status(parsed.status().code(), absl::StrCat(path, ": ", parsed.status().message()));
  }
  return parsed;
}

absl::StatusOr<HeadClasses> HeadClasses::Rows(const std::vector<int32_t>& layers) const {
  std::vector<float> scores;
  for (const int32_t layer : layers) {
    if (layer < 0 || layer >= num_layers_) {
      return absl::InvalidArgumentError(absl::StrCat("head profile: layer ", layer,
                                                     " is outside its ", num_layers_, " layers"));
    }
    scores.insert(scores.end(), scores_.begin() + static_cast<size_t>(layer) * num_kv_heads_,
                  scores_.begin() + static_cast<size_t>(layer + 1) * num_kv_heads_);
  }
  return FromScores(static_cast<int32_t>(layers.size()), num_kv_heads_, std::move(scores));
}

std::vector<uint8_t> HeadClasses::Retrieval(double sparsity) const {
  std::vector<uint8_t> retrieval(scores_.size(), 1);
  if (sparsity < 0) {
    for (size_t i = 0; i < scores_.size(); ++i) retrieval[i] = scores_[i] >= 0.5f;
    return retrieval;
  }
  if (sparsity == 0) return retrieval;
  if (sparsity >= 1) return std::vector<uint8_t>(scores_.size(), 0);
  std::vector<float> sorted = scores_;
  std::sort(sorted.begin(), sorted.end());
  // numpy.quantile's default: linear interpolation between the order statistics.
  const double at = sparsity * static_cast<double>(sorted.size() - 1);
  const size_t below = static_cast<size_t>(std::floor(at));
  const size_t above = std::min(below + 1, sorted.size() - 1);
  const double threshold = sorted[below] + (at - below) * (double{sorted[above]} - sorted[below]);
  for (size_t i = 0; i < scores_.size(); ++i) retrieval[i] = scores_[i] >= threshold;
  return retrieval;
}

std::string HeadClasses::ToTsv(absl::string_view comment) const {
  std::string out;
  if (!comment.empty()) absl::StrAppend(&out, "# ", comment, "\n");
  for (int32_t l = 0; l < num_layers_; ++l) {
    for (int32_t h = 0; h < num_kv_heads_; ++h) {
      absl::StrAppend(&out, h ? "\t" : "", absl::StrFormat("%.9g", score(l, h)));
    }
    out += "\n";
  }
  return out;
}

}  // namespace headpage::policy
