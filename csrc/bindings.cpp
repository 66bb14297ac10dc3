// Python bindings of the fu-fast native core (module fu_fast._C).
//
// Tensors cross as (data pointer, shape, strides) integers: the module never links
// libtorch, so one build serves every torch version. fu_fast/kernels.py is the only
// caller; it checks devices, dtypes and contiguity before a pointer reaches this file.
//
// One binding per kernel (pytorch_scatter's pattern): without `stream` it runs the CPU kernel
// on host memory; with `stream` (PyTorch's current cudaStream_t, as an integer) it queues the
// CUDA twin on device memory, and is refused by a build without CUDA.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>

#include <stdexcept>
#include <string>

#include "ablation.h"
#include "covariance.h"
#include "device.h"
#include "noise.h"
#include "permutation.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef FU_FAST_VERSION
#define FU_FAST_VERSION "0+unknown"
#endif
#ifndef FU_FAST_CUDA_ARCHS
#define FU_FAST_CUDA_ARCHS ""
#endif

namespace py = pybind11;
using namespace fu_fast;

// The CUDA twin's call where it is compiled in; elsewhere the refusal.
#ifdef FU_FAST_WITH_CUDA
#define FU_FAST_CUDA_TWIN(call) call
#else
#define FU_FAST_CUDA_TWIN(call) throw std::invalid_argument("this build of fu_fast._C has no CUDA kernels")
#endif

namespace {

template <typename T>
T* as_pointer(uintptr_t address, const char* what) {
  if (address == 0) throw std::invalid_argument(std::string(what) + ": null pointer");
  return reinterpret_cast<T*>(address);
}

void require(bool condition, const char* message) {
  if (!condition) throw std::invalid_argument(message);
}

void require(bool condition, const char* kernel, const char* message) {
  if (!condition) throw std::invalid_argument(std::string(kernel) + ": " + message);
}

// The row layout and masks of a masking kernel (expand_masked, mask_rows), checked; errors name
// the kernel.
RowLayout row_layout(const char* kernel, int64_t batch, int64_t units, int64_t inner, int64_t channels,
                     int64_t spatial, bool channels_last, int elem_size, int64_t num_masks) {
  require(batch >= 1 && units >= 1 && inner >= 1 && num_masks >= 1, kernel, "sizes must be positive");
  require(!channels_last || (channels >= 1 && spatial >= 1 && channels * spatial == units * inner), kernel,
          "a channels_last row must hold channels * spatial elements");
  require(elem_size == 2 || elem_size == 4 || elem_size == 8, kernel, "element size must be 2, 4 or 8 bytes");
  return RowLayout{units, inner, channels, spatial, channels_last};
}

MaskSpec mask_spec(uintptr_t keys, uintptr_t thresholds, int64_t num_masks) {
  return MaskSpec{as_pointer<const uint64_t>(keys, "keys"), as_pointer<const int64_t>(thresholds, "thresholds"),
                  num_masks};
}

// The noise of a noise kernel (expand_noise, noise_rows), checked; errors name the kernel.
NoiseSpec noise_spec(const char* kernel, uintptr_t keys, uintptr_t scales, uintptr_t unit_std, int64_t batch,
                     int64_t first_example, int64_t num_copies) {
  require(first_example >= 0 && first_example <= INT64_MAX - batch, kernel,
          "first_example must be >= 0 and first_example + batch must fit in 64 bits");
  return NoiseSpec{as_pointer<const uint64_t>(keys, "keys"), as_pointer<const double>(scales, "scales"),
                   as_pointer<const double>(unit_std, "unit_std"), first_example, num_copies};
}

using Stream = std::optional<uintptr_t>;

[[maybe_unused]] void* as_stream(uintptr_t stream) { return reinterpret_cast<void*>(stream); }

DType as_dtype(int code) {
  require(code >= 0 && code <= 3, "unknown dtype code");
  return static_cast<DType>(code);
}

py::dict build_info() {
  py::dict info;
  info["version"] = FU_FAST_VERSION;
  py::list backends;
  backends.append("cpu");
  const CudaStatus cuda = cuda_status();
  if (cuda.compiled) backends.append("cuda");
  info["backends"] = backends;
  info["cuda_archs"] = std::string(FU_FAST_CUDA_ARCHS);
  info["cuda_runtime_version"] = cuda.runtime_version;
  info["cuda_driver_version"] = cuda.driver_version;
  info["cuda_devices"] = cuda.device_count;
  info["cuda_error"] = cuda.error;
#ifdef _OPENMP
  info["openmp"] = true;
  info["openmp_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
  info["openmp_threads"] = 1;
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fu-fast native core: keyed permutations, masked expansion, in-place masking, keyed Gaussian "
            "noise, label agreement, streaming covariance (pointers in, no libtorch; CPU kernels, and CUDA twins "
            "given a stream).";

  m.def("build_info", &build_info, "Version, compiled backends, CUDA and OpenMP facts.");
#ifdef FU_FAST_WITH_CUDA
  m.attr("cuda_compiled") = true;
#else
  m.attr("cuda_compiled") = false;
#endif

  // The CPU kernels release the GIL (they run for milliseconds); launching a CUDA kernel takes
  // microseconds and keeps it.
  m.def(
      "permutation_ranks",
      [](uint64_t key, int64_t n, uintptr_t ranks, Stream stream) {
        require(n >= 1, "permutation_ranks: n must be >= 1");
        auto* out = as_pointer<int64_t>(ranks, "ranks");
        if (!stream) {
          py::gil_scoped_release release;
          permutation_ranks_cpu(key, n, out);
          return;
        }
        FU_FAST_CUDA_TWIN(permutation_ranks_cuda(key, n, out, as_stream(*stream)));
      },
      py::arg("key"), py::arg("n"), py::arg("ranks"), py::arg("stream") = py::none(),
      "ranks[u] = rank_key(u) for u < n (int64 buffer of n).");

  m.def(
      "expand_masked",
      [](uintptr_t src, uintptr_t dst, int64_t batch, int64_t units, int64_t inner, int64_t channels,
         int64_t spatial, bool channels_last, int elem_size, uintptr_t keys, uintptr_t thresholds,
         int64_t num_masks, Stream stream) {
        const RowLayout layout =
            row_layout("expand_masked", batch, units, inner, channels, spatial, channels_last, elem_size, num_masks);
        const MaskSpec masks = mask_spec(keys, thresholds, num_masks);
        const void* in = as_pointer<const void>(src, "src");
        void* out = as_pointer<void>(dst, "dst");
        if (!stream) {
          py::gil_scoped_release release;
          expand_masked_cpu(in, out, batch, layout, elem_size, masks);
          return;
        }
        FU_FAST_CUDA_TWIN(expand_masked_cuda(in, out, batch, layout, elem_size, masks, as_stream(*stream)));
      },
      py::arg("src"), py::arg("dst"), py::arg("batch"), py::arg("units"), py::arg("inner"),
      py::arg("channels"), py::arg("spatial"), py::arg("channels_last"), py::arg("elem_size"),
      py::arg("keys"), py::arg("thresholds"), py::arg("num_masks"), py::arg("stream") = py::none(),
      "num_masks masked copies of [batch, units * inner] rows (channels_last: NHWC rows).");

  m.def(
      "mask_rows",
      [](uintptr_t data, int64_t batch, int64_t units, int64_t inner, int64_t channels, int64_t spatial,
         bool channels_last, int elem_size, uintptr_t keys, uintptr_t thresholds, int64_t num_masks,
         Stream stream) {
        const RowLayout layout =
            row_layout("mask_rows", batch, units, inner, channels, spatial, channels_last, elem_size, num_masks);
        const MaskSpec masks = mask_spec(keys, thresholds, num_masks);
        void* rows = as_pointer<void>(data, "data");
        if (!stream) {
          py::gil_scoped_release release;
          mask_rows_cpu(rows, batch, layout, elem_size, masks);
          return;
        }
        FU_FAST_CUDA_TWIN(mask_rows_cuda(rows, batch, layout, elem_size, masks, as_stream(*stream)));
      },
      py::arg("data"), py::arg("batch"), py::arg("units"), py::arg("inner"), py::arg("channels"),
      py::arg("spatial"), py::arg("channels_last"), py::arg("elem_size"), py::arg("keys"),
      py::arg("thresholds"), py::arg("num_masks"), py::arg("stream") = py::none(),
      "Mask k applied in place to rows k * batch .. (k + 1) * batch - 1 of [num_masks, batch, units * inner] "
      "rows (channels_last: NHWC rows).");

  m.def(
      "expand_noise",
      [](uintptr_t src, uintptr_t dst, int64_t batch, int64_t units, int64_t inner, int64_t channels,
         int64_t spatial, bool channels_last, int dtype, uintptr_t keys, uintptr_t scales, uintptr_t unit_std,
         int64_t first_example, int64_t num_copies, Stream stream) {
        const DType type = as_dtype(dtype);
        const RowLayout layout = row_layout("expand_noise", batch, units, inner, channels, spatial, channels_last,
                                            dtype_size(type), num_copies);
        const NoiseSpec noise = noise_spec("expand_noise", keys, scales, unit_std, batch, first_example, num_copies);
        const void* in = as_pointer<const void>(src, "src");
        void* out = as_pointer<void>(dst, "dst");
        if (!stream) {
          py::gil_scoped_release release;
          expand_noise_cpu(in, out, batch, layout, type, noise);
          return;
        }
        FU_FAST_CUDA_TWIN(expand_noise_cuda(in, out, batch, layout, type, noise, as_stream(*stream)));
      },
      py::arg("src"), py::arg("dst"), py::arg("batch"), py::arg("units"), py::arg("inner"),
      py::arg("channels"), py::arg("spatial"), py::arg("channels_last"), py::arg("dtype"), py::arg("keys"),
      py::arg("scales"), py::arg("unit_std"), py::arg("first_example"), py::arg("num_copies"),
      py::arg("stream") = py::none(),
      "num_copies noisy copies of [batch, units * inner] rows (channels_last: NHWC rows): copy k adds "
      "scales[k] * unit_std[unit] * normal(keys[k], first_example + b, element) (csrc/noise.h).");

  m.def(
      "noise_rows",
      [](uintptr_t data, int64_t batch, int64_t units, int64_t inner, int64_t channels, int64_t spatial,
         bool channels_last, int dtype, uintptr_t keys, uintptr_t scales, uintptr_t unit_std, int64_t first_example,
         int64_t num_copies, Stream stream) {
        const DType type = as_dtype(dtype);
        const RowLayout layout = row_layout("noise_rows", batch, units, inner, channels, spatial, channels_last,
                                            dtype_size(type), num_copies);
        const NoiseSpec noise = noise_spec("noise_rows", keys, scales, unit_std, batch, first_example, num_copies);
        void* rows = as_pointer<void>(data, "data");
        if (!stream) {
          py::gil_scoped_release release;
          noise_rows_cpu(rows, batch, layout, type, noise);
          return;
        }
        FU_FAST_CUDA_TWIN(noise_rows_cuda(rows, batch, layout, type, noise, as_stream(*stream)));
      },
      py::arg("data"), py::arg("batch"), py::arg("units"), py::arg("inner"), py::arg("channels"),
      py::arg("spatial"), py::arg("channels_last"), py::arg("dtype"), py::arg("keys"), py::arg("scales"),
      py::arg("unit_std"), py::arg("first_example"), py::arg("num_copies"), py::arg("stream") = py::none(),
      "Copy k's noise added in place to rows k * batch .. (k + 1) * batch - 1 of [num_copies, batch, units * inner] "
      "rows (channels_last: NHWC rows).");

  m.def(
      "label_agreement",
      [](uintptr_t logits, int dtype, int64_t num_masks, int64_t batch, int64_t classes,
         int64_t row_stride, uintptr_t base_labels, uintptr_t counts, Stream stream) {
        require(num_masks >= 1 && batch >= 1 && classes >= 1 && row_stride >= classes,
                "label_agreement: bad sizes");
        const void* in = as_pointer<const void>(logits, "logits");
        const auto* base = as_pointer<const int64_t>(base_labels, "base_labels");
        auto* out = as_pointer<int64_t>(counts, "counts");
        const DType type = as_dtype(dtype);
        if (!stream) {
          py::gil_scoped_release release;
          label_agreement_cpu(in, type, num_masks, batch, classes, row_stride, base, out);
          return;
        }
        FU_FAST_CUDA_TWIN(label_agreement_cuda(in, type, num_masks, batch, classes, row_stride, base, out,
                                               as_stream(*stream)));
      },
      py::arg("logits"), py::arg("dtype"), py::arg("num_masks"), py::arg("batch"),
      py::arg("classes"), py::arg("row_stride"), py::arg("base_labels"), py::arg("counts"),
      py::arg("stream") = py::none(),
      "counts[k] += rows of mask k whose argmax is the base label (counts: num_masks int64).");

  m.def(
      "covariance_accumulate",
      [](uintptr_t data, int dtype, int64_t batch, int64_t channels, int64_t spatial,
         int64_t stride_batch, int64_t stride_channel, int64_t stride_spatial, uintptr_t rows,
         int64_t num_rows, uintptr_t count, uintptr_t mean, uintptr_t comoment, uintptr_t workspace,
         Stream stream) {
        require(batch >= 1 && channels >= 1 && spatial >= 1 && num_rows >= 0,
                "covariance_accumulate: bad sizes");
        if (num_rows == 0) return;
        ActivationView view{as_pointer<const void>(data, "activation"), as_dtype(dtype), batch,
                            channels, spatial, stride_batch, stride_channel, stride_spatial};
        MomentState state{as_pointer<double>(count, "count"), as_pointer<double>(mean, "mean"),
                          as_pointer<double>(comoment, "comoment"), channels};
        const auto* row_index = as_pointer<const int64_t>(rows, "rows");
        if (!stream) {
          py::gil_scoped_release release;
          covariance_accumulate_cpu(view, row_index, num_rows, state);
          return;
        }
        FU_FAST_CUDA_TWIN(covariance_accumulate_cuda(view, row_index, num_rows, state,
                                                     as_pointer<double>(workspace, "workspace"),
                                                     as_stream(*stream)));
      },
      py::arg("data"), py::arg("dtype"), py::arg("batch"), py::arg("channels"), py::arg("spatial"),
      py::arg("stride_batch"), py::arg("stride_channel"), py::arg("stride_spatial"),
      py::arg("rows"), py::arg("num_rows"), py::arg("count"), py::arg("mean"),
      py::arg("comoment"), py::arg("workspace") = 0, py::arg("stream") = py::none(),
      "Merge the sampled rows of an activation into float64 running moments (Chan et al.); the CUDA "
      "twin needs a workspace of channels + channels^2 doubles.");
}
