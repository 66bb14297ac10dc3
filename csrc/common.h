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

// The float with these bits (memcpy is the portable bit cast on the host; device code
// has an intrinsic, which is also all NVRTC offers).
FU_FAST_HD float float_from_bits(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

// IEEE half -> float, exact (every half is representable as a float).
FU_FAST_HD float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1fu) {  // inf / nan
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {  // normal
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {  // signed zero
    bits = sign;
  } else {  // subnormal half: renormalise
    int shift = 0;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      ++shift;
    }
    mantissa &= 0x3ffu;
    bits = sign | (static_cast<uint32_t>(113 - shift) << 23) | (mantissa << 13);
  }
  return float_from_bits(bits);
}

// bfloat16 is the upper half of a float32.
FU_FAST_HD float bfloat16_bits_to_float(uint16_t b) {
  return float_from_bits(static_cast<uint32_t>(b) << 16);
}

// Reads element i of a buffer of the given dtype as double.
FU_FAST_HD double load_as_double(const void* data, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::Float32: return static_cast<const float*>(data)[i];
    case DType::Float64: return static_cast<const double*>(data)[i];
    case DType::BFloat16: return bfloat16_bits_to_float(static_cast<const uint16_t*>(data)[i]);
    case DType::Float16: return half_bits_to_float(static_cast<const uint16_t*>(data)[i]);
  }
  return 0.0;
}

FU_FAST_HD int dtype_size(DType dtype) {
  return (dtype == DType::Float64) ? 8 : (dtype == DType::Float32) ? 4 : 2;
}

}  // namespace fu_fast
