// CUDA twins of the masked-ablation kernels (csrc/cpu/ablation_cpu.cpp): keyed permutation
// ranks, fused expand-and-mask, in-place masking and label agreement. Same contracts as
// ablation.h and permutation.h. Ranks come from the same FU_FAST_HD functions as on the CPU,
// so the ablated sets are bit-identical.
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

  // Whether element e of a row is ablated (the scalar kernels' mask).
  __device__ __forceinline__ bool ablates_element(int64_t e) const {
    return ablates_unit(unit_of_element(e, layout));
  }

  // The keep mask of 16-byte vector v of a row (the vec16 kernels' mask): all-one bytes over its
  // 16 / elem_size elements that are kept, zero bytes over those ablated. A rank is computed only
  // where the unit changes within the vector. Built as two 64-bit halves held in registers.
  __device__ __forceinline__ uint4 vector_keep(int64_t v, int elem_size) const {
    const int per_vector = 16 / elem_size;
    unsigned long long keep_lo = 0ull, keep_hi = 0ull;
    const unsigned long long element_bytes = elem_size == 8 ? ~0ull : (1ull << (8 * elem_size)) - 1;
    int64_t unit = -1;
    bool ablated = false;
    for (int i = 0; i < per_vector; ++i) {
      const int64_t u = unit_of_element(v * per_vector + i, layout);
      if (u != unit) {
        unit = u;
        ablated = ablates_unit(u);
      }
      if (!ablated) {
        const int byte = i * elem_size;
        if (byte < 8) keep_lo |= element_bytes << (8 * byte);
        else keep_hi |= element_bytes << (8 * (byte - 8));
      }
    }
    return uint4{static_cast<unsigned int>(keep_lo), static_cast<unsigned int>(keep_lo >> 32),
                 static_cast<unsigned int>(keep_hi), static_cast<unsigned int>(keep_hi >> 32)};
  }
};

__device__ __forceinline__ uint4 and_vector(uint4 x, const uint4& keep) {
  x.x &= keep.x;
  x.y &= keep.y;
  x.z &= keep.z;
  x.w &= keep.w;
  return x;
}

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
  const int64_t vectors = units * inner * elem_size / 16;
  for (int64_t v = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; v < vectors;
       v += int64_t{gridDim.x} * blockDim.x) {
    const uint4 keep = mask.vector_keep(v, elem_size);
    for (int64_t b = 0; b < batch; ++b)
      dst[(k * batch + b) * vectors + v] = fu_fast::and_vector(src[b * vectors + v], keep);
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
    const bool ablated = mask.ablates_element(e);
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t from = b * row + e, to = (k * batch + b) * row + e;
      if (ablated) {
        fu_fast::zero_element(dst, to, elem_size);
      } else {
        fu_fast::copy_element(src, from, dst, to, elem_size);
      }
    }
  }
}

// The in-place twins of the expansion kernels: data holds num_masks * batch rows laid out as the
// expansion's dst, and mask k (= blockIdx.y) is applied to its batch rows where they are. Only
// what the mask changes is touched, so a mask with threshold <= 0 costs no memory traffic: its
// blocks exit before reading anything else.

// Rows whose byte length is a multiple of 16: the keep mask of fu_expand_masked_vec16 per
// 16-byte vector. A vector whose elements are all kept is neither read nor written; one whose
// elements are all ablated is written with zeros without being read.
extern "C" __global__ void fu_mask_rows_vec16(uint4* __restrict__ data, int64_t batch, int64_t units, int64_t inner,
                                              int64_t channels, int64_t spatial, int channels_last, int elem_size,
                                              const uint64_t* __restrict__ keys,
                                              const int64_t* __restrict__ thresholds) {
  if (thresholds[blockIdx.y] <= 0) return;
  const int64_t k = blockIdx.y;
  const fu_fast::BlockMask mask = fu_fast::block_mask(units, inner, channels, spatial, channels_last, keys, thresholds);
  const int64_t vectors = units * inner * elem_size / 16;
  uint4* rows = data + k * batch * vectors;
  for (int64_t v = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; v < vectors;
       v += int64_t{gridDim.x} * blockDim.x) {
    const uint4 keep = mask.vector_keep(v, elem_size);
    if ((keep.x & keep.y & keep.z & keep.w) == ~0u) continue;
    if ((keep.x | keep.y | keep.z | keep.w) == 0u) {
      for (int64_t b = 0; b < batch; ++b) rows[b * vectors + v] = uint4{0u, 0u, 0u, 0u};
    } else {
      for (int64_t b = 0; b < batch; ++b)
        rows[b * vectors + v] = fu_fast::and_vector(rows[b * vectors + v], keep);
    }
  }
}

// Any row length: the mask of fu_expand_masked_scalar per element; the ablated elements of the
// mask's batch rows are zeroed, the kept ones left alone.
extern "C" __global__ void fu_mask_rows_scalar(void* __restrict__ data, int64_t batch, int64_t units, int64_t inner,
                                               int64_t channels, int64_t spatial, int channels_last, int elem_size,
                                               const uint64_t* __restrict__ keys,
                                               const int64_t* __restrict__ thresholds) {
  if (thresholds[blockIdx.y] <= 0) return;
  const int64_t k = blockIdx.y;
  const fu_fast::BlockMask mask = fu_fast::block_mask(units, inner, channels, spatial, channels_last, keys, thresholds);
  const int64_t row = units * inner;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < row; e += int64_t{gridDim.x} * blockDim.x) {
    if (!mask.ablates_element(e)) continue;
    for (int64_t b = 0; b < batch; ++b) fu_fast::zero_element(data, (k * batch + b) * row + e, elem_size);
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
#include <initializer_list>

#include "launch.h"

namespace fu_fast {

void permutation_ranks_cuda(uint64_t key, int64_t n, int64_t* ranks, void* stream) {
  fu_permutation_ranks<<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(key, n, ranks);
  check_launch("permutation_ranks_cuda");
}

namespace {

// The checks shared by the masking launchers: grid.y is the mask, and elements move as words of
// 2, 4 or 8 bytes.
void check_masking(const char* launcher, int elem_size, MaskSpec masks) {
  if (masks.num_masks > 65535)
    throw std::invalid_argument(std::string(launcher) + ": at most 65535 masks per call");
  if (elem_size != 2 && elem_size != 4 && elem_size != 8)
    throw std::invalid_argument(std::string(launcher) + ": element size must be 2, 4 or 8 bytes");
}

// Whether rows can be moved as 16-byte vectors: their length is a multiple of 16 bytes and every
// buffer starts on a 16-byte boundary (then so does every row).
bool takes_16_byte_vectors(const RowLayout& layout, int elem_size, std::initializer_list<const void*> buffers) {
  if (layout.units * layout.inner * elem_size % 16 != 0) return false;
  for (const void* buffer : buffers)
    if (reinterpret_cast<uintptr_t>(buffer) % 16 != 0) return false;
  return true;
}

// One thread per 16-byte vector or per element of a row, grid.y the mask.
dim3 masking_grid(const RowLayout& layout, int elem_size, MaskSpec masks, bool vec16) {
  const int64_t elements = layout.units * layout.inner;
  return dim3(blocks_for(vec16 ? elements * elem_size / 16 : elements), static_cast<unsigned int>(masks.num_masks));
}

}  // namespace

void expand_masked_cuda(const void* src, void* dst, int64_t batch, RowLayout layout, int elem_size,
                        MaskSpec masks, void* stream) {
  check_masking("expand_masked_cuda", elem_size, masks);
  const bool vec16 = takes_16_byte_vectors(layout, elem_size, {src, dst});
  const dim3 grid = masking_grid(layout, elem_size, masks, vec16);
  auto s = static_cast<cudaStream_t>(stream);
  if (vec16) {
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

void mask_rows_cuda(void* data, int64_t batch, RowLayout layout, int elem_size, MaskSpec masks, void* stream) {
  check_masking("mask_rows_cuda", elem_size, masks);
  const bool vec16 = takes_16_byte_vectors(layout, elem_size, {data});
  const dim3 grid = masking_grid(layout, elem_size, masks, vec16);
  auto s = static_cast<cudaStream_t>(stream);
  if (vec16) {
    fu_mask_rows_vec16<<<grid, kThreads, 0, s>>>(static_cast<uint4*>(data), batch, layout.units, layout.inner,
                                                 layout.channels, layout.spatial, layout.channels_last, elem_size,
                                                 masks.keys, masks.thresholds);
  } else {
    fu_mask_rows_scalar<<<grid, kThreads, 0, s>>>(data, batch, layout.units, layout.inner, layout.channels,
                                                  layout.spatial, layout.channels_last, elem_size, masks.keys,
                                                  masks.thresholds);
  }
  check_launch("mask_rows_cuda");
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
