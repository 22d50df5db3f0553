// Where the CTAs of 16-CTA clusters land: for Select split over two CTAs a
// stream (8 sequences x 8 heads x 2 = 128 CTAs). For each variant (threads per
// CTA, dynamic shared memory), prints cudaOccupancyMaxActiveClusters for
// clusters of 8 and 16, then launches 8 clusters of 16 that each spin 20 us and
// record their SM: how many distinct SMs the 128 CTAs used, and whether a
// cooperative launch with a cluster dimension is accepted; under the default
// cluster scheduling policy and under Spread.
#include <cstdio>
#include <set>
#include <vector>
#include <cuda_runtime.h>

__global__ void Probe(int* sm_of, unsigned long long spin_ns) {
  extern __shared__ int pad[];
  if (threadIdx.x == 0) {
    unsigned sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    sm_of[blockIdx.x] = sm;
    pad[0] = sm;
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < spin_ns);
  }
  __syncthreads();
}

int main() {
  cudaFuncSetAttribute(Probe, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  cudaFuncSetAttribute(Probe, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024);
  int* sm_of;
  cudaMalloc(&sm_of, 4096 * sizeof(int));
  const int threads_v[] = {1024, 512};
  const int smem_v[] = {160 * 1024 + 32 * 1024, 64 * 1024 + 32 * 1024, 48 * 1024 + 32 * 1024};
  for (int threads : threads_v) {
    for (int smem : smem_v) {
      for (int policy = 0; policy < 2; ++policy)
      for (int cluster : {8, 16}) {
        cudaLaunchConfig_t config = {};
        config.blockDim = dim3(threads);
        config.dynamicSmemBytes = smem;
        cudaLaunchAttribute attrs[3];
        attrs[0].id = cudaLaunchAttributeClusterDimension;
        attrs[0].val.clusterDim.x = cluster;
        attrs[0].val.clusterDim.y = 1;
        attrs[0].val.clusterDim.z = 1;
        attrs[1].id = cudaLaunchAttributeClusterSchedulingPolicyPreference;
        attrs[1].val.clusterSchedulingPolicyPreference =
            policy == 0 ? cudaClusterSchedulingPolicyDefault : cudaClusterSchedulingPolicySpread;
        config.attrs = attrs;
        config.numAttrs = 2;
        config.gridDim = dim3(cluster);
        int max_clusters = -1;
        cudaError_t e = cudaOccupancyMaxActiveClusters(&max_clusters, Probe, &config);
        const int ctas = 128;
        config.gridDim = dim3(ctas);
        cudaMemset(sm_of, 0xff, 4096 * sizeof(int));
        cudaError_t l = cudaLaunchKernelEx(&config, Probe, sm_of, 20000ull);
        cudaError_t s = cudaDeviceSynchronize();
        std::vector<int> h(ctas);
        cudaMemcpy(h.data(), sm_of, ctas * sizeof(int), cudaMemcpyDeviceToHost);
        std::set<int> distinct(h.begin(), h.end());
        // per cluster: distinct SMs
        int min_per_cluster = 1 << 30;
        for (int c = 0; c < ctas / cluster; ++c) {
          std::set<int> d(h.begin() + c * cluster, h.begin() + (c + 1) * cluster);
          min_per_cluster = std::min<int>(min_per_cluster, d.size());
        }
        attrs[2].id = cudaLaunchAttributeCooperative;
        attrs[2].val.cooperative = 1;
        config.numAttrs = 3;
        cudaError_t coop = cudaLaunchKernelEx(&config, Probe, sm_of, 1000ull);
        cudaError_t coop_sync = cudaDeviceSynchronize();
        printf("%s threads %4d smem %3d KiB cluster %2d: max active clusters %d (%s); 128 CTAs on %zu SMs, "
               "fewest SMs in a cluster %d (%s/%s); cooperative+cluster: %s/%s\n",
               policy == 0 ? "default" : "spread ", threads, smem / 1024, cluster, max_clusters, cudaGetErrorString(e), distinct.size(),
               min_per_cluster, cudaGetErrorString(l), cudaGetErrorString(s),
               cudaGetErrorString(coop), cudaGetErrorString(coop_sync));
        cudaGetLastError();
      }
    }
  }
  return 0;
}
