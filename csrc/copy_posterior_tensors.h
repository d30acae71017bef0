// copy_posterior on the torch side: the op's tensors, validated and made
// contiguous once, and the kernel argument struct (csrc/kernels/copy_posterior.h)
// built from them. Shared by the entry points and the launchers.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "kernels/copy_posterior.h"

namespace embrag {

struct CopyPosteriorTensors {
  at::Tensor query, templates, switch_cm, log_rho, logit_theta;  // contiguous
  at::Tensor ref_sites;                                          // row-strided, unit column stride
  int64_t N, M, K, H;

  // scalar_t: the C++ type of switch_cm's dtype.
  template <typename scalar_t>
  CopyPosteriorArgs<scalar_t> args() const {
    return {query.data_ptr<uint8_t>(), templates.data_ptr<int64_t>(), ref_sites.data_ptr<uint8_t>(),
            switch_cm.data_ptr<scalar_t>(), log_rho.data_ptr<scalar_t>(),
            logit_theta.data_ptr<scalar_t>(), N, M, K, H,
            M > 1 ? ref_sites.stride(0) : H};
  }

  // post / grad_post: [N, M, K] in switch_cm's dtype.
  std::vector<int64_t> post_shape() const { return {N, M, K}; }
};

}  // namespace embrag
