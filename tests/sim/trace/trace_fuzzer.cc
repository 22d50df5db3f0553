// SPDX-License-Identifier: Apache-2.0
// libFuzzer target for the trace reader (scripts/fuzz-trace builds and runs it).
// Any input must give a Trace or InvalidArgument/DataLoss, never a crash, a
// sanitizer report or another code; a Trace it accepts must keep every promise
// of sim/trace/trace.h, which this checks by reading every element of every view.
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "absl/types/span.h"
#include "sim/trace/trace.h"

namespace {

void Require(bool ok) {
  if (!ok) std::abort();
}

// Shape and alignment as promised, and every element finite.
void CheckView(const headpage::TensorView& v, headpage::DType dtype, int64_t rows, int64_t heads,
               int32_t head_dim) {
  Require(v.dtype == dtype);
  Require(v.shape.size() == 3 && v.shape[0] == heads && v.shape[1] == rows &&
          v.shape[2] == head_dim);
  Require(reinterpret_cast<uintptr_t>(v.data) % headpage::SizeOf(dtype) == 0);
  const int64_t n = v.num_elements();
  for (int64_t i = 0; i < n; ++i) {
    Require(std::isfinite(headpage::LoadAsFloat(v.data, static_cast<size_t>(i), dtype)));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::StatusOr<headpage::Trace> trace =
      headpage::Trace::FromBuffer(absl::MakeConstSpan(data, size));
  if (!trace.ok()) {
    const absl::StatusCode code = trace.status().code();
    Require(code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kDataLoss);
    Require(!trace.status().message().empty());
    return 0;
  }
  const headpage::TraceMetadata& m = trace->metadata();
  Require(m.num_layers >= 1 && m.num_q_heads % m.num_kv_heads == 0);
  Require(!trace->layers().empty());
  int32_t previous_layer = -1;
  for (const headpage::TraceLayer& layer : trace->layers()) {
    Require(layer.index > previous_layer && layer.index < m.num_layers);
    previous_layer = layer.index;
    const auto& positions = layer.query_positions;
    Require(!positions.empty());
    Require(reinterpret_cast<uintptr_t>(positions.data()) % alignof(int32_t) == 0);
    for (size_t i = 0; i < positions.size(); ++i) {
      Require(positions[i] >= 0 && positions[i] < trace->num_tokens());
      Require(i == 0 || positions[i] > positions[i - 1]);
    }
    const auto num_queries = static_cast<int64_t>(positions.size());
    CheckView(layer.keys, m.dtype, trace->num_tokens(), m.num_kv_heads, m.head_dim);
    CheckView(layer.values, m.dtype, trace->num_tokens(), m.num_kv_heads, m.head_dim);
    CheckView(layer.queries, m.dtype, num_queries, m.num_q_heads, m.head_dim);
    if (layer.outputs) CheckView(*layer.outputs, m.dtype, num_queries, m.num_q_heads, m.head_dim);
  }
  return 0;
}
