// Masked-ablation kernels: fused expand-and-mask and label agreement.
#pragma once

#include "common.h"

namespace fu_fast {

// One ablation mask: units u with rank_key(u) < threshold output 0.
struct MaskSpec {
  const uint64_t* keys;        // [num_masks]
  const int64_t* thresholds;   // [num_masks], floor(p * units)
  int64_t num_masks;
};

// Writes num_masks masked copies of a layer output.
//   src: [batch, units, inner] contiguous, elements of elem_size bytes
//   dst: [num_masks, batch, units, inner] contiguous
// inner is 1 when every element is a unit (linear layers, conv with unit=position) and
// H*W when whole feature maps are units (unit=channel). Masking only copies or zeroes
// elements, and all-zero bits are +0.0 in every IEEE format, so the kernel is
// dtype-agnostic: it moves bytes of elem_size (2, 4 or 8).
void expand_masked_cpu(const void* src, void* dst, int64_t batch, int64_t units, int64_t inner,
                       int elem_size, MaskSpec masks);

// counts[k] += #{b : argmax(logits[k * batch + b, :]) == base_labels[b]} for every mask k.
//   logits: [num_masks * batch, classes], rows row_stride elements apart.
// argmax follows torch.argmax: the first maximal index, NaN counting as maximal.
void label_agreement_cpu(const void* logits, DType dtype, int64_t num_masks, int64_t batch,
                         int64_t classes, int64_t row_stride, const int64_t* base_labels,
                         int64_t* counts);

#ifdef FU_FAST_WITH_CUDA
// CUDA twins: every pointer (keys and thresholds included) is device memory; the work is
// queued on `stream` (a cudaStream_t, PyTorch's current stream) and not waited for.
void permutation_ranks_cuda(uint64_t key, int64_t n, int64_t* ranks, void* stream);
void expand_masked_cuda(const void* src, void* dst, int64_t batch, int64_t units, int64_t inner,
                        int elem_size, MaskSpec masks, void* stream);
// counts must hold num_masks int64 counters; they are added to, as on the CPU.
void label_agreement_cuda(const void* logits, DType dtype, int64_t num_masks, int64_t batch,
                          int64_t classes, int64_t row_stride, const int64_t* base_labels,
                          int64_t* counts, void* stream);
#endif

}  // namespace fu_fast
