// SPDX-License-Identifier: Apache-2.0
// A small host pool with recognisable contents, shared by the kernel tests.
#ifndef HEADPAGE_TESTS_KERNELS_KERNEL_TEST_UTIL_H_
#define HEADPAGE_TESTS_KERNELS_KERNEL_TEST_UTIL_H_

#include <cstring>
#include <vector>

#include "core/paged_kv.h"

namespace headpage::testing {

// Owns the bytes of a PagedKV on the host.
struct HostCache {
  std::vector<float> data;  // f32 elements
  std::vector<int32_t> positions;
  PagedKV view;

  HostCache(int32_t num_pages, int32_t page_size, int32_t head_dim)
      : data(static_cast<size_t>(num_pages) * 2 * page_size * head_dim, 0.0f),
        positions(static_cast<size_t>(num_pages) * page_size, -1) {
    view.data = data.data();
    view.positions = positions.data();
    view.num_pages = num_pages;
    view.page_size = page_size;
    view.head_dim = head_dim;
    view.dtype = DType::kF32;
  }

  // Token `token`'s K (V) row as the tests write it: every element encodes it.
  static float KeyValue(int32_t token, int32_t e) { return static_cast<float>(token * 1000 + e); }
  static float ValueValue(int32_t token, int32_t e) { return -KeyValue(token, e); }

  // Writes a recognisable token into `slot`.
  void Put(int64_t slot, int32_t token) {
    for (int32_t e = 0; e < view.head_dim; ++e) {
      data[static_cast<size_t>(view.KeyOffset(slot) + e)] = KeyValue(token, e);
      data[static_cast<size_t>(view.ValueOffset(slot) + e)] = ValueValue(token, e);
    }
    positions[static_cast<size_t>(slot)] = token;
  }

  // True when `slot` holds exactly what Put(slot, token) wrote.
  bool Holds(int64_t slot, int32_t token) const {
    if (positions[static_cast<size_t>(slot)] != token) return false;
    for (int32_t e = 0; e < view.head_dim; ++e) {
      if (data[static_cast<size_t>(view.KeyOffset(slot) + e)] != KeyValue(token, e)) return false;
      if (data[static_cast<size_t>(view.ValueOffset(slot) + e)] != ValueValue(token, e)) return false;
    }
    return true;
  }
};

}  // namespace headpage::testing

#endif  // HEADPAGE_TESTS_KERNELS_KERNEL_TEST_UTIL_H_
