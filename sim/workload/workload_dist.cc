// SPDX-License-Identifier: Apache-2.0
#include "sim/workload/workload_dist.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

#include <sys/stat.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace headpage {
namespace {

// The p90 of a standard normal: Phi^-1(0.9).
constexpr double kZ90 = 1.2815515655446004;
constexpr int64_t kMaxLength = int64_t{1} << 30;
constexpr char kCsvHeader[] = "arrival_s,prompt_len,output_len";

LengthModel Model(const char* name, LogNormalLengths prompt, LogNormalLengths output) {
  LengthModel m;
  m.name = name;
  m.prompt = prompt;
  m.output = output;
  return m;
}

// A whole number in [1, 2^30], or an error naming line, field and text.
absl::StatusOr<int32_t> ParseLength(absl::string_view text, int64_t line, const char* field) {
  int64_t value = 0;
  if (!absl::SimpleAtoi(text, &value) || value < 1 || value > kMaxLength) {
    return absl::InvalidArgumentError(absl::StrCat("line ", line, ": ", field, " '", text,
                                                   "' is not a whole number in [1, 2^30]"));
  }
  return static_cast<int32_t>(value);
}

}  // namespace

double LogNormalLengths::mu() const { return std::log(median); }
double LogNormalLengths::sigma() const { return (std::log(p90) - std::log(median)) / kZ90; }

int32_t LogNormalLengths::Sample(SplitMix64* rng) const {
  const double x = std::exp(mu() + sigma() * rng->Normal());
  return static_cast<int32_t>(std::clamp(std::llround(std::min(x, 1e15)),
                                         static_cast<long long>(min), static_cast<long long>(max)));
}

LengthModel ShareGptLengths() {
  return Model("sharegpt", {1730, 5696, 4, 8192}, {415, 834, 1, 1024});
}
LengthModel ArxivLengths() { return Model("arxiv", {2730, 3702, 4, 4096}, {167, 372, 1, 4096}); }
LengthModel LongContextLengths() {
  return Model("long", {16384, 28672, 8192, 32768}, {318, 571, 1, 2048});
}

std::string WorkloadSource::Name() const {
  switch (kind) {
    case Kind::kLogNormal:
      return lengths.name;
    case Kind::kFixed:
      return absl::StrCat("fixed:", fixed_prompt, ",", fixed_output);
    case Kind::kCsv:
      return absl::StrCat("csv:", csv_path);
  }
  return "?";
}

absl::StatusOr<WorkloadSource> ParseWorkloadSource(absl::string_view text) {
  WorkloadSource source;
  if (text == "sharegpt" || text == "arxiv" || text == "long") {
    source.lengths = text == "sharegpt" ? ShareGptLengths()
                     : text == "arxiv"  ? ArxivLengths()
                                        : LongContextLengths();
    return source;
  }
  absl::string_view rest = text;
  if (absl::ConsumePrefix(&rest, "fixed:")) {
    const std::vector<absl::string_view> parts = absl::StrSplit(rest, ',');
    if (parts.size() == 2) {
      auto prompt = ParseLength(parts[0], 1, "prompt length");
      auto output = ParseLength(parts[1], 1, "output length");
      if (prompt.ok() && output.ok()) {
        source.kind = WorkloadSource::Kind::kFixed;
        source.fixed_prompt = *prompt;
        source.fixed_output = *output;
        return source;
      }
    }
    return absl::InvalidArgumentError(
        absl::StrCat("distribution '", text,
                     "': fixed needs two whole numbers in [1, 2^30], as fixed:1730,415"));
  }
  if (absl::ConsumePrefix(&rest, "csv:")) {
    // A regular file of bounded size, checked before it is opened: a FIFO
    // would block the open, /dev/zero would never end.
    const std::string path(rest);
    struct stat st;
    if (stat(path.c_str(), &st) != 0) {
      return absl::NotFoundError(absl::StrCat("cannot read the arrivals file '", rest, "'"));
    }
    if (!S_ISREG(st.st_mode)) {
      return absl::InvalidArgumentError(
          absl::StrCat("the arrivals file '", rest, "' is not a regular file"));
    }
    if (st.st_size > kMaxArrivalsCsvBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the arrivals file '", rest, "' holds ", st.st_size, " bytes; at most ",
          kMaxArrivalsCsvBytes, " are read"));
    }
    std::ifstream in(path);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot read the arrivals file '", rest, "'"));
    std::ostringstream contents;
    contents << in.rdbuf();
    absl::StatusOr<std::vector<WorkloadRequest>> rows = ParseArrivalsCsv(contents.str());
    if (!rows.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(rest, ": ", rows.status().message()));
    }
    source.kind = WorkloadSource::Kind::kCsv;
    source.csv_path = std::string(rest);
    source.csv = std::move(rows).value();
    return source;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown distribution '", text, "'; known: sharegpt, arxiv, long, fixed:P,O, csv:FILE"));
}

absl::StatusOr<std::vector<WorkloadRequest>> ParseArrivalsCsv(absl::string_view text) {
  std::vector<WorkloadRequest> rows;
  int64_t line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    absl::ConsumeSuffix(&line, "\r");
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    if (line_number == 1 && absl::StripAsciiWhitespace(line) == kCsvHeader) continue;
    const std::vector<absl::string_view> fields = absl::StrSplit(line, ',');
    if (fields.size() != 3) {
      return absl::InvalidArgumentError(absl::StrCat("line ", line_number, ": '", line, "' has ",
                                                     fields.size(), " fields; expected ",
                                                     kCsvHeader));
    }
    WorkloadRequest r;
    r.id = static_cast<int64_t>(rows.size());
    const absl::string_view arrival = absl::StripAsciiWhitespace(fields[0]);
    if (!absl::SimpleAtod(arrival, &r.arrival_s) || !std::isfinite(r.arrival_s) ||
        r.arrival_s < 0) {
      return absl::InvalidArgumentError(absl::StrCat("line ", line_number, ": arrival_s '", arrival,
                                                     "' is not a finite number >= 0"));
    }
    if (!rows.empty() && r.arrival_s < rows.back().arrival_s) {
      return absl::InvalidArgumentError(absl::StrCat(
          "line ", line_number, ": arrival_s ", arrival, " is before the previous row's ",
          rows.back().arrival_s, "; rows must be in arrival order"));
    }
    auto prompt = ParseLength(absl::StripAsciiWhitespace(fields[1]), line_number, "prompt_len");
    if (!prompt.ok()) return prompt.status();
    auto output = ParseLength(absl::StripAsciiWhitespace(fields[2]), line_number, "output_len");
    if (!output.ok()) return output.status();
    r.prompt_len = *prompt;
    r.output_len = *output;
    rows.push_back(r);
  }
  if (rows.empty()) {
    return absl::InvalidArgumentError("no request rows (arrival_s,prompt_len,output_len)");
  }
  return rows;
}

absl::StatusOr<std::vector<WorkloadRequest>> GenerateRequests(const WorkloadSource& source,
                                                              int64_t num_requests, double rate,
                                                              uint64_t seed) {
  if (source.kind == WorkloadSource::Kind::kCsv) {
    const auto available = static_cast<int64_t>(source.csv.size());
    if (num_requests < 0 || num_requests > available) {
      return absl::InvalidArgumentError(absl::StrCat(
          "asked for ", num_requests, " requests; the CSV has ", available, " (0 takes them all)"));
    }
    return std::vector<WorkloadRequest>(
        source.csv.begin(), source.csv.begin() + (num_requests == 0 ? available : num_requests));
  }
  if (num_requests < 1) {
    return absl::InvalidArgumentError(absl::StrCat("requests must be >= 1, got ", num_requests));
  }
  if (!(rate > 0.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rate must be > 0 requests per second (inf: all at once), got ", rate));
  }
  SplitMix64 lengths(seed);
  SplitMix64 arrivals(seed ^ 0xa5a5a5a5a5a5a5a5ull);
  std::vector<WorkloadRequest> out(static_cast<size_t>(num_requests));
  double now = 0.0;
  for (int64_t i = 0; i < num_requests; ++i) {
    WorkloadRequest& r = out[static_cast<size_t>(i)];
    r.id = i;
    if (i > 0 && std::isfinite(rate)) now += arrivals.Exponential(rate);
    r.arrival_s = now;
    if (source.kind == WorkloadSource::Kind::kFixed) {
      r.prompt_len = source.fixed_prompt;
      r.output_len = source.fixed_output;
    } else {
      r.prompt_len = source.lengths.prompt.Sample(&lengths);
      r.output_len = source.lengths.output.Sample(&lengths);
    }
  }
  return out;
}

}  // namespace headpage
