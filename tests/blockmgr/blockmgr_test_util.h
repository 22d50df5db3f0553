// SPDX-License-Identifier: Apache-2.0
#ifndef HEADPAGE_TESTS_BLOCKMGR_BLOCKMGR_TEST_UTIL_H_
#define HEADPAGE_TESTS_BLOCKMGR_BLOCKMGR_TEST_UTIL_H_

#include <memory>

#include "allocator/page_pool.h"
#include "blockmgr/block_manager.h"
#include "tests/testing/status_matchers.h"

namespace headpage::testing {

// 2 layers x 2 kv heads (4 streams a sequence), page size 4 unless given.
inline CacheGeometry TinyGeometry(int32_t page_size = 4) {
  CacheGeometry g;
  g.num_layers = 2;
  g.num_kv_heads = 2;
  g.num_q_heads = 4;
  g.head_dim = 64;
  g.dtype = DType::kF32;
  g.page_size = page_size;
  return g;
}

// A pool and a manager over it, kept together so the pool outlives the manager.
struct Fixture {
  std::unique_ptr<PagePool> pool;
  std::unique_ptr<BlockManager> manager;

  explicit Fixture(int64_t pages, CacheGeometry geometry = TinyGeometry()) {
    auto p = PagePool::Create({pages, 0.0});
    REQUIRE_OK(p);
    pool = std::make_unique<PagePool>(std::move(p).value());
    auto m = BlockManager::Create(geometry, pool.get());
    REQUIRE_OK(m);
    manager = std::make_unique<BlockManager>(std::move(m).value());
  }
  BlockManager& operator*() { return *manager; }
  BlockManager* operator->() { return manager.get(); }
};

}  // namespace headpage::testing

#endif  // HEADPAGE_TESTS_BLOCKMGR_BLOCKMGR_TEST_UTIL_H_
