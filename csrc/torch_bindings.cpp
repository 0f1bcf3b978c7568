// The library's one TORCH_LIBRARY block and the extension module.
//
// Every kernel family registers its private ops (leading underscore) in its own bindings file,
// beside its kernels, as a TORCH_LIBRARY_FRAGMENT of this library: csrc/ssm/bindings.cpp,
// csrc/moe/bindings.cpp, csrc/quant/bindings.cpp. The public ops live in Python
// (star_elastic_kernels/*), where argument checking, output allocation and backend choice happen
// before anything is launched; the private ones only fill preallocated outputs.
#include <Python.h>

#include <torch/library.h>

#include <string>

#include "build_info.h"

namespace star_elastic {
namespace {

std::string build_info() {
  return std::string("{\"cuda_archs\": \"") + build_cuda_archs() + "\", \"cutlass_version\": \"" +
         build_cutlass_version() + "\", \"cuda_runtime_version\": " +
         std::to_string(build_cuda_runtime_version()) + "}";
}

}  // namespace
}  // namespace star_elastic

TORCH_LIBRARY(star_elastic, m) {
  m.def("_build_info() -> str", &star_elastic::build_info);
}

// `import star_elastic_kernels._C` loads this library, which runs the registrations of every
// bindings file. The module itself is empty: every entry point is a torch op.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
