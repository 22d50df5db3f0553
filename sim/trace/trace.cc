// SPDX-License-Identifier: Apache-2.0
#include "sim/trace/trace.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <map>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "nlohmann/json.hpp"
#include "sim/trace/trace_header.h"

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

namespace trace_internal {
namespace {

constexpr size_t kLengthPrefixBytes = 8;
// safetensors' own cap; a real trace header is a few kilobytes.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// ---------------------------------------------------------------------------
// Contents

absl::Status CheckPositions(const TensorEntry& e, const uint8_t* data, int32_t num_tokens) {
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

// The largest magnitude a replay takes: with |q|, |k|, |v| at most 1e15, a dot
// product over head_dim <= 4096 stays below 4.1e33 and a squared error sum below
// 4.1e33, inside float's 3.4e38, so finite inputs give finite metrics (f16's
// whole range fits; f32 and bf16 values near 1e38 made NaN before).
constexpr float kMaxTraceMagnitude = 1e15f;
// The largest hidden size an output projection may have (Llama-3-405B's is 16384).
constexpr int64_t kMaxHiddenSize = 1 << 20;

// Index of the first NaN, Inf or value beyond kMaxTraceMagnitude among n
// elements, or -1.
template <DType kDType>
int64_t FirstNonFinite(const uint8_t* data, int64_t n, float* value) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = ElementAt<kDType>(data, i);
    if (!(std::fabs(v) <= kMaxTraceMagnitude)) {
      *value = v;
      return i;
    }
  }
  return -1;
}

absl::Status CheckFinite(const TensorEntry& e, const uint8_t* data, DType dtype) {
  const int64_t n = static_cast<int64_t>((e.end - e.begin) / SizeOf(dtype));
  float value = 0.0f;
  int64_t bad = -1;
  switch (dtype) {
    case DType::kF16: bad = FirstNonFinite<DType::kF16>(data, n, &value); break;
    case DType::kBF16: bad = FirstNonFinite<DType::kBF16>(data, n, &value); break;
    case DType::kF32: bad = FirstNonFinite<DType::kF32>(data, n, &value); break;
  }
  if (bad < 0) return absl::OkStatus();
  // Shapes are checked by now (before contents) and n > 0, so no dimension
  // is 0: name the element, [heads, rows, head_dim] or [rows, cols].
  std::string where = "]";
  int64_t rest = bad;
  for (size_t i = e.shape.size(); i-- > 0;) {
    where = absl::StrCat(i == 0 ? " at [" : ", ", rest % e.shape[i], where);
    rest /= e.shape[i];
  }
  if (std::isfinite(value)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", e.name, " holds ", value, where, ", beyond the magnitude 1e15 a replay "
        "computes with in float (attention logits and errors would overflow)"));
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "tensor ", e.name, " holds ", std::isnan(value) ? "NaN" : (value > 0 ? "+Inf" : "-Inf"),
      where));
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
const void* ViewData(const TensorEntry& e, const uint8_t* data_section,
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
  const absl::string_view header_text(header_begin, static_cast<size_t>(header_len));
  // The JSON lexer would stop at a NUL and take what follows for nothing.
  if (const size_t nul = header_text.find('\0'); nul != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "trace header holds a NUL byte at offset ", nul, "; only spaces may pad the JSON"));
  }
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
  // What docs/trace-format.md allows, as safetensors itself: the object from
  // the first byte (no byte-order mark, no leading whitespace), then spaces only
  // (Python's writer pads to a multiple of 8).
  if (header_text.front() != '{' || header_text[header_text.find_last_not_of(' ')] != '}') {
    return absl::InvalidArgumentError(
        "trace header must be a JSON object from its first byte (no byte-order mark or "
        "leading whitespace), followed by spaces only");
  }

  Parsed parsed;
  HEADPAGE_ASSIGN_OR_RETURN(parsed.metadata, ParseMetadata(header));
  const TraceMetadata& meta = parsed.metadata;
  const uint8_t* data_section = bytes + kLengthPrefixBytes + header_len;
  const uint64_t data_size = size - kLengthPrefixBytes - header_len;

  std::vector<TensorEntry> entries;
  for (const auto& item : header.items()) {
    if (item.key() == "__metadata__") continue;
    HEADPAGE_ASSIGN_OR_RETURN(TensorEntry e, ParseEntry(item.key(), item.value(), meta, data_size));
    entries.push_back(std::move(e));
  }
  HEADPAGE_RETURN_IF_ERROR(CheckNoOverlap(entries));

  // Layers by index (std::map keeps them sorted), each with its parts.
  std::map<int32_t, std::array<const TensorEntry*, kNumParts>> layers;
  for (const TensorEntry& e : entries) {
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
    const TensorEntry& positions = *parts[kQueryPositions];
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
  // The output projection: in every layer or in none, one hidden size for all.
  const TensorEntry* first_projection = layers.begin()->second[kOutputProjection];
  for (const auto& [index, parts] : layers) {
    const TensorEntry* w = parts[kOutputProjection];
    if ((w == nullptr) != (first_projection == nullptr)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer ", index, (w == nullptr ? " has no " : " has an "), "output_projection but layer ",
          layers.begin()->first, (w == nullptr ? " has one" : " has none"),
          " (a trace holds it for every layer or for none)"));
    }
    if (w == nullptr) continue;
    const int64_t hidden = first_projection->shape.empty() ? 0 : first_projection->shape[0];
    if (hidden < 1 || hidden > kMaxHiddenSize) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", first_projection->name, " has shape ", ShapeString(first_projection->shape),
          ", want [hidden_size, num_q_heads * head_dim] with hidden_size in [1, ", kMaxHiddenSize,
          "]"));
    }
    HEADPAGE_RETURN_IF_ERROR(
        CheckShape(*w, {hidden, int64_t{meta.num_q_heads} * meta.head_dim},
                   "[hidden_size, num_q_heads * head_dim], one hidden_size for every layer"));
  }

  // Contents last: every range read below is now known to be inside the file
  // and to have the size its shape says.
  for (const auto& [index, parts] : layers) {
    const TensorEntry& positions = *parts[kQueryPositions];
    HEADPAGE_RETURN_IF_ERROR(CheckPositions(positions, data_section + positions.begin,
                                            static_cast<int32_t>(num_tokens)));
    for (Part p : {kKeys, kValues, kQueries, kOutputs, kOutputProjection}) {
      if (parts[p] == nullptr) continue;
      HEADPAGE_RETURN_IF_ERROR(CheckFinite(*parts[p], data_section + parts[p]->begin, meta.dtype));
    }
  }

  parsed.layers.reserve(layers.size());
  for (const auto& [index, parts] : layers) {
    auto view = [&](const TensorEntry& e) {
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
    if (parts[kOutputProjection] != nullptr) {
      layer.output_projection = view(*parts[kOutputProjection]);
    }
    const TensorEntry& positions = *parts[kQueryPositions];
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
}  // namespace trace_internal

using trace_internal::kLengthPrefixBytes;
using trace_internal::Parse;
using trace_internal::Parsed;
using trace_internal::WithPath;

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
  // The path must name a regular file before it is opened: opening a FIFO for
  // reading blocks until a writer comes, which may be never. O_NONBLOCK covers
  // a path swapped for one between the two calls.
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return absl::ErrnoToStatus(err, absl::StrCat(path, ": cannot stat"));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return absl::ErrnoToStatus(err, absl::StrCat(path, ": cannot open"));
  }
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
