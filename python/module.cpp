// The Python module embrag_ext._C: loading it registers the operators
// (python/registration.cpp); it also reports how it was built and the
// kernels' bandwidth model (what benchmarks/ print).
#include <pybind11/pybind11.h>

#include "../csrc/kernels/rag_fusion.h"
#include "../csrc/kernels/window_embed.h"

#include <algorithm>
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

py::dict traffic_dict(const embrag::Traffic& t) {
  py::dict d;
  d["must"] = t.must;
  d["moved"] = t.moved;
  return d;
}

// {"forward": {"must", "moved"}, "backward": {...}, "delta_from_out"}: bytes
// per pass (csrc/kernels/rag_fusion.h) at the CPU's site tile.
py::dict rag_fusion_traffic(int64_t B, int64_t L, int64_t K, int64_t D, int64_t V, int64_t n_heads,
                            int64_t half_width, int64_t elem_bytes, bool copy_bias,
                            bool copy_bias_grad) {
  const embrag::RagFusionShape s{B, L, K, D, V, n_heads, std::min(half_width, L), embrag::kSiteTile,
                                 elem_bytes, elem_bytes == 8 ? 8 : 4, copy_bias, copy_bias_grad};
  py::dict d;
  d["forward"] = traffic_dict(embrag::rag_fusion_forward_traffic(s));
  d["backward"] = traffic_dict(embrag::rag_fusion_backward_traffic(s));
  d["delta_from_out"] = embrag::rag_fusion_delta_from_out(s);
  return d;
}

py::dict window_embed_traffic(int64_t B, int64_t L, int64_t D, int64_t F, int64_t V, int64_t P,
                              int64_t T, int64_t elem_bytes) {
  py::dict d;
  d["forward"] = traffic_dict(embrag::window_embed_forward_traffic(B, L, D, F, V, elem_bytes));
  d["backward"] = traffic_dict(embrag::window_embed_backward_traffic(B, L, D, F, V, P, T, elem_bytes));
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "embrag_ext fused operators (window_embed, rag_fusion, copy_posterior); see embrag_ext.ops";
  m.def("build_info", &build_info,
        "How this extension was built: torch version, CUDA kernels and architectures, compilers.");
  m.def("rag_fusion_traffic", &rag_fusion_traffic, py::arg("B"), py::arg("L"), py::arg("K"),
        py::arg("D"), py::arg("V"), py::arg("n_heads"), py::arg("half_width"),
        py::arg("elem_bytes"), py::arg("copy_bias"), py::arg("copy_bias_grad"),
        "Bytes rag_fusion must move and moves, per pass (its kernels' design).");
  m.def("window_embed_traffic", &window_embed_traffic, py::arg("B"), py::arg("L"), py::arg("D"),
        py::arg("F"), py::arg("V"), py::arg("P"), py::arg("T"), py::arg("elem_bytes"),
        "Bytes window_embed must move and moves, per pass (its kernels' design).");
}
