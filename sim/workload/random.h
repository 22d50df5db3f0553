// SPDX-License-Identifier: Apache-2.0
// File: sim/workload/random.h
//
// The simulator's random numbers: splitmix64 and what it feeds (uniform,
// standard normal, exponential). The <random> engines are portable but its
// distributions are not (libstdc++ and libc++ draw differently), and every
// simulator result must be the same for a seed on every platform, so the few
// distributions needed are written out here.
#ifndef HEADPAGE_SIM_WORKLOAD_RANDOM_H_
#define HEADPAGE_SIM_WORKLOAD_RANDOM_H_

#include <cmath>
#include <cstdint>

namespace headpage {

// splitmix64 (Steele, Lea, Flood 2014): one 64-bit state word, full period.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}

  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }

  // Uniform in [0, 1), 53 bits.
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

  // Standard normal by Box-Muller from two uniforms (the cosine half only, so
  // each draw costs two uniforms and the sequence is simple to reproduce);
  // 1 - u keeps the logarithm finite.
  double Normal() {
    constexpr double kPi = 3.14159265358979323846;
    const double u1 = 1.0 - Uniform();
    const double u2 = Uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * kPi * u2);
  }

  // Exponential with the given rate (> 0): a Poisson process's gaps.
  double Exponential(double rate) { return -std::log(1.0 - Uniform()) / rate; }

 private:
  uint64_t state_;
};

}  // namespace headpage

#endif  // HEADPAGE_SIM_WORKLOAD_RANDOM_H_
