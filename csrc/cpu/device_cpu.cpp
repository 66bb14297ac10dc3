// cuda_status() for a module built without CUDA (device_cuda.cu replaces this file).
#include "device.h"

namespace fu_fast {

CudaStatus cuda_status() {
  CudaStatus status;
  status.error = "fu_fast was built without CUDA";
  return status;
}

}  // namespace fu_fast
