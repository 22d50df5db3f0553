// SPDX-License-Identifier: Apache-2.0
// File: sim/trace/trace_header.h
//
// The first half of the trace reader (sim/trace/trace.h): a trace file's JSON
// header, that is its __metadata__ and one entry per tensor, checked against
// itself and against the size of the data section before any tensor byte is
// read. Trace::Open and Trace::FromBuffer (sim/trace/trace.cc) check the
// tensors' shapes and contents next. The file is untrusted: every error is
// InvalidArgument (DataLoss where the file is shorter than the header says)
// and names what is wrong, quoting at most 64 characters of the file's text.
// Internal to the trace reader.
#ifndef HEADPAGE_SIM_TRACE_TRACE_HEADER_H_
#define HEADPAGE_SIM_TRACE_TRACE_HEADER_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"
#include "sim/trace/trace.h"

namespace headpage {
namespace trace_internal {

using Json = nlohmann::json;

// The tensors a captured layer holds: layers.{i}.<name> with the names below.
enum Part { kKeys = 0, kValues, kQueries, kQueryPositions, kOutputs, kOutputProjection, kNumParts };
inline constexpr std::array<const char*, kNumParts> kPartNames = {
    "keys", "values", "queries", "query_positions", "outputs", "output_projection"};

// One tensor of the header, as ParseEntry checked it.
struct TensorEntry {
  std::string name;
  int32_t layer = 0;
  Part part = kKeys;
  bool is_positions = false;
  size_t element_size = 0;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section
  uint64_t end = 0;
};

// "[a, b, c]", for error messages.
std::string ShapeString(const std::vector<int64_t>& shape);

// The header's __metadata__: format "headpage-trace", version "1", the model's
// geometry (each value within the reader's caps), rope_applied and dtype.
[[nodiscard]] absl::StatusOr<TraceMetadata> ParseMetadata(const Json& header);

// Header entry `name` = `value`: a known tensor name of a layer the metadata
// allows, the dtype the metadata says (I32 for query_positions), a shape whose
// byte size does not overflow, and data_offsets inside the `data_size` bytes of
// the data section that hold exactly that size.
[[nodiscard]] absl::StatusOr<TensorEntry> ParseEntry(const std::string& name, const Json& value,
                                                     const TraceMetadata& meta,
                                                     uint64_t data_size);

// No two non-empty tensors share a byte of the data section.
[[nodiscard]] absl::Status CheckNoOverlap(const std::vector<TensorEntry>& entries);

// The entry's shape is `want`; `meaning` says what the dimensions are.
[[nodiscard]] absl::Status CheckShape(const TensorEntry& e, const std::vector<int64_t>& want,
                                      const char* meaning);

}  // namespace trace_internal
}  // namespace headpage

#endif  // HEADPAGE_SIM_TRACE_TRACE_HEADER_H_
