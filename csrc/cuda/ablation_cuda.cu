// CUDA twins of the masked-ablation kernels (csrc/cpu/ablation_cpu.cpp): keyed permutation
// ranks, fused expand-and-mask and label agreement. Same contracts as ablation.h and
// permutation.h. Ranks come from the same FU_FAST_HD functions as on the CPU, so the
// ablated sets are bit-identical.
//
// The kernels are extern "C" with scalar arguments so that this same file also serves a
// build without CUDA: fu_fast/cupy_kernels.py compiles it at run time with NVRTC (cupy's
// RawModule), which skips the host launchers below (__CUDACC_RTC__).
#include "ablation.h"
#include "permutation.h"


extern "C" __global__ void fu_permutation_ranks(uint64_t key, int64_t n, int64_t* ranks) {
  const fu_fast::PermutationKey p = fu_fast::make_permutation_key(key, n);
  for (int64_t u = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; u < n; u += int64_t{gridDim.x} * blockDim.x)
    ranks[u] = fu_fast::permutation_rank(u, p);
}

namespace fu_fast {

// One mask of an expansion (mask k = blockIdx.y) and the row layout it applies to.
struct BlockMask {
  RowLayout layout;
  PermutationKey key;
  int64_t threshold;

  // Whether unit u is ablated; thresholds 0 and n need no rank.
  __device__ __forceinline__ bool ablates_unit(int64_t u) const {
    return threshold >= key.n || (threshold > 0 && permutation_rank(u, key) < threshold);
  }
};

__device__ __forceinline__ BlockMask block_mask(int64_t units, int64_t inner, int64_t channels, int64_t spatial,
                                                int channels_last, const uint64_t* keys,
                                                const int64_t* thresholds) {
  return BlockMask{RowLayout{units, inner, channels, spatial, channels_last != 0},
                   make_permutation_key(keys[blockIdx.y], units), thresholds[blockIdx.y]};
}

}  // namespace fu_fast

// Rows whose byte length is a multiple of 16: one thread per 16-byte vector of a row
// (grid.y = mask). The thread decides which of the vector's 16 / elem_size elements are
// kept (a rank only when the unit changes), turns that into a byte mask, and applies it
// with one 16-byte load, AND and store per row of the batch: dtype-agnostic, since zero
// bits are +0.0 in every IEEE format.
extern "C" __global__ void fu_expand_masked_vec16(const uint4* __restrict__ src, uint4* __restrict__ dst,
                                                  int64_t batch, int64_t units, int64_t inner,
                                                  int64_t channels, int64_t spatial, int channels_last,
                                                  int elem_size, const uint64_t* __restrict__ keys,
                                                  const int64_t* __restrict__ thresholds) {
  const int64_t k = blockIdx.y;
  const fu_fast::BlockMask mask = fu_fast::block_mask(units, inner, channels, spatial, channels_last, keys, thresholds);
  const int per_vector = 16 / elem_size;
  const int64_t vectors = units * inner / per_vector;
  for (int64_t v = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; v < vectors;
       v += int64_t{gridDim.x} * blockDim.x) {
    // Byte mask of the kept elements, as two 64-bit halves held in registers.
    unsigned long long keep_lo = 0ull, keep_hi = 0ull;
    const unsigned long long element_bytes = elem_size == 8 ? ~0ull : (1ull << (8 * elem_size)) - 1;
    int64_t unit = -1;
    bool ablated = false;
    for (int i = 0; i < per_vector; ++i) {
      const int64_t u = fu_fast::unit_of_element(v * per_vector + i, mask.layout);
      if (u != unit) {
        unit = u;
        ablated = mask.ablates_unit(u);
      }
      if (!ablated) {
        const int byte = i * elem_size;
        if (byte < 8) keep_lo |= element_bytes << (8 * byte);
        else keep_hi |= element_bytes << (8 * (byte - 8));
      }
    }
    const unsigned int keep_x = static_cast<unsigned int>(keep_lo), keep_y = static_cast<unsigned int>(keep_lo >> 32);
    const unsigned int keep_z = static_cast<unsigned int>(keep_hi), keep_w = static_cast<unsigned int>(keep_hi >> 32);
    for (int64_t b = 0; b < batch; ++b) {
      uint4 x = src[b * vectors + v];
      x.x &= keep_x;
      x.y &= keep_y;
      x.z &= keep_z;
      x.w &= keep_w;
      dst[(k * batch + b) * vectors + v] = x;
    }
  }
}

// Any row length: one thread per element of a row (grid.y = mask), its rank computed once
// and used for every row of the batch; consecutive threads take consecutive elements.
extern "C" __global__ void fu_expand_masked_scalar(const void* __restrict__ src, void* __restrict__ dst,
                                                   int64_t batch, int64_t units, int64_t inner,
                                                   int64_t channels, int64_t spatial, int channels_last,
                                                   int elem_size, const uint64_t* __restrict__ keys,
                                                   const int64_t* __restrict__ thresholds) {
  const int64_t k = blockIdx.y;
  const fu_fast::BlockMask mask = fu_fast::block_mask(units, inner, channels, spatial, channels_last, keys, thresholds);
  const int64_t row = units * inner;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < row; e += int64_t{gridDim.x} * blockDim.x) {
    const bool ablated = mask.ablates_unit(fu_fast::unit_of_element(e, mask.layout));
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t from = b * row + e, to = (k * batch + b) * row + e;
      switch (elem_size) {
        case 2:
          static_cast<unsigned short*>(dst)[to] = ablated ? 0 : static_cast<const unsigned short*>(src)[from];
          break;
        case 4:
          static_cast<unsigned int*>(dst)[to] = ablated ? 0u : static_cast<const unsigned int*>(src)[from];
          break;
        default:
          static_cast<uint64_t*>(dst)[to] = ablated ? 0ull : static_cast<const uint64_t*>(src)[from];
          break;
      }
    }
  }
}

namespace fu_fast {

// argmax order of torch.argmax: a NaN beats every number (the first NaN wins), otherwise the
// larger value wins, and ties go to the lower index. index < 0 marks "no candidate".
__device__ __forceinline__ bool argmax_better(double value, int64_t index, double best_value, int64_t best) {
  if (index < 0) return false;
  if (best < 0) return true;
  const bool nan = value != value, best_nan = best_value != best_value;
  if (nan != best_nan) return nan;
  if (!nan && value != best_value) return value > best_value;
  return index < best;
}

}  // namespace fu_fast

// One warp per row (mask k, example b): the lanes stride over the classes, reduce
// (value, index) by shuffles, and lane 0 compares with the base label and counts. Reading a
// row with a whole warp keeps the loads coalesced for 1,000-class logits.
extern "C" __global__ void fu_label_agreement(const void* __restrict__ logits, int dtype, int64_t num_masks,
                                              int64_t batch, int64_t classes, int64_t row_stride,
                                              const int64_t* __restrict__ base_labels,
                                              unsigned long long* counts) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x / 32);
  const fu_fast::DType type = static_cast<fu_fast::DType>(dtype);
  for (int64_t r = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) / 32; r < num_masks * batch; r += warps) {
    double best_value = 0.0;
    int64_t best = -1;
    for (int64_t c = lane; c < classes; c += 32) {
      const double v = fu_fast::load_as_double(logits, type, r * row_stride + c);
      if (fu_fast::argmax_better(v, c, best_value, best)) {
        best_value = v;
        best = c;
      }
    }
    for (int offset = 16; offset > 0; offset /= 2) {
      const double other_value = __shfl_down_sync(0xffffffffu, best_value, offset);
      const long long other = __shfl_down_sync(0xffffffffu, static_cast<long long>(best), offset);
      if (fu_fast::argmax_better(other_value, other, best_value, best)) {
        best_value = other_value;
        best = other;
      }
    }
    if (lane == 0 && best == base_labels[r % batch]) atomicAdd(counts + r / batch, 1ull);
  }
}

#if !defined(__CUDACC_RTC__)
#include "launch.h"

namespace fu_fast {

void permutation_ranks_cuda(uint64_t key, int64_t n, int64_t* ranks, void* stream) {
  fu_permutation_ranks<<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(key, n, ranks);
  check_launch("permutation_ranks_cuda");
}

void expand_masked_cuda(const void* src, void* dst, int64_t batch, RowLayout layout, int elem_size,
                        MaskSpec masks, void* stream) {
  if (masks.num_masks > 65535) throw std::invalid_argument("expand_masked_cuda: at most 65535 masks per call");
  if (elem_size != 2 && elem_size != 4 && elem_size != 8)
    throw std::invalid_argument("expand_masked_cuda: element size must be 2, 4 or 8 bytes");
  const int64_t row_bytes = layout.units * layout.inner * elem_size;
  const bool aligned = row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(dst) % 16 == 0;
  const int64_t work = aligned ? row_bytes / 16 : layout.units * layout.inner;
  const dim3 grid(blocks_for(work), static_cast<unsigned int>(masks.num_masks));
  auto s = static_cast<cudaStream_t>(stream);
  if (aligned) {
    fu_expand_masked_vec16<<<grid, kThreads, 0, s>>>(
        static_cast<const uint4*>(src), static_cast<uint4*>(dst), batch, layout.units, layout.inner,
        layout.channels, layout.spatial, layout.channels_last, elem_size, masks.keys, masks.thresholds);
  } else {
    fu_expand_masked_scalar<<<grid, kThreads, 0, s>>>(src, dst, batch, layout.units, layout.inner,
                                                      layout.channels, layout.spatial, layout.channels_last,
                                                      elem_size, masks.keys, masks.thresholds);
  }
  check_launch("expand_masked_cuda");
}

void label_agreement_cuda(const void* logits, DType dtype, int64_t num_masks, int64_t batch,
                          int64_t classes, int64_t row_stride, const int64_t* base_labels,
                          int64_t* counts, void* stream) {
  static_assert(sizeof(unsigned long long) == sizeof(int64_t), "counts are 64-bit");
  fu_label_agreement<<<blocks_for(num_masks * batch * 32), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      logits, static_cast<int>(dtype), num_masks, batch, classes, row_stride, base_labels,
      reinterpret_cast<unsigned long long*>(counts));
  check_launch("label_agreement_cuda");
}

}  // namespace fu_fast
#endif  // !__CUDACC_RTC__
