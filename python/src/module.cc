// SPDX-License-Identifier: Apache-2.0
// File: python/src/module.cc
//
// The Python module headpage._ext (nanobind): the page pool, the arenas, the
// block manager, the policies, the eviction engine and the kernels, one file per
// part (bind_<part>.cc, each with its Def<Part>). python/headpage/__init__.py
// re-exports it; that file's docstring is the user's guide.
//
// Tensors cross in both directions through DLPack, without copies: every kernel
// takes any object with __dlpack__ (torch tensors, numpy arrays), host memory for
// a HostArena (kernels::ref) and CUDA memory on the arena's device for a CudaArena
// (kernels::gpu, enqueued on the stream the caller names); HostArena.kv and
// CudaArena.kv are views of the pool's own memory. What the bookkeeping returns
// is a small read-only object (ReservePlan, CompressResult, BlockManagerStats,
// ...) whose arrays are numpy views of its own copy.
#include <nanobind/nanobind.h>

#include "python/src/bind.h"

NB_MODULE(_ext, m) {
  using namespace headpage::bindings;
  m.doc() = "headpage: a paged KV cache with a block table per (sequence, layer, kv head)";
  DefCore(m);
  DefAllocator(m);
  DefBlockMgr(m);
  DefPolicy(m);
  DefEviction(m);
  DefKernels(m);
  DefRuntime(m);
}
