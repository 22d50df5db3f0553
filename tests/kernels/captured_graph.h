// SPDX-License-Identifier: Apache-2.0
// File: tests/kernels/captured_graph.h
//
// A CUDA graph captured from one enqueue, for the GPU tests that replay an op
// from a graph (host C++ only: device_buffer.h is also compiled by nvcc).
#ifndef HEADPAGE_TESTS_KERNELS_CAPTURED_GRAPH_H_
#define HEADPAGE_TESTS_KERNELS_CAPTURED_GRAPH_H_

#include <cuda_runtime_api.h>

#include <utility>

#include "absl/status/status.h"
#include "tests/kernels/device_buffer.h"  // HEADPAGE_CUDA_OK

namespace headpage::testing {

// What `enqueue(stream)` (an absl::Status) put on a stream of its own while
// captured, as an instantiated CUDA graph; all three destroyed with it. A
// capture whose enqueue failed has no graph: check captured() first.
class CapturedGraph {
 public:
  template <typename Enqueue>
  explicit CapturedGraph(Enqueue&& enqueue) {
    HEADPAGE_CUDA_OK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    HEADPAGE_CUDA_OK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeGlobal));
    captured_ = std::forward<Enqueue>(enqueue)(stream_);
    HEADPAGE_CUDA_OK(cudaStreamEndCapture(stream_, &graph_));
    if (captured_.ok()) HEADPAGE_CUDA_OK(cudaGraphInstantiate(&exec_, graph_, 0));
  }
  ~CapturedGraph() {
    if (exec_ != nullptr) HEADPAGE_CUDA_OK(cudaGraphExecDestroy(exec_));
    if (graph_ != nullptr) HEADPAGE_CUDA_OK(cudaGraphDestroy(graph_));
    HEADPAGE_CUDA_OK(cudaStreamDestroy(stream_));
  }
  CapturedGraph(const CapturedGraph&) = delete;
  CapturedGraph& operator=(const CapturedGraph&) = delete;

  const absl::Status& captured() const { return captured_; }
  cudaStream_t stream() const { return stream_; }

  // Replays the graph on its stream and waits for it.
  void ReplayAndWait() {
    HEADPAGE_CUDA_OK(cudaGraphLaunch(exec_, stream_));
    HEADPAGE_CUDA_OK(cudaStreamSynchronize(stream_));
  }

 private:
  cudaStream_t stream_ = nullptr;
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
  absl::Status captured_;
};

}  // namespace headpage::testing

#endif  // HEADPAGE_TESTS_KERNELS_CAPTURED_GRAPH_H_
