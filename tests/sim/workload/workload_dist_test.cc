// SPDX-License-Identifier: Apache-2.0
// The workload simulator's requests: the length distributions, Poisson
// arrivals and arrivals from a CSV file (sim/workload/workload_dist.h).
#include "sim/workload/workload_dist.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <sys/stat.h>

#include "tests/sim/workload/workload_test_helpers.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::Generate;

double Quantile(std::vector<int32_t> v, double q) {
  const auto k = static_cast<size_t>(q * static_cast<double>(v.size()));
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return v[k];
}

// ---------------------------------------------------------------------------
// Distributions and arrivals

TEST_CASE("Workload: the log-normal fits give the traces' medians and p90s", "[sim][workload]") {
  struct Expect {
    const char* dist;
    double prompt_median, prompt_p90, output_median, output_p90;
  };
  for (const Expect& e :
       {Expect{"sharegpt", 1730, 5696, 415, 834}, Expect{"arxiv", 2730, 3702, 167, 372},
        Expect{"long", 16384, 28672, 318, 571}}) {
    CAPTURE(e.dist);
    const std::vector<WorkloadRequest> requests = Generate(e.dist, 40000, INFINITY, 7);
    std::vector<int32_t> prompts, outputs;
    for (const WorkloadRequest& r : requests) {
      prompts.push_back(r.prompt_len);
      outputs.push_back(r.output_len);
    }
    REQUIRE(Quantile(prompts, 0.5) == Approx(e.prompt_median).epsilon(0.03));
    REQUIRE(Quantile(prompts, 0.9) == Approx(e.prompt_p90).epsilon(0.03));
    REQUIRE(Quantile(outputs, 0.5) == Approx(e.output_median).epsilon(0.03));
    REQUIRE(Quantile(outputs, 0.9) == Approx(e.output_p90).epsilon(0.03));
  }
  // sigma = (ln p90 - ln median) / 1.2816, and the clamps hold.
  REQUIRE(ShareGptLengths().prompt.sigma() == Approx(0.92984).epsilon(1e-4));
  REQUIRE(ShareGptLengths().output.sigma() == Approx(0.54462).epsilon(1e-4));
  for (const WorkloadRequest& r : Generate("long", 5000, INFINITY, 3)) {
    REQUIRE(r.prompt_len >= 8192);
    REQUIRE(r.prompt_len <= 32768);
    REQUIRE(r.output_len <= 2048);
  }
}

TEST_CASE("Workload: requests are the same for a seed, and the rate does not move lengths",
          "[sim][workload]") {
  const auto a = Generate("sharegpt", 500, 4.0, 11), b = Generate("sharegpt", 500, 4.0, 11);
  const auto c = Generate("sharegpt", 500, 4.0, 12), d = Generate("sharegpt", 500, 9.0, 11);
  bool differs = false;
  for (size_t i = 0; i < a.size(); ++i) {
    REQUIRE(a[i].id == static_cast<int64_t>(i));
    REQUIRE(a[i].arrival_s == b[i].arrival_s);
    REQUIRE(a[i].prompt_len == b[i].prompt_len);
    REQUIRE(a[i].output_len == b[i].output_len);
    REQUIRE(a[i].prompt_len == d[i].prompt_len);
    REQUIRE(a[i].output_len == d[i].output_len);
    differs |= a[i].prompt_len != c[i].prompt_len;
  }
  REQUIRE(differs);
}

TEST_CASE("Workload: Poisson arrivals have the rate's mean gap, inf sends all at 0",
          "[sim][workload]") {
  const std::vector<WorkloadRequest> r = Generate("fixed:10,2", 20001, 10.0, 5);
  REQUIRE(r[0].arrival_s == 0.0);
  for (size_t i = 1; i < r.size(); ++i) REQUIRE(r[i].arrival_s >= r[i - 1].arrival_s);
  REQUIRE(r.back().arrival_s / 20000 == Approx(0.1).epsilon(0.03));
  for (const WorkloadRequest& x : Generate("fixed:10,2", 50, INFINITY, 5)) {
    REQUIRE(x.arrival_s == 0.0);
    REQUIRE(x.prompt_len == 10);
    REQUIRE(x.output_len == 2);
  }
  auto source = ParseWorkloadSource("sharegpt");
  REQUIRE_OK(source);
  REQUIRE_ERROR(GenerateRequests(*source, 10, 0.0, 1), absl::StatusCode::kInvalidArgument, "rate");
  REQUIRE_ERROR(GenerateRequests(*source, 10, NAN, 1), absl::StatusCode::kInvalidArgument, "rate");
  REQUIRE_ERROR(GenerateRequests(*source, 0, 1.0, 1), absl::StatusCode::kInvalidArgument,
                "requests");
}

TEST_CASE("Workload: --dist names, and what it rejects", "[sim][workload]") {
  for (const char* name : {"sharegpt", "arxiv", "long"}) {
    auto source = ParseWorkloadSource(name);
    REQUIRE_OK(source);
    REQUIRE(source->Name() == name);
  }
  auto fixed = ParseWorkloadSource("fixed:1730,415");
  REQUIRE_OK(fixed);
  REQUIRE(fixed->kind == WorkloadSource::Kind::kFixed);
  REQUIRE(fixed->fixed_prompt == 1730);
  REQUIRE(fixed->fixed_output == 415);
  for (const char* bad : {"fixed:0,3", "fixed:3", "fixed:a,3", "fixed:3,4,5", "fixed:3,-1"}) {
    CAPTURE(bad);
    REQUIRE_ERROR(ParseWorkloadSource(bad), absl::StatusCode::kInvalidArgument, "fixed needs");
  }
  REQUIRE_ERROR(ParseWorkloadSource("zipf"), absl::StatusCode::kInvalidArgument,
                "unknown distribution");
  REQUIRE_ERROR(ParseWorkloadSource("csv:/nonexistent/arrivals.csv"), absl::StatusCode::kNotFound,
                "/nonexistent/arrivals.csv");
}

TEST_CASE("Workload: arrivals CSV rows", "[sim][workload]") {
  auto rows =
      ParseArrivalsCsv("arrival_s,prompt_len,output_len\r\n0,100,20\r\n\r\n0.5, 7 ,1\n2.25,3,9\n");
  REQUIRE_OK(rows);
  REQUIRE(rows->size() == 3);
  REQUIRE((*rows)[1].arrival_s == 0.5);
  REQUIRE((*rows)[1].prompt_len == 7);
  REQUIRE((*rows)[2].id == 2);
  REQUIRE((*rows)[2].output_len == 9);
  REQUIRE_OK(ParseArrivalsCsv("1,2,3"));  // no header is fine

  // Every malformed row: its line, its field, the text found.
  struct Bad {
    const char* text;
    const char* message;
  };
  for (const Bad& b :
       {Bad{"0,10", "line 1: '0,10' has 2 fields"}, Bad{"0,10,5,1", "has 4 fields"},
        Bad{"x,10,5", "line 1: arrival_s 'x'"}, Bad{"-1,10,5", "arrival_s '-1'"},
        Bad{"nan,10,5", "arrival_s 'nan'"}, Bad{"inf,10,5", "arrival_s 'inf'"},
        Bad{"1,10,5\n0.5,10,5", "line 2: arrival_s 0.5 is before"}, Bad{"0,0,5", "prompt_len '0'"},
        Bad{"0,1.5,5", "prompt_len '1.5'"}, Bad{"0,10,", "output_len ''"},
        Bad{"0,10,2000000000", "output_len '2000000000'"},
        Bad{"0,1,1\narrival_s,prompt_len,output_len", "line 2: arrival_s 'arrival_s'"},
        Bad{"", "no request rows"}, Bad{"arrival_s,prompt_len,output_len\n", "no request rows"}}) {
    CAPTURE(b.text);
    REQUIRE_ERROR(ParseArrivalsCsv(b.text), absl::StatusCode::kInvalidArgument, b.message);
  }

  // Through --dist csv:FILE, with a count.
  const char* tmp = std::getenv("TMPDIR");
  const std::string path =
      std::string(tmp != nullptr ? tmp : "/tmp") + "/headpage_workload_test.csv";
  {
    std::ofstream out(path);
    out << "arrival_s,prompt_len,output_len\n0,10,2\n1,20,3\n1,30,4\n";
  }
  auto source = ParseWorkloadSource("csv:" + path);
  REQUIRE_OK(source);
  REQUIRE(source->Name() == "csv:" + path);
  auto all = GenerateRequests(*source, 0, INFINITY, 1);
  REQUIRE_OK(all);
  REQUIRE(all->size() == 3);
  REQUIRE((*all)[2].prompt_len == 30);
  auto two = GenerateRequests(*source, 2, 123.0, 1);  // the rate is the file's business
  REQUIRE_OK(two);
  REQUIRE(two->size() == 2);
  REQUIRE((*two)[1].arrival_s == 1.0);
  REQUIRE_ERROR(GenerateRequests(*source, 4, 1.0, 1), absl::StatusCode::kInvalidArgument,
                "the CSV has 3");
  {
    std::ofstream out(path);
    out << "0,10,2\n0,ten,3\n";
  }
  REQUIRE_ERROR(ParseWorkloadSource("csv:" + path), absl::StatusCode::kInvalidArgument,
                "line 2: prompt_len 'ten'");
  std::remove(path.c_str());

  // Special files are refused before they are opened (a FIFO would block,
  // /dev/zero never ends), and so is a file past the size bound.
  REQUIRE(mkfifo(path.c_str(), 0600) == 0);
  REQUIRE_ERROR(ParseWorkloadSource("csv:" + path), absl::StatusCode::kInvalidArgument,
                "not a regular file");
  std::remove(path.c_str());
  REQUIRE_ERROR(ParseWorkloadSource("csv:/dev/zero"), absl::StatusCode::kInvalidArgument,
                "not a regular file");
  {
    std::ofstream out(path);
    out.seekp(kMaxArrivalsCsvBytes);  // a sparse file one byte past the bound
    out.put('\n');
  }
  REQUIRE_ERROR(ParseWorkloadSource("csv:" + path), absl::StatusCode::kInvalidArgument,
                "at most 67108864 are read");
  std::remove(path.c_str());
}

}  // namespace
}  // namespace headpage
