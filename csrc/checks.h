// Input validation shared by the CPU and CUDA entry points: every message
// names the argument and what was expected, so a user sees one clear line.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace embrag {

inline void check_dims(const at::Tensor& t, const char* name, int64_t dims) {
  TORCH_CHECK(t.dim() == dims, name, " must be ", dims, "-D, got shape ", t.sizes());
}

inline void check_dtype(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
}

inline void check_size(const at::Tensor& t, const char* name, int64_t dim, int64_t expected,
                       const char* what) {
  TORCH_CHECK(t.size(dim) == expected, name, " dimension ", dim, " must be ", expected, " (",
              what, "), got shape ", t.sizes());
}

inline void check_same_device(const std::vector<std::pair<const char*, const at::Tensor*>>& ts) {
  const auto& [first_name, first] = ts.front();
  for (const auto& [name, t] : ts)
    TORCH_CHECK(t->device() == first->device(), name, " is on ", t->device(), " but ", first_name,
                " is on ", first->device(), ": all inputs must be on one device");
}

// Every entry of an integer index tensor lies in [low, high).
inline void check_index_range(const at::Tensor& idx, const char* name, int64_t low, int64_t high) {
  if (idx.numel() == 0) return;
  const auto [lo, hi] = at::aminmax(idx);
  const int64_t lo_v = lo.item<int64_t>(), hi_v = hi.item<int64_t>();
  TORCH_CHECK(lo_v >= low && hi_v < high, name, " values must lie in [", low, ", ", high,
              "), found range [", lo_v, ", ", hi_v, "]");
}

}  // namespace embrag
