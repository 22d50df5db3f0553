// SPDX-License-Identifier: Apache-2.0
#include "core/status.h"

#include "core/check.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) return absl::InvalidArgumentError("odd");
  return x / 2;
}

absl::Status QuarterInto(int x, int* out) {
  HEADPAGE_ASSIGN_OR_RETURN(const int half, Half(x));
  HEADPAGE_ASSIGN_OR_RETURN(*out, Half(half));
  return absl::OkStatus();
}

absl::Status Chain(int x) {
  int unused = 0;
  HEADPAGE_RETURN_IF_ERROR(QuarterInto(x, &unused));
  return absl::OkStatus();
}

TEST_CASE("status macros propagate errors and move values", "[core]") {
  int out = 0;
  REQUIRE_OK(QuarterInto(8, &out));
  REQUIRE(out == 2);
  REQUIRE_ERROR(QuarterInto(6, &out), absl::StatusCode::kInvalidArgument, "odd");
  REQUIRE_OK(Chain(4));
  REQUIRE_ERROR(Chain(2), absl::StatusCode::kInvalidArgument, "odd");
}

int fatal_calls = 0;
void CountingHandler(const char*, const char*, int) {
  ++fatal_calls;
  throw 1;  // only in this test: lets the check return control without aborting
}

TEST_CASE("a failed check calls the installed fatal handler", "[core]") {
  const FatalHandler previous = SetFatalHandler(&CountingHandler);
  try {
    HEADPAGE_CHECK(1 + 1 == 3);
  } catch (int) {
  }
  SetFatalHandler(previous);
  REQUIRE(fatal_calls == 1);
}

}  // namespace
}  // namespace headpage
