// SPDX-License-Identifier: Apache-2.0
// File: sim/workload/workload_dist.h
//
// The requests of a serving workload: when each arrives and how long its prompt
// and its output are. Lengths come from one of the named distributions below,
// from fixed values, or with their arrival times from a CSV file; arrivals are
// a Poisson process at a given rate, or all at time 0.
//
// The named distributions are log-normal fits to public traces
// (shared/research/paged-kv-prior-art.md, section 6). A log-normal is fixed by
// its median and one quantile: mu = ln(median), and since the p90 of a normal is
// mu + 1.2816 sigma, sigma = (ln(p90) - ln(median)) / 1.2816. Draws are rounded
// to whole tokens and clamped to [min, max], which moves neither the median nor
// the p90 as long as both bounds lie outside them (they do for every fit here):
//
//   name      prompt median / p90 [min, max]      output median / p90 [min, max]   source
//   sharegpt  1730 / 5696  [4, 8192]   (s 0.930)  415 / 834  [1, 1024]  (s 0.545)  ShareGPT-8k,
//   Llama-2 tokenizer arxiv     2730 / 3702  [4, 4096]   (s 0.238)  167 / 372  [1, 4096]  (s 0.625)
//   arXiv summarization long      16384 / 28672 [8192, 32768] (s 0.437) 318 / 571 [1, 2048] (s
//   0.457)  8K-32K prompts; outputs
//                                                                                  of the
//                                                                                  arXiv-long trace
//
// Everything is deterministic for a seed (sim/workload/random.h), on every platform;
// lengths and arrivals draw from separate generators, so changing the rate does
// not change the lengths.
#ifndef HEADPAGE_SIM_WORKLOAD_WORKLOAD_DIST_H_
#define HEADPAGE_SIM_WORKLOAD_WORKLOAD_DIST_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "sim/workload/random.h"

namespace headpage {

// A log-normal length fitted to a median and a p90, clamped to [min, max].
struct LogNormalLengths {
  double median = 1.0;
  double p90 = 1.0;
  int32_t min = 1;
  int32_t max = 1;

  double mu() const;
  double sigma() const;
  int32_t Sample(SplitMix64* rng) const;
};

// One workload's prompt and output lengths.
struct LengthModel {
  std::string name;
  LogNormalLengths prompt;
  LogNormalLengths output;
};

// The fits of the table above.
LengthModel ShareGptLengths();
LengthModel ArxivLengths();
LengthModel LongContextLengths();

struct WorkloadRequest {
  int64_t id = 0;  // 0-based, in arrival order
  double arrival_s = 0.0;
  int32_t prompt_len = 1;
  int32_t output_len = 1;
};

// Where the requests come from: what `--dist` names.
struct WorkloadSource {
  enum class Kind : uint8_t { kLogNormal, kFixed, kCsv };
  Kind kind = Kind::kLogNormal;
  LengthModel lengths = ShareGptLengths();  // kLogNormal
  int32_t fixed_prompt = 0;                 // kFixed
  int32_t fixed_output = 0;
  std::string csv_path;              // kCsv: the file
  std::vector<WorkloadRequest> csv;  // kCsv: its rows, arrival times included

  std::string Name() const;  // "sharegpt", "fixed:100,20", "csv:FILE" ...
};

// "sharegpt", "arxiv", "long", "fixed:P,O" (P, O >= 1) or "csv:FILE" (read and
// parsed here, see ParseArrivalsCsv). InvalidArgument naming what is wrong;
// NotFound for a CSV file that cannot be read.
// The largest arrivals CSV read (--dist csv:FILE): 64 MiB, about two million
// requests, beyond any trace an arrival study replays.
inline constexpr int64_t kMaxArrivalsCsvBytes = int64_t{64} << 20;

[[nodiscard]] absl::StatusOr<WorkloadSource> ParseWorkloadSource(absl::string_view text);

// Parses `arrival_s,prompt_len,output_len` rows: arrival_s a finite number >= 0
// that never decreases from one row to the next, the lengths whole numbers in
// [1, 2^30]. A first line that is exactly the header is skipped, and so are
// blank lines (a trailing newline, "\r\n" endings). Every other malformed row is
// InvalidArgument naming its line number, the field and the text found. At
// least one row is required.
[[nodiscard]] absl::StatusOr<std::vector<WorkloadRequest>> ParseArrivalsCsv(absl::string_view text);

// `num_requests` requests from `source`. Arrivals: a Poisson process of
// `rate` requests per second starting at time 0 (the first request arrives at
// 0), or all at 0 when rate is +infinity; a CSV source brings its own times and
// ignores the rate. For a CSV, num_requests 0 takes every row and a positive
// count the first ones. InvalidArgument for num_requests < 1 (but 0 for a
// CSV), more requests than the CSV has, or a rate that is not > 0.
[[nodiscard]] absl::StatusOr<std::vector<WorkloadRequest>> GenerateRequests(
    const WorkloadSource& source, int64_t num_requests, double rate, uint64_t seed);

}  // namespace headpage

#endif  // HEADPAGE_SIM_WORKLOAD_WORKLOAD_DIST_H_
