// CUDA twins of the masked-ablation kernels (csrc/cpu/ablation_cpu.cpp): keyed permutation
// ranks, fused expand-and-mask and label agreement. Same contracts as ablation.h and
// permutation.h; every pointer is device memory, and work is queued on the caller's
// stream (PyTorch's current stream). Ranks come from the same FU_FAST_HD functions as on
// the CPU, so the ablated sets are bit-identical.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "../ablation.h"
#include "../permutation.h"

namespace fu_fast {
namespace {

constexpr int kThreads = 256;

void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(kernel) + ": " + cudaGetErrorString(err));
}

unsigned int blocks_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}

__global__ void permutation_ranks_kernel(PermutationKey key, int64_t* ranks) {
  for (int64_t u = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; u < key.n;
       u += int64_t{gridDim.x} * blockDim.x)
    ranks[u] = permutation_rank(u, key);
}

// One thread per (mask, unit): the unit's rank is computed once, then its elements are
// copied or zeroed in every row of the batch. Consecutive threads take consecutive units,
// so with inner == 1 (every element a unit) reads and writes are coalesced.
template <typename Word>
__global__ void expand_masked_kernel(const Word* __restrict__ src, Word* __restrict__ dst,
                                     int64_t batch, int64_t units, int64_t inner,
                                     const uint64_t* __restrict__ keys,
                                     const int64_t* __restrict__ thresholds) {
  const int64_t k = blockIdx.y;
  const int64_t threshold = thresholds[k];
  const PermutationKey key = make_permutation_key(keys[k], units);
  const int64_t row = units * inner;
  for (int64_t u = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; u < units;
       u += int64_t{gridDim.x} * blockDim.x) {
    // Thresholds 0 and n ablate nothing and everything: no rank needed.
    const bool ablated = threshold >= units || (threshold > 0 && permutation_rank(u, key) < threshold);
    for (int64_t b = 0; b < batch; ++b) {
      const Word* in = src + b * row + u * inner;
      Word* out = dst + (k * batch + b) * row + u * inner;
      for (int64_t i = 0; i < inner; ++i) out[i] = ablated ? Word{0} : in[i];
    }
  }
}

// One thread per row (mask k, example b): argmax as torch.argmax (first maximum, NaN
// maximal), compared with the base label, counted with one atomic add per agreeing row.
__global__ void label_agreement_kernel(const void* logits, DType dtype, int64_t num_masks,
                                       int64_t batch, int64_t classes, int64_t row_stride,
                                       const int64_t* __restrict__ base_labels,
                                       unsigned long long* counts) {
  for (int64_t r = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; r < num_masks * batch;
       r += int64_t{gridDim.x} * blockDim.x) {
    const int64_t first = r * row_stride;
    int64_t best = 0;
    double best_value = load_as_double(logits, dtype, first);
    if (!isnan(best_value)) {
      for (int64_t c = 1; c < classes; ++c) {
        const double v = load_as_double(logits, dtype, first + c);
        if (isnan(v)) {
          best = c;
          break;
        }
        if (v > best_value) {
          best_value = v;
          best = c;
        }
      }
    }
    if (best == base_labels[r % batch]) atomicAdd(counts + r / batch, 1ULL);
  }
}

template <typename Word>
void launch_expand(const void* src, void* dst, int64_t batch, int64_t units, int64_t inner,
                   MaskSpec masks, cudaStream_t stream) {
  const dim3 grid(blocks_for(units), static_cast<unsigned int>(masks.num_masks));
  expand_masked_kernel<Word><<<grid, kThreads, 0, stream>>>(
      static_cast<const Word*>(src), static_cast<Word*>(dst), batch, units, inner, masks.keys,
      masks.thresholds);
  check_launch("expand_masked_cuda");
}

}  // namespace

void permutation_ranks_cuda(uint64_t key, int64_t n, int64_t* ranks, void* stream) {
  permutation_ranks_kernel<<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      make_permutation_key(key, n), ranks);
  check_launch("permutation_ranks_cuda");
}

void expand_masked_cuda(const void* src, void* dst, int64_t batch, int64_t units, int64_t inner,
                        int elem_size, MaskSpec masks, void* stream) {
  if (masks.num_masks > 65535) throw std::invalid_argument("expand_masked_cuda: at most 65535 masks per call");
  auto s = static_cast<cudaStream_t>(stream);
  switch (elem_size) {
    case 2: launch_expand<uint16_t>(src, dst, batch, units, inner, masks, s); break;
    case 4: launch_expand<uint32_t>(src, dst, batch, units, inner, masks, s); break;
    case 8: launch_expand<uint64_t>(src, dst, batch, units, inner, masks, s); break;
    default: throw std::invalid_argument("expand_masked_cuda: element size must be 2, 4 or 8 bytes");
  }
}

void label_agreement_cuda(const void* logits, DType dtype, int64_t num_masks, int64_t batch,
                          int64_t classes, int64_t row_stride, const int64_t* base_labels,
                          int64_t* counts, void* stream) {
  static_assert(sizeof(unsigned long long) == sizeof(int64_t), "counts are 64-bit");
  label_agreement_kernel<<<blocks_for(num_masks * batch), kThreads, 0,
                           static_cast<cudaStream_t>(stream)>>>(
      logits, dtype, num_masks, batch, classes, row_stride, base_labels,
      reinterpret_cast<unsigned long long*>(counts));
  check_launch("label_agreement_cuda");
}

}  // namespace fu_fast
