#include <vector>

#include "covariance.h"

namespace fu_fast {
namespace {

constexpr int64_t kTile = 4;   // output tile edge of the cross-product micro-kernel
constexpr int64_t kLanes = 4;  // independent partial sums per output, for SIMD

// Upper triangle of X X^T for X = [rows_padded, samples] row-major (rows_padded a
// multiple of kTile), written to out[rows * rows] (only i <= j within real rows).
// Each output keeps kLanes partial sums so the inner loop vectorises without
// reassociating a single floating-point reduction.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("arch=haswell", "default")))
#endif
void cross_products(const double* x, int64_t rows, int64_t samples, double* out) {
  const int64_t blocks = (rows + kTile - 1) / kTile;
  const int64_t whole = samples - samples % kLanes;
#pragma omp parallel for schedule(dynamic, 1) if (rows * rows * samples > (1 << 20))
  for (int64_t ib = 0; ib < blocks; ++ib) {
    for (int64_t jb = ib; jb < blocks; ++jb) {
      double acc[kTile][kTile][kLanes] = {};
      const double* a = x + ib * kTile * samples;
      const double* b = x + jb * kTile * samples;
      for (int64_t t = 0; t < whole; t += kLanes) {
        for (int64_t i = 0; i < kTile; ++i)
          for (int64_t j = 0; j < kTile; ++j)
            for (int64_t l = 0; l < kLanes; ++l)
              acc[i][j][l] += a[i * samples + t + l] * b[j * samples + t + l];
      }
      for (int64_t i = 0; i < kTile; ++i) {
        for (int64_t j = 0; j < kTile; ++j) {
          double sum = 0.0;
          for (int64_t l = 0; l < kLanes; ++l) sum += acc[i][j][l];
          for (int64_t t = whole; t < samples; ++t) sum += a[i * samples + t] * b[j * samples + t];
          const int64_t row = ib * kTile + i, col = jb * kTile + j;
          if (row < rows && col < rows && row <= col) out[row * rows + col] = sum;
        }
      }
    }
  }
}

}  // namespace

void covariance_accumulate_cpu(ActivationView act, const int64_t* rows, int64_t num_rows,
                               MomentState state) {
  if (num_rows <= 0) return;
  const int64_t channels = act.channels;
  const int64_t padded = (channels + kTile - 1) / kTile * kTile;

  // Gather the sampled rows transposed (one contiguous sample vector per unit), centre
  // each unit by its batch mean: two passes in float64 keep the co-moment accurate even
  // for activations with a large offset.
  std::vector<double> centred(padded * num_rows, 0.0);
  std::vector<double> batch_mean(channels, 0.0);
#pragma omp parallel for schedule(static) if (channels * num_rows > (1 << 16))
  for (int64_t c = 0; c < channels; ++c) {
    double* column = centred.data() + c * num_rows;
    double sum = 0.0;
    for (int64_t i = 0; i < num_rows; ++i) {
      const int64_t b = rows[i] / act.spatial, s = rows[i] % act.spatial;
      column[i] = load_as_double(act.data, act.dtype,
                                 b * act.stride_batch + c * act.stride_channel + s * act.stride_spatial);
      sum += column[i];
    }
    const double mean = sum / static_cast<double>(num_rows);
    for (int64_t i = 0; i < num_rows; ++i) column[i] -= mean;
    batch_mean[c] = mean;
  }

  std::vector<double> batch_comoment(channels * channels, 0.0);
  cross_products(centred.data(), channels, num_rows, batch_comoment.data());

  // Chan et al.: merge (n_a, mean_a, M2_a) with (n_b, mean_b, M2_b).
  const double n_a = *state.count, n_b = static_cast<double>(num_rows), n = n_a + n_b;
  const double weight = n_a * n_b / n;
  std::vector<double> delta(channels);
  for (int64_t c = 0; c < channels; ++c) delta[c] = batch_mean[c] - state.mean[c];
#pragma omp parallel for schedule(static) if (channels * channels > (1 << 16))
  for (int64_t i = 0; i < channels; ++i) {
    for (int64_t j = i; j < channels; ++j) {
      const double value = state.comoment[i * channels + j] + batch_comoment[i * channels + j] +
                           delta[i] * delta[j] * weight;
      state.comoment[i * channels + j] = value;
      state.comoment[j * channels + i] = value;
    }
  }
  for (int64_t c = 0; c < channels; ++c) state.mean[c] += delta[c] * (n_b / n);
  *state.count = n;
}

}  // namespace fu_fast
