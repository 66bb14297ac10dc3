#include <cmath>
#include <cstring>
#include <vector>

#include "ablation.h"
#include "permutation.h"

namespace fu_fast {
namespace {

// The keep mask of one ablation mask, as words of the element width: all ones where the
// element's unit is kept, zero where it is ablated. Rows are then masked by a plain AND of
// same-width integers, which compilers vectorise for every element width (a compare of
// 64-bit ranks inside the row loop does not vectorise on baseline x86-64).
template <typename Word>
void keep_words(const int64_t* ranks, int64_t threshold, const RowLayout& layout, Word* keep) {
  const int64_t row = layout.units * layout.inner;
  for (int64_t e = 0; e < row; ++e)
    keep[e] = (ranks[unit_of_element(e, layout)] < threshold) ? Word{0} : static_cast<Word>(~Word{0});
}

template <typename Word>
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("arch=haswell", "default")))
#endif
void and_row(const Word* __restrict__ src, const Word* __restrict__ keep, Word* __restrict__ dst, int64_t row) {
  for (int64_t e = 0; e < row; ++e) dst[e] = src[e] & keep[e];
}

template <typename Word>
void expand_masked_typed(const Word* src, Word* dst, int64_t batch, const RowLayout& layout,
                         MaskSpec masks) {
  const int64_t units = layout.units, row = units * layout.inner;
  std::vector<int64_t> ranks(units);
  std::vector<Word> keep;
  // Masks come grouped by key (a chunk holds several levels of one repeat): ranks are
  // computed once per group and each partial mask's keep words once, then one parallel
  // region masks every (mask, row) pair of the group. One region per group, not per mask,
  // keeps thread wake-ups rare; small copies stay on one thread.
  for (int64_t first = 0; first < masks.num_masks;) {
    int64_t last = first + 1;
    while (last < masks.num_masks && masks.keys[last] == masks.keys[first]) ++last;
    auto partial = [&](int64_t k) { return masks.thresholds[k] > 0 && masks.thresholds[k] < units; };
    bool needs_ranks = false;
    for (int64_t k = first; k < last; ++k) needs_ranks |= partial(k);
    if (needs_ranks) {
      permutation_ranks_cpu(masks.keys[first], units, ranks.data());
      keep.resize(static_cast<size_t>((last - first) * row));
#pragma omp parallel for schedule(static) if ((last - first) * row > (1 << 18))
      for (int64_t k = first; k < last; ++k)
        if (partial(k)) keep_words(ranks.data(), masks.thresholds[k], layout, keep.data() + (k - first) * row);
    }
    const int64_t pairs = (last - first) * batch;
#pragma omp parallel for schedule(static) if (pairs * row > (1 << 18))
    for (int64_t pair = 0; pair < pairs; ++pair) {
      const int64_t k = first + pair / batch, b = pair % batch;
      const int64_t threshold = masks.thresholds[k];
      const Word* in = src + b * row;
      Word* out = dst + (k * batch + b) * row;
      if (threshold <= 0) {
        std::memcpy(out, in, sizeof(Word) * row);
      } else if (threshold >= units) {
        std::memset(out, 0, sizeof(Word) * row);
      } else {
        and_row(in, keep.data() + (k - first) * row, out, row);
      }
    }
    first = last;
  }
}

int64_t argmax_row(const void* row, int64_t classes, DType dtype) {
  int64_t best = 0;
  double best_value = load_as_double(row, dtype, 0);
  if (std::isnan(best_value)) return 0;
  for (int64_t c = 1; c < classes; ++c) {
    const double v = load_as_double(row, dtype, c);
    if (std::isnan(v)) return c;
    if (v > best_value) {
      best_value = v;
      best = c;
    }
  }
  return best;
}

}  // namespace

void expand_masked_cpu(const void* src, void* dst, int64_t batch, RowLayout layout, int elem_size,
                       MaskSpec masks) {
  switch (elem_size) {
    case 2:
      expand_masked_typed(static_cast<const uint16_t*>(src), static_cast<uint16_t*>(dst), batch,
                          layout, masks);
      break;
    case 4:
      expand_masked_typed(static_cast<const uint32_t*>(src), static_cast<uint32_t*>(dst), batch,
                          layout, masks);
      break;
    default:
      expand_masked_typed(static_cast<const uint64_t*>(src), static_cast<uint64_t*>(dst), batch,
                          layout, masks);
      break;
  }
}

void label_agreement_cpu(const void* logits, DType dtype, int64_t num_masks, int64_t batch,
                         int64_t classes, int64_t row_stride, const int64_t* base_labels,
                         int64_t* counts) {
  const int64_t rows = num_masks * batch;
  const int size = dtype_size(dtype);
  std::vector<int64_t> matches(num_masks, 0);
#pragma omp parallel if (rows * classes > (1 << 16))
  {
    std::vector<int64_t> local(num_masks, 0);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const char* row = static_cast<const char*>(logits) + r * row_stride * size;
      const int64_t label = argmax_row(row, classes, dtype);
      if (label == base_labels[r % batch]) ++local[r / batch];
    }
#pragma omp critical
    for (int64_t k = 0; k < num_masks; ++k) matches[k] += local[k];
  }
  for (int64_t k = 0; k < num_masks; ++k) counts[k] += matches[k];
}

}  // namespace fu_fast
