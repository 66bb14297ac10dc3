// CUDA twins of the noise kernels (csrc/cpu/noise_cpu.cpp): keyed Gaussian noise added to copies of
// a layer output, expanded or in place. Same contracts as noise.h. The counters, the uniforms, the
// arithmetic and the rounding to the dtype come from the same FU_FAST_HD functions as on the CPU;
// log and cos are libdevice's, so the noise agrees with the CPU's within the tolerance noise.h states.
//
// The kernels are extern "C" with scalar arguments so that this same file also serves a build
// without CUDA: fu_fast/cupy_kernels.py compiles it at run time with NVRTC (cupy's RawModule),
// which skips the host launchers below (__CUDACC_RTC__). cupy's -ftz=true changes one instruction
// only, the single-precision instruction libdevice's log uses to tell a zero input from a negative
// one on its special-case path (zero, negative, infinite or NaN inputs); u1 in [2^-53, 1] never takes
// that path, so the cupy kernels compute what the compiled ones do (tests/test_dispatch.py).
#include "noise.h"

namespace fu_fast {

// The value element e of row b of copy k gets: its noise added to x, or x's bits when its sigma is
// 0. One thread per element of a copy's batch rows; the counters' halves are recomputed per element
// (a few multiplications beside a double log and cos).
struct CopyNoise {
  RowLayout layout;
  DType dtype;
  uint64_t key;
  double scale;
  const double* unit_std;
  int64_t first_example;

  // Whether element e (memory order) of a row has noise, and its sigma and normal when it has.
  __device__ __forceinline__ bool element(int64_t b, int64_t e, double& sigma, double& n) const {
    const int64_t l = logical_element(e, layout);
    sigma = mul_rn(scale, unit_std[l / layout.inner]);
    if (sigma == 0) return false;
    n = noise_normal(noise_seed(key, first_example + b), noise_element_hash(l));
    return true;
  }
};

__device__ __forceinline__ CopyNoise copy_noise(int64_t units, int64_t inner, int64_t channels, int64_t spatial,
                                                int channels_last, int dtype, const uint64_t* keys,
                                                const double* scales, const double* unit_std,
                                                int64_t first_example) {
  return CopyNoise{RowLayout{units, inner, channels, spatial, channels_last != 0}, static_cast<DType>(dtype),
                   keys[blockIdx.y], scales[blockIdx.y], unit_std, first_example};
}

}  // namespace fu_fast

// dst[k * batch + b, e] for copy k = blockIdx.y: one thread per element of the copy's batch * row
// elements (consecutive threads take consecutive elements of a row), 64-bit indices throughout. A
// copy whose scale is 0 is src, element by element, bit for bit.
extern "C" __global__ void fu_expand_noise(const void* __restrict__ src, void* __restrict__ dst, int64_t batch,
                                           int64_t units, int64_t inner, int64_t channels, int64_t spatial,
                                           int channels_last, int dtype, const uint64_t* __restrict__ keys,
                                           const double* __restrict__ scales, const double* __restrict__ unit_std,
                                           int64_t first_example) {
  const int64_t k = blockIdx.y;
  const fu_fast::CopyNoise noise = fu_fast::copy_noise(units, inner, channels, spatial, channels_last, dtype, keys,
                                                       scales, unit_std, first_example);
  const int64_t row = units * inner, work = batch * row;
  const int size = fu_fast::dtype_size(noise.dtype);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < work; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t b = i / row, e = i - b * row, to = k * work + i;
    double sigma = 0, n = 0;
    if (noise.scale == 0 || !noise.element(b, e, sigma, n)) {
      fu_fast::copy_element(src, i, dst, to, size);
    } else {
      fu_fast::store_from_double(dst, noise.dtype, to,
                                 fu_fast::add_noise(fu_fast::load_as_double(src, noise.dtype, i), sigma, n));
    }
  }
}

// The in-place twin: data holds num_copies * batch rows laid out as fu_expand_noise's dst, and copy k
// (= blockIdx.y) adds its noise to its batch rows where they are. A copy whose scale is 0 costs no
// memory traffic (its blocks exit at once), and an element whose sigma is 0 is neither read nor
// written.
extern "C" __global__ void fu_noise_rows(void* __restrict__ data, int64_t batch, int64_t units, int64_t inner,
                                         int64_t channels, int64_t spatial, int channels_last, int dtype,
                                         const uint64_t* __restrict__ keys, const double* __restrict__ scales,
                                         const double* __restrict__ unit_std, int64_t first_example) {
  if (scales[blockIdx.y] == 0) return;
  const int64_t k = blockIdx.y;
  const fu_fast::CopyNoise noise = fu_fast::copy_noise(units, inner, channels, spatial, channels_last, dtype, keys,
                                                       scales, unit_std, first_example);
  const int64_t row = units * inner, work = batch * row;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < work; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t b = i / row, e = i - b * row, at = k * work + i;
    double sigma = 0, n = 0;
    if (!noise.element(b, e, sigma, n)) continue;
    fu_fast::store_from_double(data, noise.dtype, at,
                               fu_fast::add_noise(fu_fast::load_as_double(data, noise.dtype, at), sigma, n));
  }
}

#if !defined(__CUDACC_RTC__)
#include "launch.h"

namespace fu_fast {

namespace {

// The checks shared by the noise launchers: grid.y is the copy.
void check_noise(const char* launcher, NoiseSpec noise) {
  if (noise.num_copies > 65535)
    throw std::invalid_argument(std::string(launcher) + ": at most 65535 copies per call");
}

// One thread per element of a copy's batch rows, grid.y the copy.
dim3 noise_grid(int64_t batch, const RowLayout& layout, NoiseSpec noise) {
  return dim3(blocks_for(batch * layout.units * layout.inner), static_cast<unsigned int>(noise.num_copies));
}

}  // namespace

void expand_noise_cuda(const void* src, void* dst, int64_t batch, RowLayout layout, DType dtype, NoiseSpec noise,
                       void* stream) {
  check_noise("expand_noise_cuda", noise);
  fu_expand_noise<<<noise_grid(batch, layout, noise), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      src, dst, batch, layout.units, layout.inner, layout.channels, layout.spatial, layout.channels_last,
      static_cast<int>(dtype), noise.keys, noise.scales, noise.unit_std, noise.first_example);
  check_launch("expand_noise_cuda");
}

void noise_rows_cuda(void* data, int64_t batch, RowLayout layout, DType dtype, NoiseSpec noise, void* stream) {
  check_noise("noise_rows_cuda", noise);
  fu_noise_rows<<<noise_grid(batch, layout, noise), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      data, batch, layout.units, layout.inner, layout.channels, layout.spatial, layout.channels_last,
      static_cast<int>(dtype), noise.keys, noise.scales, noise.unit_std, noise.first_example);
  check_launch("noise_rows_cuda");
}

}  // namespace fu_fast
#endif  // !__CUDACC_RTC__
