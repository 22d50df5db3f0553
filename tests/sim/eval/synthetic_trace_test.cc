// SPDX-License-Identifier: Apache-2.0
// `headpage trace info`'s concentration (AttentionConcentration) and Replay on
// synthetic traces (tests/sim/trace/trace_writer.h) whose answer is known:
// extreme but valid values (the reader's 1e15 limit, f16's 65504, denormals,
// scores all hugely negative), ties, a single token, and layers that store
// their queries at different positions.
#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "sim/eval/head_scores.h"
#include "sim/eval/replay.h"
#include "sim/eval/sweep.h"
#include "tests/sim/trace/trace_writer.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::TracePart;
using testing::TraceSpec;
using testing::WriterFile;

// Element i of a tensor (part) of layer `layer`.
using Fill = std::function<float(int32_t layer, TracePart part, int64_t i)>;

// The trace `spec` describes, with its keys, values and queries set by `fill`;
// `bytes` holds the file and must outlive the Trace.
Trace Build(const TraceSpec& spec, const Fill& fill, std::vector<uint8_t>* bytes,
            const std::function<void(WriterFile&)>& adjust = nullptr) {
  WriterFile file = testing::MakeTrace(spec);
  for (testing::WriterTensor& t : file.tensors) {
    const size_t dot = t.name.find('.', 7);  // "layers.{i}.part"
    const int32_t layer = std::stoi(t.name.substr(7, dot - 7));
    const std::string name = t.name.substr(dot + 1);
    if (name != "keys" && name != "values" && name != "queries") continue;
    const TracePart part = name == "keys"     ? TracePart::kKeys
                           : name == "values" ? TracePart::kValues
                                              : TracePart::kQueries;
    std::vector<float> v(t.bytes.size() / SizeOf(spec.dtype));
    for (size_t i = 0; i < v.size(); ++i) v[i] = fill(layer, part, static_cast<int64_t>(i));
    t.bytes = testing::EncodeFloats(spec.dtype, v);
  }
  if (adjust) adjust(file);
  *bytes = testing::Serialize(file);
  auto trace = Trace::FromBuffer(*bytes);
  REQUIRE_OK(trace);
  return std::move(trace).value();
}

// One layer, one q head on one kv head, head_dim 4, `prompt` tokens and no
// generated one, a single query at the last prompt position.
TraceSpec OneQuery(int32_t prompt, DType dtype) {
  TraceSpec spec;
  spec.num_layers = 1;
  spec.num_q_heads = 1;
  spec.num_kv_heads = 1;
  spec.head_dim = 4;
  spec.prompt_len = prompt;
  spec.generated_len = 0;
  spec.window = 1;
  spec.dtype = dtype;
  spec.outputs = false;
  return spec;
}

LayerConcentration OnlyLayer(const Trace& trace) {
  const std::vector<LayerConcentration> c = AttentionConcentration(trace);
  REQUIRE(c.size() == 1);
  REQUIRE(c[0].has_prompt_query);
  REQUIRE(std::isfinite(c[0].mean_share));
  REQUIRE(c[0].min_share == c[0].mean_share);  // one q head
  REQUIRE(c[0].max_share == c[0].mean_share);
  return c[0];
}

TEST_CASE("AttentionConcentration: magnitudes at the reader's limit give the exact share",
          "[sim][trace]") {
  // The query meets key 3 at 1e30 / sqrt(4) and every other key at -1e30 / 2:
  // one token of ten carries all the mass.
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    CAPTURE(DTypeName(dtype));
    std::vector<uint8_t> bytes;
    const Trace trace = Build(
        OneQuery(10, dtype),
        [](int32_t, TracePart part, int64_t i) {
          if (i % 4 != 0) return 0.0f;
          if (part != TracePart::kKeys) return 1e15f;
          return i / 4 == 3 ? 1e15f : -1e15f;
        },
        &bytes);
    REQUIRE(OnlyLayer(trace).mean_share == Approx(1.0 / 10));
  }
}

TEST_CASE("AttentionConcentration: equal scores, however extreme, spread 90% over 90% of tokens",
          "[sim][trace]") {
  // Every token weighs exp(0) = 1 after the maximum is subtracted, so 63 of
  // the 70 carry exactly 90%.
  struct Case {
    const char* what;
    DType dtype;
    float q, k;
  };
  const Case cases[] = {
      {"ordinary", DType::kF32, 0.5f, 0.25f},
      {"scores all -1e30", DType::kF32, 1e15f, -1e15f},
      {"f16's largest finite value", DType::kF16, 65504.0f, 65504.0f},
      {"f16's most negative score", DType::kF16, 65504.0f, -65504.0f},
      {"f32 denormals", DType::kF32, 1e-40f, 1e-40f},
      {"bf16 denormals", DType::kBF16, 1e-40f, -1e-40f},
  };
  for (const Case& c : cases) {
    CAPTURE(c.what);
    std::vector<uint8_t> bytes;
    const Trace trace = Build(
        OneQuery(70, c.dtype),
        [&](int32_t, TracePart part, int64_t) { return part == TracePart::kKeys ? c.k : c.q; },
        &bytes);
    REQUIRE(OnlyLayer(trace).mean_share == Approx(63.0 / 70).epsilon(1e-12));
  }
}

TEST_CASE("AttentionConcentration: a single token carries all of it", "[sim][trace]") {
  std::vector<uint8_t> bytes;
  const Trace trace = Build(
      OneQuery(1, DType::kF32),
      [](int32_t, TracePart part, int64_t i) {
        return part == TracePart::kQueries && i % 2 ? -1e15f : 1e15f;
      },
      &bytes);
  REQUIRE(OnlyLayer(trace).mean_share == 1.0);
}

// Layer `layer` of a trace written for `spec` (queries at prompt_len - window
// and after) keeps only the queries at `positions`, a subset of those.
void KeepQueries(WriterFile& file, const TraceSpec& spec, int32_t layer,
                 const std::vector<int32_t>& positions) {
  const auto q = static_cast<int64_t>(positions.size());
  testing::WriterTensor* p = file.Find(testing::LayerTensorName(layer, "query_positions"));
  p->shape = {q};
  p->bytes = testing::EncodeInt32(positions);
  for (const char* part : {"queries", "outputs"}) {
    testing::WriterTensor* t = file.Find(testing::LayerTensorName(layer, part));
    if (t == nullptr) continue;
    t->shape[1] = q;
    t->bytes.resize(static_cast<size_t>(spec.num_q_heads * q * spec.head_dim) * SizeOf(spec.dtype));
  }
}

float Ordinary(int32_t layer, TracePart part, int64_t i) {
  return static_cast<float>((i * 7 + layer * 3 + static_cast<int>(part)) % 17 - 8) / 8.0f;
}

TEST_CASE("AttentionConcentration: one entry per layer, in order, even without a prompt query",
          "[sim][trace]") {
  // Layer 0 stores only the generated tokens' queries; layer 1 the prompt's too.
  // (The command printed layer 1's figures on layer 0's line, and 0.000 on
  // layer 1's.)
  const TraceSpec spec;
  std::vector<uint8_t> bytes;
  const Trace trace = Build(spec, Ordinary, &bytes, [&](WriterFile& f) {
    KeepQueries(f, spec, 0, {12, 13, 14});
  });
  const std::vector<LayerConcentration> c = AttentionConcentration(trace);
  REQUIRE(c.size() == 2);
  REQUIRE(c[0].layer == 0);
  REQUIRE_FALSE(c[0].has_prompt_query);
  REQUIRE(c[1].layer == 1);
  REQUIRE(c[1].has_prompt_query);
  REQUIRE(c[1].min_share > 0);
  REQUIRE(c[1].min_share <= c[1].mean_share + 1e-12);
  REQUIRE(c[1].mean_share <= c[1].max_share + 1e-12);
  REQUIRE(c[1].max_share <= 1);
}

// A head_dim the GPU kernels are compiled for (replay takes any, see below).
TraceSpec ReplaySpec(DType dtype) {
  TraceSpec spec;
  spec.head_dim = 64;
  spec.dtype = dtype;
  return spec;
}

void RequireFinite(const ReplayMetrics& m) {
  CAPTURE(m.layer, m.mean_l1_error, m.mean_rel_l2_error, m.mean_lost_mass, m.mean_bound,
          m.mean_topk_recall);
  REQUIRE(m.queries > 0);
  for (double x :
       {m.mean_l1_error, m.mean_rel_l2_error, m.mean_lost_mass, m.mean_bound, m.mean_topk_recall}) {
    REQUIRE(std::isfinite(x));
    REQUIRE(x >= 0);
  }
  REQUIRE(m.mean_lost_mass <= 1);
  REQUIRE(m.mean_topk_recall <= 1);
}

TEST_CASE("Replay: values at the reader's limit give finite metrics", "[sim]") {
  struct Case {
    DType dtype;
    float big;
  };
  for (const Case c :
       {Case{DType::kF32, 1e15f}, Case{DType::kBF16, 1e15f}, Case{DType::kF16, 65504.0f}}) {
    CAPTURE(DTypeName(c.dtype));
    std::vector<uint8_t> bytes;
    // Signs vary with the element, so logits and outputs are large both ways.
    const Trace trace = Build(
        ReplaySpec(c.dtype),
        [&](int32_t layer, TracePart part, int64_t i) {
          return Ordinary(layer, part, i) < 0 ? -c.big : c.big;
        },
        &bytes);
    for (const char* name : {"ada-snapkv", "h2o"}) {
      CAPTURE(name);
      auto policy = PolicyByName(name);
      REQUIRE_OK(policy);
      policy->window = std::min(policy->window, 4);  // within the 12-token prompt
      auto result = Replay(trace, *policy, Budget::Fraction(0.5));
      REQUIRE_OK(result);
      for (const ReplayMetrics& m : result->layers) RequireFinite(m);
      RequireFinite(result->all);
    }
  }
}

TEST_CASE("Replay: any model's head_dim replays on the CPU, not only the GPU kernels' ones",
          "[sim]") {
  // 8, 80 and 96 are not compiled into the GPU kernels (kernels/supported.h);
  // the host pool, the references and the policies take them, and 256 too.
  for (const int32_t head_dim : {8, 80, 96, 256}) {
    CAPTURE(head_dim);
    TraceSpec spec;
    spec.head_dim = head_dim;
    spec.prompt_len = 40;
    spec.window = 8;
    spec.generated_len = 4;
    std::vector<uint8_t> bytes;
    const Trace trace = Build(spec, Ordinary, &bytes);
    auto full = PolicyByName("full");
    REQUIRE_OK(full);
    auto kept_all = Replay(trace, *full, Budget::Fraction(1.0));
    REQUIRE_OK(kept_all);
    // What the pool holds reads back exactly: no error, all of the mass.
    REQUIRE(kept_all->all.mean_l1_error == 0.0);
    REQUIRE(kept_all->all.mean_lost_mass == 0.0);
    for (const char* name : {"ada-snapkv", "streamingllm", "h2o"}) {
      CAPTURE(name);
      auto policy = PolicyByName(name);
      REQUIRE_OK(policy);
      policy->window = std::min(policy->window, 8);
      auto result = Replay(trace, *policy, Budget::Fraction(0.5));
      REQUIRE_OK(result);
      RequireFinite(result->all);
      REQUIRE(result->all.kept_tokens < result->all.full_tokens);
      REQUIRE(result->all.mean_lost_mass > 0.0);
    }
  }
}

TEST_CASE("Replay: layers that store queries at different positions are refused", "[sim]") {
  // Layer 0 stores four prompt queries, layer 1 one (and one generated): the
  // replay took layer 0's rows for every layer and read past layer 1's queries.
  const TraceSpec spec = ReplaySpec(DType::kF16);
  std::vector<uint8_t> bytes;
  const Trace trace = Build(spec, Ordinary, &bytes, [&](WriterFile& f) {
    KeepQueries(f, spec, 1, {11, 12});
  });
  auto policy = PolicyByName("uniform-snapkv");
  REQUIRE_OK(policy);
  policy->window = 4;
  REQUIRE_ERROR(Replay(trace, *policy, Budget::Fraction(0.5)), absl::StatusCode::kInvalidArgument,
                "layer 1 stores queries at other positions than layer 0");
}

}  // namespace
}  // namespace headpage

namespace headpage {
namespace {

// With W_o the identity (hidden = q heads x head_dim), each head's slice
// copies its output into its own hidden dimensions, so the projected error
// equals the attention output's own l1 error. Without a projection the
// value-weighted policies cannot replay.
TEST_CASE("Replay: the projected error through an identity W_o is the l1 error", "[sim]") {
  TraceSpec spec;
  spec.prompt_len = 200;
  spec.window = 64;
  spec.hidden_size = spec.num_q_heads * spec.head_dim;
  std::vector<uint8_t> bytes;
  const Trace trace = Build(
      spec, [](int32_t layer, TracePart part, int64_t i) {
        return testing::TraceValue(TraceSpec{}, layer, part, i) * (part == TracePart::kQueries ? 2 : 1);
      },
      &bytes, [&](WriterFile& file) {
        for (int32_t l = 0; l < spec.num_layers; ++l) {
          const int32_t n = spec.hidden_size;
          std::vector<float> identity(static_cast<size_t>(n) * n, 0.0f);
          for (int32_t o = 0; o < n; ++o) identity[static_cast<size_t>(o) * n + o] = 1.0f;
          file.Find("layers." + std::to_string(l) + ".output_projection")->bytes =
              testing::EncodeFloats(spec.dtype, identity);
        }
      });
  for (const char* name : {"uniform-snapkv", "critical-ada-snapkv", "defensivekv"}) {
    CAPTURE(name);
    auto config = PolicyByName(name);
    REQUIRE_OK(config);
    auto r = Replay(trace, *config, Budget::TokensPerHead(96));
    REQUIRE_OK(r);
    REQUIRE(r->all.has_projected_error);
    REQUIRE(r->all.mean_l1_error > 0);
    REQUIRE(r->all.mean_projected_l1_error == Approx(r->all.mean_l1_error).epsilon(1e-5));
  }

  spec.hidden_size = 0;
  std::vector<uint8_t> plain_bytes;
  const Trace plain = Build(spec, [](int32_t layer, TracePart part, int64_t i) {
    return testing::TraceValue(TraceSpec{}, layer, part, i);
  }, &plain_bytes);
  auto critical = PolicyByName("critical-snapkv");
  REQUIRE_OK(critical);
  REQUIRE_ERROR(Replay(plain, *critical, Budget::TokensPerHead(96)),
                absl::StatusCode::kFailedPrecondition, "does not hold (layers.{i}.output_projection");
  auto snap = PolicyByName("uniform-snapkv");
  REQUIRE_OK(snap);
  auto r = Replay(plain, *snap, Budget::TokensPerHead(96));
  REQUIRE_OK(r);
  REQUIRE_FALSE(r->all.has_projected_error);
}

}  // namespace
}  // namespace headpage

namespace headpage {
namespace {

// Zero keys: every query attends uniformly over positions 0..p. With 2 sinks
// and 3 recent tokens, a query at p loses positions 2..p-3, (p - 4) / (p + 1)
// of its attention. The prompt's queries are at 8..11 (the generated ones at
// 12..14 do not count): the mean of 4/9, 5/10, 6/11 and 7/12.
TEST_CASE("HeadScoresFromTrace: the attention a streaming head would lose", "[sim]") {
  TraceSpec spec;  // 12 prompt tokens, queries at 8..14
  std::vector<uint8_t> bytes;
  const Trace trace = Build(
      spec, [](int32_t layer, TracePart part, int64_t i) {
        return part == TracePart::kKeys ? 0.0f : testing::TraceValue(TraceSpec{}, layer, part, i);
      },
      &bytes);
  auto scores = HeadScoresFromTrace(trace, 2, 3);
  REQUIRE_OK(scores);
  REQUIRE(scores->num_layers() == 2);
  REQUIRE(scores->num_kv_heads() == 2);
  const double want = (4.0 / 9 + 5.0 / 10 + 6.0 / 11 + 7.0 / 12) / 4;
  for (int32_t l = 0; l < 2; ++l) {
    for (int32_t h = 0; h < 2; ++h) CHECK(scores->score(l, h) == Approx(want).epsilon(1e-6));
  }
  // Nothing outside: all kept.
  auto none = HeadScoresFromTrace(trace, 0, 100);
  REQUIRE_OK(none);
  CHECK(none->score(1, 1) == 0.0f);
  REQUIRE_ERROR(HeadScoresFromTrace(trace, -1, 3), absl::StatusCode::kInvalidArgument, "sinks");
}

}  // namespace
}  // namespace headpage
