// SPDX-License-Identifier: Apache-2.0
// File: python/src/bind_eviction.cc
//
// eviction: EvictionEngine over a HostArena (the CPU kernels) or a CudaArena (the
// GPU kernels on the caller's stream), and CompressResult, what compress()
// returns.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "blockmgr/block_manager.h"
#include "eviction/engine.h"
#include "policy/collective.h"
#include "python/src/bind.h"

namespace headpage::bindings {
namespace {

// A tensor-parallel group as Python supplies it: any object with int
// attributes `rank` and `size` and a method all_reduce_sum(array) that sums a
// numpy int64 array across the group in place
// (headpage.distributed.ProcessGroupCollective over torch.distributed). The
// engine calls it with the GIL released; the call takes it back, and a Python
// exception becomes Unavailable (the group can no longer agree) instead of
// unwinding through the engine.
class PyCollective : public policy::Collective {
 public:
  explicit PyCollective(nb::object group) : group_(std::move(group)) {
    rank_ = nb::cast<int32_t>(group_.attr("rank"));
    size_ = nb::cast<int32_t>(group_.attr("size"));
    if (size_ < 1 || rank_ < 0 || rank_ >= size_) {
      BadArgument(absl::StrCat("group: rank ", rank_, " of a group of ", size_));
    }
  }
  int32_t rank() const override { return rank_; }
  int32_t size() const override { return size_; }
  const nb::object& object() const { return group_; }
  absl::Status AllReduceSum(absl::Span<int64_t> values) override {
    nb::gil_scoped_acquire gil;
    try {
      // A view of the engine's buffer, valid for this call only.
      const size_t shape[1] = {values.size()};
      nb::ndarray<nb::numpy, int64_t> array(values.data(), 1, shape, nb::handle());
      // By reference: the sums must land in the engine's buffer (nanobind
      // copies an array without an owner by default).
      group_.attr("all_reduce_sum")(nb::cast(array, nb::rv_policy::reference));
    } catch (nb::python_error& e) {
      // The exception's type and message; its traceback is Python's, not the engine's.
      const std::string type = nb::cast<std::string>(e.type().attr("__name__"));
      const std::string message = nb::cast<std::string>(nb::str(e.value()));
      return absl::UnavailableError(
          absl::StrCat("the group's all_reduce_sum failed: ", type, ": ", message));
    } catch (std::exception& e) {  // a cast of what Python returned
      return absl::UnavailableError(absl::StrCat("the group's all_reduce_sum failed: ", e.what()));
    }
    return absl::OkStatus();
  }

 private:
  nb::object group_;
  int32_t rank_ = 0;
  int32_t size_ = 1;
};

// EvictionEngine plus the manager it drives (for the geometry), where its
// arena lives (queries may be there too) and the group it joined, if any.
struct Engine {
  EvictionEngine engine;
  BlockManager* manager;
  Place place;
  std::unique_ptr<PyCollective> group;
};

// EvictionEngine.compress()'s result (Python: headpage.CompressResult); it owns
// `kept`.
struct Compression {
  int64_t tokens_before = 0;
  int64_t tokens_after = 0;
  int64_t pages_freed = 0;
  std::vector<int32_t> kept;  // [num_layers][num_kv_heads]
  size_t num_layers = 0;
  size_t num_kv_heads = 0;
};

// The engine's queries: one [num_q_heads][num_queries][head_dim] array per
// layer, and their positions (one int32 [num_queries] array for all layers, or
// one per layer).
std::vector<LayerQueries> QueriesOf(const CacheGeometry& g, const std::vector<In>& queries,
                                    const std::vector<In>& positions, const Place& engine) {
  if (static_cast<int32_t>(queries.size()) != g.num_layers) {
    BadArgument(absl::StrCat("queries: ", queries.size(), " layers; the model has ", g.num_layers));
  }
  if (positions.size() != 1 && positions.size() != queries.size()) {
    BadArgument(absl::StrCat("positions: want one array for every layer or one per layer, got ",
                             positions.size()));
  }
  std::vector<LayerQueries> out(queries.size());
  // A CUDA engine reads queries where they are, on its device or on the host
  // (all of one kind); a host engine reads host memory only.
  const bool on_device = engine.cuda && !queries.empty() &&
                         queries[0].device_type() == nb::device::cuda::value;
  const Place place = on_device ? engine : Place{};
  for (size_t l = 0; l < queries.size(); ++l) {
    const std::string name = absl::StrCat("queries[", l, "]");
    Check(queries[l], name.c_str(), place, {g.num_q_heads, -1, g.head_dim}, std::nullopt, "");
    const std::optional<DType> dtype = DTypeOf(queries[l].dtype());
    if (!dtype) BadArgument(name + ": want float32, float16 or bfloat16");
    const int64_t n = queries[l].shape(1);
    const In& pos = positions.size() == 1 ? positions[0] : positions[l];
    out[l].data = queries[l].data();
    out[l].positions = Int32s(pos, "positions", place, n);
    out[l].num_queries = static_cast<int32_t>(n);
    out[l].dtype = *dtype;
    out[l].memory = on_device ? MemoryKind::kDevice : MemoryKind::kHost;
  }
  return out;
}

// Each layer's output projection W_o, [hidden][num_q_heads * head_dim] (the
// o_proj weight as torch.nn.Linear stores it), where the queries are.
void AddOutputProjections(const CacheGeometry& g, const std::vector<In>& projections,
                          const Place& engine, std::vector<LayerQueries>* queries) {
  if (projections.size() != queries->size()) {
    BadArgument(absl::StrCat("output_projections: ", projections.size(), " layers; the model has ",
                             queries->size()));
  }
  for (size_t l = 0; l < projections.size(); ++l) {
    LayerQueries& q = (*queries)[l];
    const std::string name = absl::StrCat("output_projections[", l, "]");
    const Place place = q.memory == MemoryKind::kDevice ? engine : Place{};
    Check(projections[l], name.c_str(), place, {-1, int64_t{g.num_q_heads} * g.head_dim},
          std::nullopt, "");
    const std::optional<DType> dtype = DTypeOf(projections[l].dtype());
    if (!dtype) BadArgument(name + ": want float32, float16 or bfloat16");
    if (projections[l].shape(0) < 1) BadArgument(name + ": hidden size 0");
    q.output_projection = policy::OutputProjection{
        projections[l].data(), static_cast<int32_t>(projections[l].shape(0)), g.num_q_heads,
        g.head_dim, *dtype};
  }
}

// Runs `convert` (a binding's checks and conversions, which raise); in a group,
// a raise first tells the other members, already in the engine's call, that
// this one failed (EvictionEngine::FailTogether), so that they raise too.
template <typename Convert>
auto InGroup(Engine& e, const char* what, Convert convert) {
  try {
    return convert();
  } catch (const std::exception& error) {
    if (e.group != nullptr) {
      const absl::Status told = e.engine.FailTogether(absl::InvalidArgumentError(
          absl::StrCat(what, ": refused before the engine: ", error.what())));
      (void)told;  // the raise below carries the reason
    }
    throw;
  }
}

Compression Compress(Engine& e, SeqId seq, nb::handle policy, nb::handle budget,
                     const std::vector<In>& queries, const std::vector<In>& positions,
                     const std::optional<std::vector<In>>& output_projections) {
  const CacheGeometry& g = e.manager->geometry();
  struct Call {
    PolicyConfig config;
    Budget budget;
    std::vector<LayerQueries> queries;
  };
  Call call = InGroup(e, "EvictionEngine.compress", [&] {
    Call c{PolicyOf(policy), BudgetOf(budget), QueriesOf(g, queries, positions, e.place)};
    if (output_projections) AddOutputProjections(g, *output_projections, e.place, &c.queries);
    NotInUse(*e.manager);
    return c;
  });
  absl::StatusOr<CompressResult> result;
  {
    const InUse busy(*e.manager, "EvictionEngine.compress");
    nb::gil_scoped_release release;
    result = e.engine.Compress(seq, call.config, call.budget, call.queries);
  }
  CompressResult r = ValueOrThrow(std::move(result));
  return Compression{r.tokens_before,
                     r.tokens_after,
                     r.pages_freed,
                     std::move(r.kept),
                     static_cast<size_t>(g.num_layers),
                     static_cast<size_t>(g.num_kv_heads)};
}

int64_t EnforcePoolBudget(Engine& e, int64_t pages_to_free, int32_t floor_tokens,
                          int32_t protect_recent) {
  absl::StatusOr<int64_t> freed;
  InGroup(e, "EvictionEngine.enforce_pool_budget", [&] { NotInUse(*e.manager); });
  {
    const InUse busy(*e.manager, "EvictionEngine.enforce_pool_budget");
    nb::gil_scoped_release release;
    freed = e.engine.EnforcePoolBudget(pages_to_free, floor_tokens, protect_recent);
  }
  return ValueOrThrow(std::move(freed));
}

}  // namespace

void DefEviction(nb::module_& m) {
  nb::class_<Compression>(m, "CompressResult",
                          "EvictionEngine.compress(): what the policy kept of one sequence.")
      .def_ro("tokens_before", &Compression::tokens_before,
              "The sequence's stream lengths summed, before.")
      .def_ro("tokens_after", &Compression::tokens_after, "The same, after.")
      .def_ro("pages_freed", &Compression::pages_freed, "Pool pages back on the free list.")
      .def_prop_ro(
          "kept",
          [](nb::handle self) {
            const auto& c = nb::cast<const Compression&>(self);
            return View<int32_t>(c.kept.data(), {c.num_layers, c.num_kv_heads}, self);
          },
          "int32 [layers][kv_heads]: each stream's length after.")
      .def("__repr__", [](const Compression& c) {
        return absl::StrCat("CompressResult(tokens_before=", c.tokens_before,
                            ", tokens_after=", c.tokens_after, ", pages_freed=", c.pages_freed,
                            ", kept=[", c.num_layers, " layers][", c.num_kv_heads, " kv_heads])");
      });

  nb::class_<Engine>(m, "EvictionEngine",
                     "Runs a policy against a BlockManager and its arena: a HostArena through the "
                     "CPU kernels, a CudaArena through the GPU kernels on `stream` (only the kept "
                     "counts cross to the host).")
      .def(
          "__init__",
          [](Engine* e, BlockManager* manager, const HostArena& arena) {
            if (manager == nullptr) BadArgument("manager: want a BlockManager, got None");
            NotInUse(*manager);
            new (e) Engine{ValueOrThrow(EvictionEngine::Create(manager, arena.view())), manager,
                           Place{}, nullptr};
          },
          nb::arg("manager"), nb::arg("arena"), nb::keep_alive<1, 2>(), nb::keep_alive<1, 3>())
      .def(
          "__init__",
          [](Engine* e, BlockManager* manager, const DeviceArena& arena, uintptr_t stream) {
            if (manager == nullptr) BadArgument("manager: want a BlockManager, got None");
            NotInUse(*manager);
            new (e) Engine{
                ValueOrThrow(EvictionEngine::Create(manager, arena.arena.view(), StreamOf(stream))),
                manager, PlaceOf(arena), nullptr};
          },
          nb::arg("manager"), nb::arg("arena"), nb::arg("stream") = 0, nb::keep_alive<1, 2>(),
          nb::keep_alive<1, 3>())
      .def_prop_ro(
          "on_device", [](const Engine& e) { return e.place.cuda; },
          "Whether the engine compresses on the GPU (its arena is a CudaArena).")
      .def("compress", &Compress, nb::arg("seq"), nb::arg("policy"), nb::arg("budget"),
           nb::arg("queries"), nb::arg("positions"), nb::arg("output_projections") = nb::none(),
           "Compresses seq at the end of its prefill. queries: one [q_heads][n][head_dim] "
           "array per layer (the observation window; host arrays, or for a CUDA engine also "
           "tensors on its device); positions: int32 [n], one for all layers or one per layer, "
           "where the queries are; output_projections: per layer the o_proj weight "
           "[hidden][q_heads * head_dim], where the queries are, for the policies whose "
           "needs_output_projection is set (CriticalKV, DefensiveKV). Returns a CompressResult: "
           "tokens_before, tokens_after, pages_freed, kept.")
      .def("enforce_pool_budget", &EnforcePoolBudget, nb::arg("pages_to_free"),
           nb::arg("floor_tokens") = 0, nb::arg("protect_recent") = 0,
           "Frees pages_to_free pages across every sequence the engine has scores for, "
           "lowest scores first (one threshold over all of them), keeping at least "
           "floor_tokens in every stream and its protect_recent last tokens. Returns the "
           "pages freed, fewer when the floors stop it; ValueError for a negative argument. "
           "In a group (join_group) every rank passes the same arguments, pages_to_free being "
           "the group's: the ranks free them between their pools, each keeping what one "
           "engine over every head would, and each returns the pages freed in its own pool.")
      .def(
          "join_group",
          [](Engine& e, nb::object group) {
            NotInUse(*e.manager);
            if (e.group != nullptr) BadArgument("join_group: the engine is in a group already");
            auto member = std::make_unique<PyCollective>(std::move(group));
            ThrowIfError(e.engine.JoinGroup(member.get()));
            e.group = std::move(member);
          },
          nb::arg("group"),
          "Makes the engine one member of a tensor-parallel group whose rank r of s holds kv "
          "heads [r H, (r + 1) H) of every layer (H: this geometry's num_kv_heads): from "
          "then on compress decides for these heads exactly what one engine over all s H "
          "heads would (Ada-KV's top-k agreed through the group), and when one member fails "
          "every member raises. group: an object with int attributes rank and size and a "
          "method all_reduce_sum(array) summing an int64 numpy array across the group in "
          "place (headpage.distributed.ProcessGroupCollective). Every member must make the "
          "same calls in the same order. A CUDA engine agrees the same way: its executor "
          "scores on the GPU, copies the scores to the host for the agreement and keeps each "
          "stream's agreed count on the GPU.")
      .def_prop_ro(
          "group",
          [](const Engine& e) -> nb::object {
            return e.group == nullptr ? nb::none() : e.group->object();
          },
          "The group join_group() was given, or None.")
      .def(
          "freeze_prefix",
          [](Engine& e, SeqId seq, int64_t tokens) {
            NotInUse(*e.manager);
            ThrowIfError(e.engine.FreezePrefix(seq, tokens));
          },
          nb::arg("seq"), nb::arg("tokens"),
          "The first `tokens` tokens of seq are shared (a cached prefix): every later "
          "compression keeps them whole and in their pages, and the budget applies to the "
          "rest of the prompt. A multiple of the page size, at most the tokens still at their "
          "original slots; 0 lifts it.")
      .def(
          "forget",
          [](Engine& e, SeqId seq) {
            NotInUse(*e.manager);
            e.engine.Forget(seq);
          },
          nb::arg("seq"));
}

}  // namespace headpage::bindings
