// SPDX-License-Identifier: Apache-2.0
#include "sim/trace/trace_header.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/geometry.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace headpage {
namespace trace_internal {
namespace {

constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxHeads = 1 << 16;
constexpr int64_t kMaxInt32 = std::numeric_limits<int32_t>::max();

constexpr char kFormat[] = "headpage-trace";
constexpr char kVersion[] = "1";

// A metadata value or tensor name quoted for an error message. The file is
// untrusted: cap the length and escape what is not printable.
std::string Quote(absl::string_view s) {
  constexpr size_t kMax = 64;
  std::string out = absl::StrCat("\"", absl::CEscape(s.substr(0, kMax)), "\"");
  if (s.size() > kMax) absl::StrAppend(&out, "...");
  return out;
}

// safetensors' dtype code for a trace dtype.
const char* SafetensorsCode(DType dtype) {
  switch (dtype) {
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kF32: return "F32";
  }
  return "?";
}

const char* MetadataName(DType dtype) {
  switch (dtype) {
    case DType::kF16: return "float16";
    case DType::kBF16: return "bfloat16";
    case DType::kF32: return "float32";
  }
  return "?";
}

class MetadataReader {
 public:
  explicit MetadataReader(const Json& object) : object_(object) {}

  // nullptr when absent. Values were checked to be strings up front.
  const std::string* Find(const char* key) const {
    auto it = object_.find(key);
    if (it == object_.end()) return nullptr;
    return &it->get_ref<const std::string&>();
  }

  absl::StatusOr<std::string> Required(const char* key) const {
    const std::string* value = Find(key);
    if (value == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("__metadata__ has no \"", key, "\""));
    }
    return *value;
  }

  absl::StatusOr<int32_t> Int(const char* key, int64_t min, int64_t max) const {
    HEADPAGE_ASSIGN_OR_RETURN(const std::string text, Required(key));
    int64_t value = 0;
    if (!absl::SimpleAtoi(text, &value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("__metadata__ ", key, " = ", Quote(text), " is not an integer"));
    }
    if (value < min || value > max) {
      return absl::InvalidArgumentError(
          absl::StrCat("__metadata__ ", key, " = ", value, " is outside [", min, ", ", max, "]"));
    }
    return static_cast<int32_t>(value);
  }

 private:
  const Json& object_;
};

// "layers.{i}.{part}" with i canonical decimal (no sign, no leading zeros), so
// every tensor has exactly one name.
bool ParseName(absl::string_view name, int64_t* layer, Part* part) {
  constexpr absl::string_view kPrefix = "layers.";
  if (name.substr(0, kPrefix.size()) != kPrefix) return false;
  name.remove_prefix(kPrefix.size());
  const size_t dot = name.find('.');
  if (dot == absl::string_view::npos || dot == 0 || dot > 9) return false;
  const absl::string_view digits = name.substr(0, dot);
  if (digits.size() > 1 && digits[0] == '0') return false;
  int64_t value = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + (c - '0');
  }
  const absl::string_view suffix = name.substr(dot + 1);
  for (int p = 0; p < kNumParts; ++p) {
    if (suffix == kPartNames[p]) {
      *layer = value;
      *part = static_cast<Part>(p);
      return true;
    }
  }
  return false;
}

// A JSON value that is a non-negative integer fitting int64.
bool AsIndex(const Json& v, uint64_t* out) {
  if (!v.is_number_unsigned()) return false;
  const uint64_t value = v.get<uint64_t>();
  if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
  *out = value;
  return true;
}

}  // namespace

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<TraceMetadata> ParseMetadata(const Json& header) {
  auto it = header.find("__metadata__");
  if (it == header.end()) {
    return absl::InvalidArgumentError(
        "trace header has no __metadata__ (a headpage trace needs format, version and the model "
        "geometry there)");
  }
  if (!it->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("__metadata__ is a JSON ", it->type_name(), ", want an object"));
  }
  // safetensors allows only string values here; Python's save_file enforces it.
  for (const auto& item : it->items()) {
    if (!item.value().is_string()) {
      return absl::InvalidArgumentError(absl::StrCat("__metadata__ ", Quote(item.key()),
                                                     " is a JSON ", item.value().type_name(),
                                                     ", want a string"));
    }
  }
  const MetadataReader meta(*it);

  // Format and version first: a file that is some other safetensors gets a
  // message that says so rather than one about a missing head count.
  HEADPAGE_ASSIGN_OR_RETURN(const std::string format, meta.Required("format"));
  if (format != kFormat) {
    return absl::InvalidArgumentError(
        absl::StrCat("__metadata__ format is ", Quote(format), ", want \"", kFormat, "\""));
  }
  HEADPAGE_ASSIGN_OR_RETURN(const std::string version, meta.Required("version"));
  if (version != kVersion) {
    return absl::InvalidArgumentError(absl::StrCat("__metadata__ version is ", Quote(version),
                                                   "; this reader reads version \"", kVersion,
                                                   "\""));
  }

  TraceMetadata m;
  if (const std::string* s = meta.Find("model")) m.model = *s;
  if (const std::string* s = meta.Find("source")) m.source = *s;
  if (const std::string* s = meta.Find("task")) m.task = *s;
  HEADPAGE_ASSIGN_OR_RETURN(m.num_layers, meta.Int("num_layers", 1, kMaxLayers));
  HEADPAGE_ASSIGN_OR_RETURN(m.num_q_heads, meta.Int("num_q_heads", 1, kMaxHeads));
  HEADPAGE_ASSIGN_OR_RETURN(m.num_kv_heads, meta.Int("num_kv_heads", 1, kMaxHeads));
  // Whatever a geometry takes (core/geometry.h), so that every trace replays.
  HEADPAGE_ASSIGN_OR_RETURN(m.head_dim, meta.Int("head_dim", 1, headpage::kMaxHeadDim));
  HEADPAGE_ASSIGN_OR_RETURN(m.prompt_len, meta.Int("prompt_len", 1, kMaxInt32));
  HEADPAGE_ASSIGN_OR_RETURN(m.generated_len, meta.Int("generated_len", 0, kMaxInt32));
  if (m.num_q_heads % m.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("__metadata__ num_q_heads (", m.num_q_heads,
                                                   ") is not a multiple of num_kv_heads (",
                                                   m.num_kv_heads, ")"));
  }
  // Trace::num_tokens() adds them in int32.
  if (static_cast<int64_t>(m.prompt_len) + m.generated_len > kMaxInt32) {
    return absl::InvalidArgumentError(absl::StrCat("__metadata__ prompt_len + generated_len (",
                                                   m.prompt_len, " + ", m.generated_len,
                                                   ") does not fit in int32"));
  }

  HEADPAGE_ASSIGN_OR_RETURN(const std::string rope, meta.Required("rope_applied"));
  if (rope == "true") {
    m.rope_applied = true;
  } else if (rope == "false") {
    m.rope_applied = false;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("__metadata__ rope_applied is ", Quote(rope), ", want \"true\" or \"false\""));
  }

  HEADPAGE_ASSIGN_OR_RETURN(const std::string dtype, meta.Required("dtype"));
  if (dtype == "float16") {
    m.dtype = DType::kF16;
  } else if (dtype == "bfloat16") {
    m.dtype = DType::kBF16;
  } else if (dtype == "float32") {
    m.dtype = DType::kF32;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "__metadata__ dtype is ", Quote(dtype), ", want \"float16\", \"bfloat16\" or \"float32\""));
  }
  return m;
}

absl::StatusOr<TensorEntry> ParseEntry(const std::string& name, const Json& value,
                                 const TraceMetadata& meta, uint64_t data_size) {
  TensorEntry e;
  e.name = name;
  int64_t layer = 0;
  if (!ParseName(name, &layer, &e.part)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown tensor ", Quote(name),
        " (a trace holds only layers.{i}.keys|values|queries|query_positions|outputs|output_projection)"));
  }
  if (layer >= meta.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", name, ": layer ", layer,
                                                   " is outside [0, ", meta.num_layers,
                                                   ") (__metadata__ num_layers)"));
  }
  e.layer = static_cast<int32_t>(layer);
  if (!value.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", name, ": entry is a JSON ", value.type_name(), ", want an object"));
  }

  auto dtype_it = value.find("dtype");
  if (dtype_it == value.end() || !dtype_it->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", name, ": no \"dtype\" string"));
  }
  const std::string& dtype = dtype_it->get_ref<const std::string&>();
  e.is_positions = e.part == kQueryPositions;
  const char* want = e.is_positions ? "I32" : SafetensorsCode(meta.dtype);
  if (dtype != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", name, " has dtype ", Quote(dtype), ", want \"", want, "\"",
        e.is_positions ? ""
                       : absl::StrCat(" (__metadata__ dtype is ", MetadataName(meta.dtype), ")")));
  }
  e.element_size = e.is_positions ? sizeof(int32_t) : SizeOf(meta.dtype);

  auto shape_it = value.find("shape");
  if (shape_it == value.end() || !shape_it->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", name, ": no \"shape\" array"));
  }
  uint64_t elements = 1;
  bool overflow = false;
  for (const Json& d : *shape_it) {
    uint64_t dim = 0;
    if (!AsIndex(d, &dim)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, ": shape holds a ",
                                                     d.type_name(),
                                                     " that is not a non-negative integer"));
    }
    e.shape.push_back(static_cast<int64_t>(dim));
    overflow = overflow || __builtin_mul_overflow(elements, dim, &elements);
  }
  uint64_t bytes = 0;
  overflow = overflow || __builtin_mul_overflow(elements, e.element_size, &bytes);
  if (overflow) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", name, ": shape ", ShapeString(e.shape), " is too large"));
  }

  auto offsets_it = value.find("data_offsets");
  if (offsets_it == value.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
      !AsIndex((*offsets_it)[0], &e.begin) || !AsIndex((*offsets_it)[1], &e.end)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", name, ": \"data_offsets\" must be [begin, end], two non-negative integers"));
  }
  if (e.begin > e.end) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", name, ": data_offsets [", e.begin,
                                                   ", ", e.end, "] has begin > end"));
  }
  if (e.end > data_size) {
    // The header promises bytes the file does not have: most likely a
    // truncated copy, hence DataLoss rather than InvalidArgument.
    return absl::DataLossError(absl::StrCat("tensor ", name, ": data_offsets [", e.begin, ", ",
                                            e.end, "] run past the end of the data section (",
                                            data_size, " bytes): the file is truncated"));
  }
  if (e.end - e.begin != bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", name, ": data_offsets [", e.begin, ", ", e.end, "] hold ", e.end - e.begin,
        " bytes, but shape ", ShapeString(e.shape), " of ", dtype, " needs ", bytes));
  }
  return e;
}

// Sorted by position, no tensor may start before the furthest end seen so far.
// Empty tensors occupy no bytes and cannot overlap anything.
absl::Status CheckNoOverlap(const std::vector<TensorEntry>& entries) {
  std::vector<const TensorEntry*> sorted;
  sorted.reserve(entries.size());
  for (const TensorEntry& e : entries) {
    if (e.end > e.begin) sorted.push_back(&e);
  }
  std::sort(sorted.begin(), sorted.end(), [](const TensorEntry* a, const TensorEntry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  const TensorEntry* furthest = nullptr;
  for (const TensorEntry* e : sorted) {
    if (furthest != nullptr && e->begin < furthest->end) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensors ", furthest->name, " [", furthest->begin, ", ", furthest->end, ") and ", e->name,
          " [", e->begin, ", ", e->end, ") overlap in the data section"));
    }
    if (furthest == nullptr || e->end > furthest->end) furthest = e;
  }
  return absl::OkStatus();
}

absl::Status CheckShape(const TensorEntry& e, const std::vector<int64_t>& want,
                        const char* meaning) {
  if (e.shape != want) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", e.name, " has shape ",
                                                   ShapeString(e.shape), ", want ",
                                                   ShapeString(want), " (", meaning, ")"));
  }
  return absl::OkStatus();
}

}  // namespace trace_internal
}  // namespace headpage
