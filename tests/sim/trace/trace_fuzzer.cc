// SPDX-License-Identifier: Apache-2.0
// libFuzzer target for the trace reader and what reads a trace after it
// (scripts/fuzz-trace builds and runs it): every input must keep the promises
// of tests/sim/trace/trace_input_check.h (the reader's, then `headpage trace
// info`'s statistics and a short replay). A broken one is printed and aborts,
// which libFuzzer reports as a crash and keeps the input.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/types/span.h"
#include "tests/sim/trace/trace_input_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string broken = headpage::testing::CheckTraceInput(absl::MakeConstSpan(data, size));
  if (!broken.empty()) {
    std::fprintf(stderr, "trace_fuzzer: %s\n", broken.c_str());
    std::abort();
  }
  return 0;
}
