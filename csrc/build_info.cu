// What this binary was built for, read back by `python -m star_elastic_kernels.info`.
// The archs come from the build system (one define, set by setup.py and CMake alike); the CUTLASS
// version from the headers the build actually saw.
#include "build_info.h"

#include <cutlass/version.h>

#ifndef STAR_ELASTIC_CUDA_ARCHS
#error "STAR_ELASTIC_CUDA_ARCHS must be defined by the build (e.g. \"90a\")"
#endif

#define STAR_ELASTIC_STR2(x) #x
#define STAR_ELASTIC_STR(x) STAR_ELASTIC_STR2(x)

namespace star_elastic {

const char* build_cuda_archs() { return STAR_ELASTIC_CUDA_ARCHS; }

const char* build_cutlass_version() {
  return STAR_ELASTIC_STR(CUTLASS_MAJOR) "." STAR_ELASTIC_STR(CUTLASS_MINOR) "." STAR_ELASTIC_STR(
      CUTLASS_PATCH);
}

int build_cuda_runtime_version() { return CUDART_VERSION; }

}  // namespace star_elastic
