// CUDA twin of the streaming covariance (csrc/cpu/covariance_cpu.cpp): the sampled positions
// are gathered straight from the activation's memory (NCHW, channels_last or (B, C)) inside
// the kernels, so no sample matrix is ever materialised; sums and cross-products are
// accumulated in float64, as on the CPU, and merged into the running moments with Chan et
// al.'s update on the device (no host synchronisation).
//
// Like ablation_cuda.cu, the kernels are extern "C" so that NVRTC (through cupy) can compile
// this file for a build without CUDA; the host launcher is skipped there.
#include "covariance.h"

namespace fu_fast {

// Element (sample i, channel c) of the activation: rows[i] = b * spatial + s.
__device__ __forceinline__ double sample_value(const ActivationView& a, const int64_t* rows, int64_t i, int64_t c) {
  const int64_t r = rows[i], b = r / a.spatial, s = r % a.spatial;
  return load_as_double(a.data, a.dtype, b * a.stride_batch + c * a.stride_channel + s * a.stride_spatial);
}

constexpr int kCovTile = 32;    // channels per side of an output tile
constexpr int kCovRows = 32;    // samples per shared-memory stage

}  // namespace fu_fast

// batch_mean[c] = mean over the sampled rows of channel c: one block per channel, a tree
// reduction in float64.
extern "C" __global__ void fu_covariance_batch_mean(const void* data, int dtype, int64_t channels, int64_t spatial,
                                                    int64_t stride_batch, int64_t stride_channel,
                                                    int64_t stride_spatial, const int64_t* __restrict__ rows,
                                                    int64_t num_rows, double* __restrict__ batch_mean) {
  const fu_fast::ActivationView a{data, static_cast<fu_fast::DType>(dtype), 0, channels, spatial,
                                  stride_batch, stride_channel, stride_spatial};
  __shared__ double partial[256];
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    double sum = 0.0;
    for (int64_t i = threadIdx.x; i < num_rows; i += blockDim.x) sum += fu_fast::sample_value(a, rows, i, c);
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
      if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
      __syncthreads();
    }
    if (threadIdx.x == 0) batch_mean[c] = partial[0] / static_cast<double>(num_rows);
    __syncthreads();
  }
}

// batch_comoment[i, j] += sum over a slice of the rows of (x_i - mean_i)(x_j - mean_j), for the
// 32x32 output tile (blockIdx.y, blockIdx.x) with blockIdx.y <= blockIdx.x (the upper
// triangle; the merge reads it symmetrically). 16x16 threads compute 2x2 outputs each from
// centred samples staged in shared memory; blockIdx.z splits the rows, so that layers with
// few channels still fill the GPU, and the slices meet by float64 atomic adds.
extern "C" __global__ void __launch_bounds__(256)
fu_covariance_cross(const void* data, int dtype, int64_t channels, int64_t spatial, int64_t stride_batch,
                    int64_t stride_channel, int64_t stride_spatial, const int64_t* __restrict__ rows,
                    int64_t num_rows, int64_t rows_per_slice, const double* __restrict__ batch_mean,
                    double* batch_comoment) {
  using fu_fast::kCovRows;
  using fu_fast::kCovTile;
  if (blockIdx.y > blockIdx.x) return;
  const fu_fast::ActivationView a{data, static_cast<fu_fast::DType>(dtype), 0, channels, spatial,
                                  stride_batch, stride_channel, stride_spatial};
  __shared__ double tile_i[kCovRows][kCovTile + 1];
  __shared__ double tile_j[kCovRows][kCovTile + 1];
  const int64_t base_i = int64_t{blockIdx.y} * kCovTile, base_j = int64_t{blockIdx.x} * kCovTile;
  const int64_t first = int64_t{blockIdx.z} * rows_per_slice;
  const int64_t last = first + rows_per_slice < num_rows ? first + rows_per_slice : num_rows;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  double acc[2][2] = {{0.0, 0.0}, {0.0, 0.0}};
  for (int64_t start = first; start < last; start += kCovRows) {
    // Stage kCovRows samples of both channel ranges, centred; the sample index varies
    // fastest across threads, which is the contiguous direction of NCHW memory.
    for (int idx = threadIdx.x; idx < kCovRows * kCovTile; idx += blockDim.x) {
      const int r = idx % kCovRows, c = idx / kCovRows;
      const int64_t i = start + r;
      const bool row_ok = i < last;
      const int64_t ci = base_i + c, cj = base_j + c;
      tile_i[r][c] = (row_ok && ci < channels) ? fu_fast::sample_value(a, rows, i, ci) - batch_mean[ci] : 0.0;
      tile_j[r][c] = (row_ok && cj < channels) ? fu_fast::sample_value(a, rows, i, cj) - batch_mean[cj] : 0.0;
    }
    __syncthreads();
    for (int r = 0; r < kCovRows; ++r) {
      const double i0 = tile_i[r][ty], i1 = tile_i[r][ty + 16];
      const double j0 = tile_j[r][tx], j1 = tile_j[r][tx + 16];
      acc[0][0] += i0 * j0;
      acc[0][1] += i0 * j1;
      acc[1][0] += i1 * j0;
      acc[1][1] += i1 * j1;
    }
    __syncthreads();
  }
  for (int di = 0; di < 2; ++di) {
    for (int dj = 0; dj < 2; ++dj) {
      const int64_t i = base_i + ty + 16 * di, j = base_j + tx + 16 * dj;
      if (i < channels && j < channels && i <= j) atomicAdd(batch_comoment + i * channels + j, acc[di][dj]);
    }
  }
}

// Chan et al.: comoment += batch comoment + delta delta^T * n_a n_b / n, with delta the
// difference of the means. Reads the running count and mean, which fu_covariance_merge_mean
// updates afterwards (a later launch on the same stream).
extern "C" __global__ void fu_covariance_merge_comoment(const double* __restrict__ count, const double* __restrict__ mean,
                                                        double* __restrict__ comoment,
                                                        const double* __restrict__ batch_mean,
                                                        const double* __restrict__ batch_comoment,
                                                        int64_t channels, double num_rows) {
  const double n_a = *count, n = n_a + num_rows, weight = n_a * num_rows / n;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < channels * channels;
       idx += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = idx / channels, j = idx % channels;
    const int64_t lo = i < j ? i : j, hi = i < j ? j : i;
    comoment[idx] += batch_comoment[lo * channels + hi] + (batch_mean[i] - mean[i]) * (batch_mean[j] - mean[j]) * weight;
  }
}

// mean += delta * n_b / n, then count = n: one block, so every thread reads the old count
// before thread 0 replaces it.
extern "C" __global__ void fu_covariance_merge_mean(double* count, double* __restrict__ mean,
                                                    const double* __restrict__ batch_mean, int64_t channels,
                                                    double num_rows) {
  const double n = *count + num_rows;
  for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) mean[c] += (batch_mean[c] - mean[c]) * (num_rows / n);
  __syncthreads();
  if (threadIdx.x == 0) *count = n;
}

#if !defined(__CUDACC_RTC__)
#include "launch.h"

namespace fu_fast {

void covariance_accumulate_cuda(ActivationView act, const int64_t* rows, int64_t num_rows, MomentState state,
                                double* workspace, void* stream) {
  if (num_rows <= 0) return;
  const int64_t c = act.channels;
  const int64_t tiles = (c + kCovTile - 1) / kCovTile;
  if (tiles > 65535) throw std::invalid_argument("covariance_accumulate_cuda: too many channels");
  auto s = static_cast<cudaStream_t>(stream);
  double* batch_mean = workspace;
  double* batch_comoment = workspace + c;
  check_cuda(cudaMemsetAsync(batch_comoment, 0, sizeof(double) * c * c, s), "covariance_accumulate_cuda: memset");

  const int dtype = static_cast<int>(act.dtype);
  fu_covariance_batch_mean<<<blocks_for(c * kThreads), kThreads, 0, s>>>(
      act.data, dtype, c, act.spatial, act.stride_batch, act.stride_channel, act.stride_spatial, rows, num_rows,
      batch_mean);
  check_launch("covariance_accumulate_cuda: batch mean");

  // Enough row slices to give the GPU about a thousand blocks, each slice at least 256 rows.
  const int64_t tile_blocks = tiles * (tiles + 1) / 2;
  int64_t slices = (1024 + tile_blocks - 1) / tile_blocks;
  const int64_t max_slices = (num_rows + 255) / 256;
  if (slices > max_slices) slices = max_slices;
  if (slices > 65535) slices = 65535;
  const int64_t rows_per_slice = (num_rows + slices - 1) / slices;
  const dim3 grid(static_cast<unsigned int>(tiles), static_cast<unsigned int>(tiles),
                  static_cast<unsigned int>((num_rows + rows_per_slice - 1) / rows_per_slice));
  fu_covariance_cross<<<grid, kThreads, 0, s>>>(act.data, dtype, c, act.spatial, act.stride_batch,
                                                act.stride_channel, act.stride_spatial, rows, num_rows,
                                                rows_per_slice, batch_mean, batch_comoment);
  check_launch("covariance_accumulate_cuda: cross-products");

  const double n_b = static_cast<double>(num_rows);
  fu_covariance_merge_comoment<<<blocks_for(c * c), kThreads, 0, s>>>(state.count, state.mean, state.comoment,
                                                                      batch_mean, batch_comoment, c, n_b);
  check_launch("covariance_accumulate_cuda: merge co-moment");
  fu_covariance_merge_mean<<<1, kThreads, 0, s>>>(state.count, state.mean, batch_mean, c, n_b);
  check_launch("covariance_accumulate_cuda: merge mean");
}

}  // namespace fu_fast
#endif  // !__CUDACC_RTC__
