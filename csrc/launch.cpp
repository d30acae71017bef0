// The launcher table of each device, and the devices built (csrc/launch.h).
#include "launch.h"

namespace embrag {

const DeviceLaunchers& device_launchers(const at::Tensor& t) {
  static const DeviceLaunchers cpu{&launch_rag_fusion_forward_cpu, &launch_rag_fusion_backward_cpu,
                                   &launch_window_embed_forward_cpu,
                                   &launch_window_embed_backward_cpu,
                                   &launch_copy_posterior_forward_cpu,
                                   &launch_copy_posterior_backward_cpu};
#ifdef EMBRAG_WITH_CUDA
  static const DeviceLaunchers cuda{&launch_rag_fusion_forward_cuda, &launch_rag_fusion_backward_cuda,
                                    &launch_window_embed_forward_cuda,
                                    &launch_window_embed_backward_cuda,
                                    &launch_copy_posterior_forward_cuda,
                                    &launch_copy_posterior_backward_cuda};
  if (t.is_cuda()) return cuda;
#endif
  TORCH_CHECK(t.is_cpu(), "embrag ops run on the CPU or CUDA, got a tensor on ", t.device());
  return cpu;
}

std::vector<c10::DispatchKey> device_dispatch_keys() {
#ifdef EMBRAG_WITH_CUDA
  return {c10::DispatchKey::CPU, c10::DispatchKey::CUDA};
#else
  return {c10::DispatchKey::CPU};
#endif
}

}  // namespace embrag
