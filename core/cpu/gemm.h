// Dense projections on the CPU through Eigen. Weights use PyTorch's Linear layout
// W[out, in] (so imported checkpoints need no transposes); activations are row-major
// [N, features].
//
// Determinism: Eigen's own multi-threaded GEMM picks its blocking of the reduction from
// the thread count, so sums round differently with 1 and 2 threads. We therefore split
// the OUTPUT into fixed row blocks, one OpenMP task each, and run a single-threaded
// Eigen product per block: every output element is reduced in the same order whatever
// the thread count. (Eigen's coefficient-based path for tiny products, whose rounding
// depends on buffer alignment, is disabled by EIGEN_GEMM_TO_COEFFBASED_THRESHOLD=0,
// set for all targets in CMakeLists.txt.)
#pragma once
#include <Eigen/Core>
#include <algorithm>
#include <cstdint>

namespace hysim::cpu {

template <class T> using MatRM = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T> using VecX = Eigen::Matrix<T, Eigen::Dynamic, 1>;
template <class T> using MapRM = Eigen::Map<MatRM<T>>;
template <class T> using CMapRM = Eigen::Map<const MatRM<T>>;
using Stride = Eigen::OuterStride<Eigen::Dynamic>;
template <class T> using SMapRM = Eigen::Map<MatRM<T>, Eigen::Unaligned, Stride>;
template <class T> using CSMapRM = Eigen::Map<const MatRM<T>, Eigen::Unaligned, Stride>;

// Rows of the output per parallel task: large enough for Eigen's kernels to run at speed.
constexpr int64_t kGemmRowBlock = 64;

// y[N, O] = x[N, I] W[O, I]^T  (accumulate = true: y += ...)
template <class T>
void linear_forward(T* y, const T* x, const T* W, int64_t N, int64_t I, int64_t O, bool accumulate = false) {
  CMapRM<T> Wm(W, O, I);
#pragma omp parallel for schedule(static)
  for (int64_t r0 = 0; r0 < N; r0 += kGemmRowBlock) {
    const int64_t rows = std::min(kGemmRowBlock, N - r0);
    MapRM<T> Y(y + r0 * O, rows, O);
    CMapRM<T> X(x + r0 * I, rows, I);
    if (accumulate) Y.noalias() += X * Wm.transpose();
    else Y.noalias() = X * Wm.transpose();
  }
}

// dx[N, I] = dy W (overwritten; or += with accumulate_dx; skipped if dx == nullptr);
// dW[O, I] += dy^T x (parameter gradients always accumulate; skipped if dW == nullptr).
template <class T>
void linear_backward(T* dx, T* dW, const T* dy, const T* x, const T* W, int64_t N, int64_t I, int64_t O,
                     bool accumulate_dx = false) {
  if (dx) {
    CMapRM<T> Wm(W, O, I);
#pragma omp parallel for schedule(static)
    for (int64_t r0 = 0; r0 < N; r0 += kGemmRowBlock) {
      const int64_t rows = std::min(kGemmRowBlock, N - r0);
      MapRM<T> dX(dx + r0 * I, rows, I);
      CMapRM<T> dY(dy + r0 * O, rows, O);
      if (accumulate_dx) dX.noalias() += dY * Wm;
      else dX.noalias() = dY * Wm;
    }
  }
  if (dW) {
    // Block over rows of dW (output features); each block reduces over all N serially.
    const int64_t ob = 16;
    CMapRM<T> X(x, N, I);
#pragma omp parallel for schedule(static)
    for (int64_t o0 = 0; o0 < O; o0 += ob) {
      const int64_t rows = std::min(ob, O - o0);
      CSMapRM<T> dY(dy + o0, N, rows, Stride(O));
      MapRM<T> dWm(dW + o0 * I, rows, I);
      dWm.noalias() += dY.transpose() * X;
    }
  }
}

}  // namespace hysim::cpu
