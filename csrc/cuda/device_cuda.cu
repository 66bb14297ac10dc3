#include <cuda_runtime.h>

#include "device.h"

namespace fu_fast {

// Every call is checked: with the static runtime the module imports on machines without
// a driver, and the failing call's message is what build_info() shows there.
CudaStatus cuda_status() {
  CudaStatus status;
  status.compiled = true;
  cudaError_t err = cudaRuntimeGetVersion(&status.runtime_version);
  if (err != cudaSuccess) {
    status.error = cudaGetErrorString(err);
    return status;
  }
  err = cudaDriverGetVersion(&status.driver_version);
  if (err != cudaSuccess) {
    status.error = cudaGetErrorString(err);
    return status;
  }
  int count = 0;
  err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    status.error = cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return status;
  }
  status.device_count = count;
  return status;
}

}  // namespace fu_fast
