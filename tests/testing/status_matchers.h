// SPDX-License-Identifier: Apache-2.0
// Assertions on absl::Status for Catch2 tests.
#ifndef HEADPAGE_TESTS_TESTING_STATUS_MATCHERS_H_
#define HEADPAGE_TESTS_TESTING_STATUS_MATCHERS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tests/testing/catch.h"

namespace headpage::testing {

inline const absl::Status& ToStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& ToStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

}  // namespace headpage::testing

// REQUIRE that a Status or StatusOr is OK, printing the error if not.
#define REQUIRE_OK(expr)                                                        \
  do {                                                                          \
    const ::absl::Status headpage_s_ = ::headpage::testing::ToStatus(expr);     \
    INFO(headpage_s_.ToString());                                               \
    REQUIRE(headpage_s_.ok());                                                  \
  } while (0)

// REQUIRE a given error code, and that the message mentions `substr`.
#define REQUIRE_ERROR(expr, expected_code, substr)                                       \
  do {                                                                          \
    const ::absl::Status headpage_s_ = ::headpage::testing::ToStatus(expr);     \
    INFO(headpage_s_.ToString());                                               \
    REQUIRE(headpage_s_.code() == (expected_code));                                      \
    REQUIRE(std::string(headpage_s_.message()).find(substr) != std::string::npos); \
  } while (0)

#endif  // HEADPAGE_TESTS_TESTING_STATUS_MATCHERS_H_
