// The thread context (csrc/kernels/device.h) of a block run serially on the
// CPU: one thread, no barrier needed, plain adds (into thread-private
// accumulators), and a bad index or value raised as the op's one-line error.
#pragma once

#include "../checks.h"

namespace embrag {

struct SerialCtx {
  int bx, by;
  int thread() const { return 0; }
  int block_dim() const { return 1; }
  int block_x() const { return bx; }
  int block_y() const { return by; }
  void sync() const {}
  template <typename T>
  void atomic_add(T* address, T value) const {
    *address += value;
  }
  [[noreturn]] void bad_index(const char* name, int64_t value, int64_t low, int64_t high) const {
    fail_index(name, value, low, high);
  }
  [[noreturn]] void bad_value(const char* name, double value, const char* rule) const {
    TORCH_CHECK(false, name, " values must be ", rule, ", found ", value);
  }
};

}  // namespace embrag
