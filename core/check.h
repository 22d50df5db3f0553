// SPDX-License-Identifier: Apache-2.0
// File: core/check.h
//
// Checks for broken invariants. A failed check is a bug in headpage or a caller
// that broke a documented REQUIRES, never bad input (bad input gets a Status):
// it calls the fatal handler, which by default prints file and line and aborts.
//
//   HEADPAGE_CHECK(cond)   always on; used where going on would corrupt memory
//                          (a refcount below zero, a page freed twice).
//   HEADPAGE_DCHECK(cond)  on at debug level >= 1.
//   HEADPAGE_DEBUG_LEVEL   0: off, 1: cheap checks, 2: CheckInvariants() after
//                          every mutation. Set by CMake's HEADPAGE_DEBUG_LEVEL.
#ifndef HEADPAGE_CORE_CHECK_H_
#define HEADPAGE_CORE_CHECK_H_

#ifndef HEADPAGE_DEBUG_LEVEL
#define HEADPAGE_DEBUG_LEVEL 0
#endif

namespace headpage {

// Called with the failed condition's text and location; must not return.
using FatalHandler = void (*)(const char* condition, const char* file, int line);

// Installs `handler` for every later failed check (nullptr restores the default).
// Returns the previous handler. Not thread-safe: call it at start-up.
FatalHandler SetFatalHandler(FatalHandler handler);

[[noreturn]] void CheckFailed(const char* condition, const char* file, int line);

}  // namespace headpage

#define HEADPAGE_CHECK(cond)                                                     \
  do {                                                                           \
    if (__builtin_expect(!(cond), 0)) ::headpage::CheckFailed(#cond, __FILE__, __LINE__); \
  } while (0)

#if HEADPAGE_DEBUG_LEVEL >= 1
#define HEADPAGE_DCHECK(cond) HEADPAGE_CHECK(cond)
#else
#define HEADPAGE_DCHECK(cond) \
  do {                        \
  } while (0)
#endif

#endif  // HEADPAGE_CORE_CHECK_H_
