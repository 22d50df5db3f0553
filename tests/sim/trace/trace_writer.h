// SPDX-License-Identifier: Apache-2.0
// A tiny safetensors writer for tests and the fuzzer's seed generator: builds
// the bytes of a trace (docs/trace-format.md) from metadata and named tensors,
// so a test can produce a valid trace, break one thing, and check the reader's
// error. The JSON is written by hand (no JSON library needed, and a test can
// splice in anything it likes with Assemble()).
#ifndef HEADPAGE_TESTS_SIM_TRACE_TRACE_WRITER_H_
#define HEADPAGE_TESTS_SIM_TRACE_TRACE_WRITER_H_

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"

namespace headpage::testing {

struct WriterTensor {
  std::string name;
  std::string dtype;  // safetensors code: "F16", "BF16", "F32", "I32" (or anything, to break it)
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
  // Written as-is instead of the offsets Serialize lays out (malformed files).
  std::optional<std::pair<uint64_t, uint64_t>> offsets;
};

struct WriterFile {
  std::vector<std::pair<std::string, std::string>> metadata;  // in order
  std::vector<WriterTensor> tensors;                          // in file order

  void SetMetadata(const std::string& key, const std::string& value) {
    for (auto& [k, v] : metadata) {
      if (k == key) {
        v = value;
        return;
      }
    }
    metadata.emplace_back(key, value);
  }
  void EraseMetadata(const std::string& key) {
    metadata.erase(std::remove_if(metadata.begin(), metadata.end(),
                                  [&](const auto& kv) { return kv.first == key; }),
                   metadata.end());
  }
  // nullptr when absent.
  WriterTensor* Find(const std::string& name) {
    for (WriterTensor& t : tensors) {
      if (t.name == name) return &t;
    }
    return nullptr;
  }
  void Erase(const std::string& name) {
    tensors.erase(std::remove_if(tensors.begin(), tensors.end(),
                                 [&](const WriterTensor& t) { return t.name == name; }),
                  tensors.end());
  }
};

// A JSON string literal.
inline std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

// The JSON header: __metadata__ first, then the tensors laid out back to back
// in file order (safetensors' Python writer orders them by alignment, then
// name; the reader does not care).
inline std::string HeaderJson(const WriterFile& file) {
  std::string json = "{\"__metadata__\":{";
  for (size_t i = 0; i < file.metadata.size(); ++i) {
    if (i > 0) json += ",";
    json += JsonString(file.metadata[i].first) + ":" + JsonString(file.metadata[i].second);
  }
  json += "}";
  uint64_t offset = 0;
  for (const WriterTensor& t : file.tensors) {
    uint64_t begin = offset;
    uint64_t end = offset + t.bytes.size();
    offset = end;
    if (t.offsets) {
      begin = t.offsets->first;
      end = t.offsets->second;
    }
    json += "," + JsonString(t.name) + ":{\"dtype\":" + JsonString(t.dtype) + ",\"shape\":[";
    for (size_t d = 0; d < t.shape.size(); ++d) {
      if (d > 0) json += ",";
      json += std::to_string(t.shape[d]);
    }
    json += "],\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(end) + "]}";
  }
  return json + "}";
}

inline std::vector<uint8_t> DataSection(const WriterFile& file) {
  std::vector<uint8_t> data;
  for (const WriterTensor& t : file.tensors)
    data.insert(data.end(), t.bytes.begin(), t.bytes.end());
  return data;
}

// 8-byte little-endian header length, header, data. With `pad`, the header is
// padded with spaces to a multiple of 8 bytes, as Python's safetensors does.
inline std::vector<uint8_t> Assemble(std::string header, const std::vector<uint8_t>& data,
                                     bool pad = true) {
  if (pad) header.append((8 - header.size() % 8) % 8, ' ');
  // One allocation and copies (vector::insert here trips a GCC 12 -Warray-bounds
  // false positive).
  std::vector<uint8_t> out(8 + header.size() + data.size());
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<uint8_t>(n >> (8 * i));
  std::copy(header.begin(), header.end(), out.begin() + 8);
  std::copy(data.begin(), data.end(), out.begin() + 8 + static_cast<std::ptrdiff_t>(header.size()));
  return out;
}

inline std::vector<uint8_t> Serialize(const WriterFile& file, bool pad = true) {
  return Assemble(HeaderJson(file), DataSection(file), pad);
}

// ---------------------------------------------------------------------------
// Valid traces with recognisable contents.

struct TraceSpec {
  int32_t num_layers = 2;
  int32_t num_q_heads = 4;
  int32_t num_kv_heads = 2;
  int32_t head_dim = 8;
  int32_t prompt_len = 12;
  int32_t generated_len = 3;
  int32_t window = 4;  // queries: the last `window` prompt tokens and every generated one
  DType dtype = DType::kF16;
  std::vector<int32_t> layers;  // which layers to write; empty: all
  bool outputs = true;
  int32_t hidden_size = 0;  // > 0: every layer gets an output_projection [hidden][q heads * head_dim]
  uint32_t seed = 1;

  int32_t num_tokens() const { return prompt_len + generated_len; }
  int32_t num_queries() const { return window + generated_len; }
};

enum class TracePart { kKeys = 0, kValues = 1, kQueries = 2, kOutputs = 3, kOutputProjection = 4 };

// Element i of a layer's tensor: a multiple of 1/64 in [-2, 2), exact in f16,
// bf16 and f32, so a test can compare what the reader hands back exactly.
inline float TraceValue(const TraceSpec& spec, int32_t layer, TracePart part, int64_t i) {
  uint64_t x = (static_cast<uint64_t>(spec.seed) << 40) ^ (static_cast<uint64_t>(layer) << 32) ^
               (static_cast<uint64_t>(part) << 28) ^ static_cast<uint64_t>(i);
  x = (x ^ (x >> 33)) * 0xff51afd7ed558ccdull;
  x = (x ^ (x >> 33)) * 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return static_cast<float>(static_cast<int32_t>(x % 256) - 128) / 64.0f;
}

inline const char* SafetensorsDType(DType dtype) {
  switch (dtype) {
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kF32: return "F32";
  }
  return "?";
}

inline const char* MetadataDType(DType dtype) {
  switch (dtype) {
    case DType::kF16: return "float16";
    case DType::kBF16: return "bfloat16";
    case DType::kF32: return "float32";
  }
  return "?";
}

inline std::vector<uint8_t> EncodeFloats(DType dtype, const std::vector<float>& values) {
  std::vector<uint8_t> bytes(values.size() * SizeOf(dtype));
  // Through a float/uint16 buffer: StoreFromFloat writes typed elements.
  if (dtype == DType::kF32) {
    std::memcpy(bytes.data(), values.data(), bytes.size());
  } else {
    std::vector<uint16_t> tmp(values.size());
    for (size_t i = 0; i < values.size(); ++i) StoreFromFloat(tmp.data(), i, dtype, values[i]);
    std::memcpy(bytes.data(), tmp.data(), bytes.size());
  }
  return bytes;
}

inline std::vector<uint8_t> EncodeInt32(const std::vector<int32_t>& values) {
  std::vector<uint8_t> bytes(values.size() * 4);
  for (size_t i = 0; i < values.size(); ++i) {
    const auto u = static_cast<uint32_t>(values[i]);
    for (int b = 0; b < 4; ++b)
      bytes[i * 4 + static_cast<size_t>(b)] = static_cast<uint8_t>(u >> (8 * b));
  }
  return bytes;
}

inline std::string LayerTensorName(int32_t layer, const char* part) {
  return "layers." + std::to_string(layer) + "." + part;
}

inline std::vector<int32_t> QueryPositions(const TraceSpec& spec) {
  std::vector<int32_t> positions;
  for (int32_t p = spec.prompt_len - spec.window; p < spec.num_tokens(); ++p)
    positions.push_back(p);
  return positions;
}

inline WriterFile MakeTrace(const TraceSpec& spec) {
  WriterFile file;
  file.metadata = {
      {"format", "headpage-trace"},
      {"version", "1"},
      {"model", "test-model"},
      {"source", "tests/sim/trace/trace_writer.h"},
      {"task", "synthetic"},
      {"num_layers", std::to_string(spec.num_layers)},
      {"num_q_heads", std::to_string(spec.num_q_heads)},
      {"num_kv_heads", std::to_string(spec.num_kv_heads)},
      {"head_dim", std::to_string(spec.head_dim)},
      {"prompt_len", std::to_string(spec.prompt_len)},
      {"generated_len", std::to_string(spec.generated_len)},
      {"rope_applied", "true"},
      {"dtype", MetadataDType(spec.dtype)},
  };
  std::vector<int32_t> layers = spec.layers;
  if (layers.empty()) {
    for (int32_t l = 0; l < spec.num_layers; ++l) layers.push_back(l);
  }
  auto floats = [&](int32_t layer, TracePart part, std::vector<int64_t> shape, const char* name) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> values(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i)
      values[static_cast<size_t>(i)] = TraceValue(spec, layer, part, i);
    return WriterTensor{LayerTensorName(layer, name), SafetensorsDType(spec.dtype),
                        std::move(shape), EncodeFloats(spec.dtype, values), std::nullopt};
  };
  for (int32_t l : layers) {
    const std::vector<int64_t> kv = {spec.num_kv_heads, spec.num_tokens(), spec.head_dim};
    const std::vector<int64_t> q = {spec.num_q_heads, spec.num_queries(), spec.head_dim};
    file.tensors.push_back(floats(l, TracePart::kKeys, kv, "keys"));
    file.tensors.push_back(floats(l, TracePart::kValues, kv, "values"));
    file.tensors.push_back(floats(l, TracePart::kQueries, q, "queries"));
    file.tensors.push_back(WriterTensor{LayerTensorName(l, "query_positions"),
                                        "I32",
                                        {spec.num_queries()},
                                        EncodeInt32(QueryPositions(spec)),
                                        std::nullopt});
    if (spec.outputs) file.tensors.push_back(floats(l, TracePart::kOutputs, q, "outputs"));
    if (spec.hidden_size > 0) {
      file.tensors.push_back(floats(l, TracePart::kOutputProjection,
                                    {spec.hidden_size, int64_t{spec.num_q_heads} * spec.head_dim},
                                    "output_projection"));
    }
  }
  return file;
}

}  // namespace headpage::testing

#endif  // HEADPAGE_TESTS_SIM_TRACE_TRACE_WRITER_H_
