#include <cmath>
#include <vector>

#include "../ablation.h"
#include "../permutation.h"

namespace fu_fast {
namespace {

// Element-wise copy-or-zero of one row for a given element width; a plain integer
// type moves the bytes, which keeps the loop branch-free and vectorisable.
template <typename Word>
void mask_row(const Word* src, Word* dst, const int64_t* ranks, int64_t threshold,
              int64_t units, int64_t inner) {
  if (inner == 1) {
    for (int64_t u = 0; u < units; ++u) dst[u] = (ranks[u] < threshold) ? Word{0} : src[u];
    return;
  }
  for (int64_t u = 0; u < units; ++u) {
    Word* out = dst + u * inner;
    if (ranks[u] < threshold) {
      std::memset(out, 0, sizeof(Word) * inner);
    } else {
      std::memcpy(out, src + u * inner, sizeof(Word) * inner);
    }
  }
}

template <typename Word>
void expand_masked_typed(const Word* src, Word* dst, int64_t batch, int64_t units, int64_t inner,
                         MaskSpec masks) {
  const int64_t row = units * inner;
  // Ranks depend only on the key: a chunk of masks usually holds several levels of the
  // same repeat, so they are computed once per run of equal keys.
  std::vector<int64_t> ranks(units);
  bool have_key = false;
  uint64_t ranked_key = 0;
  for (int64_t k = 0; k < masks.num_masks; ++k) {
    const int64_t threshold = masks.thresholds[k];
    if (threshold > 0 && threshold < units && (!have_key || masks.keys[k] != ranked_key)) {
      permutation_ranks_cpu(masks.keys[k], units, ranks.data());
      ranked_key = masks.keys[k];
      have_key = true;
    }
    Word* out = dst + k * batch * row;
#pragma omp parallel for schedule(static) if (batch * row > 32768)
    for (int64_t b = 0; b < batch; ++b) {
      if (threshold <= 0) {
        std::memcpy(out + b * row, src + b * row, sizeof(Word) * row);
      } else if (threshold >= units) {
        std::memset(out + b * row, 0, sizeof(Word) * row);
      } else {
        mask_row(src + b * row, out + b * row, ranks.data(), threshold, units, inner);
      }
    }
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

void expand_masked_cpu(const void* src, void* dst, int64_t batch, int64_t units, int64_t inner,
                       int elem_size, MaskSpec masks) {
  switch (elem_size) {
    case 2:
      expand_masked_typed(static_cast<const uint16_t*>(src), static_cast<uint16_t*>(dst), batch,
                          units, inner, masks);
      break;
    case 4:
      expand_masked_typed(static_cast<const uint32_t*>(src), static_cast<uint32_t*>(dst), batch,
                          units, inner, masks);
      break;
    default:
      expand_masked_typed(static_cast<const uint64_t*>(src), static_cast<uint64_t*>(dst), batch,
                          units, inner, masks);
      break;
  }
}

void label_agreement_cpu(const void* logits, DType dtype, int64_t num_masks, int64_t batch,
                         int64_t classes, int64_t row_stride, const int64_t* base_labels,
                         int64_t* counts) {
  const int64_t rows = num_masks * batch;
  const int size = dtype_size(dtype);
  std::vector<int64_t> matches(num_masks, 0);
#pragma omp parallel
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
