// Device primitives shared by the CUDA kernels (csrc/*.cu): asynchronous copies, ldmatrix, the
// m16n8k16 tensor-core product for bf16 and fp16, element conversions and warp reductions.
//
// Only instructions of sm_80 are used, so the same source compiles for sm_80 and sm_90a.
// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16"), per lane with g = lane / 4 and
// t = lane % 4:
//   A (16 x 16, row-major):  a0 = rows g,   cols 2t..2t+1    a1 = rows g+8, cols 2t..2t+1
//                            a2 = rows g,   cols 2t+8..+9    a3 = rows g+8, cols 2t+8..+9
//   B (16 x 8, "col"):       b0 = k 2t..2t+1, col g          b1 = k 2t+8..2t+9, col g
//   C (16 x 8, fp32):        c0, c1 = row g, cols 2t, 2t+1   c2, c3 = row g+8, cols 2t, 2t+1
// (each a/b register holds two 16-bit elements, the lower column or k in the lower half).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace synthcl_fast {
namespace cuda {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// An attribute of the current device (multiprocessor count, shared-memory limit, ...).
inline int device_attribute(cudaDeviceAttr attribute) {
  int device = 0, value = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
  return value;
}

// ---- asynchronous global -> shared copies (16 bytes per thread and instruction) -------------------
__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async_16(void* smem, const void* global) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_address(smem)), "l"(global));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// ---- shared memory -> fragments ----------------------------------------------------------------
// Four 8x8 matrices of 16-bit elements; lanes 8m..8m+7 give the row addresses of matrix m, and
// register m receives this lane's two elements of matrix m.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(smem_row)));
}

// The same, each matrix transposed on the way (rows of the stored matrix become columns).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(smem_row)));
}

// ---- tensor-core element types --------------------------------------------------------------------
// d += a * b on one m16n8k16 tile, fp32 accumulators; pack() makes one a/b register from two floats.
struct Bf16Mma {
  __device__ __forceinline__ static void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ __forceinline__ static uint16_t from_float(float x) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
  }
  __device__ __forceinline__ static float to_float(uint16_t x) { return __bfloat162float(__ushort_as_bfloat16(x)); }
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    return static_cast<uint32_t>(from_float(lo)) | (static_cast<uint32_t>(from_float(hi)) << 16);
  }
};

struct Fp16Mma {
  __device__ __forceinline__ static void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ __forceinline__ static uint16_t from_float(float x) { return __half_as_ushort(__float2half_rn(x)); }
  __device__ __forceinline__ static float to_float(uint16_t x) { return __half2float(__ushort_as_half(x)); }
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    return static_cast<uint32_t>(from_float(lo)) | (static_cast<uint32_t>(from_float(hi)) << 16);
  }
};

// ---- element conversions of the input dtypes ------------------------------------------------------
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(c10::Half x) { return __half2float(__ushort_as_half(x.x)); }
__device__ __forceinline__ float to_float(c10::BFloat16 x) { return __bfloat162float(__ushort_as_bfloat16(x.x)); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ c10::Half from_float<c10::Half>(float x) {
  return c10::Half(__half_as_ushort(__float2half_rn(x)), c10::Half::from_bits());
}
template <>
__device__ __forceinline__ c10::BFloat16 from_float<c10::BFloat16>(float x) {
  return c10::BFloat16(__bfloat16_as_ushort(__float2bfloat16_rn(x)), c10::BFloat16::from_bits());
}

// ---- warp reductions ------------------------------------------------------------------------------
// Over the 4 lanes of a quad (the lanes that share a row of an mma accumulator).
template <typename T>
__device__ __forceinline__ T quad_sum(T x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

}  // namespace cuda
}  // namespace synthcl_fast
