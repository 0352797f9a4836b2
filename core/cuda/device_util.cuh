// Device-side helpers shared by the .cu files: fp32 <-> storage-type conversion, warp sums
// and a small block-wide product on register tiles.
// Kernels load bf16 or fp32 storage, compute in fp32 and round once on store.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace hysim::cuda {

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Sum over the 32 lanes of a warp; every lane gets the result. The butterfly order is
// fixed, so the result is deterministic.
__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

__device__ __forceinline__ float sigmoid_f32(float x) { return 1.f / (1.f + expf(-x)); }
__device__ __forceinline__ float silu_f32(float x) { return x * sigmoid_f32(x); }
// d silu / dx = s (1 + x (1 - s)), s = sigmoid(x) (core/cpu/math.h's silu_grad).
__device__ __forceinline__ float silu_grad_f32(float x) {
  const float s = sigmoid_f32(x);
  return s * (1.f + x * (1.f - s));
}

// 8 consecutive values as one 16-byte access (p 16-byte aligned), converted to / from fp32:
// elementwise kernels over long bf16 rows move 16 bytes per load instead of 2.
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float (&f)[8]) {
  const uint4 x = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&x);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 v = __bfloat1622float2(h[j]);
    f[2 * j] = v.x, f[2 * j + 1] = v.y;
  }
}
__device__ __forceinline__ void load8(const float* p, float (&f)[8]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}
__device__ __forceinline__ void store8(__nv_bfloat16* p, const float (&f)[8]) {
  uint4 x;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&x);
#pragma unroll
  for (int j = 0; j < 4; ++j) h[j] = __floats2bfloat162_rn(f[2 * j], f[2 * j + 1]);
  *reinterpret_cast<uint4*>(p) = x;
}
__device__ __forceinline__ void store8(float* p, const float (&f)[8]) {
  reinterpret_cast<float4*>(p)[0] = make_float4(f[0], f[1], f[2], f[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(f[4], f[5], f[6], f[7]);
}
// cp.async: 16 bytes global -> shared without a register round trip, so that a thread has
// all its copies in flight at once; src_bytes = 0 writes zeros (nothing is read).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
}
// Waits for this thread's cp.async copies (a block barrier must follow before others read them).
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::); }
// Closes this thread's copies issued so far into a group; cp_async_wait<n>() waits until at
// most n of its groups are still in flight (double buffering: the next tile's group stays out).
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int n> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(n)); }

// Whether every pointer is 16-byte aligned (load8 / store8 apply).
template <class... P> __host__ __device__ bool aligned16(const P*... p) {
  return ((reinterpret_cast<uintptr_t>(p) % 16 == 0) && ...);
}

constexpr int kWarp = 32;

// Row and column (r, c) of a flat index r * n + c that a block-strided loop advances by a fixed
// step: two divisions up front instead of a division by the runtime n at every step (integer
// index arithmetic was most of what the GDN tile loaders issued).
struct FlatIndex {
  int r, c, dr, dc, n;
  __device__ FlatIndex(int start, int step, int n_)
      : r(start / n_), c(start % n_), dr(step / n_), dc(step % n_), n(n_) {}
  __device__ __forceinline__ void advance() {
    r += dr, c += dc;
    if (c >= n) c -= n, ++r;
  }
};

// fn(r, c) for every entry of a rows x cols region, spread over the block's Threads threads
// (consecutive threads take consecutive c). Every thread of the block calls it.
template <int Threads, class F>
__device__ __forceinline__ void for_each_index(int rows, int cols, F fn) {
  if (cols <= 0) return;
  for (FlatIndex at(int(threadIdx.x), Threads, cols); at.r < rows; at.advance()) fn(at.r, at.c);
}

// out(m, n, sum_k fa(m, k) fb(n, k)) for m < M, n < N, by a whole block of Threads
// threads (operands usually in shared memory, fp32 FMAs): each thread owns 4 x 4 outputs (rows mi + i TM, columns ni + j TN: consecutive threads take
// consecutive columns), so that each operand value loaded from shared memory feeds four
// FMAs instead of one.
template <int Threads, class FA, class FB, class FO>
__device__ void block_gemm(int M, int N, int K, FA fa, FB fb, FO out) {
  const int TM = (M + 3) / 4, TN = (N + 3) / 4;
  for (int t = threadIdx.x; t < TM * TN; t += Threads) {
    const int mi = t / TN, ni = t % TN;
    float acc[4][4] = {};
    for (int kk = 0; kk < K; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int m = mi + i * TM, n = ni + i * TN;
        av[i] = m < M ? fa(m, kk) : 0.f;
        bv[i] = n < N ? fb(n, kk) : 0.f;
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int m = mi + i * TM, n = ni + j * TN;
        if (m < M && n < N) out(m, n, acc[i][j]);
      }
  }
}

// ---- tensor cores ---------------------------------------------------------------------------
// mma.sync m16n8k16 on bf16 (attention; a register holds 2 bf16, layouts in layers/attention.cu):
// d += a b with fp32 accumulation.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two fp32 values rounded to bf16 in one register (lo in the low half): an A fragment register
// made from a C fragment pair, so that a product's result feeds the next product from registers.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// The m16n8k16 A fragment (bf16, times Sign) of a 16 x 16 block held as the C fragments of two
// n8 tiles (c0: columns k 0-7, c1: k 8-15): a product's result feeds the next product from
// registers (C: c0, c1 at row g, columns 2t, 2t+1, c2, c3 at row g + 8; A: a0 (g, 2t..),
// a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)).
template <int Sign = 1>
__device__ __forceinline__ void a_fragment_from_c(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  static_assert(Sign == 1 || Sign == -1, "Sign is +1 or -1");
  a[0] = pack_bf16(Sign * c0[0], Sign * c0[1]), a[1] = pack_bf16(Sign * c0[2], Sign * c0[3]);
  a[2] = pack_bf16(Sign * c1[0], Sign * c1[1]), a[3] = pack_bf16(Sign * c1[2], Sign * c1[3]);
}

// mma.sync m16n8k8 on tf32 (the chunked scans' block_mma).
// Fragment layouts (g = lane / 4, t = lane % 4; one tf32 per register):
//   A 16x8: a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4)
//   B 8x8:  b0 (k t, n g), b1 (k t+4, n g)
//   C 16x8: c0, c1 (g, 2t..2t+1), c2, c3 (g+8, 2t..2t+1)
// Round to nearest (cvt.rna): tf32 keeps 10 mantissa bits, so bf16 values pass exactly and
// an fp32 value moves by at most 2^-11 relative.
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Row stride (floats) of an fp32 matrix in shared memory whose rows are n long and that
// block_mma reads as fragments: n rounded up to 4 (mod 8). A fragment load touches 8 rows x
// 4 consecutive columns (or 4 rows x 8 columns when the operand is stored transposed): with
// the stride = 4 (mod 8) those fall in 32 distinct banks (at most 2 per bank transposed),
// where a stride of 0 (mod 32) would put 8 lanes on one bank.
__host__ __device__ constexpr int mma_stride(int n) { return n + (12 - n % 8) % 8; }

// block_gemm's contract on the tensor cores: out(m, n, sum_k fa(m, k) fb(n, k)), operands
// read element by element through fa, fb (out-of-range entries are zeros, never read),
// products in tf32 with fp32 accumulation. Each warp takes 16 x 16 output tiles (two mma
// columns sharing the A fragment), tiles spread over the block's warps round-robin.
// Every thread of the block must call it (mma.sync is warp-wide).
template <int Threads, class FA, class FB, class FO>
__device__ void block_mma(int M, int N, int K, FA fa, FB fb, FO out) {
  const int warp = int(threadIdx.x) / kWarp, lane = int(threadIdx.x) % kWarp, g = lane / 4, t = lane % 4;
  const int TN = (N + 15) / 16, tiles = ((M + 15) / 16) * TN;
  for (int tile = warp; tile < tiles; tile += Threads / kWarp) {
    const int m0 = (tile / TN) * 16, n0 = (tile % TN) * 16;
    float acc[2][4] = {};
    for (int k0 = 0; k0 < K; k0 += 8) {
      const int ka = k0 + t, kb = k0 + t + 4;
      const auto A = [&](int m, int k) { return to_tf32(m < M && k < K ? fa(m, k) : 0.f); };
      const auto Bv = [&](int n, int k) { return to_tf32(n < N && k < K ? fb(n, k) : 0.f); };
      const uint32_t a[4] = {A(m0 + g, ka), A(m0 + g + 8, ka), A(m0 + g, kb), A(m0 + g + 8, kb)};
#pragma unroll
      for (int j = 0; j < 2; ++j) mma_tf32(acc[j], a, Bv(n0 + 8 * j + g, ka), Bv(n0 + 8 * j + g, kb));
    }
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int m = m0 + g + 8 * (r / 2), n = n0 + 8 * j + 2 * t + r % 2;
        if (m < M && n < N) out(m, n, acc[j][r]);
      }
  }
}

// The chunked scans' products for storage type T: fp32 storage keeps exact fp32 FMAs
// (block_gemm: the configuration the tests hold to fp32 tolerances against the CPU), bf16
// storage runs on the tensor cores (block_mma; its tf32 rounding, 2^-11, is under the bf16
// storage's 2^-9).
template <class T, int Threads, class FA, class FB, class FO>
__device__ __forceinline__ void block_product(int M, int N, int K, FA fa, FB fb, FO out) {
  if constexpr (std::is_same_v<T, float>)
    block_gemm<Threads>(M, N, K, fa, fb, out);
  else
    block_mma<Threads>(M, N, K, fa, fb, out);
}

// ---- products of matrices in shared memory -------------------------------------------------
// The chunk-parallel kernels keep their operands as whole matrices in shared memory, in the
// storage type E, and multiply 16 x 16 output tiles per warp: for bf16 by ldmatrix and
// mma.sync m16n8k16 (bf16 operands, fp32 accumulation: a fragment per instruction instead of
// an element per load), for fp32 by exact FMAs in the same fragment layout (the configuration
// the tests hold to fp32 tolerances against the CPU).
//
// An operand is read as op(r, k) with r the output's row (A) or column (B) and k the
// contracted index, so that out(m, n) = sum_k a(m, k) b(n, k) (block_gemm's contract). It is
// stored with k inner (element at p[r ld + k]) or transposed (p[k ld + r]); both are
// zero-padded to multiples of 16 in r and k (whole tiles are read; the padding of k must be
// zero, padded rows only reach outputs the caller discards).
template <class E, bool KInner>
struct SmemOperand {
  const E* p;
  int ld;
  __device__ __forceinline__ float at(int r, int k) const { return to_f32(KInner ? p[r * ld + k] : p[k * ld + r]); }
};
// The orientation is a type: each call site's fragment addressing is fixed at compile time.
template <class E> __device__ __forceinline__ SmemOperand<E, true> smem_op(const E* p, int ld) { return {p, ld}; }
template <class E> __device__ __forceinline__ SmemOperand<E, false> smem_op_t(const E* p, int ld) { return {p, ld}; }

__host__ __device__ constexpr int round16(int n) { return (n + 15) / 16 * 16; }
// Row stride (elements) of such a matrix with rows n long: 16-byte-aligned rows for ldmatrix,
// and an odd number of 16-byte units so that the 8 rows of an 8 x 8 load hit distinct banks.
__host__ __device__ constexpr int tile_stride(int n) { return round16(n) + 8; }

// Four 8 x 8 bf16 matrices, one row address per lane (lanes 8 i .. 8 i + 7 give matrix i);
// .trans delivers each transposed.
template <bool Trans>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const __nv_bfloat16* p) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  if constexpr (Trans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

// The 16 x 16 block (rows r0.., k k0..) of an operand as an m16n8k16 A fragment: registers
// (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15). Read as a
// B operand (rows = n), registers 0, 2 are the fragment of columns n0..n0+7 and 1, 3 of
// n0+8..n0+15. k inner: plain ldmatrix of rows; transposed: ldmatrix.trans of the stored k rows.
// The lane's address is computed once (base) and stepped by k0.
template <bool KInner>
__device__ __forceinline__ const __nv_bfloat16* fragment_base(const SmemOperand<__nv_bfloat16, KInner>& o, int r0) {
  const int lane = int(threadIdx.x) % kWarp, mi = lane / 8;
  if constexpr (KInner)
    return o.p + (r0 + lane % 16) * o.ld + (lane / 16) * 8;
  else
    return o.p + (lane % 8 + 8 * (mi / 2)) * o.ld + r0 + 8 * (mi % 2);
}

// acc += a(m0.., :K) b(n0.., :K)^T for one warp's 16 x 16 output tile, acc[j] holding columns
// n0 + 8 j .. n0 + 8 j + 7 in the C fragment layout (c0, c1 at row g, columns 2t, 2t+1; c2, c3
// at row g + 8; g = lane / 4, t = lane % 4). Warp-wide.
template <bool KA, bool KB>
__device__ __forceinline__ void warp_tile_mma(float (&acc)[2][4], const SmemOperand<__nv_bfloat16, KA>& a, int m0,
                                              const SmemOperand<__nv_bfloat16, KB>& b, int n0, int K) {
  const __nv_bfloat16 *pa = fragment_base(a, m0), *pb = fragment_base(b, n0);
  const int step_a = KA ? 16 : 16 * a.ld, step_b = KB ? 16 : 16 * b.ld;  // k0 += 16
  // Not unrolled: the GDN kernels inline dozens of these products, and unrolled k loops made
  // gdn_bwd_grads_kernel 386 KB of SASS, its warps stalled on instruction fetch a third of the
  // time (ncu "no instruction"); rolled, 253 KB and 17% faster (bench/RESULTS.md, 2026-12-07).
#pragma unroll 1
  for (int k0 = 0; k0 < K; k0 += 16, pa += step_a, pb += step_b) {
    uint32_t fa[4], fb[4];
    ldmatrix_x4<!KA>(fa, pa);
    ldmatrix_x4<!KB>(fb, pb);
    mma_bf16(acc[0], fa, fb[0], fb[2]);
    mma_bf16(acc[1], fa, fb[1], fb[3]);
  }
}
template <bool KA, bool KB>
__device__ __forceinline__ void warp_tile_mma(float (&acc)[2][4], const SmemOperand<float, KA>& a, int m0,
                                              const SmemOperand<float, KB>& b, int n0, int K) {
  const int lane = int(threadIdx.x) % kWarp, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int m = m0 + g + 8 * (r / 2), n = n0 + 8 * j + 2 * t + r % 2;
      float s = acc[j][r];
      for (int k = 0; k < K; ++k) s += a.at(m, k) * b.at(n, k);
      acc[j][r] = s;
    }
}

// Two tile products over the same tile and K in one k loop: acc1 += a1 b1^T, acc2 += a2 b2^T
// (acc1 and acc2 may be the same tile). One loop body instead of two (kernels that hold
// many tiles in registers stall on instruction fetch) and twice the independent mma per step.
template <bool KA1, bool KB1, bool KA2, bool KB2>
__device__ __forceinline__ void warp_tile_mma2(float (&acc1)[2][4], const SmemOperand<__nv_bfloat16, KA1>& a1,
                                               const SmemOperand<__nv_bfloat16, KB1>& b1, float (&acc2)[2][4],
                                               const SmemOperand<__nv_bfloat16, KA2>& a2,
                                               const SmemOperand<__nv_bfloat16, KB2>& b2, int m0, int n0, int K) {
  const __nv_bfloat16 *pa1 = fragment_base(a1, m0), *pb1 = fragment_base(b1, n0);
  const __nv_bfloat16 *pa2 = fragment_base(a2, m0), *pb2 = fragment_base(b2, n0);
  const int sa1 = KA1 ? 16 : 16 * a1.ld, sb1 = KB1 ? 16 : 16 * b1.ld;
  const int sa2 = KA2 ? 16 : 16 * a2.ld, sb2 = KB2 ? 16 : 16 * b2.ld;
  // not unrolled, as in warp_tile_mma
#pragma unroll 1
  for (int k0 = 0; k0 < K; k0 += 16, pa1 += sa1, pb1 += sb1, pa2 += sa2, pb2 += sb2) {
    uint32_t fa1[4], fb1[4], fa2[4], fb2[4];
    ldmatrix_x4<!KA1>(fa1, pa1);
    ldmatrix_x4<!KB1>(fb1, pb1);
    ldmatrix_x4<!KA2>(fa2, pa2);
    ldmatrix_x4<!KB2>(fb2, pb2);
    mma_bf16(acc1[0], fa1, fb1[0], fb1[2]);
    mma_bf16(acc1[1], fa1, fb1[1], fb1[3]);
    mma_bf16(acc2[0], fa2, fb2[0], fb2[2]);
    mma_bf16(acc2[1], fa2, fb2[1], fb2[3]);
  }
}
template <bool KA1, bool KB1, bool KA2, bool KB2>
__device__ __forceinline__ void warp_tile_mma2(float (&acc1)[2][4], const SmemOperand<float, KA1>& a1,
                                               const SmemOperand<float, KB1>& b1, float (&acc2)[2][4],
                                               const SmemOperand<float, KA2>& a2, const SmemOperand<float, KB2>& b2,
                                               int m0, int n0, int K) {
  warp_tile_mma(acc1, a1, m0, b1, n0, K);
  warp_tile_mma(acc2, a2, m0, b2, n0, K);
}

// out(m, n, acc) for the tile's elements inside M x N.
template <class F>
__device__ __forceinline__ void store_tile(const float (&acc)[2][4], int m0, int n0, int M, int N, F out) {
  const int lane = int(threadIdx.x) % kWarp, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int m = m0 + g + 8 * (r / 2), n = n0 + 8 * j + 2 * t + r % 2;
      if (m < M && n < N) out(m, n, acc[j][r]);
    }
}

// x0 to p[0] and, if second, x1 to p[1] in the storage type E: one 4-byte store for bf16
// where pairs says p is 4-byte aligned.
template <class E>
__device__ __forceinline__ void store_pair(E* p, float x0, float x1, bool second, bool pairs) {
  if constexpr (std::is_same_v<E, __nv_bfloat16>) {
    if (pairs && second) {
      *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(x0, x1);
      return;
    }
  }
  p[0] = from_f32<E>(x0);
  if (second) p[1] = from_f32<E>(x1);
}

// The tile's elements inside M x N, times scale, to dst[m ld + n] in the storage type E; bf16
// pairs of columns as one 4-byte store where ld and dst allow (half the store instructions).
template <class E>
__device__ __forceinline__ void store_tile_to(const float (&acc)[2][4], int m0, int n0, int M, int N, E* dst,
                                              int64_t ld, float scale = 1.f) {
  const int lane = int(threadIdx.x) % kWarp, g = lane / 4, t = lane % 4;
  const bool pairs = std::is_same_v<E, __nv_bfloat16> && ld % 2 == 0 && reinterpret_cast<uintptr_t>(dst) % 4 == 0;
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = m0 + g + 8 * h, n = n0 + 8 * j + 2 * t;
      if (m >= M || n >= N) continue;
      store_pair(dst + m * ld + n, scale * acc[j][2 * h], scale * acc[j][2 * h + 1], n + 1 < N, pairs);
    }
}

// f(m, n, a, b) with a, b references to element (m, n) of two tiles held the same way, for
// every element of the tile (the caller masks rows and columns): in-place elementwise work on
// accumulators kept in registers, e.g. combining a product with the sum at the same place.
template <class F>
__device__ __forceinline__ void tile_zip(float (&a)[2][4], float (&b)[2][4], int m0, int n0, F f) {
  const int lane = int(threadIdx.x) % kWarp, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) f(m0 + g + 8 * (r / 2), n0 + 8 * j + 2 * t + r % 2, a[j][r], b[j][r]);
}

// out[m * ld] = sum over the tile's 16 columns of f(m, n, x), for its 16 rows m0.. (warp-wide;
// out points at the caller's column for this tile, so that each entry has one writer and a
// later pass can add a row's tiles in a fixed order: deterministic row sums of a matrix that
// lives in registers spread over warps). Add: out[m * ld] += the sum, for sums accumulated over
// passes (one writer per entry in a pass, passes apart by barriers).
template <bool Add = false, class F>
__device__ __forceinline__ void tile_row_sums(const float (&acc)[2][4], int m0, int n0, float* out, int ld, F f) {
  const int lane = int(threadIdx.x) % kWarp, g = lane / 4, t = lane % 4;
  float lo = 0.f, hi = 0.f;
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const float x = f(m0 + g + 8 * (r / 2), n0 + 8 * j + 2 * t + r % 2, acc[j][r]);
      if (r < 2) lo += x; else hi += x;
    }
  // the four lanes of a row (t = 0..3), butterfly: the same order on every run
  lo += __shfl_xor_sync(0xffffffffu, lo, 1), hi += __shfl_xor_sync(0xffffffffu, hi, 1);
  lo += __shfl_xor_sync(0xffffffffu, lo, 2), hi += __shfl_xor_sync(0xffffffffu, hi, 2);
  if (t != 0) return;
  if (Add) out[(m0 + g) * ld] += lo, out[(m0 + g + 8) * ld] += hi;
  else out[(m0 + g) * ld] = lo, out[(m0 + g + 8) * ld] = hi;
}

// fn(m0, n0) warp-wide for every 16 x 16 tile of an M x N output, tiles spread over the
// block's warps round-robin. Every thread of the block calls it.
template <int Threads, class F>
__device__ __forceinline__ void for_each_tile(int M, int N, F fn) {
  const int TN = (N + 15) / 16, tiles = ((M + 15) / 16) * TN;
  for (int tile = int(threadIdx.x) / kWarp; tile < tiles; tile += Threads / kWarp)
    fn((tile / TN) * 16, (tile % TN) * 16);
}

// out(m, n, sum_k a(m, k) b(n, k)) for m < M, n < N: the usual single product.
template <int Threads, class A, class B, class F>
__device__ __forceinline__ void smem_product(int M, int N, int K, const A& a, const B& b, F out) {
  for_each_tile<Threads>(M, N, [&](int m0, int n0) {
    float acc[2][4] = {};
    warp_tile_mma(acc, a, m0, b, n0, K);
    store_tile(acc, m0, n0, M, N, out);
  });
}

// Offsets of a kernel's dynamic shared memory regions, 128-byte aligned, the same on the host
// (the size to request) and the device (the pointers).
struct SmemCarve {
  size_t bytes = 0;
  template <class X> __host__ __device__ size_t take(size_t n) {
    const size_t o = bytes;
    bytes = (bytes + n * sizeof(X) + 127) / 128 * 128;
    return o;
  }
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks of `threads` for a grid-stride loop over n elements: one element per thread up to
// 16 blocks per SM of an H100 (132 SMs), then the loop strides.
inline unsigned grid_stride_blocks(int64_t n, int threads) {
  return unsigned(std::min<int64_t>(ceil_div(n, threads), 132 * 16));
}

// ---- element-wise kernels ------------------------------------------------------------
// W consecutive values to / from fp32: W = 8 is one 16-byte access (load8 / store8), W = 1 one value.
template <int W, class T> __device__ __forceinline__ void load_w(const T* p, float (&f)[W]) {
  if constexpr (W == 8) load8(p, f);
  else f[0] = to_f32(p[0]);
}
template <int W, class T> __device__ __forceinline__ void store_w(T* p, const float (&f)[W]) {
  if constexpr (W == 8) store8(p, f);
  else p[0] = from_f32<T>(f[0]);
}

// A grid-stride loop over n elements calling op.template apply<W>(i) for elements
// i .. i + W - 1: W = 8 when by8 (every array 16-byte aligned, n % 8 == 0), else W = 1.
template <class Op> __global__ void elementwise_kernel(Op op, int64_t n, bool by8) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, stride = int64_t(gridDim.x) * blockDim.x;
  if (by8) {
    for (int64_t i = t * 8; i < n; i += stride * 8) op.template apply<8>(i);
  } else {
    for (int64_t i = t; i < n; i += stride) op.template apply<1>(i);
  }
}
// Launches elementwise_kernel on the stream; `arrays` are every pointer op reads or
// writes (their alignment picks the 16-byte path). The caller checks the launch.
template <class Op, class... P> void launch_elementwise(cudaStream_t stream, const Op& op, int64_t n, const P*... arrays) {
  constexpr int kThreads = 256;
  const bool by8 = n % 8 == 0 && aligned16(arrays...);
  elementwise_kernel<Op><<<grid_stride_blocks(by8 ? n / 8 : n, kThreads), kThreads, 0, stream>>>(op, n, by8);
}

// ---- column sums of per-chunk partials ------------------------------------------------
// Weight gradients of per-row layers (RMSNorm's w, the short conv's taps) are summed per
// row chunk first, then over the chunks by column_sums: emit(c, sum over rows of
// partial[row, c]) once per column, the sum in a fixed order (deterministic). A block takes
// 32 columns; its 8 warps' lanes sum every 8th row (warp w: rows w, w + 8, ...), then the 8
// sums are added in warp order: one thread per column over thousands of rows left most of
// the device idle (GDN's o_norm: C = 192 over B Tn Hv rows).
constexpr int kColumnSumCols = 32, kColumnSumGroups = 8;
template <class Emit>
__global__ void column_sum_kernel(const float* __restrict__ partial, int64_t rows, int64_t cols, Emit emit) {
  __shared__ float sums[kColumnSumGroups][kColumnSumCols];
  const int lane = int(threadIdx.x) % kColumnSumCols, group = int(threadIdx.x) / kColumnSumCols;
  const int64_t c = int64_t(blockIdx.x) * kColumnSumCols + lane;
  float s = 0.f;
  if (c < cols)
    for (int64_t r = group; r < rows; r += kColumnSumGroups) s += partial[r * cols + c];
  sums[group][lane] = s;
  __syncthreads();
  if (group == 0 && c < cols) {
    float t = 0.f;
    for (int g = 0; g < kColumnSumGroups; ++g) t += sums[g][lane];
    emit(c, t);
  }
}
template <class Emit> void column_sums(cudaStream_t stream, const float* partial, int64_t rows, int64_t cols, const Emit& emit) {
  column_sum_kernel<Emit><<<unsigned(ceil_div(cols, kColumnSumCols)), kColumnSumCols * kColumnSumGroups, 0, stream>>>(
      partial, rows, cols, emit);
}

}  // namespace hysim::cuda
