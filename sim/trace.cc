// SPDX-License-Identifier: Apache-2.0
#include "sim/trace.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

// The tensors are little-endian and the views hand them out as they are.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the trace reader assumes a little-endian host");

namespace headpage {

// Owns what the views point into besides caller-held bytes: the file mapping
// (Open only) and aligned copies of tensors the file stores misaligned.
struct Trace::Mapping {
  void* addr = nullptr;  // MAP_FAILED never gets here
  size_t length = 0;
  std::vector<std::unique_ptr<uint8_t[]>> copies;

  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (addr != nullptr) munmap(addr, length);
  }
};

Trace::Trace(Trace&&) noexcept = default;
Trace& Trace::operator=(Trace&&) noexcept = default;
Trace::~Trace() = default;

int64_t TensorView::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

using Json = nlohmann::json;

constexpr size_t kLengthPrefixBytes = 8;
// safetensors' own cap; a real trace header is a few kilobytes.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxHeads = 1 << 16;
constexpr int64_t kMaxHeadDim = 1024;
constexpr int64_t kMaxInt32 = std::numeric_limits<int32_t>::max();

constexpr char kFormat[] = "headpage-trace";
constexpr char kVersion[] = "1";

enum Part { kKeys = 0, kValues, kQueries, kQueryPositions, kOutputs, kNumParts };
constexpr std::array<const char*, kNumParts> kPartNames = {"keys", "values", "queries",
                                                           "query_positions", "outputs"};

// A metadata value or tensor name quoted for an error message. The file is
// untrusted: cap the length and escape what is not printable.
std::string Quote(absl::string_view s) {
  constexpr size_t kMax = 64;
  std::string out = absl::StrCat("\"", absl::CEscape(s.substr(0, kMax)), "\"");
  if (s.size() > kMax) absl::StrAppend(&out, "...");
  return out;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
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

// ---------------------------------------------------------------------------
// __metadata__

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
  HEADPAGE_ASSIGN_OR_RETURN(m.head_dim, meta.Int("head_dim", 1, kMaxHeadDim));
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

// ---------------------------------------------------------------------------
// Tensor entries

struct Entry {
  std::string name;
  int32_t layer = 0;
  Part part = kKeys;
  bool is_positions = false;
  size_t element_size = 0;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section
  uint64_t end = 0;
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

absl::StatusOr<Entry> ParseEntry(const std::string& name, const Json& value,
                                 const TraceMetadata& meta, uint64_t data_size) {
  Entry e;
  e.name = name;
  int64_t layer = 0;
  if (!ParseName(name, &layer, &e.part)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown tensor ", Quote(name),
        " (a trace holds only layers.{i}.keys|values|queries|query_positions|outputs)"));
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
absl::Status CheckNoOverlap(const std::vector<Entry>& entries) {
  std::vector<const Entry*> sorted;
  sorted.reserve(entries.size());
  for (const Entry& e : entries) {
    if (e.end > e.begin) sorted.push_back(&e);
  }
  std::sort(sorted.begin(), sorted.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  const Entry* furthest = nullptr;
  for (const Entry* e : sorted) {
    if (furthest != nullptr && e->begin < furthest->end) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensors ", furthest->name, " [", furthest->begin, ", ", furthest->end, ") and ", e->name,
          " [", e->begin, ", ", e->end, ") overlap in the data section"));
    }
    if (furthest == nullptr || e->end > furthest->end) furthest = e;
  }
  return absl::OkStatus();
}

absl::Status CheckShape(const Entry& e, const std::vector<int64_t>& want, const char* meaning) {
  if (e.shape != want) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", e.name, " has shape ",
                                                   ShapeString(e.shape), ", want ",
                                                   ShapeString(want), " (", meaning, ")"));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Contents

absl::Status CheckPositions(const Entry& e, const uint8_t* data, int32_t num_tokens) {
  const int64_t n = e.shape[0];
  int32_t previous = 0;
  for (int64_t i = 0; i < n; ++i) {
    int32_t p;
    std::memcpy(&p, data + i * sizeof(int32_t), sizeof(p));  // may be misaligned
    if (p < 0 || p >= num_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", e.name, ": [", i, "] = ", p,
                                                     " is outside [0, ", num_tokens,
                                                     ") (prompt_len + generated_len)"));
    }
    if (i > 0 && p <= previous) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", e.name,
                                                     " is not strictly ascending: [", i, "] = ", p,
                                                     " after [", i - 1, "] = ", previous));
    }
    previous = p;
  }
  return absl::OkStatus();
}

// Element i of a `dtype` array as float. Reads through memcpy (the bytes may be
// misaligned here) and converts with core/dtype.h, exactly as consumers will.
template <DType kDType>
float ElementAt(const uint8_t* data, int64_t i) {
  if constexpr (kDType == DType::kF32) {
    uint32_t bits;
    std::memcpy(&bits, data + i * 4, 4);
    return BitsToFloat(bits);
  } else {
    uint16_t bits;
    std::memcpy(&bits, data + i * 2, 2);
    if constexpr (kDType == DType::kF16) return f16::FromBits(bits).ToFloat();
    return bf16::FromBits(bits).ToFloat();
  }
}

// Index of the first NaN or Inf among n elements, or -1.
template <DType kDType>
int64_t FirstNonFinite(const uint8_t* data, int64_t n, float* value) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = ElementAt<kDType>(data, i);
    if (!std::isfinite(v)) {
      *value = v;
      return i;
    }
  }
  return -1;
}

absl::Status CheckFinite(const Entry& e, const uint8_t* data, DType dtype) {
  const int64_t n = static_cast<int64_t>((e.end - e.begin) / SizeOf(dtype));
  float value = 0.0f;
  int64_t bad = -1;
  switch (dtype) {
    case DType::kF16: bad = FirstNonFinite<DType::kF16>(data, n, &value); break;
    case DType::kBF16: bad = FirstNonFinite<DType::kBF16>(data, n, &value); break;
    case DType::kF32: bad = FirstNonFinite<DType::kF32>(data, n, &value); break;
  }
  if (bad < 0) return absl::OkStatus();
  // Shapes are [heads, rows, head_dim] by now (checked before contents), and
  // n > 0, so neither divisor is 0: name the element.
  const int64_t cols = e.shape[2];
  const int64_t rows = e.shape[1];
  return absl::InvalidArgumentError(absl::StrCat(
      "tensor ", e.name, " holds ", std::isnan(value) ? "NaN" : (value > 0 ? "+Inf" : "-Inf"),
      " at [", bad / (rows * cols), ", ", (bad / cols) % rows, ", ", bad % cols, "]"));
}

// ---------------------------------------------------------------------------
// The whole file

struct Parsed {
  TraceMetadata metadata;
  std::vector<TraceLayer> layers;
};

// A view of `e`. The views promise alignment to the element size (consumers may
// index them as typed arrays); safetensors does not promise it, and a buffer
// handed to FromBuffer may start anywhere, so a misaligned tensor is copied.
const void* ViewData(const Entry& e, const uint8_t* data_section,
                     std::vector<std::unique_ptr<uint8_t[]>>* copies) {
  const uint8_t* p = data_section + e.begin;
  if (reinterpret_cast<uintptr_t>(p) % e.element_size == 0) return p;
  const size_t bytes = e.end - e.begin;
  // operator new[] aligns to __STDCPP_DEFAULT_NEW_ALIGNMENT__ (16 here).
  copies->push_back(std::make_unique<uint8_t[]>(bytes));
  std::memcpy(copies->back().get(), p, bytes);
  return copies->back().get();
}

absl::StatusOr<Parsed> Parse(const uint8_t* bytes, size_t size,
                             std::vector<std::unique_ptr<uint8_t[]>>* copies) {
  if (size < kLengthPrefixBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("trace is ", size,
                     " bytes, too short for a safetensors file (an 8-byte header length, then a "
                     "JSON header)"));
  }
  uint64_t header_len = 0;
  for (size_t i = 0; i < kLengthPrefixBytes; ++i) {
    header_len |= static_cast<uint64_t>(bytes[i]) << (8 * i);
  }
  if (header_len < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("header length ", header_len, " is too small to hold a JSON object"));
  }
  if (header_len > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat("header length ", header_len,
                                                   " exceeds the cap of ", kMaxHeaderBytes,
                                                   " bytes (not a safetensors file?)"));
  }
  if (header_len > size - kLengthPrefixBytes) {
    return absl::DataLossError(absl::StrCat(
        "header length ", header_len, " runs past the end of the file (", size - kLengthPrefixBytes,
        " bytes follow the length): the file is truncated"));
  }
  const char* header_begin = reinterpret_cast<const char*>(bytes + kLengthPrefixBytes);
  const Json header = Json::parse(header_begin, header_begin + header_len, /*cb=*/nullptr,
                                  /*allow_exceptions=*/false);
  if (header.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat("trace header (", header_len, " bytes) is not valid JSON"));
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("trace header is a JSON ", header.type_name(), ", want an object"));
  }

  Parsed parsed;
  HEADPAGE_ASSIGN_OR_RETURN(parsed.metadata, ParseMetadata(header));
  const TraceMetadata& meta = parsed.metadata;
  const uint8_t* data_section = bytes + kLengthPrefixBytes + header_len;
  const uint64_t data_size = size - kLengthPrefixBytes - header_len;

  std::vector<Entry> entries;
  for (const auto& item : header.items()) {
    if (item.key() == "__metadata__") continue;
    HEADPAGE_ASSIGN_OR_RETURN(Entry e, ParseEntry(item.key(), item.value(), meta, data_size));
    entries.push_back(std::move(e));
  }
  HEADPAGE_RETURN_IF_ERROR(CheckNoOverlap(entries));

  // Layers by index (std::map keeps them sorted), each with its parts.
  std::map<int32_t, std::array<const Entry*, kNumParts>> layers;
  for (const Entry& e : entries) {
    auto& parts = layers.try_emplace(e.layer).first->second;
    // Unreachable through JSON (an object's keys are unique and ParseName
    // accepts one spelling per tensor), kept so that stays true.
    if (parts[e.part] != nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", e.name, " appears twice"));
    }
    parts[e.part] = &e;
  }
  if (layers.empty()) {
    return absl::InvalidArgumentError("trace holds no layers (no layers.{i}.* tensors)");
  }

  const int64_t num_tokens = static_cast<int64_t>(meta.prompt_len) + meta.generated_len;
  for (const auto& [index, parts] : layers) {
    for (Part p : {kKeys, kValues, kQueries, kQueryPositions}) {
      if (parts[p] == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            "layer ", index, " has no layers.", index, ".", kPartNames[p],
            " (keys, values, queries and query_positions are required for every layer present)"));
      }
    }
    const std::vector<int64_t> kv_shape = {meta.num_kv_heads, num_tokens, meta.head_dim};
    constexpr char kKvMeaning[] = "[num_kv_heads, prompt_len + generated_len, head_dim]";
    HEADPAGE_RETURN_IF_ERROR(CheckShape(*parts[kKeys], kv_shape, kKvMeaning));
    HEADPAGE_RETURN_IF_ERROR(CheckShape(*parts[kValues], kv_shape, kKvMeaning));
    const Entry& positions = *parts[kQueryPositions];
    if (positions.shape.size() != 1 || positions.shape[0] < 1) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", positions.name, " has shape ",
                                                     ShapeString(positions.shape),
                                                     ", want [num_queries] with num_queries >= 1"));
    }
    const int64_t num_queries = positions.shape[0];
    const std::vector<int64_t> q_shape = {meta.num_q_heads, num_queries, meta.head_dim};
    constexpr char kQMeaning[] =
        "[num_q_heads, num_queries, head_dim], num_queries from query_positions";
    HEADPAGE_RETURN_IF_ERROR(CheckShape(*parts[kQueries], q_shape, kQMeaning));
    if (parts[kOutputs] != nullptr) {
      HEADPAGE_RETURN_IF_ERROR(CheckShape(*parts[kOutputs], q_shape, kQMeaning));
    }
  }

  // Contents last: every range read below is now known to be inside the file
  // and to have the size its shape says.
  for (const auto& [index, parts] : layers) {
    const Entry& positions = *parts[kQueryPositions];
    HEADPAGE_RETURN_IF_ERROR(CheckPositions(positions, data_section + positions.begin,
                                            static_cast<int32_t>(num_tokens)));
    for (Part p : {kKeys, kValues, kQueries, kOutputs}) {
      if (parts[p] == nullptr) continue;
      HEADPAGE_RETURN_IF_ERROR(CheckFinite(*parts[p], data_section + parts[p]->begin, meta.dtype));
    }
  }

  parsed.layers.reserve(layers.size());
  for (const auto& [index, parts] : layers) {
    auto view = [&](const Entry& e) {
      TensorView v;
      v.dtype = meta.dtype;
      v.shape = e.shape;
      v.data = ViewData(e, data_section, copies);
      return v;
    };
    TraceLayer layer;
    layer.index = index;
    layer.keys = view(*parts[kKeys]);
    layer.values = view(*parts[kValues]);
    layer.queries = view(*parts[kQueries]);
    if (parts[kOutputs] != nullptr) layer.outputs = view(*parts[kOutputs]);
    const Entry& positions = *parts[kQueryPositions];
    layer.query_positions =
        absl::MakeConstSpan(static_cast<const int32_t*>(ViewData(positions, data_section, copies)),
                            static_cast<size_t>(positions.shape[0]));
    parsed.layers.push_back(std::move(layer));
  }
  return parsed;
}

absl::Status WithPath(const std::string& path, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat(path, ": ", status.message()));
}

}  // namespace

absl::StatusOr<Trace> Trace::FromBuffer(absl::Span<const uint8_t> bytes) {
  auto mapping = std::make_unique<Mapping>();
  HEADPAGE_ASSIGN_OR_RETURN(Parsed parsed, Parse(bytes.data(), bytes.size(), &mapping->copies));
  Trace trace;
  trace.mapping_ = std::move(mapping);
  trace.metadata_ = std::move(parsed.metadata);
  trace.layers_ = std::move(parsed.layers);
  return trace;
}

absl::StatusOr<Trace> Trace::Open(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return absl::ErrnoToStatus(err, absl::StrCat(path, ": cannot open"));
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return absl::ErrnoToStatus(err, absl::StrCat(path, ": cannot stat"));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < kLengthPrefixBytes) {
    close(fd);
    // mmap of an empty file fails; Parse words the error for any short file.
    return WithPath(path, Parse(nullptr, size, nullptr).status());
  }
  void* addr = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int mmap_errno = errno;
  close(fd);  // the mapping keeps the file open
  if (addr == MAP_FAILED) {
    return absl::ErrnoToStatus(mmap_errno, absl::StrCat(path, ": cannot mmap"));
  }

  auto mapping = std::make_unique<Mapping>();
  mapping->addr = addr;
  mapping->length = size;
  absl::StatusOr<Parsed> parsed = Parse(static_cast<const uint8_t*>(addr), size, &mapping->copies);
  if (!parsed.ok()) return WithPath(path, parsed.status());
  Trace trace;
  trace.mapping_ = std::move(mapping);
  trace.metadata_ = std::move(parsed->metadata);
  trace.layers_ = std::move(parsed->layers);
  return trace;
}

}  // namespace headpage
