// SPDX-License-Identifier: Apache-2.0
// Writes small valid traces into a directory, the trace fuzzer's seed corpus:
//   trace_fuzz_seeds DIR
// Each is a few kilobytes at most, so the fuzzer spends its time on the header
// and the checks rather than on scanning large tensors; those of head_dim 64
// are replayed too (tests/sim/trace/trace_input_check.h).
#include <cstdio>
#include <string>
#include <vector>

#include "tests/sim/trace/trace_writer.h"

namespace {

bool WriteFile(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return false;
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  return std::fclose(f) == 0 && ok;
}

}  // namespace

int main(int argc, char** argv) {
  using headpage::DType;
  using headpage::testing::MakeTrace;
  using headpage::testing::Serialize;
  using headpage::testing::TraceSpec;
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  struct Seed {
    const char* name;
    TraceSpec spec;
    bool pad;
  };
  std::vector<Seed> seeds;
  auto tiny = [] {
    TraceSpec s;
    s.num_layers = 1;
    s.num_q_heads = 2;
    s.num_kv_heads = 1;
    s.head_dim = 2;
    s.prompt_len = 3;
    s.generated_len = 1;
    s.window = 2;
    return s;
  };
  seeds.push_back({"f16-tiny", tiny(), true});
  {
    TraceSpec s = tiny();
    s.dtype = DType::kBF16;
    s.outputs = false;
    seeds.push_back({"bf16-no-outputs", s, true});
  }
  {
    TraceSpec s = tiny();
    s.dtype = DType::kF32;
    s.generated_len = 0;
    seeds.push_back({"f32-prompt-only", s, true});
  }
  {
    TraceSpec s = tiny();
    s.num_layers = 30;
    s.layers = {29, 4};
    seeds.push_back({"f16-layer-subset", s, true});
  }
  {
    TraceSpec s = tiny();
    s.head_dim = 3;  // odd sizes: unpadded and misaligned tensors
    seeds.push_back({"f16-unpadded-odd", s, false});
  }
  {
    TraceSpec s;  // the tests' default: 2 layers, GQA 4/2, head_dim 8
    seeds.push_back({"f16-default", s, true});
  }
  // head_dim 64, the smallest the kernels take: these get as far as a replay.
  {
    TraceSpec s = tiny();
    s.head_dim = 64;
    s.prompt_len = 6;
    s.generated_len = 2;
    seeds.push_back({"f16-replay", s, true});
  }
  {
    TraceSpec s;
    s.head_dim = 64;
    s.dtype = DType::kBF16;
    s.outputs = false;
    seeds.push_back({"bf16-replay-gqa", s, true});
  }
  {
    TraceSpec s = tiny();
    s.head_dim = 64;
    s.num_layers = 3;
    s.layers = {2, 0};
    s.dtype = DType::kF32;
    s.prompt_len = 9;
    s.generated_len = 3;
    s.window = 5;
    seeds.push_back({"f32-replay-layer-subset", s, true});
  }
  for (const Seed& seed : seeds) {
    const std::string path = dir + "/seed-" + seed.name + ".safetensors";
    if (!WriteFile(path, Serialize(MakeTrace(seed.spec), seed.pad))) {
      std::fprintf(stderr, "cannot write %s\n", path.c_str());
      return 1;
    }
  }
  return 0;
}
