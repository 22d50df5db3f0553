// SPDX-License-Identifier: Apache-2.0
// Helpers of the trace reader's tests (trace_test.cc, trace_malformed_test.cc):
// what a valid trace must read back as, and valid traces with one thing broken.
#ifndef HEADPAGE_TESTS_SIM_TRACE_TRACE_TEST_HELPERS_H_
#define HEADPAGE_TESTS_SIM_TRACE_TRACE_TEST_HELPERS_H_

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "sim/trace/trace.h"
#include "tests/sim/trace/trace_writer.h"
#include "tests/testing/catch.h"

namespace headpage::testing {

// The default TraceSpec: 2 layers, 4 q heads, 2 kv heads, head_dim 8, 12 prompt
// + 3 generated = 15 tokens, queries at positions 8..14 (7 of them).

// The reader's views hold exactly what the writer wrote.
inline void RequireMatchesSpec(const Trace& trace, const TraceSpec& spec) {
  const TraceMetadata& m = trace.metadata();
  REQUIRE(m.num_layers == spec.num_layers);
  REQUIRE(m.num_q_heads == spec.num_q_heads);
  REQUIRE(m.num_kv_heads == spec.num_kv_heads);
  REQUIRE(m.head_dim == spec.head_dim);
  REQUIRE(m.prompt_len == spec.prompt_len);
  REQUIRE(m.generated_len == spec.generated_len);
  REQUIRE(m.dtype == spec.dtype);
  REQUIRE(trace.num_tokens() == spec.num_tokens());
  std::vector<int32_t> want_layers = spec.layers;
  if (want_layers.empty()) {
    for (int32_t l = 0; l < spec.num_layers; ++l) want_layers.push_back(l);
  }
  std::sort(want_layers.begin(), want_layers.end());
  REQUIRE(trace.layers().size() == want_layers.size());
  const std::vector<int32_t> positions = testing::QueryPositions(spec);
  for (size_t i = 0; i < want_layers.size(); ++i) {
    const TraceLayer& layer = trace.layers()[i];
    REQUIRE(layer.index == want_layers[i]);
    const std::vector<int64_t> kv = {spec.num_kv_heads, spec.num_tokens(), spec.head_dim};
    const std::vector<int64_t> q = {spec.num_q_heads, spec.num_queries(), spec.head_dim};
    REQUIRE(layer.keys.shape == kv);
    REQUIRE(layer.values.shape == kv);
    REQUIRE(layer.queries.shape == q);
    REQUIRE(layer.outputs.has_value() == spec.outputs);
    REQUIRE(std::vector<int32_t>(layer.query_positions.begin(), layer.query_positions.end()) ==
            positions);
    auto check = [&](const TensorView& v, TracePart part) {
      REQUIRE(v.dtype == spec.dtype);
      REQUIRE(reinterpret_cast<uintptr_t>(v.data) % SizeOf(v.dtype) == 0);
      for (int64_t e = 0; e < v.num_elements(); ++e) {
        INFO("layer " << layer.index << " part " << static_cast<int>(part) << " element " << e);
        REQUIRE(LoadAsFloat(v.data, static_cast<size_t>(e), v.dtype) ==
                TraceValue(spec, layer.index, part, e));
      }
    };
    check(layer.keys, TracePart::kKeys);
    check(layer.values, TracePart::kValues);
    check(layer.queries, TracePart::kQueries);
    if (layer.outputs) check(*layer.outputs, TracePart::kOutputs);
    REQUIRE(reinterpret_cast<uintptr_t>(layer.query_positions.data()) % alignof(int32_t) == 0);
  }
}

inline std::vector<uint8_t> Mutated(const std::function<void(WriterFile&)>& mutate,
                                    TraceSpec spec = {}) {
  WriterFile file = MakeTrace(spec);
  mutate(file);
  return Serialize(file);
}

inline std::vector<uint8_t> WithMetadata(const std::string& key, const std::string& value) {
  return Mutated([&](WriterFile& f) { f.SetMetadata(key, value); });
}

inline std::vector<uint8_t> WithShape(const std::string& name, std::vector<int64_t> shape) {
  return Mutated([&](WriterFile& f) { f.Find(name)->shape = shape; });
}

// The 8-byte length, then exactly `header` (no padding), then `data`.
inline std::vector<uint8_t> RawFile(const std::string& header,
                                    const std::vector<uint8_t>& data = {}) {
  return Assemble(header, data, /*pad=*/false);
}

inline absl::Status Check(const std::vector<uint8_t>& bytes) {
  return Trace::FromBuffer(bytes).status();
}

}  // namespace headpage::testing

#endif  // HEADPAGE_TESTS_SIM_TRACE_TRACE_TEST_HELPERS_H_
