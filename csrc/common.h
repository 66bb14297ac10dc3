// Shared definitions for the fu-fast native core.
//
// Tensors cross the binding as raw pointers plus shapes/strides (the module does not
// link libtorch), so one build serves every torch version. Element types are passed as
// the small integer codes below; the Python side (fu_fast/kernels.py) maps torch dtypes.
// The headers are also compiled at run time by NVRTC (through cupy, for a build without
// CUDA; see fu_fast/cupy_kernels.py), which has no C++ standard library: under
// __CUDACC_RTC__ the fixed-width integer types are spelled out instead of included.
#pragma once

#if defined(__CUDACC_RTC__)
typedef signed char int8_t;
typedef unsigned short uint16_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#else
#include <cstdint>
#include <cstring>
#include <type_traits>
#endif

#if defined(__CUDACC__)
#define FU_FAST_HD __host__ __device__ __forceinline__
#else
#define FU_FAST_HD inline
#endif

namespace fu_fast {

enum class DType : int { Float32 = 0, Float64 = 1, BFloat16 = 2, Float16 = 3 };

// The double with these bits (memcpy is the portable bit cast on the host; device code
// has an intrinsic, which is also all NVRTC offers).
FU_FAST_HD double double_from_bits(uint64_t bits) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(bits));
#else
  double d;
  memcpy(&d, &bits, sizeof d);
  return d;
#endif
}

// An IEEE binary value (sign bit, biased exponent, stored mantissa of `mantissa_bits` bits)
// as the double of equal value, with integer operations only. A float-to-double conversion
// instruction would do the same, except where the code is compiled with -ftz=true, which
// cupy forces on every run-time compilation: there it flushes subnormals to zero, while the
// CPU and the compiled kernels keep them. Integer code gives every backend the same bits.
FU_FAST_HD double double_from_ieee(uint64_t sign, uint32_t exponent, uint64_t mantissa, int mantissa_bits,
                                   int bias, uint32_t max_exponent) {
  constexpr uint64_t kMantissa52 = (uint64_t{1} << 52) - 1;
  uint64_t bits;
  if (exponent == max_exponent) {  // inf / nan
    bits = (uint64_t{0x7ff} << 52) | (mantissa << (52 - mantissa_bits));
  } else if (exponent != 0) {  // normal
    bits = (static_cast<uint64_t>(static_cast<int>(exponent) - bias + 1023) << 52) | (mantissa << (52 - mantissa_bits));
  } else if (mantissa == 0) {  // signed zero
    bits = 0;
  } else {  // subnormal: mantissa * 2^(1 - bias - mantissa_bits), renormalised at its leading one
    int top = mantissa_bits - 1;
    while (((mantissa >> top) & 1) == 0) --top;
    bits = (static_cast<uint64_t>(top + 1 - bias - mantissa_bits + 1023) << 52) | ((mantissa << (52 - top)) & kMantissa52);
  }
  return double_from_bits(bits | (sign << 63));
}

FU_FAST_HD double float32_bits_to_double(uint32_t f) {
  return double_from_ieee(f >> 31, (f >> 23) & 0xffu, f & 0x7fffffu, 23, 127, 0xffu);
}

FU_FAST_HD double float16_bits_to_double(uint16_t h) {
  return double_from_ieee(h >> 15, (h >> 10) & 0x1fu, h & 0x3ffu, 10, 15, 0x1fu);
}

// bfloat16 is the upper half of a float32.
FU_FAST_HD double bfloat16_bits_to_double(uint16_t b) { return float32_bits_to_double(static_cast<uint32_t>(b) << 16); }

// Reads element i of a buffer of the given dtype as double.
FU_FAST_HD double load_as_double(const void* data, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::Float32: return float32_bits_to_double(static_cast<const uint32_t*>(data)[i]);
    case DType::Float64: return static_cast<const double*>(data)[i];
    case DType::BFloat16: return bfloat16_bits_to_double(static_cast<const uint16_t*>(data)[i]);
    case DType::Float16: return float16_bits_to_double(static_cast<const uint16_t*>(data)[i]);
  }
  return 0.0;
}

FU_FAST_HD int dtype_size(DType dtype) {
  return (dtype == DType::Float64) ? 8 : (dtype == DType::Float32) ? 4 : 2;
}

// The bits of a double (the inverse of double_from_bits).
FU_FAST_HD uint64_t double_bits(double d) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(d));
#else
  uint64_t bits;
  memcpy(&bits, &d, sizeof bits);
  return bits;
#endif
}

// a * b and a + b rounded to nearest even, each on its own: nvcc contracts `a * b + c` into a fused
// multiply-add (one rounding instead of two) unless told not to, and these intrinsics it never
// fuses. The host build does not contract either (-ffp-contract=off where it could: CMakeLists.txt).
FU_FAST_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

FU_FAST_HD double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

// The bits of the IEEE binary format with `mantissa_bits` stored mantissa bits and `exponent_bits`
// exponent bits that is nearest to d, ties to even (IEEE round-to-nearest): overflow gives an
// infinity, and subnormal results and signed zeros are kept; a NaN gives a quiet NaN with d's sign
// and the leading bits of its payload (what a hardware conversion gives). Integer operations only,
// as double_from_ieee and for the same reason: a float conversion instruction flushes subnormals
// where cupy compiles with -ftz=true, and bf16 and fp16 have no conversion the host compiler offers.
FU_FAST_HD uint64_t ieee_bits_from_double(double d, int mantissa_bits, int exponent_bits) {
  const uint64_t bits = double_bits(d);
  const uint64_t sign = (bits >> 63) << (mantissa_bits + exponent_bits);
  const int exponent = static_cast<int>((bits >> 52) & 0x7ff);
  const uint64_t mantissa = bits & ((uint64_t{1} << 52) - 1);
  const int max_exponent = (1 << exponent_bits) - 1, bias = max_exponent >> 1;
  const uint64_t infinity = static_cast<uint64_t>(max_exponent) << mantissa_bits;
  if (exponent == 0x7ff) {  // inf / nan
    return sign | infinity |
           (mantissa == 0 ? 0 : (mantissa >> (52 - mantissa_bits)) | (uint64_t{1} << (mantissa_bits - 1)));
  }
  // A double zero or subnormal (below 2^-1022) is far below half the smallest subnormal of every
  // narrower format: it rounds to a signed zero.
  if (exponent == 0) return sign;
  int target = exponent - 1023 + bias;  // the biased exponent in the narrower format
  if (target >= max_exponent) return sign | infinity;
  const uint64_t significand = mantissa | (uint64_t{1} << 52);  // 53 bits, the leading one explicit
  int drop = 52 - mantissa_bits;                                // low bits of the significand dropped
  if (target < 1) {  // a subnormal result: its unit is that of the smallest normal's mantissa
    drop += 1 - target;
    target = 0;
  }
  if (drop > 53) return sign;  // below half the smallest subnormal
  uint64_t kept = significand >> drop;
  const uint64_t rest = significand & ((uint64_t{1} << drop) - 1), half = uint64_t{1} << (drop - 1);
  if (rest > half || (rest == half && (kept & 1) != 0)) ++kept;
  // A normal result carries its leading one into the exponent field: (target - 1) << m plus a kept
  // of 2^m .. 2^(m+1) is the exponent target or, when rounding carried, target + 1 (mantissa 0), and
  // a carry out of the largest exponent gives exactly the infinity's bits. A subnormal result that
  // rounds up to 2^m is the smallest normal, whose bits are 2^m.
  const uint64_t magnitude = target >= 1 ? (static_cast<uint64_t>(target - 1) << mantissa_bits) + kept : kept;
  return sign | (magnitude >= infinity ? infinity : magnitude);
}

// Writes v, rounded to nearest even, as element i of a buffer of the given dtype.
FU_FAST_HD void store_from_double(void* data, DType dtype, int64_t i, double v) {
  switch (dtype) {
    case DType::Float32:
      static_cast<uint32_t*>(data)[i] = static_cast<uint32_t>(ieee_bits_from_double(v, 23, 8));
      break;
    case DType::Float64: static_cast<double*>(data)[i] = v; break;
    case DType::BFloat16:
      static_cast<uint16_t*>(data)[i] = static_cast<uint16_t>(ieee_bits_from_double(v, 7, 8));
      break;
    case DType::Float16:
      static_cast<uint16_t*>(data)[i] = static_cast<uint16_t>(ieee_bits_from_double(v, 10, 5));
      break;
  }
}

// dst[to] = src[from], bit for bit, for elements of `size` bytes (2, 4 or 8).
FU_FAST_HD void copy_element(const void* src, int64_t from, void* dst, int64_t to, int size) {
  switch (size) {
    case 2: static_cast<uint16_t*>(dst)[to] = static_cast<const uint16_t*>(src)[from]; break;
    case 4: static_cast<uint32_t*>(dst)[to] = static_cast<const uint32_t*>(src)[from]; break;
    default: static_cast<uint64_t*>(dst)[to] = static_cast<const uint64_t*>(src)[from]; break;
  }
}

// data[i] = +0.0 (all bits zero, +0.0 in every IEEE format) for elements of `size` bytes (2, 4 or 8).
FU_FAST_HD void zero_element(void* data, int64_t i, int size) {
  switch (size) {
    case 2: static_cast<uint16_t*>(data)[i] = 0; break;
    case 4: static_cast<uint32_t*>(data)[i] = 0u; break;
    default: static_cast<uint64_t*>(data)[i] = 0ull; break;
  }
}

#if !defined(__CUDACC_RTC__)
// Calls kernel(std::integral_constant<DType, dtype>{}): the host kernels template on the dtype
// so that load_as_double and store_from_double inline without a switch per element.
template <typename Kernel>
void with_dtype(DType dtype, Kernel kernel) {
  switch (dtype) {
    case DType::Float32: kernel(std::integral_constant<DType, DType::Float32>{}); break;
    case DType::Float64: kernel(std::integral_constant<DType, DType::Float64>{}); break;
    case DType::BFloat16: kernel(std::integral_constant<DType, DType::BFloat16>{}); break;
    case DType::Float16: kernel(std::integral_constant<DType, DType::Float16>{}); break;
  }
}
#endif

}  // namespace fu_fast
