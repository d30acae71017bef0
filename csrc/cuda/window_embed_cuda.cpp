// window_embed on CUDA: validation and launch (host compiler; only c10/cuda
// headers, not ATen/cuda, which would pull in cuSPARSE).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../ops.h"
#include "../window_embed_tensors.h"
#include "window_embed_launch.h"

namespace embrag {
namespace {

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

void check_float32(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, name,
              " must be float32 on CUDA (float64 runs on the CPU), got ", t.scalar_type());
}

// Table gradients from grad_site [L, D] (grad_out summed over the batch) and
// the AF features [L, F]: scatter into the position / type rows, and
// feats^T @ grad_site for the AF projection.
std::tuple<at::Tensor, at::Tensor, at::Tensor> site_table_grads(
    const at::Tensor& grad_site, const at::Tensor& feats, const at::Tensor& pos_ids,
    const at::Tensor& type_ids, int64_t n_pos, int64_t n_types) {
  const int64_t D = grad_site.size(1);
  auto grad_pos = at::zeros({n_pos, D}, grad_site.options()).index_add_(0, pos_ids, grad_site);
  auto grad_type = at::zeros({n_types, D}, grad_site.options()).index_add_(0, type_ids, grad_site);
  return {grad_pos, feats.t().mm(grad_site), grad_type};
}

}  // namespace

at::Tensor window_embed_cuda(const at::Tensor& tokens, const at::Tensor& pos_ids,
                             const at::Tensor& af, const at::Tensor& type_ids,
                             const at::Tensor& tok_table, const at::Tensor& pos_table,
                             const at::Tensor& af_proj, const at::Tensor& type_table) {
  const auto t = prepare_window_embed(tokens, pos_ids, af, type_ids, tok_table, pos_table, af_proj,
                                      type_table);
  check_float32(tok_table, "tok_table");
  const c10::cuda::CUDAGuard guard(tokens.device());
  auto out = at::empty({t.B(), t.L(), tok_table.size(1)}, tok_table.options());
  check_launch(launch_window_embed_forward(t.forward_args<float>(out), c10::cuda::getCurrentCUDAStream()),
               "window_embed forward kernel");
  return out;
}

WindowEmbedGradients window_embed_backward_cuda(const at::Tensor& grad_out, const at::Tensor& tokens,
                                                const at::Tensor& pos_ids, const at::Tensor& af,
                                                const at::Tensor& type_ids, int64_t n_tokens,
                                                int64_t n_pos, int64_t n_features, int64_t n_types) {
  const auto t = prepare_window_embed_backward(grad_out, tokens, pos_ids, af, type_ids);
  check_float32(grad_out, "grad_out");
  const int64_t D = grad_out.size(2);
  TORCH_CHECK(window_embed_backward_smem_bytes(n_tokens, D) <= kMaxSharedBytes,
              "window_embed on CUDA supports n_tokens * D <= ", kMaxSharedBytes / sizeof(float),
              ", got ", n_tokens, " * ", D);
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto grad_c = grad_out.contiguous();
  auto grad_site = at::empty({t.L(), D}, grad_out.options());
  auto grad_tok = at::zeros({n_tokens, D}, grad_out.options());
  auto feats = at::empty({t.L(), n_features}, grad_out.options());
  check_launch(launch_window_embed_backward(t.backward_args<float>(grad_c, grad_site, grad_tok), stream),
               "window_embed backward kernel");
  check_launch(launch_af_features(t.af.data_ptr<float>(), t.L(), n_features, feats.data_ptr<float>(),
                                  stream),
               "window_embed AF feature kernel");
  auto [grad_pos, grad_af_proj, grad_type] =
      site_table_grads(grad_site, feats, t.pos_ids, t.type_ids, n_pos, n_types);
  return {grad_tok, grad_pos, grad_af_proj, grad_type};
}

}  // namespace embrag
