#include <algorithm>
#include <vector>

#include "covariance.h"

namespace fu_fast {
namespace {

// The batch's centred samples are packed in panels of kPanel units: panel p holds, sample
// after sample, the kPanel values of units p*kPanel ... p*kPanel+kPanel-1 (zero for the units
// past C). A block of the co-moment is then a sum of outer products of two contiguous
// kPanel-vectors per sample: the register-blocked form of a matrix product, which runs at
// the float64 rate of the core instead of the cache's.
constexpr int64_t kPanel = 8;    // one 512-bit (or two 256-bit) vectors of doubles
constexpr int64_t kDepth = 256;  // samples per cache block: a panel's block is 16 KiB, L1-sized
constexpr int64_t kSpanBytes = 512 << 10;  // the panels of a span of samples: half a typical L2

typedef double Vec __attribute__((vector_size(kPanel * sizeof(double))));

// acc[i] += a[t][i] * b[t][:] for t < depth (a and b panels of kPanel values per sample).
// The eight accumulators and the loaded b vector stay in registers; each output is one
// running sum in sample order (no reassociation across samples).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v4", "arch=haswell", "default")))
#endif
void outer_product_block(const double* a, const double* b, int64_t depth, double* out) {
  Vec acc[kPanel];
  for (int64_t i = 0; i < kPanel; ++i) memcpy(&acc[i], out + i * kPanel, sizeof(Vec));
  for (int64_t t = 0; t < depth; ++t) {
    Vec bt;
    memcpy(&bt, b + t * kPanel, sizeof(Vec));
    for (int64_t i = 0; i < kPanel; ++i) acc[i] += a[t * kPanel + i] * bt;
  }
  for (int64_t i = 0; i < kPanel; ++i) memcpy(out + i * kPanel, &acc[i], sizeof(Vec));
}

// Adds the packed samples' co-moment, plus weight * delta delta^T (Chan et al.'s correction
// for the moved mean), to the symmetric state[C * C]: each pair of panels is one block of
// outer products, computed once for the upper triangle and mirrored. The samples are taken
// in spans whose panels fit the L2 cache together, each span read from memory once for all
// the pairs of panels (a pass over every sample per pair would stream them from memory).
void add_cross_products(const double* panels, int64_t channels, int64_t samples, const double* delta,
                        double weight, double* state) {
  const int64_t count = (channels + kPanel - 1) / kPanel;
  const int64_t span = std::max(kDepth, kSpanBytes / (count * kPanel * static_cast<int64_t>(sizeof(double))) /
                                            kDepth * kDepth);
  // The block of panels (ip, jp >= ip) starts at pair_offset(ip) + (jp - ip) blocks.
  auto pair_offset = [count](int64_t ip) { return (ip * count - ip * (ip - 1) / 2) * kPanel * kPanel; };
  std::vector<double> blocks(pair_offset(count), 0.0);
  const bool parallel = channels * channels * samples > (1 << 20);
  for (int64_t s0 = 0; s0 < samples; s0 += span) {
    const int64_t s1 = std::min(samples, s0 + span);
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
    for (int64_t ip = 0; ip < count; ++ip) {
      for (int64_t t0 = s0; t0 < s1; t0 += kDepth) {
        const int64_t depth = std::min(kDepth, s1 - t0);
        const double* a = panels + (ip * samples + t0) * kPanel;
        for (int64_t jp = ip; jp < count; ++jp)
          outer_product_block(a, panels + (jp * samples + t0) * kPanel, depth,
                              blocks.data() + pair_offset(ip) + (jp - ip) * kPanel * kPanel);
      }
    }
  }
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
  for (int64_t ip = 0; ip < count; ++ip) {
    // Block by block, so that the mirrored writes of a block fill whole cache lines.
    const int64_t rows = std::min(kPanel, channels - ip * kPanel);
    for (int64_t jp = ip; jp < count; ++jp) {
      const double* block = blocks.data() + pair_offset(ip) + (jp - ip) * kPanel * kPanel;
      const int64_t cols = std::min(kPanel, channels - jp * kPanel);
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t row = ip * kPanel + i;
        for (int64_t j = jp == ip ? i : 0; j < cols; ++j) {
          const int64_t col = jp * kPanel + j;
          state[row * channels + col] += block[i * kPanel + j] + delta[row] * delta[col] * weight;
        }
      }
      for (int64_t j = 0; j < cols; ++j) {
        const int64_t col = jp * kPanel + j;
        for (int64_t i = 0; i < (jp == ip ? j : rows); ++i)
          state[col * channels + ip * kPanel + i] = state[(ip * kPanel + i) * channels + col];
      }
    }
  }
}

// Gathers the sampled rows into panels (see kPanel) and centres each unit by its batch mean,
// in float64: centring before the products keeps the co-moment accurate for activations with
// a large offset. The gather follows the memory: unit by unit where a unit's values are
// contiguous (NCHW), sample by sample where a sample's are ((B, C) and channels_last).
template <DType kDType>
void pack_centred(ActivationView act, const int64_t* offsets, int64_t samples, double* panels,
                  double* batch_mean) {
  const int64_t channels = act.channels, count = (channels + kPanel - 1) / kPanel;
  const bool parallel = channels * samples > (1 << 16);
  if (act.stride_channel > act.stride_spatial && act.spatial > 1) {
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t c = 0; c < channels; ++c) {
      double* panel = panels + (c / kPanel) * samples * kPanel + c % kPanel;
      for (int64_t t = 0; t < samples; ++t)
        panel[t * kPanel] = load_as_double(act.data, kDType, offsets[t] + c * act.stride_channel);
    }
  } else {
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t t = 0; t < samples; ++t)
      for (int64_t c = 0; c < channels; ++c)
        panels[((c / kPanel) * samples + t) * kPanel + c % kPanel] =
            load_as_double(act.data, kDType, offsets[t] + c * act.stride_channel);
  }
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t p = 0; p < count; ++p) {
    double* panel = panels + p * samples * kPanel;
    const int64_t units = std::min(kPanel, channels - p * kPanel);
    double sums[kPanel] = {};
    for (int64_t t = 0; t < samples; ++t)
      for (int64_t k = 0; k < units; ++k) sums[k] += panel[t * kPanel + k];
    double means[kPanel] = {};
    for (int64_t k = 0; k < units; ++k) means[k] = sums[k] / static_cast<double>(samples);
    // Units past C (the last panel's padding) are zero and stay zero.
    for (int64_t t = 0; t < samples; ++t)
      for (int64_t k = 0; k < kPanel; ++k) panel[t * kPanel + k] = k < units ? panel[t * kPanel + k] - means[k] : 0.0;
    for (int64_t k = 0; k < units; ++k) batch_mean[p * kPanel + k] = means[k];
  }
}

}  // namespace

void covariance_accumulate_cpu(ActivationView act, const int64_t* rows, int64_t num_rows,
                               MomentState state) {
  if (num_rows <= 0) return;
  const int64_t channels = act.channels;
  const int64_t count = (channels + kPanel - 1) / kPanel;

  std::vector<int64_t> offsets(num_rows);
  for (int64_t t = 0; t < num_rows; ++t)
    offsets[t] = rows[t] / act.spatial * act.stride_batch + rows[t] % act.spatial * act.stride_spatial;
  std::vector<double> panels(count * num_rows * kPanel);
  std::vector<double> batch_mean(channels);
  with_dtype(act.dtype, [&](auto type) {
    pack_centred<decltype(type)::value>(act, offsets.data(), num_rows, panels.data(), batch_mean.data());
  });

  // Chan et al.: merge (n_a, mean_a, M2_a) with (n_b, mean_b, M2_b).
  const double n_a = *state.count, n_b = static_cast<double>(num_rows), n = n_a + n_b;
  std::vector<double> delta(channels);
  for (int64_t c = 0; c < channels; ++c) delta[c] = batch_mean[c] - state.mean[c];
  add_cross_products(panels.data(), channels, num_rows, delta.data(), n_a * n_b / n, state.comoment);
  for (int64_t c = 0; c < channels; ++c) state.mean[c] += delta[c] * (n_b / n);
  *state.count = n;
}

}  // namespace fu_fast
