// The Python module embrag_ext._C: loading it registers the operators
// (python/registration.cpp); it also reports how it was built.
#include <pybind11/pybind11.h>

#include <string>

// The build passes these as bare tokens (no quotes survive ninja's shell):
// EMBRAG_TORCH_VERSION=2.14.1+cu130, EMBRAG_CUDA_ARCHS=8.0,9.0, EMBRAG_NVCC_VERSION=13.0
#ifndef EMBRAG_TORCH_VERSION
#error "EMBRAG_TORCH_VERSION must be defined by the build (setup.py or CMakeLists.txt)"
#endif
#define EMBRAG_STR_(...) #__VA_ARGS__
#define EMBRAG_STR(...) EMBRAG_STR_(__VA_ARGS__)

namespace py = pybind11;

namespace {

py::dict build_info() {
  py::dict info;
  info["torch_version"] = EMBRAG_STR(EMBRAG_TORCH_VERSION);
  py::list archs;
#ifdef EMBRAG_WITH_CUDA
  info["cuda_kernels"] = true;
  const std::string arch_list = EMBRAG_STR(EMBRAG_CUDA_ARCHS);
  for (size_t start = 0, end = 0; end != std::string::npos; start = end + 1) {
    end = arch_list.find(',', start);
    archs.append(arch_list.substr(start, end - start));
  }
  info["nvcc_version"] = EMBRAG_STR(EMBRAG_NVCC_VERSION);
#else
  info["cuda_kernels"] = false;
  info["nvcc_version"] = py::none();
#endif
  info["cuda_archs"] = archs;
#if defined(__clang__)
  info["cxx_compiler"] = "clang " __clang_version__;
#elif defined(__GNUC__)
  info["cxx_compiler"] = "gcc " __VERSION__;
#else
  info["cxx_compiler"] = "unknown";
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "embrag_ext fused operators (window_embed, rag_fusion); see embrag_ext.ops";
  m.def("build_info", &build_info,
        "How this extension was built: torch version, CUDA kernels and architectures, compilers.");
}
