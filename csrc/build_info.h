#pragma once

namespace star_elastic {

// Semicolon-separated arch list the CUDA code was compiled for, e.g. "90a".
const char* build_cuda_archs();
// CUTLASS version of the headers used at build time, e.g. "4.2.0".
const char* build_cutlass_version();
// CUDART_VERSION of the toolkit used at build time, e.g. 13000.
int build_cuda_runtime_version();

}  // namespace star_elastic
