// SPDX-License-Identifier: Apache-2.0
// The one include of Catch2 (Debian ships v2), so a move to v3 changes one file.
#ifndef HEADPAGE_TESTS_TESTING_CATCH_H_
#define HEADPAGE_TESTS_TESTING_CATCH_H_

#include <catch2/catch.hpp>

#endif  // HEADPAGE_TESTS_TESTING_CATCH_H_
