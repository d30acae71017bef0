// Input validation shared by the CPU and CUDA entry points: every message
// names the argument and what was expected, so a user sees one clear line.
// Nothing here reads tensor data: index ranges are checked by the kernels as
// they read (no host synchronisation).
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

// The one-line error of an index out of range, raised where a CPU kernel
// reads it (the CUDA kernels report it with a device-side assert instead).
[[noreturn]] inline void fail_index(const char* name, int64_t value, int64_t low, int64_t high) {
  TORCH_CHECK(false, name, " values must lie in [", low, ", ", high, "), found ", value);
}

inline void check_index(int64_t value, int64_t low, int64_t high, const char* name) {
  if (value < low || value >= high) fail_index(name, value, low, high);
}

}  // namespace embrag
