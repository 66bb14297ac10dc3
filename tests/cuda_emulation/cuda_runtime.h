// The part of the CUDA runtime and device API that csrc/cuda/*.cu use, emulated on the host so
// that the unmodified CUDA sources compile as C++ and run on the CPU (tests/cuda_emulation/
// build.py; the tests are tests/test_cuda_emulation.py). "Device memory" is host memory.
//
// build.py force-includes this header into every .cu translation unit, as nvcc does with the
// real one, and rewrites each launch `k<<<grid, block, shared, stream>>>(args)` into a call of
// fu_emu::launch(), which checks the configuration against the limits of sm_80/sm_90 and runs
// the kernel's blocks one after another. A kernel whose source calls a synchronising primitive
// runs each block with one OS thread per CUDA thread; any other kernel runs its threads one
// after another on the caller's thread, where a synchronising primitive throws.
//
// __CUDACC__ and __CUDA_ARCH__ stay undefined: csrc/common.h then compiles its FU_FAST_HD
// helpers as plain inline host functions, which is what they are here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

// Execution-space and launch qualifiers mean nothing on the host. __restrict__ is already a
// keyword of gcc and clang.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// A function-static array is shared by every thread of a block; blocks run one at a time
// (launches are serialised too), so it behaves as shared memory.
#define __shared__ static

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};

struct alignas(16) uint4 {
  unsigned int x, y, z, w;
};

// Set by the emulator for the CUDA thread running on each OS thread.
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

typedef struct CUstream_st* cudaStream_t;

// The error codes the emulator returns, with the values of the real driver_types.h.
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorNoDevice = 100,
  cudaErrorLaunchOutOfResources = 701,
};

cudaError_t cudaGetLastError();
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaMemsetAsync(void* device_pointer, int value, size_t count, cudaStream_t stream = 0);
cudaError_t cudaRuntimeGetVersion(int* version);
cudaError_t cudaDriverGetVersion(int* version);
cudaError_t cudaGetDeviceCount(int* count);

// The overloads of atomicAdd the kernels use (old value returned), under one process-wide lock.
unsigned long long atomicAdd(unsigned long long* address, unsigned long long value);
double atomicAdd(double* address, double value);

namespace fu_emu {

// The call site of a synchronising primitive: every thread of a barrier phase must arrive from
// the same one (CUDA leaves a barrier reached from divergent code undefined).
struct Site {
  const char* file;
  int line;
};

void syncthreads(Site site);
// Lane `lane + delta` of the caller's warp's `bits` (its own when that lane is outside its
// `width`-lane segment); every lane named by `mask` must call it from the same site.
uint64_t shuffle_down(unsigned int mask, uint64_t bits, unsigned int delta, int width, Site site);

enum class Mode { Sequential, Threaded };

// The <<<grid, block, shared, stream>>> of a launch. Every launch runs to completion before it
// returns, so the stream orders nothing and is not kept.
struct LaunchConfig {
  dim3 grid, block;
  size_t shared;
  LaunchConfig(dim3 g, dim3 b, size_t s = 0, cudaStream_t = 0) : grid(g), block(b), shared(s) {}
};

// Checks the configuration (a refused launch runs nothing and sets the last error, as the real
// runtime does), then runs body(context) once per CUDA thread of the grid. max_threads is the
// kernel's __launch_bounds__ (0: none).
void launch(const char* kernel, Mode mode, unsigned int max_threads, const LaunchConfig& config,
            void (*body)(void*), void* context);

template <typename Kernel>
void launch(const char* kernel, Mode mode, unsigned int max_threads, const LaunchConfig& config, Kernel call) {
  launch(kernel, mode, max_threads, config, [](void* context) { (*static_cast<Kernel*>(context))(); }, &call);
}

}  // namespace fu_emu

#define __syncthreads() ::fu_emu::syncthreads(::fu_emu::Site{__FILE__, __LINE__})
#define __shfl_down_sync(mask, var, delta, ...) \
  ::fu_emu::shuffle_down_as((mask), (var), (delta), ::fu_emu::Site{__FILE__, __LINE__}, ##__VA_ARGS__)

namespace fu_emu {

template <typename T>
T shuffle_down_as(unsigned int mask, T value, unsigned int delta, Site site, int width = 32) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "__shfl_down_sync moves at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof value);
  bits = shuffle_down(mask, bits, delta, width, site);
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

}  // namespace fu_emu
