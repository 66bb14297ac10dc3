// What the CUDA side of the module can do on this machine, right now.
#pragma once

#include <string>

namespace fu_fast {

struct CudaStatus {
  bool compiled = false;    // CUDA sources were compiled into this module
  int runtime_version = 0;  // of the (static) CUDA runtime linked in, e.g. 13000
  int driver_version = 0;   // of the installed driver; 0 when there is none
  int device_count = 0;     // GPUs usable now
  std::string error;        // why none is usable, when device_count == 0
};

CudaStatus cuda_status();

}  // namespace fu_fast
