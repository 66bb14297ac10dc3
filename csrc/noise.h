// Keyed Gaussian activation noise: normal(key, example, element), and the kernels that add it to
// copies of a layer output (robustness to activation noise, issue 15).
//
// A normal deviate is computed on the fly from a 64-bit key, the example's global index and the
// element's logical index, so the noise is never drawn or stored: every backend, every batch size
// and every batching of the copies draws the same values.
//
// The exact function (mirrored by fu_fast/reference.py with NumPy uint64 and float64 arithmetic):
//   seed      = mix64(key ^ mix64(example))            one stream per (key, example)
//   c         = seed ^ mix64(element)                  element: the logical NCHW index c*H*W + s
//   z1        = mix64(c + GOLDEN),  z2 = mix64(c + 2 * GOLDEN)
//   u1        = ((z1 >> 11) + 1) * 2^-53               in (0, 1]  (53 random bits, exact in double)
//   u2        = (z2 >> 11) * 2^-53                     in [0, 1)
//   normal    = sqrt(-2 * log(u1)) * cos(TWO_PI * u2)  Box-Muller, in double
// mix64 is the splitmix64 finaliser and GOLDEN = 0x9e3779b97f4a7c15 (csrc/permutation.h); integer
// arithmetic is modulo 2^64 (example and element as their two's-complement bits); TWO_PI is the
// double nearest 2 pi (6.283185307179586); every product is one IEEE double multiplication.
//
// Distinct counters: mix64 is a bijection of 64-bit words, and so are x -> key ^ x and x -> seed ^ x.
// For one key, seed is therefore a bijection of the example, and c for one (key, example) a
// bijection of the element: two draws that share the key and the example, or the key and the
// element, never share a counter, for any 64-bit example and element (far beyond the 2^40 needed).
// Draws differing in both meet only as a chance collision of two 64-bit words (probability 2^-64 per
// pair), never in runs: a splitmix64 stream per example (mix64(seed + i * GOLDEN)) would let the
// streams of two examples overlap, shifted, with probability about 2^-22 per pair of examples.
// z1 and z2 are outputs of the same counter c at two steps of splitmix64's increment.
//
// What is and is not bit-identical across backends: the counters, u1, u2, TWO_PI * u2, -2 * log(u1),
// the square root (IEEE, correctly rounded everywhere) and every product and sum are the same on
// every backend. log and cos are the platform's: the C library's on the CPU (the CPU kernels and the
// emulated CUDA twins of tests/cuda_emulation, which therefore agree bit for bit), CUDA's libdevice
// on a GPU (published bounds: 1 ulp for log, 2 ulp for cos), NumPy's in the reference (within 1 ulp
// of the C library's). So normal is not bit-identical across backends. With those bounds a
// backend's normal lies within a relative 3.5 * 2^-52 of the exact value of the formula, and any two
// agree to a relative 2^-49 (in practice to a few ulp). The CPU kernel is within 2 ulp of
// fu_fast/reference.py's normal (tests/test_kernels.py; of 10^6 draws 99.8% are equal and 0.02% are
// 2 ulp apart). A noisy element is then rounded to its dtype, and backends agree on it to one unit
// in the last place of the dtype plus 2^-48 of the noise added: |y - y'| <= ulp(y) + 2^-48 |y - x|
// (fu_fast.kernels.noise_close). For fp32, bf16 and fp16 that is the same bits but in the rare
// element whose noisy value falls next to a rounding boundary of the dtype, where the two may lie
// one ulp apart. A copy whose scale is 0, and an element whose unit's standard deviation is 0, keep
// the input's bits on every backend.
#pragma once

#include "ablation.h"
#include "common.h"
#include "permutation.h"

#if !defined(__CUDACC_RTC__)
#include <cmath>  // log, cos, sqrt (NVRTC has them built in)
#endif

namespace fu_fast {

constexpr double kTwoPi = 6.283185307179586;                   // the double nearest 2 pi
constexpr double kTwoToMinus53 = 1.0 / 9007199254740992.0;     // 2^-53

FU_FAST_HD uint64_t noise_seed(uint64_t key, int64_t example) {
  return mix64(key ^ mix64(static_cast<uint64_t>(example)));
}

FU_FAST_HD uint64_t noise_element_hash(int64_t element) { return mix64(static_cast<uint64_t>(element)); }

// normal(key, example, element) from seed = noise_seed(key, example) and noise_element_hash(element).
FU_FAST_HD double noise_normal(uint64_t seed, uint64_t element_hash) {
  const uint64_t c = seed ^ element_hash;
  const uint64_t z1 = mix64(c + kGolden), z2 = mix64(c + 2 * kGolden);
  const double u1 = mul_rn(static_cast<double>((z1 >> 11) + 1), kTwoToMinus53);
  const double u2 = mul_rn(static_cast<double>(z2 >> 11), kTwoToMinus53);
  return mul_rn(sqrt(mul_rn(-2.0, log(u1))), cos(mul_rn(kTwoPi, u2)));
}

// The noisy value of one element: x + (scale * unit_std) * n, each operation rounded in double
// (sigma = scale * unit_std is the caller's), then rounded to the dtype by store_from_double.
FU_FAST_HD double add_noise(double x, double sigma, double n) { return add_rn(x, mul_rn(sigma, n)); }

// The noise of a call: copy k gets key keys[k] and scale scales[k] (a level: the noise of unit u has
// standard deviation scales[k] * unit_std[u]), and row b of the batch is example first_example + b.
struct NoiseSpec {
  const uint64_t* keys;      // [num_copies]
  const double* scales;      // [num_copies], finite and >= 0 (fu_fast/kernels.py checks)
  const double* unit_std;    // [units]
  int64_t first_example;     // global index of the batch's first example, >= 0
  int64_t num_copies;
};

#if !defined(__CUDACC_RTC__)  // host entry points; NVRTC compiles device code only
// Writes num_copies noisy copies of a layer output, each row in the memory order of src:
//   src: [batch, row] contiguous rows (row = units * inner elements of dtype; channels_last rows as
//        in ablation.h's RowLayout: the noise of an element depends on its logical NCHW index and
//        its unit only, never on the memory format)
//   dst: [num_copies, batch, row]. With l the logical index of element e, u = l / inner its unit and
//        sigma = scales[k] * unit_std[u] (a double product), element e of row (k, b) is
//          src[b, e], bit for bit (-0.0, NaN payloads)          when scales[k] == 0 or sigma == 0,
//          round(src[b, e] + sigma * normal(keys[k], first_example + b, l))              otherwise:
//        the product and the sum each rounded in double (add_noise), then round() to nearest even in
//        the dtype (store_from_double: subnormals kept, overflow to infinity, NaN quiet).
void expand_noise_cpu(const void* src, void* dst, int64_t batch, RowLayout layout, DType dtype, NoiseSpec noise);

// The in-place twin of expand_noise, for rows already copied earlier in the model (as mask_rows is
// of expand_masked):
//   data: [num_copies, batch, row] rows laid out as expand_noise's dst; row k * batch + b gets copy
//         k's noise for example first_example + b. A copy whose scale is 0 is left untouched (not
//         even read), and so is every element whose sigma is 0.
void noise_rows_cpu(void* data, int64_t batch, RowLayout layout, DType dtype, NoiseSpec noise);

#ifdef FU_FAST_WITH_CUDA
// CUDA twins (csrc/cuda/noise_cuda.cu): every pointer, keys, scales and unit_std included, is
// device memory; the work is queued on `stream` (PyTorch's current cudaStream_t) and not waited for.
void expand_noise_cuda(const void* src, void* dst, int64_t batch, RowLayout layout, DType dtype, NoiseSpec noise,
                       void* stream);
void noise_rows_cuda(void* data, int64_t batch, RowLayout layout, DType dtype, NoiseSpec noise, void* stream);
#endif
#endif

}  // namespace fu_fast
