// Kernels the tests launch with configurations and code the launchers in csrc/cuda never
// produce, to show that the emulator refuses or reports them as a GPU would, or more loudly.
// This file goes through the same launch rewriting as csrc/cuda/*.cu, and a refused launch
// reaches the caller through the real check_launch of csrc/cuda/launch.h.
#include <cstdio>

#include "launch.h"

// Counts the CUDA threads that ran.
extern "C" __global__ void fu_emu_probe(unsigned long long* ran) { atomicAdd(ran, 1ull); }

// Promises at most 64 threads per block.
extern "C" __global__ void __launch_bounds__(64) fu_emu_probe_bounded(unsigned long long* ran) {
  atomicAdd(ran, 1ull);
}

// Synchronises only inside a helper, which the build step does not look into: it classifies the
// kernel as not synchronising, and the barrier must then fail loudly rather than do nothing.
__device__ void fu_emu_probe_barrier() { __syncthreads(); }

extern "C" __global__ void fu_emu_probe_hidden_barrier(unsigned long long* ran) {
  fu_emu_probe_barrier();
  atomicAdd(ran, 1ull);
}

// The lower half of the block waits at one barrier, the upper half at another.
extern "C" __global__ void fu_emu_probe_divergent_barrier(unsigned long long* ran) {
  if (threadIdx.x < blockDim.x / 2) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  atomicAdd(ran, 1ull);
}

// Which probe fu_emu_probe_launch runs.
enum ProbeKernel { kPlain = 0, kBounded = 1, kHiddenBarrier = 2, kDivergentBarrier = 3 };

// Launches a probe kernel with the given configuration on stream 0 and checks the launch with
// check_launch. Returns 0 when that passed; otherwise 1 with the exception's text in message.
extern "C" __attribute__((visibility("default"))) int fu_emu_probe_launch(
    int kernel, unsigned int grid_x, unsigned int grid_y, unsigned int grid_z, unsigned int block_x,
    unsigned int block_y, unsigned int block_z, unsigned long long shared, unsigned long long* ran, char* message,
    unsigned long long message_size) {
  const dim3 grid(grid_x, grid_y, grid_z), block(block_x, block_y, block_z);
  try {
    switch (kernel) {
      case kPlain: fu_emu_probe<<<grid, block, shared, 0>>>(ran); break;
      case kBounded: fu_emu_probe_bounded<<<grid, block, shared, 0>>>(ran); break;
      case kHiddenBarrier: fu_emu_probe_hidden_barrier<<<grid, block, shared, 0>>>(ran); break;
      case kDivergentBarrier: fu_emu_probe_divergent_barrier<<<grid, block, shared, 0>>>(ran); break;
      default: throw std::invalid_argument("no such probe kernel");
    }
    fu_fast::check_launch("probe");
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(message, message_size, "%s", e.what());
    return 1;
  }
}
