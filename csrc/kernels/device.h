// Torch-free helpers shared by the CUDA kernels and the test-only SIMT shim.
//
// A kernel body is written once, as a function template over a "thread
// context" `Ctx` that answers threadIdx/blockIdx/blockDim and provides the
// block barrier. Under nvcc, `CudaCtx` maps these to the CUDA built-ins; the
// SIMT shim in tests/simt/ maps them to std::thread + std::barrier so the very
// same body runs (and is race-checked by ThreadSanitizer) on a CPU.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#endif

#if defined(__CUDACC__)
#define EMBRAG_HD __host__ __device__ __forceinline__
#define EMBRAG_DEVICE __device__ __forceinline__
#else
#define EMBRAG_HD inline
#define EMBRAG_DEVICE inline
#endif

namespace embrag {

#if defined(__CUDACC__)
// The real thing: CUDA built-ins.
struct CudaCtx {
  EMBRAG_DEVICE int thread() const { return threadIdx.x; }
  EMBRAG_DEVICE int block_dim() const { return blockDim.x; }
  EMBRAG_DEVICE int block_x() const { return blockIdx.x; }
  EMBRAG_DEVICE int block_y() const { return blockIdx.y; }
  EMBRAG_DEVICE int grid_x() const { return gridDim.x; }
  EMBRAG_DEVICE int grid_y() const { return gridDim.y; }
  EMBRAG_DEVICE void sync() const { __syncthreads(); }
  template <typename T>
  EMBRAG_DEVICE void atomic_add(T* address, T value) const { atomicAdd(address, value); }
};
#endif

// Element conversion: a plain cast, except bfloat16 under nvcc, which needs
// the intrinsics (torch builds define __CUDA_NO_BFLOAT16_CONVERSIONS__).
template <typename To, typename From>
EMBRAG_HD To convert(From x) {
  return To(x);
}
#if defined(__CUDACC__)
template <>
EMBRAG_HD float convert<float, __nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <>
EMBRAG_HD __nv_bfloat16 convert<__nv_bfloat16, float>(float x) {
  return __float2bfloat16(x);
}
#endif

// Ceil-divide for grid sizes.
EMBRAG_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace embrag
