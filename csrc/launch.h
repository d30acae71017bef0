// The per-device launchers of the fused ops' kernels: the CPU ones in
// csrc/cpu/, the CUDA ones in csrc/cuda/cuda_launch.cpp. The entry points of
// each op (csrc/rag_fusion.cpp, csrc/window_embed.cpp, csrc/copy_posterior.cpp)
// validate their inputs, allocate the outputs and call the launcher of the
// inputs' device; the launchers only pick the element type and launch.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "copy_posterior_tensors.h"
#include "kernels/rag_fusion.h"
#include "window_embed_tensors.h"

namespace embrag {

// rag_fusion: float32, float64 and bfloat16 on the CPU; float32, bfloat16 on CUDA.
void launch_rag_fusion_forward_cpu(const RagFusionParams& p);
void launch_rag_fusion_backward_cpu(const RagFusionParams& p, const RagFusionGradParams& g);

// window_embed: float32 and float64 on the CPU; float32 on CUDA. The
// backward adds grad_out summed over the batch into grad_site [L, D] and per
// token into grad_tok [V, D] (both zeroed by the caller).
void launch_window_embed_forward_cpu(const WindowEmbedTensors& t, at::Tensor& out);
void launch_window_embed_backward_cpu(const WindowEmbedTensors& t, const at::Tensor& grad_out,
                                      at::Tensor& grad_site, at::Tensor& grad_tok);

// copy_posterior: float32 and float64 on the CPU; float32 on CUDA. post is
// [N, M, K]; the backward writes dL/dlog_rho and dL/dlogit_theta (0-d).
void launch_copy_posterior_forward_cpu(const CopyPosteriorTensors& t, at::Tensor& post);
void launch_copy_posterior_backward_cpu(const CopyPosteriorTensors& t, const at::Tensor& grad_post,
                                        at::Tensor& grad_log_rho, at::Tensor& grad_logit_theta);

#ifdef EMBRAG_WITH_CUDA
void launch_rag_fusion_forward_cuda(const RagFusionParams& p);
void launch_rag_fusion_backward_cuda(const RagFusionParams& p, const RagFusionGradParams& g);
void launch_window_embed_forward_cuda(const WindowEmbedTensors& t, at::Tensor& out);
void launch_window_embed_backward_cuda(const WindowEmbedTensors& t, const at::Tensor& grad_out,
                                       at::Tensor& grad_site, at::Tensor& grad_tok);
void launch_copy_posterior_forward_cuda(const CopyPosteriorTensors& t, at::Tensor& post);
void launch_copy_posterior_backward_cuda(const CopyPosteriorTensors& t, const at::Tensor& grad_post,
                                         at::Tensor& grad_log_rho, at::Tensor& grad_logit_theta);
#endif

// The launchers of one device.
struct DeviceLaunchers {
  void (*rag_fusion_forward)(const RagFusionParams&);
  void (*rag_fusion_backward)(const RagFusionParams&, const RagFusionGradParams&);
  void (*window_embed_forward)(const WindowEmbedTensors&, at::Tensor&);
  void (*window_embed_backward)(const WindowEmbedTensors&, const at::Tensor&, at::Tensor&,
                                at::Tensor&);
  void (*copy_posterior_forward)(const CopyPosteriorTensors&, at::Tensor&);
  void (*copy_posterior_backward)(const CopyPosteriorTensors&, const at::Tensor&, at::Tensor&,
                                  at::Tensor&);
};

// The launchers of t's device (csrc/launch.cpp).
const DeviceLaunchers& device_launchers(const at::Tensor& t);

// The dispatch keys the ops' entries are registered for: CPU, and CUDA in
// builds with the CUDA kernels.
std::vector<c10::DispatchKey> device_dispatch_keys();

}  // namespace embrag
