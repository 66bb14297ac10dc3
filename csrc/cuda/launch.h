// Host-side helpers shared by the CUDA launchers (not seen by NVRTC).
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "common.h"

namespace fu_fast {

constexpr int kThreads = 256;

// Every CUDA call is checked; a failure becomes a C++ exception, which pybind11 turns into a
// Python RuntimeError naming the kernel.
inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

// A launch reports configuration errors through cudaGetLastError; errors during the
// kernel's execution surface at the next synchronising call, which PyTorch checks.
inline void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

// Blocks for a grid-stride loop over `work` items: enough to fill the GPU, capped so the
// count fits a grid dimension.
inline unsigned int blocks_for(int64_t work, int threads = kThreads) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > 65535 * 8 ? 65535 * 8 : blocks));
}

}  // namespace fu_fast
