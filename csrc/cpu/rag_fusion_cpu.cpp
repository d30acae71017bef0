// rag_fusion on the CPU: the CUDA block bodies of csrc/kernels/rag_fusion.h,
// one thread per block (SerialCtx), blocks spread over at::parallel_for. The
// backward's accumulators are thread-private (one row of a zeroed tensor per
// worker), summed into the op's accumulators at the end; it takes delta from
// the saved output.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include "../launch.h"
#include "serial_ctx.h"

namespace embrag {
namespace {

// Runs every block of the grid (site tiles x queries). thread_grads: the
// backward's outputs of each worker, or null for the forward.
template <typename scalar_t, int kV, int kHeadDim>
void run_blocks(const RagFusionParams& p, const RagFusionGradParams* thread_grads) {
  using Block = RagFusionBlock<scalar_t, kV, kHeadDim, SerialCtx>;
  const bool backward = thread_grads != nullptr;
  const int64_t smem_bytes = int64_t(rag_fusion_smem_bytes<acc_type<scalar_t>, kV>(p, 1, backward));
  const int64_t tiles = p.site_tiles(), n_blocks = tiles * p.B;
  // One shared-memory buffer per worker (8-byte aligned rows).
  auto smem = at::empty({at::get_num_threads(), ceil_div(smem_bytes, 8)}, at::kDouble);
  at::parallel_for(0, n_blocks, 1, [&](int64_t begin, int64_t end) {
    const int worker = at::get_thread_num();
    auto* buffer = reinterpret_cast<unsigned char*>(smem[worker].data_ptr<double>());
    for (int64_t block = begin; block < end; ++block) {
      const SerialCtx ctx{int(block % tiles), int(block / tiles)};
      Block body(ctx, p, backward, buffer);
      if (backward)
        body.backward(thread_grads[worker]);
      else
        body.forward();
    }
  });
}

template <typename F>
void dispatch_dtype(DType dtype, const F& f) {
  switch (dtype) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat64: return f(double{});
    case DType::kBFloat16: return f(c10::BFloat16{});
  }
}

template <typename F>
void dispatch(const RagFusionParams& p, const F& f) {
  dispatch_dtype(p.dtype, [&](auto zero) {
    dispatch_rag_fusion_sizes(p.V, p.head_dim(), [&](auto v, auto head_dim) {
      f(decltype(zero){}, v, head_dim);
    });
  });
}

// The backward's accumulators, per worker: views into one zeroed tensor.
struct ThreadAccumulators {
  at::Tensor all;                                  // [workers, per worker]
  std::vector<RagFusionGradParams> grads;          // one per worker
  std::vector<std::pair<int64_t, void*>> outputs;  // (elements, the op's accumulator) in row order
};

ThreadAccumulators thread_accumulators(const RagFusionParams& p, const RagFusionGradParams& g) {
  const int64_t VD = int64_t(p.V) * p.D, H = p.n_heads;
  ThreadAccumulators t;
  t.outputs = {{VD, g.grad_tok_k}, {VD, g.grad_tok_v}, {int64_t(p.L) * p.D, g.grad_site_v},
               {int64_t(p.B) * p.K, g.grad_dist}, {H, g.grad_beta}, {H, g.grad_alpha},
               {g.grad_gamma ? H : 0, g.grad_gamma}};
  int64_t per_worker = 0;
  for (const auto& [n, _] : t.outputs) per_worker += n;
  const int workers = at::get_num_threads();
  const auto dtype = p.dtype == DType::kFloat64 ? at::kDouble : at::kFloat;
  t.all = at::zeros({workers, per_worker}, dtype);
  for (int w = 0; w < workers; ++w) {
    RagFusionGradParams mine = g;
    mine.delta_from_out = true;  // compute-bound: a dot product per row, not K exponentials
    auto* base = static_cast<unsigned char*>(t.all[w].data_ptr());
    void** fields[] = {&mine.grad_tok_k, &mine.grad_tok_v, &mine.grad_site_v, &mine.grad_dist,
                       &mine.grad_beta,  &mine.grad_alpha, &mine.grad_gamma};
    int64_t offset = 0;
    for (size_t f = 0; f < t.outputs.size(); ++f) {
      if (*fields[f]) *fields[f] = base + offset * t.all.element_size();
      offset += t.outputs[f].first;
    }
    t.grads.push_back(mine);
  }
  return t;
}

// Adds the workers' sums into the op's accumulators.
void reduce(const ThreadAccumulators& t) {
  const at::Tensor total = t.all.sum(0);
  int64_t offset = 0;
  for (const auto& [n, output] : t.outputs) {
    if (output) {
      auto out = at::from_blob(output, {n}, total.options());
      out.add_(total.narrow(0, offset, n));
    }
    offset += n;
  }
}

}  // namespace

void launch_rag_fusion_forward_cpu(const RagFusionParams& p) {
  dispatch(p, [&](auto zero, auto v, auto head_dim) {
    run_blocks<decltype(zero), v(), head_dim()>(p, nullptr);
  });
}

void launch_rag_fusion_backward_cpu(const RagFusionParams& p, const RagFusionGradParams& g) {
  const ThreadAccumulators accumulators = thread_accumulators(p, g);
  dispatch(p, [&](auto zero, auto v, auto head_dim) {
    run_blocks<decltype(zero), v(), head_dim()>(p, accumulators.grads.data());
  });
  reduce(accumulators);
}

}  // namespace embrag
