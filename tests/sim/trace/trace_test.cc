// SPDX-License-Identifier: Apache-2.0
// The trace reader on valid traces, on files (Trace::Open), and on the files in
// the repository. Malformed traces: trace_malformed_test.cc.
#include "sim/trace/trace.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "tests/sim/trace/trace_input_check.h"
#include "tests/sim/trace/trace_test_helpers.h"
#include "tests/sim/trace/trace_writer.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

namespace fs = std::filesystem;
using absl::StatusCode;
using testing::Check;
using testing::MakeTrace;
using testing::RequireMatchesSpec;
using testing::Serialize;
using testing::TraceSpec;
using testing::WithMetadata;
using testing::WriterFile;
using testing::WriterTensor;
using testing::TracePart;
using testing::TraceValue;

// A writable temporary file, removed on destruction.
class TempFile {
 public:
  explicit TempFile(const std::vector<uint8_t>& bytes) {
    const char* tmpdir = std::getenv("TMPDIR");
    path_ = std::string(tmpdir != nullptr ? tmpdir : "/tmp") + "/headpage_trace_XXXXXX";
    const int fd = mkstemp(path_.data());
    REQUIRE(fd >= 0);
    REQUIRE(write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
    close(fd);
  }
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// ---------------------------------------------------------------------------
// Valid traces

TEST_CASE("Trace: FromBuffer reads a valid trace", "[sim][trace]") {
  const TraceSpec spec;
  const std::vector<uint8_t> bytes = Serialize(MakeTrace(spec));
  auto trace = Trace::FromBuffer(bytes);
  REQUIRE_OK(trace);
  RequireMatchesSpec(*trace, spec);
  REQUIRE(trace->metadata().model == "test-model");
  REQUIRE(trace->metadata().source == "tests/sim/trace/trace_writer.h");
  REQUIRE(trace->metadata().task == "synthetic");
  REQUIRE(trace->metadata().rope_applied);

  // An aligned file is zero-copy: the views point into the caller's bytes.
  const TraceLayer& layer = trace->layers()[0];
  const auto* begin = bytes.data();
  const auto* end = bytes.data() + bytes.size();
  for (const void* p : {layer.keys.data, layer.values.data, layer.queries.data, layer.outputs->data,
                        static_cast<const void*>(layer.query_positions.data())}) {
    REQUIRE(static_cast<const uint8_t*>(p) >= begin);
    REQUIRE(static_cast<const uint8_t*>(p) < end);
  }
}

TEST_CASE("Trace: every dtype round-trips exactly", "[sim][trace]") {
  TraceSpec spec;
  spec.dtype = GENERATE(DType::kF16, DType::kBF16, DType::kF32);
  spec.seed = 7;
  const std::vector<uint8_t> bytes = Serialize(MakeTrace(spec));
  auto trace = Trace::FromBuffer(bytes);
  REQUIRE_OK(trace);
  RequireMatchesSpec(*trace, spec);
}

TEST_CASE("Trace: the output projection round-trips exactly, in every dtype", "[sim][trace]") {
  TraceSpec spec;
  spec.dtype = GENERATE(DType::kF16, DType::kBF16, DType::kF32);
  spec.hidden_size = 6;
  const std::vector<uint8_t> bytes = Serialize(MakeTrace(spec));
  auto trace = Trace::FromBuffer(bytes);
  REQUIRE_OK(trace);
  for (const TraceLayer& layer : trace->layers()) {
    REQUIRE(layer.output_projection.has_value());
    REQUIRE(layer.output_projection->shape == std::vector<int64_t>{6, 32});
    for (int64_t i = 0; i < 6 * 32; ++i) {
      REQUIRE(LoadAsFloat(layer.output_projection->data, i, spec.dtype) ==
              TraceValue(spec, layer.index, TracePart::kOutputProjection, i));
    }
  }
  spec.hidden_size = 0;  // and it stays optional
  auto without = Trace::FromBuffer(Serialize(MakeTrace(spec)));
  REQUIRE_OK(without);
  REQUIRE_FALSE(without->layers()[0].output_projection.has_value());
}

TEST_CASE("Trace: a subset of layers, in any file order, comes back sorted", "[sim][trace]") {
  TraceSpec spec;
  spec.num_layers = 30;
  spec.layers = {17, 3, 29, 0};
  spec.outputs = false;
  WriterFile file = MakeTrace(spec);
  std::reverse(file.tensors.begin(), file.tensors.end());
  const std::vector<uint8_t> bytes = Serialize(file);
  auto trace = Trace::FromBuffer(bytes);
  REQUIRE_OK(trace);
  RequireMatchesSpec(*trace, spec);
}

TEST_CASE("Trace: optional metadata, extra keys and outputs per layer", "[sim][trace]") {
  TraceSpec spec;
  spec.generated_len = 0;  // a prompt-only trace is valid
  WriterFile file = MakeTrace(spec);
  file.EraseMetadata("model");
  file.EraseMetadata("source");
  file.EraseMetadata("task");
  file.SetMetadata("captured_by", "someone's newer tool");
  file.SetMetadata("rope_applied", "false");
  file.Erase("layers.1.outputs");
  const std::vector<uint8_t> bytes = Serialize(file);
  auto trace = Trace::FromBuffer(bytes);
  REQUIRE_OK(trace);
  REQUIRE(trace->metadata().model.empty());
  REQUIRE(trace->metadata().task.empty());
  REQUIRE_FALSE(trace->metadata().rope_applied);
  REQUIRE(trace->num_tokens() == 12);
  REQUIRE(trace->layers()[0].outputs.has_value());
  REQUIRE_FALSE(trace->layers()[1].outputs.has_value());
}

TEST_CASE("Trace: misaligned tensors are copied, never read misaligned", "[sim][trace]") {
  SECTION("the whole buffer starts at an odd address") {
    TraceSpec spec;
    spec.dtype = GENERATE(DType::kF16, DType::kF32);
    const std::vector<uint8_t> file = Serialize(MakeTrace(spec));
    std::vector<uint8_t> storage(file.size() + 1);
    std::memcpy(storage.data() + 1, file.data(), file.size());
    auto trace = Trace::FromBuffer(absl::MakeConstSpan(storage.data() + 1, file.size()));
    REQUIRE_OK(trace);
    RequireMatchesSpec(*trace, spec);  // checks every view's alignment
  }
  SECTION("int32 positions after an F16 tensor of odd length, header unpadded") {
    // 1 kv head x 5 tokens x head_dim 3 = 15 halves: the next tensor starts at
    // an offset that is 2 mod 4.
    TraceSpec spec;
    spec.num_layers = 1;
    spec.num_q_heads = 1;
    spec.num_kv_heads = 1;
    spec.head_dim = 3;
    spec.prompt_len = 4;
    spec.generated_len = 1;
    spec.window = 2;
    WriterFile file = MakeTrace(spec);
    // keys, then positions right after it.
    std::stable_partition(file.tensors.begin(), file.tensors.end(), [](const WriterTensor& t) {
      return t.name == "layers.0.keys" || t.name == "layers.0.query_positions";
    });
    for (bool pad : {true, false}) {
      const std::vector<uint8_t> bytes = Serialize(file, pad);
      auto trace = Trace::FromBuffer(bytes);
      REQUIRE_OK(trace);
      RequireMatchesSpec(*trace, spec);
    }
  }
}

TEST_CASE("Trace: Open maps a file, and the views outlive moves", "[sim][trace]") {
  const TraceSpec spec;
  const TempFile file(Serialize(MakeTrace(spec)));
  auto opened = Trace::Open(file.path());
  REQUIRE_OK(opened);
  const void* keys = opened->layers()[0].keys.data;
  Trace moved = std::move(opened).value();
  REQUIRE(moved.layers()[0].keys.data == keys);
  Trace assigned = std::move(moved);
  RequireMatchesSpec(assigned, spec);
}

TEST_CASE("Trace: Open errors", "[sim][trace]") {
  SECTION("a missing file is NotFound") {
    REQUIRE_ERROR(Trace::Open("/nonexistent/headpage/trace.safetensors"), StatusCode::kNotFound,
                  "/nonexistent/headpage/trace.safetensors");
  }
  SECTION("an empty file") {
    const TempFile file({});
    REQUIRE_ERROR(Trace::Open(file.path()), StatusCode::kInvalidArgument, "0 bytes, too short");
  }
  SECTION("a tiny file") {
    const TempFile file({1, 0, 0});
    REQUIRE_ERROR(Trace::Open(file.path()), StatusCode::kInvalidArgument, "3 bytes, too short");
  }
  SECTION("a directory") {
    REQUIRE_ERROR(Trace::Open("/"), StatusCode::kInvalidArgument, "not a regular file");
  }
  SECTION("a FIFO is refused without blocking, and so is a device") {
    const char* tmp = std::getenv("TMPDIR");
    const std::string fifo = std::string(tmp != nullptr ? tmp : "/tmp") + "/headpage_trace_fifo";
    std::remove(fifo.c_str());
    REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
    REQUIRE_ERROR(Trace::Open(fifo), StatusCode::kInvalidArgument, "not a regular file");
    std::remove(fifo.c_str());
    REQUIRE_ERROR(Trace::Open("/dev/zero"), StatusCode::kInvalidArgument, "not a regular file");
  }
  SECTION("a malformed file names the file") {
    const TempFile file(WithMetadata("version", "2"));
    REQUIRE_ERROR(Trace::Open(file.path()), StatusCode::kInvalidArgument,
                  file.path() + ": __metadata__ version is \"2\"");
  }
  SECTION("a truncated file is DataLoss") {
    std::vector<uint8_t> bytes = Serialize(MakeTrace(TraceSpec{}));
    bytes.resize(bytes.size() - 1);
    const TempFile file(bytes);
    REQUIRE_ERROR(Trace::Open(file.path()), StatusCode::kDataLoss, "the file is truncated");
  }
}

// ---------------------------------------------------------------------------
// Files in the repository

fs::path SourceDir() { return fs::path(HEADPAGE_SOURCE_DIR); }

std::vector<fs::path> FilesIn(const fs::path& dir, const std::string& extension) {
  std::vector<fs::path> files;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return files;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.is_regular_file() && (extension.empty() || entry.path().extension() == extension)) {
      files.push_back(entry.path());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

TEST_CASE("Trace: every bundled trace in tests/data/traces opens", "[sim][trace]") {
  const std::vector<fs::path> files = FilesIn(SourceDir() / "tests/data/traces", ".safetensors");
  if (files.empty()) {
    WARN("no tests/data/traces/*.safetensors yet: nothing to check");
    return;
  }
  for (const fs::path& path : files) {
    INFO(path.string());
    auto trace = Trace::Open(path.string());
    REQUIRE_OK(trace);
    const TraceMetadata& m = trace->metadata();
    REQUIRE_FALSE(trace->layers().empty());
    REQUIRE(m.rope_applied);
    // The capture's promise (issue #4): queries for at least the last 64 prompt
    // tokens and for every generated token.
    const int32_t first_window = std::max(0, m.prompt_len - 64);
    for (const TraceLayer& layer : trace->layers()) {
      INFO("layer " << layer.index);
      const auto& p = layer.query_positions;
      for (int32_t want = first_window; want < trace->num_tokens(); ++want) {
        REQUIRE(std::binary_search(p.begin(), p.end(), want));
      }
    }
  }
}

// Seeds and crash reproducers of the fuzzer (scripts/fuzz-trace): each keeps
// every promise the fuzzer checks, through the reader, trace info's statistics
// and a short replay, without crashing (this suite also runs under ASan and
// UBSan in build-asan/).
TEST_CASE("Trace: fuzzer corpus files keep the fuzzer's promises", "[sim][trace]") {
  const std::vector<fs::path> files = FilesIn(SourceDir() / "tests/data/fuzz/trace", "");
  REQUIRE(!files.empty());
  for (const fs::path& path : files) {
    INFO(path.string());
    std::ifstream in(path, std::ios::binary);
    const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                                     std::istreambuf_iterator<char>());
    REQUIRE(testing::CheckTraceInput(bytes) == "");
  }
}

}  // namespace
}  // namespace headpage
