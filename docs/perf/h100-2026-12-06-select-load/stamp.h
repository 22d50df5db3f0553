// scratch: clock stamps for AdaSelectKernel (not committed)
#pragma once
namespace hpstamp {
__device__ long long g_stamps[64][40];
__device__ unsigned long long g_times[64][2];
__device__ int g_count;
__device__ __forceinline__ void Stamp(int id) {
  __syncthreads();
  if (threadIdx.x == 0 && blockIdx.x < 64) g_stamps[blockIdx.x][id] = clock64();
}
__device__ __forceinline__ unsigned long long GlobalNs() {
  unsigned long long t; asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t)); return t;
}
__device__ __forceinline__ void Begin() {
  if (threadIdx.x == 0 && blockIdx.x < 64) { g_times[blockIdx.x][0] = GlobalNs(); g_stamps[blockIdx.x][0] = clock64(); }
  for (int i = threadIdx.x; i < 40; i += blockDim.x) if (i > 0 && blockIdx.x < 64) g_stamps[blockIdx.x][i] = 0;
}
__device__ __forceinline__ void End() {
  __syncthreads();
  if (threadIdx.x == 0 && blockIdx.x < 64) {
    g_stamps[blockIdx.x][39] = clock64();
    g_times[blockIdx.x][1] = GlobalNs();
    const int launch = atomicAdd(&g_count, 1) / gridDim.x;
    if (launch == 60) {
      long long* s = g_stamps[blockIdx.x];
      long long prev = s[0];
      printf("TIME %d %llu %llu\n", blockIdx.x, g_times[blockIdx.x][0], g_times[blockIdx.x][1]);
      for (int i = 1; i < 40; ++i) if (s[i] != 0) { printf("STAMP %d %d %lld\n", blockIdx.x, i, s[i] - prev); prev = s[i]; }
    }
  }
}
}  // namespace hpstamp
