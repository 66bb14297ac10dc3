// Masked-ablation kernels: fused expand-and-mask, in-place masking and label agreement.
#pragma once

#include "common.h"

namespace fu_fast {

// One ablation mask: units u with rank_key(u) < threshold output 0.
struct MaskSpec {
  const uint64_t* keys;        // [num_masks]
  const int64_t* thresholds;   // [num_masks], floor(p * units)
  int64_t num_masks;
};

// Which unit each element of a row (one example's layer output, units * inner elements)
// belongs to. In NCHW (or (B, C)) order element e belongs to unit e / inner: inner is 1
// when every element is a unit (linear layers, conv with unit=position) and H*W when whole
// feature maps are units (unit=channel). A channels_last conv output stores channel c of
// spatial position s at e = s * channels + c; its unit is still defined by the logical
// NCHW index, (c * spatial + s) / inner, so masks do not depend on the memory format.
struct RowLayout {
  int64_t units, inner;
  int64_t channels, spatial;  // read only when channels_last
  bool channels_last;
};

// The logical NCHW index (c * spatial + s) of the element at offset e of a row in memory.
FU_FAST_HD int64_t logical_element(int64_t e, const RowLayout& layout) {
  if (!layout.channels_last) return e;
  const int64_t c = e % layout.channels, s = e / layout.channels;
  return c * layout.spatial + s;
}

FU_FAST_HD int64_t unit_of_element(int64_t e, const RowLayout& layout) {
  return logical_element(e, layout) / layout.inner;
}

#if !defined(__CUDACC_RTC__)  // host entry points; NVRTC compiles device code only
// Writes num_masks masked copies of a layer output, each row in the memory order of src.
//   src: [batch, row] contiguous rows (row = units * inner elements of elem_size bytes)
//   dst: [num_masks, batch, row]
// Masking only copies or zeroes elements, and all-zero bits are +0.0 in every IEEE format,
// so the kernel is dtype-agnostic: it moves elements of elem_size bytes (2, 4 or 8).
void expand_masked_cpu(const void* src, void* dst, int64_t batch, RowLayout layout, int elem_size,
                       MaskSpec masks);

// The in-place twin of expand_masked, for rows already expanded (a layer that is not a cut
// point is analysed by expanding the batch earlier in the model: copy k gets mask k here).
//   data: [num_masks, batch, row] rows laid out as expand_masked's dst, masked in place: row
//         k * batch + b gets mask k. A mask with threshold <= 0 leaves its rows untouched (not
//         even read); one with threshold >= units zeroes them without computing ranks.
void mask_rows_cpu(void* data, int64_t batch, RowLayout layout, int elem_size, MaskSpec masks);

// counts[k] += #{b : argmax(logits[k * batch + b, :]) == base_labels[b]} for every mask k.
//   logits: [num_masks * batch, classes], rows row_stride elements apart.
// argmax follows torch.argmax: the first maximal index, NaN counting as maximal.
void label_agreement_cpu(const void* logits, DType dtype, int64_t num_masks, int64_t batch,
                         int64_t classes, int64_t row_stride, const int64_t* base_labels,
                         int64_t* counts);

#ifdef FU_FAST_WITH_CUDA
// CUDA twins (csrc/cuda/ablation_cuda.cu): every pointer, keys and thresholds included, is
// device memory; the work is queued on `stream` (PyTorch's current cudaStream_t) and not
// waited for.
void expand_masked_cuda(const void* src, void* dst, int64_t batch, RowLayout layout, int elem_size,
                        MaskSpec masks, void* stream);
void mask_rows_cuda(void* data, int64_t batch, RowLayout layout, int elem_size, MaskSpec masks, void* stream);
// counts: num_masks int64 counters in device memory, added to as on the CPU.
void label_agreement_cuda(const void* logits, DType dtype, int64_t num_masks, int64_t batch,
                          int64_t classes, int64_t row_stride, const int64_t* base_labels,
                          int64_t* counts, void* stream);
#endif
#endif

}  // namespace fu_fast
