// SPDX-License-Identifier: Apache-2.0
// File: sim/parallel.h
//
// The simulator's sweeps run independent configurations side by side: each
// worker takes the next index until none is left. Results go to slots indexed
// like the configurations, so they come out in configuration order whatever the
// thread count.
#ifndef HEADPAGE_SIM_PARALLEL_H_
#define HEADPAGE_SIM_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

namespace headpage {

// Calls work(i) once for every i in [0, n) on up to `threads` threads (0: one
// per core; never more than n), the calling thread included. Once `cancel` is
// set, no further index is started. Returns when every call has returned.
template <typename Work>
void ParallelFor(size_t n, int32_t threads, const std::atomic<bool>* cancel, Work work) {
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i; (i = next++) < n;) {
      if (cancel != nullptr && cancel->load()) return;
      work(i);
    }
  };
  const int64_t wanted = threads > 0 ? threads : std::thread::hardware_concurrency();
  const auto count =
      static_cast<size_t>(std::max<int64_t>(1, std::min<int64_t>(static_cast<int64_t>(n), wanted)));
  std::vector<std::thread> workers;
  for (size_t t = 1; t < count; ++t) workers.emplace_back(worker);
  worker();
  for (std::thread& w : workers) w.join();
}

}  // namespace headpage

#endif  // HEADPAGE_SIM_PARALLEL_H_
