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

}  // namespace fu_fast
