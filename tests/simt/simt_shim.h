// Test-only SIMT shim: runs a CUDA block body (written against a `Ctx`, see
// csrc/kernels/device.h) on the CPU, one std::thread per CUDA thread,
// std::barrier for __syncthreads, a per-block buffer for __shared__ memory,
// std::atomic_ref for atomicAdd and a counter for the bad inputs a body reports.
// Under ThreadSanitizer, a missing barrier or a racy write becomes a reported
// data race.
#pragma once

#include <atomic>
#include <barrier>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

namespace simt {

// Bad indices and values reported since the last reset (CudaCtx traps instead).
inline std::atomic<int> bad_inputs{0};

struct ShimCtx {
  int tid, bdim, bx, by;
  std::barrier<>* block_barrier;

  int thread() const { return tid; }
  int block_dim() const { return bdim; }
  int block_x() const { return bx; }
  int block_y() const { return by; }
  void sync() const { block_barrier->arrive_and_wait(); }
  template <typename T>
  void atomic_add(T* address, T value) const {
    std::atomic_ref<T>(*address).fetch_add(value);
  }
  void bad_index(const char* name, int64_t value, int64_t low, int64_t high) const {
    if (bad_inputs.fetch_add(1) == 0)
      std::printf("device assert: %s values must lie in [%lld, %lld), found %lld\n", name,
                  (long long)low, (long long)high, (long long)value);
  }
  void bad_value(const char* name, double value, const char* rule) const {
    if (bad_inputs.fetch_add(1) == 0)
      std::printf("device assert: %s values must be %s, found %g\n", name, rule, value);
  }
};

// Block body: void(const ShimCtx&, SharedT* shared_memory).
template <typename SharedT>
using BlockBody = std::function<void(const ShimCtx&, SharedT*)>;

// Runs grid (gx, gy) of `block` threads. Two blocks are in flight at a time,
// so races between blocks on global memory are visible to the sanitizer too.
template <typename SharedT>
void launch(int gx, int gy, int block, size_t shared_elems, const BlockBody<SharedT>& body) {
  constexpr int kBlocksInFlight = 2;
  const int n_blocks = gx * gy;
  for (int first = 0; first < n_blocks; first += kBlocksInFlight) {
    const int last = first + kBlocksInFlight < n_blocks ? first + kBlocksInFlight : n_blocks;
    std::vector<std::vector<SharedT>> shared(last - first, std::vector<SharedT>(shared_elems));
    std::vector<std::unique_ptr<std::barrier<>>> barriers;
    for (int i = first; i < last; ++i) barriers.push_back(std::make_unique<std::barrier<>>(block));
    std::vector<std::thread> threads;
    for (int i = first; i < last; ++i)
      for (int t = 0; t < block; ++t)
        threads.emplace_back([&, i, t] {
          const ShimCtx ctx{t, block, i % gx, i / gx, barriers[i - first].get()};
          body(ctx, shared[i - first].data());
        });
    for (auto& th : threads) th.join();
  }
}

}  // namespace simt
