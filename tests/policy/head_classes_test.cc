// SPDX-License-Identifier: Apache-2.0
#include "policy/head_classes.h"

#include <cstdint>
#include <vector>

#include "tests/testing/status_matchers.h"

namespace headpage::policy {
namespace {

using absl::StatusCode;

TEST_CASE("HeadClasses: DuoAttention's TSV, clipped, comments and blank lines skipped",
          "[policy][head_classes]") {
  auto p = HeadClasses::ParseTsv("# gates\n0.5\t1.7\t-0.2\n\n 0.25  0.75\t0\n");
  REQUIRE_OK(p);
  REQUIRE(p->num_layers() == 2);
  REQUIRE(p->num_kv_heads() == 3);
  CHECK(p->score(0, 1) == 1.0f);  // clipped to [0, 1] as load_attn_pattern does
  CHECK(p->score(0, 2) == 0.0f);
  CHECK(p->score(1, 1) == 0.75f);
  auto back = HeadClasses::ParseTsv(p->ToTsv("round trip"));
  REQUIRE_OK(back);
  CHECK(back->score(1, 0) == 0.25f);

  REQUIRE_ERROR(HeadClasses::ParseTsv("0.5 0.5\n0.5\n"), StatusCode::kInvalidArgument,
                "line 2: 1 kv heads where the first layer has 2");
  REQUIRE_ERROR(HeadClasses::ParseTsv("0.5 x\n"), StatusCode::kInvalidArgument,
                "line 1: 'x' is not a finite number");
  REQUIRE_ERROR(HeadClasses::ParseTsv("0.5 nan\n"), StatusCode::kInvalidArgument, "'nan'");
  REQUIRE_ERROR(HeadClasses::ParseTsv("# nothing\n"), StatusCode::kInvalidArgument, "no layer");
  REQUIRE_ERROR(HeadClasses::Load("/nonexistent/heads.tsv"), StatusCode::kNotFound,
                "cannot be read");
  // A directory or a device is refused before it is read (a FIFO would block).
  REQUIRE_ERROR(HeadClasses::Load("/tmp"), StatusCode::kInvalidArgument, "not a regular file");
  REQUIRE_ERROR(HeadClasses::Load("/dev/zero"), StatusCode::kInvalidArgument, "not a regular file");
}

// Scores 0.1 0.2 ... 0.8 (two layers of four heads). numpy.quantile at 0.5:
// position 0.5 x 7 = 3.5, between 0.4 and 0.5: 0.45, so the four highest are
// retrieval heads. At 0.75: position 5.25, 0.6 + 0.25 x 0.1 = 0.625: two.
TEST_CASE("HeadClasses: retrieval heads above numpy's quantile of the sparsity",
          "[policy][head_classes]") {
  auto p = HeadClasses::FromScores(2, 4, {0.8f, 0.1f, 0.5f, 0.3f, 0.2f, 0.7f, 0.4f, 0.6f});
  REQUIRE_OK(p);
  CHECK(p->Retrieval(0.5) == std::vector<uint8_t>{1, 0, 1, 0, 0, 1, 0, 1});
  CHECK(p->Retrieval(0.75) == std::vector<uint8_t>{1, 0, 0, 0, 0, 1, 0, 0});
  CHECK(p->Retrieval(0.0) == std::vector<uint8_t>(8, 1));
  CHECK(p->Retrieval(1.0) == std::vector<uint8_t>(8, 0));
  // Negative: the profile's own classes, score >= 0.5.
  CHECK(p->Retrieval(-1.0) == std::vector<uint8_t>{1, 0, 1, 0, 0, 1, 0, 1});
  // Tied heads stay on the same side.
  auto tied = HeadClasses::FromScores(1, 4, {0.5f, 0.5f, 0.5f, 0.1f});
  REQUIRE_OK(tied);
  CHECK(tied->Retrieval(0.5) == std::vector<uint8_t>{1, 1, 1, 0});

  auto rows = p->Rows({1});
  REQUIRE_OK(rows);
  CHECK(rows->num_layers() == 1);
  CHECK(rows->score(0, 1) == 0.7f);
  REQUIRE_ERROR(p->Rows({2}), StatusCode::kInvalidArgument, "layer 2 is outside");
  REQUIRE_ERROR(HeadClasses::FromScores(2, 4, {0.1f}), StatusCode::kInvalidArgument, "1 scores");
}

}  // namespace
}  // namespace headpage::policy
