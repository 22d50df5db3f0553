// SPDX-License-Identifier: Apache-2.0
// File: tests/testing/guarded_array.h
//
// GuardedInts holds an int32 array at the very end of a readable mapping,
// followed by a page the process may not touch: a read one element past the
// array faults at once (a segmentation fault, which fails the test) instead of
// quietly returning a neighbour's bytes. Tests of bounds checks put the array
// whose length they lie about here, so that "checked before reading" is
// observable, not only under AddressSanitizer.
#ifndef HEADPAGE_TESTS_TESTING_GUARDED_ARRAY_H_
#define HEADPAGE_TESTS_TESTING_GUARDED_ARRAY_H_

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace headpage::testing {

class GuardedInts {
 public:
  explicit GuardedInts(const std::vector<int32_t>& values) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t bytes = values.size() * sizeof(int32_t);
    data_pages_ = (bytes + page - 1) / page;
    if (data_pages_ == 0) data_pages_ = 1;
    mapped_ = (data_pages_ + 1) * page;
    void* base = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) std::abort();
    base_ = static_cast<char*>(base);
    if (mprotect(base_ + data_pages_ * page, page, PROT_NONE) != 0) std::abort();
    data_ = reinterpret_cast<int32_t*>(base_ + data_pages_ * page - bytes);
    if (bytes > 0) std::memcpy(data_, values.data(), bytes);
  }
  ~GuardedInts() { munmap(base_, mapped_); }
  GuardedInts(const GuardedInts&) = delete;
  GuardedInts& operator=(const GuardedInts&) = delete;

  int32_t* data() { return data_; }

 private:
  char* base_ = nullptr;
  size_t mapped_ = 0;
  size_t data_pages_ = 0;
  int32_t* data_ = nullptr;
};

}  // namespace headpage::testing

#endif  // HEADPAGE_TESTS_TESTING_GUARDED_ARRAY_H_
