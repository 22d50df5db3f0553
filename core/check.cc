// SPDX-License-Identifier: Apache-2.0
#include "core/check.h"

#include <cstdio>
#include <cstdlib>

namespace headpage {
namespace {

void DefaultFatalHandler(const char* condition, const char* file, int line) {
  std::fprintf(stderr, "%s:%d: headpage check failed: %s\n", file, line, condition);
  std::fflush(stderr);
  std::abort();
}

FatalHandler fatal_handler = &DefaultFatalHandler;

}  // namespace

FatalHandler SetFatalHandler(FatalHandler handler) {
  FatalHandler previous = fatal_handler;
  fatal_handler = handler != nullptr ? handler : &DefaultFatalHandler;
  return previous;
}

void CheckFailed(const char* condition, const char* file, int line) {
  fatal_handler(condition, file, line);
  // A handler that returns would let corrupted state run on.
  std::abort();
}

}  // namespace headpage
