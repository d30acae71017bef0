// Torch-free helpers shared by the CUDA kernels, the CPU kernels and the
// test-only SIMT shim.
//
// A kernel body is written once, as a function template over a "thread
// context" `Ctx` that answers threadIdx/blockIdx/blockDim, provides the block
// barrier, atomic adds and the report of a bad input: an index out of its
// range (bad_index) or a real value that breaks its rule (bad_value), after
// which the body goes on with a safe value (the CPU's SerialCtx throws, CUDA
// asserts later). Under nvcc, `CudaCtx`
// maps these to the CUDA built-ins; the CPU kernels run the same bodies with
// one thread per block (csrc/cpu/serial_ctx.h); the SIMT shim in tests/simt/
// maps them to std::thread + std::barrier so the very same body runs (and is
// race-checked by ThreadSanitizer) on a CPU.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#include <cuda_bf16.h>

#include <cstdio>
#endif

#if defined(__CUDACC__)
#define EMBRAG_HD __host__ __device__ __forceinline__
#define EMBRAG_DEVICE __device__ __forceinline__
#else
#define EMBRAG_HD inline
#define EMBRAG_DEVICE inline
#endif

namespace embrag {

// Shared memory one block of any kernel may use. Above the 48 KiB default the
// launchers opt in (cudaFuncAttributeMaxDynamicSharedMemorySize); 96 KiB
// leaves room for one block per SM on sm_80 (164 KiB) and two on sm_90.
constexpr int64_t kMaxSharedBytes = 96 * 1024;

// The bandwidth model of a pass of an op (benchmarks/ print moved / must):
//   must:  bytes of every input the pass needs read once and every output
//          written once;
//   moved: bytes the kernels' design loads and stores, block by block (the
//          CPU kernels run the same blocks), except that an array shared by
//          many blocks and smaller than kSharedArrayBytes counts once: tables,
//          site rows, scales, topk and the gradient accumulators stay in L2.
struct Traffic {
  double must, moved;
};
constexpr double kSharedArrayBytes = 8.0 * 1024 * 1024;

// Bytes of an array every block reads: once if it is small, else all reads.
inline double shared_read_bytes(double once, double all_blocks) {
  return once <= kSharedArrayBytes ? once : all_blocks;
}

// Element type of the floating-point tensors of an op, as the torch side
// passes it to the torch-free launchers.
enum class DType : int8_t { kFloat32, kFloat64, kBFloat16 };

// Accumulation type: float for float and bfloat16, double for double.
template <typename scalar_t>
struct AccumulateType {
  using type = float;
};
template <>
struct AccumulateType<double> {
  using type = double;
};
template <typename scalar_t>
using acc_type = typename AccumulateType<scalar_t>::type;

#if defined(__CUDACC__)
namespace {  // one copy per .cu file

// The first bad index and the first bad real value a kernel of this file
// read (CudaCtx::bad_index, CudaCtx::bad_value).
struct BadIndexRecord {
  int flag;
  const char* name;
  long long value, low, high;
};
__device__ BadIndexRecord bad_index_record;
struct BadValueRecord {
  int flag;
  const char* name;
  const char* rule;
  double value;
};
__device__ BadValueRecord bad_value_record;

// A device-side assert (like CUDA_KERNEL_ASSERT), launched after a file's
// kernels on their stream: if one of them read a bad input, prints it and
// traps; the next CUDA call on the host reports the failed launch. A kernel
// of its own, so the main kernels make no printf call (it would cost them
// register spills) and the host never waits for it.
__global__ void report_bad_input_kernel() {
  const BadIndexRecord& r = bad_index_record;
  const BadValueRecord& v = bad_value_record;
  if (r.flag)
    printf("embrag: %s values must lie in [%lld, %lld), found %lld\n", r.name, r.low, r.high, r.value);
  if (v.flag) printf("embrag: %s values must be %s, found %g\n", v.name, v.rule, v.value);
  if (r.flag || v.flag) __trap();
}

// The real thing: CUDA built-ins.
struct CudaCtx {
  EMBRAG_DEVICE int thread() const { return threadIdx.x; }
  EMBRAG_DEVICE int block_dim() const { return blockDim.x; }
  EMBRAG_DEVICE int block_x() const { return blockIdx.x; }
  EMBRAG_DEVICE int block_y() const { return blockIdx.y; }
  EMBRAG_DEVICE void sync() const { __syncthreads(); }
  template <typename T>
  EMBRAG_DEVICE void atomic_add(T* address, T value) const {
    atomicAdd(address, value);
  }
  // Record the first bad index / value for report_bad_input_kernel; the
  // caller goes on with a safe value.
  EMBRAG_DEVICE void bad_index(const char* name, int64_t value, int64_t low, int64_t high) const {
    if (atomicCAS(&bad_index_record.flag, 0, 1) == 0)
      bad_index_record = {1, name, (long long)value, (long long)low, (long long)high};
  }
  EMBRAG_DEVICE void bad_value(const char* name, double value, const char* rule) const {
    if (atomicCAS(&bad_value_record.flag, 0, 1) == 0) bad_value_record = {1, name, rule, value};
  }
};

}  // namespace
#endif

// Element conversion: a plain cast, except bfloat16 under nvcc, which needs
// the intrinsics (torch builds define __CUDA_NO_BFLOAT16_CONVERSIONS__).
template <typename To, typename From>
EMBRAG_HD To element_cast(From x) {
  return To(x);
}
#if defined(__CUDACC__)
template <>
EMBRAG_HD float element_cast<float, __nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <>
EMBRAG_HD __nv_bfloat16 element_cast<__nv_bfloat16, float>(float x) {
  return __float2bfloat16(x);
}
#endif

// Ceil-divide for grid sizes.
EMBRAG_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
EMBRAG_HD int32_t min32(int32_t a, int32_t b) { return a < b ? a : b; }
EMBRAG_HD int32_t max32(int32_t a, int32_t b) { return a > b ? a : b; }

EMBRAG_HD int32_t popcount32(uint32_t x) {
#if defined(__CUDA_ARCH__)
  return __popc(x);
#else
  return __builtin_popcount(x);
#endif
}

}  // namespace embrag
