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

// Both row operations carry a haswell clone: the AND of a row is the whole cost of masking.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FU_FAST_ROW_CLONES __attribute__((target_clones("arch=haswell", "default")))
#else
#define FU_FAST_ROW_CLONES
#endif

template <typename Word>
FU_FAST_ROW_CLONES void and_row(const Word* __restrict__ src, const Word* __restrict__ keep, Word* __restrict__ dst,
                                int64_t row) {
  for (int64_t e = 0; e < row; ++e) dst[e] = src[e] & keep[e];
}

// The in-place twin of and_row: and_row(data, keep, data) would break its __restrict__ promise
// that src and dst do not alias. keep is a separate buffer, so it may stay restricted.
template <typename Word>
FU_FAST_ROW_CLONES void and_row_in_place(Word* __restrict__ data, const Word* __restrict__ keep, int64_t row) {
  for (int64_t e = 0; e < row; ++e) data[e] &= keep[e];
}

// What a mask does to a row: leave it (threshold <= 0), zero it (threshold >= units: no rank is
// needed), or AND it with the mask's keep words.
enum class RowMask { Keep, Zero, Partial };

// The ablation of num_masks * batch rows, row (k * batch + b) under mask k, shared by the
// expanding and the in-place kernel: mask_row(k, b, what, keep) is called once per (mask,
// example) pair, keep being mask k's keep words when what is Partial (else null).
//
// Masks come grouped by key (a chunk holds several levels of one repeat): ranks are computed
// once per group and each partial mask's keep words once, then one parallel region visits every
// (mask, row) pair of the group. One region per group, not per mask, keeps thread wake-ups rare;
// small groups stay on one thread.
template <typename Word, typename MaskRow>
void for_each_masked_row(int64_t batch, const RowLayout& layout, MaskSpec masks, MaskRow mask_row) {
  const int64_t units = layout.units, row = units * layout.inner;
  std::vector<int64_t> ranks(units);
  std::vector<Word> keep;
  auto what = [&](int64_t k) {
    const int64_t threshold = masks.thresholds[k];
    return threshold <= 0 ? RowMask::Keep : threshold >= units ? RowMask::Zero : RowMask::Partial;
  };
  for (int64_t first = 0; first < masks.num_masks;) {
    int64_t last = first + 1;
    while (last < masks.num_masks && masks.keys[last] == masks.keys[first]) ++last;
    bool needs_ranks = false;
    for (int64_t k = first; k < last; ++k) needs_ranks |= what(k) == RowMask::Partial;
    if (needs_ranks) {
      permutation_ranks_cpu(masks.keys[first], units, ranks.data());
      keep.resize(static_cast<size_t>((last - first) * row));
#pragma omp parallel for schedule(static) if ((last - first) * row > (1 << 18))
      for (int64_t k = first; k < last; ++k)
        if (what(k) == RowMask::Partial)
          keep_words(ranks.data(), masks.thresholds[k], layout, keep.data() + (k - first) * row);
    }
    const int64_t pairs = (last - first) * batch;
#pragma omp parallel for schedule(static) if (pairs * row > (1 << 18))
    for (int64_t pair = 0; pair < pairs; ++pair) {
      const int64_t k = first + pair / batch, b = pair % batch;
      const RowMask action = what(k);
      mask_row(k, b, action, action == RowMask::Partial ? keep.data() + (k - first) * row : nullptr);
    }
    first = last;
  }
}

template <typename Word>
void expand_masked_typed(const Word* src, Word* dst, int64_t batch, const RowLayout& layout, MaskSpec masks) {
  const int64_t row = layout.units * layout.inner;
  for_each_masked_row<Word>(batch, layout, masks, [&](int64_t k, int64_t b, RowMask action, const Word* keep) {
    const Word* in = src + b * row;
    Word* out = dst + (k * batch + b) * row;
    switch (action) {
      case RowMask::Keep: std::memcpy(out, in, sizeof(Word) * row); break;
      case RowMask::Zero: std::memset(out, 0, sizeof(Word) * row); break;
      case RowMask::Partial: and_row(in, keep, out, row); break;
    }
  });
}

template <typename Word>
void mask_rows_typed(Word* data, int64_t batch, const RowLayout& layout, MaskSpec masks) {
  const int64_t row = layout.units * layout.inner;
  for_each_masked_row<Word>(batch, layout, masks, [&](int64_t k, int64_t b, RowMask action, const Word* keep) {
    Word* rows = data + (k * batch + b) * row;
    switch (action) {
      case RowMask::Keep: break;   // the row is already what it must be: not even read
      case RowMask::Zero: std::memset(rows, 0, sizeof(Word) * row); break;
      case RowMask::Partial: and_row_in_place(rows, keep, row); break;
    }
  });
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

// The kernels move elements of elem_size bytes as unsigned words of that width.
template <typename Kernel>
void with_word_type(int elem_size, Kernel kernel) {
  switch (elem_size) {
    case 2: kernel(uint16_t{}); break;
    case 4: kernel(uint32_t{}); break;
    default: kernel(uint64_t{}); break;
  }
}

}  // namespace

void expand_masked_cpu(const void* src, void* dst, int64_t batch, RowLayout layout, int elem_size,
                       MaskSpec masks) {
  with_word_type(elem_size, [&](auto word) {
    using Word = decltype(word);
    expand_masked_typed(static_cast<const Word*>(src), static_cast<Word*>(dst), batch, layout, masks);
  });
}

void mask_rows_cpu(void* data, int64_t batch, RowLayout layout, int elem_size, MaskSpec masks) {
  with_word_type(elem_size, [&](auto word) {
    using Word = decltype(word);
    mask_rows_typed(static_cast<Word*>(data), batch, layout, masks);
  });
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
