// SPDX-License-Identifier: Apache-2.0
// The trace reader on malformed traces: a valid trace with one thing broken,
// one check each, and the error that names it. Valid traces: trace_test.cc.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "sim/trace/trace.h"
#include "tests/sim/trace/trace_test_helpers.h"
#include "tests/sim/trace/trace_writer.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using absl::StatusCode;
using testing::Assemble;
using testing::Check;
using testing::EncodeFloats;
using testing::EncodeInt32;
using testing::MakeTrace;
using testing::Mutated;
using testing::RawFile;
using testing::RequireMatchesSpec;
using testing::Serialize;
using testing::TraceSpec;
using testing::WithMetadata;
using testing::WithShape;
using testing::WriterFile;
using testing::WriterTensor;

// ---------------------------------------------------------------------------
// Malformed files: one check each.

TEST_CASE("Trace: rejects a bad header length", "[sim][trace]") {
  constexpr auto kInvalid = StatusCode::kInvalidArgument;
  SECTION("empty") { REQUIRE_ERROR(Check({}), kInvalid, "0 bytes, too short"); }
  SECTION("a truncated length") { REQUIRE_ERROR(Check({2, 0, 0, 0, 0}), kInvalid, "5 bytes"); }
  SECTION("zero") { REQUIRE_ERROR(Check(RawFile("")), kInvalid, "header length 0 is too small"); }
  SECTION("over the cap") {
    std::vector<uint8_t> bytes = RawFile("{}");
    bytes[4] = 1;  // 2^32 + 2
    REQUIRE_ERROR(Check(bytes), kInvalid, "exceeds the cap of 100000000 bytes");
  }
  SECTION("past the end of the file") {
    std::vector<uint8_t> bytes = RawFile("{}");
    bytes[0] = 3;
    REQUIRE_ERROR(Check(bytes), StatusCode::kDataLoss, "header length 3 runs past the end");
  }
  SECTION("all ones") {
    std::vector<uint8_t> bytes(16, 0xff);
    REQUIRE_ERROR(Check(bytes), kInvalid, "exceeds the cap");
  }
}

TEST_CASE("Trace: rejects a header that is not a JSON object", "[sim][trace]") {
  constexpr auto kInvalid = StatusCode::kInvalidArgument;
  SECTION("bad JSON") { REQUIRE_ERROR(Check(RawFile("{\"a\":")), kInvalid, "is not valid JSON"); }
  SECTION("trailing garbage") { REQUIRE_ERROR(Check(RawFile("{} x")), kInvalid, "not valid JSON"); }
  SECTION("bad UTF-8") {
    REQUIRE_ERROR(Check(RawFile("{\"\xff\":1}")), kInvalid, "not valid JSON");
  }
  SECTION("an array") {
    REQUIRE_ERROR(Check(RawFile("[1, 2]")), kInvalid,
                  "trace header is a JSON array, want an object");
  }
  SECTION("a number") { REQUIRE_ERROR(Check(RawFile("42")), kInvalid, "is a JSON number"); }
  // Safetensors rejects these, and docs/trace-format.md allows only spaces after
  // the object.
  SECTION("a NUL byte, then garbage") {
    REQUIRE_ERROR(Check(RawFile(std::string("{}\0garbage", 10))), kInvalid, "NUL byte at offset 2");
  }
  SECTION("NUL padding") {
    REQUIRE_ERROR(Check(RawFile(std::string("{}\0\0\0\0\0\0", 8))), kInvalid, "NUL byte");
  }
  SECTION("a UTF-8 byte-order mark") {
    REQUIRE_ERROR(Check(RawFile("\xEF\xBB\xBF{}")), kInvalid, "no byte-order mark");
  }
  SECTION("leading whitespace") {
    REQUIRE_ERROR(Check(RawFile(" {}")), kInvalid, "from its first byte");
  }
  SECTION("a newline or a tab after the object") {
    REQUIRE_ERROR(Check(RawFile("{}\n")), kInvalid, "followed by spaces only");
    REQUIRE_ERROR(Check(RawFile("{}\t  ")), kInvalid, "followed by spaces only");
  }
  SECTION("deep nesting does not crash") {
    const std::string deep = std::string(100000, '[') + std::string(100000, ']');
    REQUIRE_ERROR(Check(RawFile(deep)), kInvalid, "JSON array");
  }
}

TEST_CASE("Trace: rejects bad __metadata__", "[sim][trace]") {
  constexpr auto kInvalid = StatusCode::kInvalidArgument;
  SECTION("missing") { REQUIRE_ERROR(Check(RawFile("{}")), kInvalid, "has no __metadata__"); }
  SECTION("not an object") {
    REQUIRE_ERROR(Check(RawFile("{\"__metadata__\":[]}")), kInvalid,
                  "__metadata__ is a JSON array, want an object");
  }
  SECTION("a value that is not a string") {
    REQUIRE_ERROR(Check(RawFile(R"({"__metadata__":{"format":"headpage-trace","num_layers":2}})")),
                  kInvalid, "__metadata__ \"num_layers\" is a JSON number, want a string");
  }
  SECTION("no format") {
    REQUIRE_ERROR(Check(Mutated([](WriterFile& f) { f.EraseMetadata("format"); })), kInvalid,
                  "__metadata__ has no \"format\"");
  }
  SECTION("another format") {
    REQUIRE_ERROR(Check(WithMetadata("format", "pt")), kInvalid,
                  "format is \"pt\", want \"headpage-trace\"");
  }
  SECTION("no version") {
    REQUIRE_ERROR(Check(Mutated([](WriterFile& f) { f.EraseMetadata("version"); })), kInvalid,
                  "__metadata__ has no \"version\"");
  }
  SECTION("another version") {
    REQUIRE_ERROR(Check(WithMetadata("version", "2")), kInvalid, "version is \"2\"");
  }
  SECTION("a missing integer") {
    REQUIRE_ERROR(Check(Mutated([](WriterFile& f) { f.EraseMetadata("num_kv_heads"); })), kInvalid,
                  "__metadata__ has no \"num_kv_heads\"");
  }
  SECTION("non-numeric integers") {
    REQUIRE_ERROR(Check(WithMetadata("head_dim", "sixty-four")), kInvalid,
                  "head_dim = \"sixty-four\" is not an integer");
    REQUIRE_ERROR(Check(WithMetadata("prompt_len", "12.0")), kInvalid,
                  "prompt_len = \"12.0\" is not an integer");
    REQUIRE_ERROR(Check(WithMetadata("num_layers", "")), kInvalid,
                  "num_layers = \"\" is not an integer");
    REQUIRE_ERROR(Check(WithMetadata("num_layers", "99999999999999999999")), kInvalid,
                  "is not an integer");
  }
  SECTION("integers out of range") {
    REQUIRE_ERROR(Check(WithMetadata("num_layers", "0")), kInvalid,
                  "num_layers = 0 is outside [1, 4096]");
    REQUIRE_ERROR(Check(WithMetadata("num_layers", "4097")), kInvalid, "num_layers = 4097");
    REQUIRE_ERROR(Check(WithMetadata("num_q_heads", "0")), kInvalid, "num_q_heads = 0 is outside");
    REQUIRE_ERROR(Check(WithMetadata("num_kv_heads", "-2")), kInvalid, "num_kv_heads = -2");
    REQUIRE_ERROR(Check(WithMetadata("head_dim", "0")), kInvalid,
                  "head_dim = 0 is outside [1, 1024]");
    REQUIRE_ERROR(Check(WithMetadata("head_dim", "2048")), kInvalid, "head_dim = 2048");
    REQUIRE_ERROR(Check(WithMetadata("prompt_len", "0")), kInvalid, "prompt_len = 0 is outside");
    REQUIRE_ERROR(Check(WithMetadata("generated_len", "-1")), kInvalid,
                  "generated_len = -1 is outside");
  }
  SECTION("q heads not a multiple of kv heads") {
    REQUIRE_ERROR(Check(WithMetadata("num_kv_heads", "3")), kInvalid,
                  "num_q_heads (4) is not a multiple of num_kv_heads (3)");
  }
  SECTION("a token count that overflows int32") {
    REQUIRE_ERROR(Check(Mutated([](WriterFile& f) {
                    f.SetMetadata("prompt_len", "2147483647");
                    f.SetMetadata("generated_len", "1");
                  })),
                  kInvalid, "prompt_len + generated_len (2147483647 + 1) does not fit in int32");
  }
  SECTION("rope_applied not a boolean") {
    REQUIRE_ERROR(Check(WithMetadata("rope_applied", "yes")), kInvalid,
                  "rope_applied is \"yes\", want \"true\" or \"false\"");
  }
  SECTION("an unknown dtype") {
    REQUIRE_ERROR(Check(WithMetadata("dtype", "fp8")), kInvalid, "__metadata__ dtype is \"fp8\"");
  }
  SECTION("quoted values are escaped and capped") {
    REQUIRE_ERROR(Check(WithMetadata("format", std::string(1000, 'x') + "\n")), kInvalid,
                  "xxx\"...");
  }
}

TEST_CASE("Trace: rejects unknown and misnumbered tensors", "[sim][trace]") {
  constexpr auto kInvalid = StatusCode::kInvalidArgument;
  auto renamed = [](const std::string& from, const std::string& to) {
    return Mutated([&](WriterFile& f) { f.Find(from)->name = to; });
  };
  SECTION("an unknown name") {
    REQUIRE_ERROR(Check(renamed("layers.0.outputs", "lm_head.weight")), kInvalid,
                  "unknown tensor \"lm_head.weight\" (a trace holds only "
                  "layers.{i}.keys|values|queries|query_positions|outputs|output_projection)");
  }
  SECTION("an unknown part") {
    REQUIRE_ERROR(Check(renamed("layers.0.outputs", "layers.0.key")), kInvalid,
                  "unknown tensor \"layers.0.key\"");
  }
  SECTION("a non-canonical layer number") {
    REQUIRE_ERROR(Check(renamed("layers.0.outputs", "layers.00.outputs")), kInvalid,
                  "unknown tensor \"layers.00.outputs\"");
    REQUIRE_ERROR(Check(renamed("layers.0.outputs", "layers.+0.outputs")), kInvalid,
                  "unknown tensor");
    REQUIRE_ERROR(Check(renamed("layers.0.outputs", "layers..outputs")), kInvalid,
                  "unknown tensor");
    REQUIRE_ERROR(Check(renamed("layers.0.outputs", "layers.0.outputs.")), kInvalid,
                  "unknown tensor");
  }
  SECTION("a layer index out of range") {
    REQUIRE_ERROR(Check(Mutated([](WriterFile& f) {
                    for (WriterTensor& t : f.tensors) {
                      if (t.name.rfind("layers.1.", 0) == 0) t.name.replace(7, 1, "2");
                    }
                  })),
                  kInvalid, "layer 2 is outside [0, 2) (__metadata__ num_layers)");
    REQUIRE_ERROR(Check(renamed("layers.0.outputs", "layers.999999999.outputs")), kInvalid,
                  "layer 999999999 is outside");
  }
  SECTION("a required tensor missing") {
    for (const char* part : {"keys", "values", "queries", "query_positions"}) {
      const std::string name = std::string("layers.1.") + part;
      REQUIRE_ERROR(Check(Mutated([&](WriterFile& f) { f.Erase(name); })), kInvalid,
                    "layer 1 has no " + name);
    }
  }
  SECTION("no layers at all") {
    REQUIRE_ERROR(Check(Mutated([](WriterFile& f) { f.tensors.clear(); })), kInvalid,
                  "trace holds no layers");
  }
}

TEST_CASE("Trace: rejects malformed tensor entries", "[sim][trace]") {
  constexpr auto kInvalid = StatusCode::kInvalidArgument;
  const std::string meta =
      R"("__metadata__":{"format":"headpage-trace","version":"1","num_layers":"1",)"
      R"("num_q_heads":"1","num_kv_heads":"1","head_dim":"1","prompt_len":"1",)"
      R"("generated_len":"0","rope_applied":"true","dtype":"float16"})";
  auto entry = [&](const std::string& json) {
    return Check(RawFile("{" + meta + ",\"layers.0.keys\":" + json + "}", std::vector<uint8_t>(8)));
  };
  SECTION("the minimal header itself is fine up to the missing tensors") {
    REQUIRE_ERROR(entry(R"({"dtype":"F16","shape":[1,1,1],"data_offsets":[0,2]})"), kInvalid,
                  "layer 0 has no layers.0.values");
  }
  SECTION("not an object") {
    REQUIRE_ERROR(entry(R"("F16")"), kInvalid, "tensor layers.0.keys: entry is a JSON string");
  }
  SECTION("no dtype") {
    REQUIRE_ERROR(entry(R"({"shape":[1,1,1],"data_offsets":[0,2]})"), kInvalid,
                  "tensor layers.0.keys: no \"dtype\" string");
    REQUIRE_ERROR(entry(R"({"dtype":16,"shape":[1,1,1],"data_offsets":[0,2]})"), kInvalid,
                  "no \"dtype\" string");
  }
  SECTION("no shape") {
    REQUIRE_ERROR(entry(R"({"dtype":"F16","shape":7,"data_offsets":[0,2]})"), kInvalid,
                  "tensor layers.0.keys: no \"shape\" array");
  }
  SECTION("bad dimensions") {
    REQUIRE_ERROR(entry(R"({"dtype":"F16","shape":[1,-1,1],"data_offsets":[0,2]})"), kInvalid,
                  "shape holds a number that is not a non-negative integer");
    REQUIRE_ERROR(entry(R"({"dtype":"F16","shape":[1,1.0,1],"data_offsets":[0,2]})"), kInvalid,
                  "not a non-negative integer");
    REQUIRE_ERROR(entry(R"({"dtype":"F16","shape":[1,"1",1],"data_offsets":[0,2]})"), kInvalid,
                  "shape holds a string");
    REQUIRE_ERROR(entry(R"({"dtype":"F16","shape":[18446744073709551615],"data_offsets":[0,2]})"),
                  kInvalid, "not a non-negative integer");
  }
  SECTION("a shape whose size overflows") {
    REQUIRE_ERROR(
        entry(R"({"dtype":"F16","shape":[4294967296,4294967296,1],"data_offsets":[0,2]})"),
        kInvalid, "shape [4294967296, 4294967296, 1] is too large");
    REQUIRE_ERROR(entry(R"({"dtype":"F16","shape":[9223372036854775807,3],"data_offsets":[0,2]})"),
                  kInvalid, "is too large");
  }
  SECTION("bad data_offsets") {
    for (const char* offsets : {"[0]", "[0,2,4]", "[-1,2]", "[0,2.5]", "\"0,2\"", "[0,null]"}) {
      REQUIRE_ERROR(
          entry(std::string(R"({"dtype":"F16","shape":[1,1,1],"data_offsets":)") + offsets + "}"),
          kInvalid, "tensor layers.0.keys: \"data_offsets\" must be [begin, end]");
    }
    REQUIRE_ERROR(entry(R"({"dtype":"F16","shape":[1,1,1]})"), kInvalid, "must be [begin, end]");
  }
  SECTION("begin after end") {
    REQUIRE_ERROR(entry(R"({"dtype":"F16","shape":[1,1,1],"data_offsets":[4,2]})"), kInvalid,
                  "data_offsets [4, 2] has begin > end");
  }
  SECTION("offsets outside the data section are DataLoss") {
    REQUIRE_ERROR(entry(R"({"dtype":"F16","shape":[1,1,1],"data_offsets":[8,10]})"),
                  StatusCode::kDataLoss,
                  "tensor layers.0.keys: data_offsets [8, 10] run past the end of the data "
                  "section (8 bytes)");
    // Offsets beyond int64 are malformed rather than truncated.
    REQUIRE_ERROR(entry(R"({"dtype":"F16","shape":[1,1,1],)"
                        R"("data_offsets":[18446744073709551614,18446744073709551615]})"),
                  kInvalid, "must be [begin, end]");
  }
  SECTION("size mismatch") {
    REQUIRE_ERROR(entry(R"({"dtype":"F16","shape":[1,1,1],"data_offsets":[0,4]})"), kInvalid,
                  "data_offsets [0, 4] hold 4 bytes, but shape [1, 1, 1] of F16 needs 2");
  }
}

TEST_CASE("Trace: rejects wrong dtypes", "[sim][trace]") {
  constexpr auto kInvalid = StatusCode::kInvalidArgument;
  SECTION("keys in another float type") {
    const auto bytes = Mutated([](WriterFile& f) {
      WriterTensor& t = *f.Find("layers.0.keys");
      t.dtype = "F32";
      t.bytes.resize(t.bytes.size() * 2);
    });
    REQUIRE_ERROR(Check(bytes), kInvalid,
                  "tensor layers.0.keys has dtype \"F32\", want \"F16\" (__metadata__ dtype is "
                  "float16)");
  }
  SECTION("the metadata dtype disagrees with the tensors") {
    REQUIRE_ERROR(Check(WithMetadata("dtype", "bfloat16")), kInvalid,
                  "has dtype \"F16\", want \"BF16\"");
  }
  SECTION("positions not I32") {
    const auto bytes = Mutated([](WriterFile& f) {
      WriterTensor& t = *f.Find("layers.1.query_positions");
      t.dtype = "I64";
      t.bytes.resize(t.bytes.size() * 2);
    });
    REQUIRE_ERROR(Check(bytes), kInvalid,
                  "tensor layers.1.query_positions has dtype \"I64\", want \"I32\"");
  }
  SECTION("outputs in another dtype") {
    REQUIRE_ERROR(Check(Mutated([](WriterFile& f) { f.Find("layers.1.outputs")->dtype = "BF16"; })),
                  kInvalid, "tensor layers.1.outputs has dtype \"BF16\"");
  }
}

TEST_CASE("Trace: rejects overlapping tensors", "[sim][trace]") {
  constexpr auto kInvalid = StatusCode::kInvalidArgument;
  const WriterFile valid = MakeTrace(TraceSpec{});
  // Offsets as Serialize lays them out.
  std::vector<std::pair<uint64_t, uint64_t>> offsets;
  uint64_t at = 0;
  for (const WriterTensor& t : valid.tensors) {
    offsets.emplace_back(at, at + t.bytes.size());
    at += t.bytes.size();
  }
  SECTION("two tensors on the same bytes") {
    WriterFile f = valid;
    f.tensors[1].offsets = offsets[0];  // values onto keys (same size)
    REQUIRE_ERROR(Check(Serialize(f)), kInvalid,
                  "tensors layers.0.keys [0, 480) and layers.0.values [0, 480) overlap");
  }
  SECTION("a partial overlap") {
    WriterFile f = valid;
    f.tensors[1].offsets = std::make_pair(offsets[1].first - 2, offsets[1].second - 2);
    REQUIRE_ERROR(Check(Serialize(f)), kInvalid, "overlap in the data section");
  }
  SECTION("a small tensor inside a large one, after a gap") {
    WriterFile f = valid;
    // positions (28 bytes) inside the keys of layer 0, which start at 0.
    f.tensors[3].offsets = std::make_pair(uint64_t{100}, uint64_t{128});
    REQUIRE_ERROR(Check(Serialize(f)), kInvalid,
                  "tensors layers.0.keys [0, 480) and layers.0.query_positions [100, 128) overlap");
  }
  SECTION("gaps between tensors are fine") {
    WriterFile f = valid;
    for (size_t i = 0; i < f.tensors.size(); ++i) {
      f.tensors[i].offsets = std::make_pair(offsets[i].first + 8 * i, offsets[i].second + 8 * i);
    }
    std::vector<uint8_t> data;
    for (const WriterTensor& t : f.tensors) {
      data.insert(data.end(), t.bytes.begin(), t.bytes.end());
      data.insert(data.end(), 8, 0xff);  // NaN bytes, never read
    }
    const std::vector<uint8_t> bytes = Assemble(testing::HeaderJson(f), data);
    auto trace = Trace::FromBuffer(bytes);
    REQUIRE_OK(trace);
    RequireMatchesSpec(*trace, TraceSpec{});
  }
}

TEST_CASE("Trace: rejects shapes that disagree with the metadata", "[sim][trace]") {
  constexpr auto kInvalid = StatusCode::kInvalidArgument;
  // Same element count as the real shape, so only the shape check can object.
  SECTION("keys") {
    REQUIRE_ERROR(Check(WithShape("layers.0.keys", {4, 15, 4})), kInvalid,
                  "tensor layers.0.keys has shape [4, 15, 4], want [2, 15, 8] ([num_kv_heads, "
                  "prompt_len + generated_len, head_dim])");
    REQUIRE_ERROR(Check(WithShape("layers.0.keys", {2, 120})), kInvalid, "has shape [2, 120]");
  }
  SECTION("values without the generated tokens") {
    REQUIRE_ERROR(Check(Mutated([](WriterFile& f) {
                    WriterTensor& t = *f.Find("layers.1.values");
                    t.shape = {2, 12, 8};
                    t.bytes.resize(2 * 12 * 8 * 2);
                  })),
                  kInvalid, "tensor layers.1.values has shape [2, 12, 8], want [2, 15, 8]");
  }
  SECTION("queries") {
    REQUIRE_ERROR(Check(WithShape("layers.0.queries", {7, 4, 8})), kInvalid,
                  "tensor layers.0.queries has shape [7, 4, 8], want [4, 7, 8] ([num_q_heads, "
                  "num_queries, head_dim], num_queries from query_positions)");
  }
  SECTION("queries and positions disagree on the count") {
    REQUIRE_ERROR(Check(Mutated([](WriterFile& f) {
                    WriterTensor& t = *f.Find("layers.0.query_positions");
                    t.shape = {6};
                    t.bytes.resize(24);
                  })),
                  kInvalid, "tensor layers.0.queries has shape [4, 7, 8], want [4, 6, 8]");
  }
  SECTION("outputs") {
    REQUIRE_ERROR(Check(WithShape("layers.1.outputs", {4, 8, 7})), kInvalid,
                  "tensor layers.1.outputs has shape [4, 8, 7], want [4, 7, 8]");
  }
  SECTION("positions not a vector, or empty") {
    REQUIRE_ERROR(Check(WithShape("layers.0.query_positions", {7, 1})), kInvalid,
                  "tensor layers.0.query_positions has shape [7, 1], want [num_queries] with "
                  "num_queries >= 1");
    REQUIRE_ERROR(Check(Mutated([](WriterFile& f) {
                    f.Find("layers.0.query_positions")->shape = {0};
                    f.Find("layers.0.query_positions")->bytes.clear();
                    f.Find("layers.0.queries")->shape = {4, 0, 8};
                    f.Find("layers.0.queries")->bytes.clear();
                  })),
                  kInvalid, "has shape [0], want [num_queries] with num_queries >= 1");
  }
}

TEST_CASE("Trace: rejects bad query positions", "[sim][trace]") {
  constexpr auto kInvalid = StatusCode::kInvalidArgument;
  auto with_positions = [](std::vector<int32_t> positions) {
    return Mutated(
        [&](WriterFile& f) { f.Find("layers.1.query_positions")->bytes = EncodeInt32(positions); });
  };
  SECTION("not ascending") {
    REQUIRE_ERROR(Check(with_positions({8, 9, 11, 10, 12, 13, 14})), kInvalid,
                  "tensor layers.1.query_positions is not strictly ascending: [3] = 10 after "
                  "[2] = 11");
  }
  SECTION("a repeat") {
    REQUIRE_ERROR(Check(with_positions({8, 9, 10, 10, 12, 13, 14})), kInvalid,
                  "not strictly ascending: [3] = 10 after [2] = 10");
  }
  SECTION("past the last token") {
    REQUIRE_ERROR(Check(with_positions({9, 10, 11, 12, 13, 14, 15})), kInvalid,
                  "tensor layers.1.query_positions: [6] = 15 is outside [0, 15) (prompt_len + "
                  "generated_len)");
  }
  SECTION("negative") {
    REQUIRE_ERROR(Check(with_positions({-1, 9, 10, 11, 12, 13, 14})), kInvalid,
                  "[0] = -1 is outside [0, 15)");
  }
  SECTION("any ascending set inside the tokens is fine") {
    auto trace_bytes = with_positions({0, 1, 5, 6, 7, 13, 14});
    REQUIRE_OK(Check(trace_bytes));
  }
}

TEST_CASE("Trace: rejects NaN and Inf in what a replay reads", "[sim][trace]") {
  constexpr auto kInvalid = StatusCode::kInvalidArgument;
  TraceSpec spec;
  spec.dtype = GENERATE(DType::kF16, DType::kBF16, DType::kF32);
  INFO("dtype " << DTypeName(spec.dtype));
  // Element [1, 2, 3] of a [heads, rows, 8] tensor.
  auto poisoned = [&](const std::string& name, int64_t rows, float value) {
    return Mutated(
        [&](WriterFile& f) {
          const std::vector<uint8_t> bad = EncodeFloats(spec.dtype, {value});
          const size_t index = static_cast<size_t>((1 * rows + 2) * 8 + 3);
          std::memcpy(f.Find(name)->bytes.data() + index * bad.size(), bad.data(), bad.size());
        },
        spec);
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  REQUIRE_ERROR(Check(poisoned("layers.0.keys", 15, nan)), kInvalid,
                "tensor layers.0.keys holds NaN at [1, 2, 3]");
  REQUIRE_ERROR(Check(poisoned("layers.1.values", 15, inf)), kInvalid,
                "tensor layers.1.values holds +Inf at [1, 2, 3]");
  REQUIRE_ERROR(Check(poisoned("layers.0.queries", 7, -inf)), kInvalid,
                "tensor layers.0.queries holds -Inf at [1, 2, 3]");
  REQUIRE_ERROR(Check(poisoned("layers.1.outputs", 7, nan)), kInvalid,
                "tensor layers.1.outputs holds NaN at [1, 2, 3]");
  // Large values are fine up to 1e15 (f16's whole range); beyond, the dot
  // products of a replay would overflow float into NaN metrics: refused, named.
  REQUIRE_OK(Check(poisoned("layers.0.keys", 15, spec.dtype == DType::kF16 ? 65504.0f : 1e14f)));
  if (spec.dtype != DType::kF16) {
    REQUIRE_ERROR(Check(poisoned("layers.1.queries", 7, -1e38f)), kInvalid,
                  "at [1, 2, 3], beyond the magnitude 1e15");
    REQUIRE_ERROR(Check(poisoned("layers.0.values", 15, 3e38f)), kInvalid,
                  "beyond the magnitude 1e15");
  }
}

}  // namespace
}  // namespace headpage

namespace headpage {
namespace {

TEST_CASE("Trace: the output projection is in every layer or none, of one shape", "[sim][trace]") {
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  testing::TraceSpec spec;
  spec.hidden_size = 6;
  REQUIRE_OK(testing::Check(testing::Mutated([](testing::WriterFile&) {}, spec)));
  SECTION("one layer without it") {
    REQUIRE_ERROR(testing::Check(testing::Mutated(
                      [](testing::WriterFile& f) { f.Erase("layers.1.output_projection"); }, spec)),
                  kInvalid, "layer 1 has no output_projection but layer 0 has one");
  }
  SECTION("another layout: [q heads * head_dim, hidden]") {
    REQUIRE_ERROR(testing::Check(testing::Mutated(
                      [](testing::WriterFile& f) {
                        f.Find("layers.0.output_projection")->shape = {32, 6};
                      },
                      spec)),
                  kInvalid, "layers.0.output_projection has shape [32, 6], want [32, 32]");
  }
  SECTION("a hidden size that differs between layers") {
    REQUIRE_ERROR(testing::Check(testing::Mutated(
                      [](testing::WriterFile& f) {
                        f.Find("layers.1.output_projection")->shape = {3, 64};
                      },
                      spec)),
                  kInvalid, "layers.1.output_projection has shape [3, 64], want [6, 32]");
  }
  SECTION("a NaN, named by row and column") {
    REQUIRE_ERROR(testing::Check(testing::Mutated(
                      [](testing::WriterFile& f) {
                        auto& bytes = f.Find("layers.1.output_projection")->bytes;
                        bytes[2 * (32 + 5)] = 0xff;  // f16 0x7fff: NaN at [1, 5]
                        bytes[2 * (32 + 5) + 1] = 0x7f;
                      },
                      spec)),
                  kInvalid, "tensor layers.1.output_projection holds NaN at [1, 5]");
  }
}

}  // namespace
}  // namespace headpage
