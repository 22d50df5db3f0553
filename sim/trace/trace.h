// SPDX-License-Identifier: Apache-2.0
// File: sim/trace/trace.h
//
// A trace is what a real model did on a real prompt (docs/trace-format.md): for
// some or all layers, the post-RoPE keys and values of every token (prompt and
// generated), and the queries of the last prompt tokens and of every generated
// token, with their positions. The file is safetensors (an 8-byte little-endian
// header length, a JSON header, raw little-endian tensors), so Python writes it
// with the `safetensors` package and this reader needs no Python.
//
// Trace::Open maps the file and validates all of it before handing out views:
// header size, JSON, dtypes, shapes against each other and the metadata,
// offsets inside the file and not overlapping, and no NaN/Inf in the tensors a
// replay reads. A malformed file gets InvalidArgument (or DataLoss for a file
// shorter than its header promises: a header length or a tensor's data_offsets
// past the end) naming the problem; none crashes or reads out of bounds. The
// views point into the mapping: they live as long as the Trace, and moving the
// Trace does not move them.
//
// Every view's data is aligned to its element size (2 for f16/bf16, 4 for f32
// and the int32 positions), so it may be indexed as a typed array. safetensors
// does not promise that (and FromBuffer's bytes may start anywhere): a tensor
// stored misaligned is copied once into memory the Trace owns. Files written by
// Python's safetensors are aligned (it pads the header to 8 bytes and orders
// tensors by alignment), so a real trace is zero-copy.
#ifndef HEADPAGE_SIM_TRACE_TRACE_H_
#define HEADPAGE_SIM_TRACE_TRACE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/dtype.h"

namespace headpage {

struct TraceMetadata {
  std::string model;        // e.g. "SmolLM2-135M-Instruct"
  std::string source;       // where the prompt came from
  std::string task;         // e.g. "summary", "needle", "fewshot-qa", "code"
  int32_t num_layers = 0;   // layers of the model (the trace may hold fewer)
  int32_t num_q_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t prompt_len = 0;
  int32_t generated_len = 0;
  bool rope_applied = true;
  DType dtype = DType::kF16;  // of every K/V/Q tensor
};

// A tensor inside the mapped file. Row-major, little-endian.
struct TensorView {
  DType dtype = DType::kF16;
  std::vector<int64_t> shape;
  const void* data = nullptr;

  int64_t num_elements() const;
};

struct TraceLayer {
  int32_t index = 0;         // the model's layer index
  TensorView keys;           // [num_kv_heads][num_tokens][head_dim], post-RoPE
  TensorView values;         // [num_kv_heads][num_tokens][head_dim]
  TensorView queries;        // [num_q_heads][num_queries][head_dim], post-RoPE
  absl::Span<const int32_t> query_positions;  // [num_queries], strictly ascending
  // The model's own attention outputs at the query positions (before o_proj),
  // [num_q_heads][num_queries][head_dim], when the capture saved them.
  std::optional<TensorView> outputs;
  // The layer's attention output projection W_o as torch.nn.Linear stores it,
  // [hidden_size][num_q_heads * head_dim], when the capture saved it (every
  // layer's or none): what CriticalKV and DefensiveKV weigh values by.
  std::optional<TensorView> output_projection;
};

class Trace {
 public:
  // Maps `path` read-only and validates it. NotFound for a missing file.
  [[nodiscard]] static absl::StatusOr<Trace> Open(const std::string& path);
  // Validates a trace held in memory (tests, the fuzzer). The bytes must
  // outlive the Trace; nothing is copied but misaligned tensors (see above).
  [[nodiscard]] static absl::StatusOr<Trace> FromBuffer(absl::Span<const uint8_t> bytes);

  Trace(Trace&&) noexcept;
  Trace& operator=(Trace&&) noexcept;
  ~Trace();

  const TraceMetadata& metadata() const { return metadata_; }
  int32_t num_tokens() const { return metadata_.prompt_len + metadata_.generated_len; }
  // Layers in ascending index order.
  absl::Span<const TraceLayer> layers() const { return layers_; }

 private:
  struct Mapping;  // the mmap (when opened from a file) and aligned copies
  Trace() = default;

  std::unique_ptr<Mapping> mapping_;
  TraceMetadata metadata_;
  std::vector<TraceLayer> layers_;
};

}  // namespace headpage

#endif  // HEADPAGE_SIM_TRACE_TRACE_H_
