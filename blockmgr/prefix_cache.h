// SPDX-License-Identifier: Apache-2.0
// File: blockmgr/prefix_cache.h
//
// The entries of BlockManager's prefix cache (block_manager.h, "Prefix
// caching"): full blocks of page_size prompt tokens whose pages, one in every
// (layer, kv_head) stream, are kept for later requests that start with the same
// tokens. This is vLLM's automatic prefix caching with one page per stream
// instead of one block for all heads.
//
// A block is named by a hash chain: its key holds the id of the block before it
// (0 for a prompt's first block), a salt for whatever else shaped the K/V (the
// model, an adapter, a policy's state), and its own page_size token ids. Keys
// are compared in full, token ids included, so two prefixes that hash alike are
// never confused.
//
// Blocks that no live sequence uses wait in a least-recently-used list (a
// Boost.Intrusive list threaded through the blocks, so a hit takes a block out of
// the middle in O(1)) and are reclaimed, oldest first, only when the pool runs
// short. A sequence that ends releases its blocks last block first, so a
// block's descendants always leave the list before it does and no cached block
// outlives its parent.
#ifndef HEADPAGE_BLOCKMGR_PREFIX_CACHE_H_
#define HEADPAGE_BLOCKMGR_PREFIX_CACHE_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "boost/intrusive/list.hpp"
#include "core/paged_kv.h"

namespace headpage {

struct PrefixBlockKey {
  uint64_t parent = 0;  // id of the block before, 0 for a prompt's first block
  uint64_t salt = 0;
  std::vector<int32_t> tokens;  // page_size token ids

  friend bool operator==(const PrefixBlockKey& a, const PrefixBlockKey& b) {
    return a.parent == b.parent && a.salt == b.salt && a.tokens == b.tokens;
  }
  template <typename H>
  friend H AbslHashValue(H h, const PrefixBlockKey& key) {
    return H::combine(std::move(h), key.parent, key.salt, key.tokens);
  }
};

// A normal link (no safe mode): the manager unlinks a block before it erases
// it, and a manager that is moved from or destroyed drops its list and its
// blocks together, in whichever order its members go.
struct CachedBlock
    : public boost::intrusive::list_base_hook<
          boost::intrusive::link_mode<boost::intrusive::normal_link>> {
  uint64_t id = 0;  // > 0, never reused
  const PrefixBlockKey* key = nullptr;  // the map's key for this block
  // One page per stream, [layer * num_kv_heads + kv_head]; the cache holds one
  // reference to each.
  std::vector<PageId> pages;
  // Live sequences whose streams start with this block's pages (and with its
  // ancestors'). 0: the block is in the least-recently-used list.
  int32_t users = 0;
};

using CachedBlockLru =
    boost::intrusive::list<CachedBlock, boost::intrusive::constant_time_size<true>>;

}  // namespace headpage

#endif  // HEADPAGE_BLOCKMGR_PREFIX_CACHE_H_
