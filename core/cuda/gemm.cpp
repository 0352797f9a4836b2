#include "core/cuda/gemm.h"

#include <stdexcept>
#include <string>

namespace hysim::cuda {

namespace {

template <class T> constexpr cudaDataType_t data_type();
template <> constexpr cudaDataType_t data_type<float>() { return CUDA_R_32F; }
template <> constexpr cudaDataType_t data_type<bf16>() { return CUDA_R_16BF; }

// Largest power of two (<= 256) dividing the address: cuBLASLt's heuristic assumes 256-byte
// aligned operands unless told otherwise, and would pick kernels that fault on others.
uint32_t alignment_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && (a % al) != 0) al /= 2;
  return al;
}

struct Operand {
  const void* ptr;
  cudaDataType_t type;
  bool transposed;
  int64_t rows, cols, ld;  // as stored, column-major
};

// RAII holders for cuBLASLt descriptors.
struct Desc {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~Desc() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

// Column-major D[m, n] = alpha op(A)[m, k] op(B)[k, n] + beta D. Row-major callers pass the
// transposed problem (a row-major matrix is its transpose in column-major).
void lt_matmul(Context& ctx, const Operand& A, const Operand& B, void* D, cudaDataType_t d_type, int64_t m, int64_t n,
               int64_t k, float beta, const std::string& what) {
  Desc desc;
  const cublasComputeType_t compute = CUBLAS_COMPUTE_32F;  // fp32 accumulate; for fp32 inputs no TF32
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc.op, compute, CUDA_R_32F), what);
  const cublasOperation_t ta = A.transposed ? CUBLAS_OP_T : CUBLAS_OP_N, tb = B.transposed ? CUBLAS_OP_T : CUBLAS_OP_N;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), what);
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), what);
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&desc.a, A.type, A.rows, A.cols, A.ld), what);
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&desc.b, B.type, B.rows, B.cols, B.ld), what);
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&desc.d, d_type, m, n, m), what);

  const uint32_t al_a = alignment_of(A.ptr), al_b = alignment_of(B.ptr), al_d = alignment_of(D);
  const std::string key = std::to_string(m) + "," + std::to_string(n) + "," + std::to_string(k) + "," +
                          std::to_string(int(ta)) + std::to_string(int(tb)) + "," + std::to_string(A.ld) + "," +
                          std::to_string(B.ld) + "," + std::to_string(int(A.type)) + "," +
                          std::to_string(int(d_type)) + "," + (beta != 0.f ? "acc" : "set") + "," +
                          std::to_string(al_a) + "," + std::to_string(al_b) + "," + std::to_string(al_d);
  auto it = ctx.gemm_algos.find(key);
  if (it == ctx.gemm_algos.end()) {
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&desc.pref), what);
    const size_t ws = Context::kLtWorkspaceBytes;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(desc.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                      sizeof ws), what);
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(desc.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a,
                                                      sizeof al_a), what);
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(desc.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b,
                                                      sizeof al_b), what);
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(desc.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d,
                                                      sizeof al_d), what);
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(desc.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d,
                                                      sizeof al_d), what);
    // Split-K partial sums may only be reduced in fp32 workspace: the in-place and
    // output-type schemes add partials in D's type (several bf16 roundings, and in-place
    // reductions need not run in a fixed order).
    const uint32_t reduction_mask = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(desc.pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                                      &reduction_mask, sizeof reduction_mask), what);
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(ctx.lt, desc.op, desc.a, desc.b, desc.d, desc.d, desc.pref, 1, &res,
                                                &found), what);
    if (found == 0) throw std::runtime_error("cuBLASLt: no algorithm for " + what);
    it = ctx.gemm_algos.emplace(key, res).first;
  }
  const float alpha = 1.f;
  CUBLAS_CHECK(cublasLtMatmul(ctx.lt, desc.op, &alpha, A.ptr, desc.a, B.ptr, desc.b, &beta, D, desc.d, D, desc.d,
                              &it->second.algo, ctx.lt_workspace, Context::kLtWorkspaceBytes, ctx.stream),
               what);
}

void check_shapes(const char* fn, int64_t N, int64_t I, int64_t O) {
  if (N < 0 || I < 0 || O < 0) throw std::invalid_argument(shape_str(std::string(fn) + ": negative shape N, I, O", N, I, O));
}

}  // namespace

// Row-major y[N, O] = x W^T is column-major y^T[O, N] = W x^T. Seen column-major, row-major W[O, I]
// is W^T stored [I, O] (ld I) and x is x^T stored [I, N] (ld I): y^T = op_T(W^T) x^T.
template <class Tin, class Tout>
void linear_forward(Context& ctx, Tout* y, const Tin* x, const Tin* W, int64_t N, int64_t I, int64_t O,
                    bool accumulate) {
  check_shapes("linear_forward", N, I, O);
  if (N == 0 || O == 0) return;
  const std::string what = shape_str("linear_forward N, I, O", N, I, O);
  if (I == 0) {  // empty reduction: y = 0 (or unchanged)
    if (!accumulate) CUDA_CHECK(cudaMemsetAsync(y, 0, size_t(N * O) * sizeof(Tout), ctx.stream), what);
    return;
  }
  const cudaDataType_t t = data_type<Tin>();
  lt_matmul(ctx, Operand{W, t, true, I, O, I}, Operand{x, t, false, I, N, I}, y, data_type<Tout>(), O, N, I,
            accumulate ? 1.f : 0.f, what);
}

// dx^T[I, N] = W_cm[I, O] dy^T[O, N];  dW^T[I, O] += x^T[I, N] (dy^T)^T[N, O].
template <class Tin, class Tdx>
void linear_backward(Context& ctx, Tdx* dx, float* dW, const Tin* dy, const Tin* x, const Tin* W, int64_t N,
                     int64_t I, int64_t O, bool accumulate_dx) {
  check_shapes("linear_backward", N, I, O);
  const cudaDataType_t t = data_type<Tin>();
  if (dx && N > 0 && I > 0) {
    const std::string what = shape_str("linear_backward dx: N, I, O", N, I, O);
    if (O == 0) {
      if (!accumulate_dx) CUDA_CHECK(cudaMemsetAsync(dx, 0, size_t(N * I) * sizeof(Tdx), ctx.stream), what);
    } else {
      lt_matmul(ctx, Operand{W, t, false, I, O, I}, Operand{dy, t, false, O, N, O}, dx, data_type<Tdx>(), I, N, O,
                accumulate_dx ? 1.f : 0.f, what);
    }
  }
  if (dW && N > 0 && I > 0 && O > 0) {
    const std::string what = shape_str("linear_backward dW: N, I, O", N, I, O);
    lt_matmul(ctx, Operand{x, t, false, I, N, I}, Operand{dy, t, true, O, N, O}, dW, CUDA_R_32F, I, O, N, 1.f,
              what);
  }
}

template void linear_forward<float, float>(Context&, float*, const float*, const float*, int64_t, int64_t, int64_t, bool);
template void linear_forward<bf16, bf16>(Context&, bf16*, const bf16*, const bf16*, int64_t, int64_t, int64_t, bool);
template void linear_forward<bf16, float>(Context&, float*, const bf16*, const bf16*, int64_t, int64_t, int64_t, bool);
template void linear_backward<float, float>(Context&, float*, float*, const float*, const float*, const float*, int64_t,
                                            int64_t, int64_t, bool);
template void linear_backward<bf16, bf16>(Context&, bf16*, float*, const bf16*, const bf16*, const bf16*, int64_t,
                                          int64_t, int64_t, bool);
template void linear_backward<bf16, float>(Context&, float*, float*, const bf16*, const bf16*, const bf16*, int64_t,
                                           int64_t, int64_t, bool);

}  // namespace hysim::cuda
