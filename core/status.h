// SPDX-License-Identifier: Apache-2.0
// File: core/status.h
//
// Propagation macros for absl::Status. Debian's Abseil (20220623) predates
// ABSL_RETURN_IF_ERROR and ABSL_ASSIGN_OR_RETURN; switch to those once the pinned
// Abseil has them.
#ifndef HEADPAGE_CORE_STATUS_H_
#define HEADPAGE_CORE_STATUS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define HEADPAGE_STATUS_CONCAT_INNER_(a, b) a##b
#define HEADPAGE_STATUS_CONCAT_(a, b) HEADPAGE_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define HEADPAGE_RETURN_IF_ERROR(expr)                         \
  do {                                                         \
    ::absl::Status headpage_status_ = (expr);                  \
    if (!headpage_status_.ok()) return headpage_status_;       \
  } while (0)

// HEADPAGE_ASSIGN_OR_RETURN(auto x, MakeX()); evaluates an absl::StatusOr<T>,
// returns its status on error, else moves its value into the declaration.
#define HEADPAGE_ASSIGN_OR_RETURN(lhs, expr) \
  HEADPAGE_ASSIGN_OR_RETURN_IMPL_(HEADPAGE_STATUS_CONCAT_(headpage_statusor_, __LINE__), lhs, expr)
#define HEADPAGE_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                    \
  if (!tmp.ok()) return std::move(tmp).status();        \
  lhs = std::move(tmp).value()

#endif  // HEADPAGE_CORE_STATUS_H_
