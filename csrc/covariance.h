// Streaming covariance over sampled rows of an activation.
#pragma once

#include "common.h"

namespace fu_fast {

// Running moments of a set of C-dimensional samples, in float64:
// count, mean[C] and the centred co-moment M2[C*C] = sum (x - mean)(x - mean)^T.
struct MomentState {
  double* count;     // scalar
  double* mean;      // [channels]
  double* comoment;  // [channels * channels], row-major, symmetric
  int64_t channels;
};

// View of one batch of a layer output: element (b, c, s) is at
//   data[b * stride_batch + c * stride_channel + s * stride_spatial]
// with s the flattened spatial position (h * W + w). This covers (B, C) linear outputs
// (spatial = 1) and (B, C, H, W) conv outputs in NCHW or channels_last memory alike.
struct ActivationView {
  const void* data;
  DType dtype;
  int64_t batch, channels, spatial;
  int64_t stride_batch, stride_channel, stride_spatial;
};

#if !defined(__CUDACC_RTC__)  // host entry points; NVRTC compiles device code only
// Gathers rows[i] = b * spatial + s (num_rows of them, each a sample of C units),
// computes the batch's mean and centred co-moment in float64 and merges them into state
// with Chan et al.'s pairwise update. Merging is exact up to rounding, so the result does
// not depend on how the data was split into batches.
void covariance_accumulate_cpu(ActivationView activation, const int64_t* rows, int64_t num_rows,
                               MomentState state);

#ifdef FU_FAST_WITH_CUDA
// CUDA twin (csrc/cuda/covariance_cuda.cu): every pointer is device memory, the state
// included; workspace holds channels + channels^2 doubles (the batch's mean and co-moment).
// Queued on `stream` (PyTorch's current cudaStream_t), not waited for.
void covariance_accumulate_cuda(ActivationView activation, const int64_t* rows, int64_t num_rows,
                                MomentState state, double* workspace, void* stream);
#endif
#endif

}  // namespace fu_fast
