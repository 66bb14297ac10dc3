#include <cstring>
#include <vector>

#include "noise.h"

namespace fu_fast {
namespace {

// What a row needs per element, the same for every copy and example: the hash of the element's
// logical index (half of its counter) and its unit's standard deviation.
struct ElementNoise {
  std::vector<uint64_t> hashes;
  std::vector<double> unit_std;
};

ElementNoise element_noise(const RowLayout& layout, const double* unit_std) {
  const int64_t row = layout.units * layout.inner;
  ElementNoise per_element{std::vector<uint64_t>(row), std::vector<double>(row)};
#pragma omp parallel for schedule(static) if (row > (1 << 16))
  for (int64_t e = 0; e < row; ++e) {
    const int64_t l = logical_element(e, layout);
    per_element.hashes[e] = noise_element_hash(l);
    per_element.unit_std[e] = unit_std[l / layout.inner];
  }
  return per_element;
}

// One row of one copy: out[e] = in[e] plus its noise, in and out possibly the same row (then an
// element whose sigma is 0 is not written). Typed on the dtype so that the conversions inline;
// loads and stores go through the integer conversions of common.h, which every backend shares.
template <DType kType>
void noise_row(const void* in, void* out, int64_t row, uint64_t seed, double scale, const ElementNoise& per_element) {
  for (int64_t e = 0; e < row; ++e) {
    const double sigma = mul_rn(scale, per_element.unit_std[e]);
    if (sigma == 0) {
      if (in != out) copy_element(in, e, out, e, dtype_size(kType));
      continue;
    }
    const double n = noise_normal(seed, per_element.hashes[e]);
    store_from_double(out, kType, e, add_noise(load_as_double(in, kType, e), sigma, n));
  }
}

// The noise of num_copies * batch rows, row (k * batch + b) under copy k, shared by the expanding
// and the in-place kernel: noisy_row(k, b, seed) is called once per (copy, example) pair whose
// copy's scale is not 0, copy_row(k, b) once per pair whose scale is 0. Every pair is a normal
// and a log and a cos per element (tens of nanoseconds), so pairs spread over threads as soon as
// there are a few thousand elements in all.
template <typename NoisyRow, typename CopyRow>
void for_each_noisy_row(int64_t batch, const RowLayout& layout, NoiseSpec noise, NoisyRow noisy_row,
                        CopyRow copy_row) {
  const int64_t row = layout.units * layout.inner, pairs = noise.num_copies * batch;
#pragma omp parallel for schedule(dynamic, 1) if (pairs > 1 && pairs * row > (1 << 12))
  for (int64_t pair = 0; pair < pairs; ++pair) {
    const int64_t k = pair / batch, b = pair % batch;
    if (noise.scales[k] == 0) {
      copy_row(k, b);
    } else {
      noisy_row(k, b, noise_seed(noise.keys[k], noise.first_example + b));
    }
  }
}

}  // namespace

void expand_noise_cpu(const void* src, void* dst, int64_t batch, RowLayout layout, DType dtype, NoiseSpec noise) {
  const int64_t row = layout.units * layout.inner;
  const int64_t row_bytes = row * dtype_size(dtype);
  const ElementNoise per_element = element_noise(layout, noise.unit_std);
  const auto* in = static_cast<const char*>(src);
  auto* out = static_cast<char*>(dst);
  with_dtype(dtype, [&](auto type) {
    for_each_noisy_row(
        batch, layout, noise,
        [&](int64_t k, int64_t b, uint64_t seed) {
          noise_row<decltype(type)::value>(in + b * row_bytes, out + (k * batch + b) * row_bytes, row, seed,
                                           noise.scales[k], per_element);
        },
        [&](int64_t k, int64_t b) { std::memcpy(out + (k * batch + b) * row_bytes, in + b * row_bytes, row_bytes); });
  });
}

void noise_rows_cpu(void* data, int64_t batch, RowLayout layout, DType dtype, NoiseSpec noise) {
  bool any_noise = false;
  for (int64_t k = 0; k < noise.num_copies; ++k) any_noise |= noise.scales[k] != 0;
  if (!any_noise) return;
  const int64_t row = layout.units * layout.inner;
  const int64_t row_bytes = row * dtype_size(dtype);
  const ElementNoise per_element = element_noise(layout, noise.unit_std);
  auto* rows = static_cast<char*>(data);
  with_dtype(dtype, [&](auto type) {
    for_each_noisy_row(
        batch, layout, noise,
        [&](int64_t k, int64_t b, uint64_t seed) {
          char* at = rows + (k * batch + b) * row_bytes;
          noise_row<decltype(type)::value>(at, at, row, seed, noise.scales[k], per_element);
        },
        [](int64_t, int64_t) {});   // scale 0: the row is already what it must be, not even read
  });
}

}  // namespace fu_fast
