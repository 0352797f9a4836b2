#include "layers/mamba2.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/cpu/gemm.h"
#include "core/cpu/math.h"
#include "layers/short_conv.h"

namespace hysim {

namespace {

template <class T> using Mat = cpu::MatRM<T>;
template <class T> using Vec = cpu::VecX<T>;
// Row-major views of token rows inside wider rows (x, B, C of one head in xbc; one head of y).
template <class T> using StridedMap = cpu::SMapRM<T>;
template <class T> using CStridedMap = cpu::CSMapRM<T>;

// Index helpers shared by both cores: where head h's x, B, C live in a token row of xbc.
struct SsmLayout {
  int64_t H, P, N, G, DI, CD, heads_per_group;
  explicit SsmLayout(const Mamba2Config& c)
      : H(c.n_heads()), P(c.headdim), N(c.d_state), G(c.n_groups), DI(c.d_inner()), CD(c.conv_dim()),
        heads_per_group(c.n_heads() / c.n_groups) {}
  int64_t x_off(int64_t h) const { return h * P; }
  int64_t b_off(int64_t h) const { return DI + (h / heads_per_group) * N; }
  int64_t c_off(int64_t h) const { return DI + G * N + (h / heads_per_group) * N; }
};

// Heads of one group share B and C, so the backwards first write per-head dB, dC
// ([B, T, H, N]) and dA ([B, H]) and then sum heads (and batches) in a fixed order:
// no atomics, the same result for any thread count.
template <class T>
void reduce_head_grads(const SsmLayout& s, T* dxbc, T* dA, const std::vector<T>& dB_heads,
                       const std::vector<T>& dC_heads, const std::vector<T>& dA_parts, int64_t B, int64_t Tn) {
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < B * Tn; ++bt) {
    T* row = dxbc + bt * s.CD;
    for (int64_t g = 0; g < s.G; ++g)
      for (int64_t n = 0; n < s.N; ++n) {
        T sb = 0, sc = 0;
        for (int64_t h = g * s.heads_per_group; h < (g + 1) * s.heads_per_group; ++h) {
          sb += dB_heads[(bt * s.H + h) * s.N + n];
          sc += dC_heads[(bt * s.H + h) * s.N + n];
        }
        row[s.DI + g * s.N + n] = sb;
        row[s.DI + s.G * s.N + g * s.N + n] = sc;
      }
  }
  for (int64_t h = 0; h < s.H; ++h) {
    T sa = 0;
    for (int64_t b = 0; b < B; ++b) sa += dA_parts[b * s.H + h];
    dA[h] = sa;
  }
}

// Decays inside one chunk, from a_s = dt_s A (s < L):
//   acum[t]     = sum_{r <= t} a_r                  (log decay from the chunk start through t)
//   dend[s]     = exp(sum_{s < r < L} a_r)          (decay from token s to the chunk end)
//   decay(t, s) = exp(sum_{s < r <= t} a_r) if s <= t, else 0
// Built from sums of consecutive a_r (the "stable segsum") rather than differences of
// cumulative sums, so no cancellation in float. The backward differentiates the same
// quantities through acum (decay(t, s) = exp(acum[t] - acum[s]), dend[s] = exp(acum[L-1] - acum[s])).
template <class T> void chunk_decays(const Vec<T>& a, Vec<T>& acum, Vec<T>& dend, Mat<T>& decay) {
  const int64_t L = a.size();
  acum.resize(L);
  dend.resize(L);
  decay.setZero(L, L);
  T run = 0;
  for (int64_t t = 0; t < L; ++t) acum[t] = (run += a[t]);
  run = 0;
  for (int64_t s = L - 1; s >= 0; --s) {
    dend[s] = std::exp(run);
    run += a[s];
  }
  for (int64_t t = 0; t < L; ++t) {
    run = 0;
    for (int64_t s = t; s >= 0; --s) {
      decay(t, s) = std::exp(run);
      run += a[s];
    }
  }
}

}  // namespace

// ---- SSM core: token-by-token recurrence (the reference) ----------------------------

template <class T>
void mamba2_recurrent_forward(const Mamba2Config& c, T* y, const T* xbc, const T* dt, const T* A, int64_t B,
                              int64_t Tn) {
  const SsmLayout s(c);
  const int64_t P = s.P, N = s.N;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < s.H; ++h) {
      std::vector<T> state(P * N, T(0));  // h[p, n]
      for (int64_t t = 0; t < Tn; ++t) {
        const int64_t bt = b * Tn + t;
        const T* xt = xbc + bt * s.CD + s.x_off(h);
        const T* Bt = xbc + bt * s.CD + s.b_off(h);
        const T* Ct = xbc + bt * s.CD + s.c_off(h);
        const T dtt = dt[bt * s.H + h];
        const T decay = std::exp(dtt * A[h]);
        T* yt = y + bt * s.DI + h * P;
        for (int64_t p = 0; p < P; ++p) {
          const T u = dtt * xt[p];
          T acc = 0;
          for (int64_t n = 0; n < N; ++n) {
            T& hpn = state[p * N + n];
            hpn = decay * hpn + u * Bt[n];
            acc += hpn * Ct[n];
          }
          yt[p] = acc;
        }
      }
    }
}

// Reverse-time sweep with dh = dL/dh_t; the states h_t are recomputed first.
//   y_t = h_t C_t:                      dC_t = h_t^T dy_t,  dh += dy_t C_t^T
//   h_t = e_t h_{t-1} + dt_t x_t B_t^T: dx_t = dt_t dh B_t,  dB_t = dt_t dh^T x_t,
//                                       ddt_t = x_t^T dh B_t + <dh, h_{t-1}> e_t A,  dA += <dh, h_{t-1}> e_t dt_t,
//                                       dh <- e_t dh
template <class T>
void mamba2_recurrent_backward(const Mamba2Config& c, T* dxbc, T* ddt, T* dA, const T* dy, const T* xbc,
                               const T* dt, const T* A, int64_t B, int64_t Tn) {
  const SsmLayout s(c);
  const int64_t P = s.P, N = s.N, PN = P * N;
  std::vector<T> dB_heads(B * Tn * s.H * N), dC_heads(B * Tn * s.H * N), dA_parts(B * s.H);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < s.H; ++h) {
      std::vector<T> states((Tn + 1) * PN, T(0));  // states[t + 1] = h_t; states[0] = h_{-1} = 0
      for (int64_t t = 0; t < Tn; ++t) {
        const int64_t bt = b * Tn + t;
        const T* xt = xbc + bt * s.CD + s.x_off(h);
        const T* Bt = xbc + bt * s.CD + s.b_off(h);
        const T dtt = dt[bt * s.H + h];
        const T decay = std::exp(dtt * A[h]);
        const T* prev = states.data() + t * PN;
        T* cur = states.data() + (t + 1) * PN;
        for (int64_t p = 0; p < P; ++p)
          for (int64_t n = 0; n < N; ++n) cur[p * N + n] = decay * prev[p * N + n] + dtt * xt[p] * Bt[n];
      }
      std::vector<T> dh(PN, T(0));
      T dA_sum = 0;
      for (int64_t t = Tn - 1; t >= 0; --t) {
        const int64_t bt = b * Tn + t;
        const T* xt = xbc + bt * s.CD + s.x_off(h);
        const T* Bt = xbc + bt * s.CD + s.b_off(h);
        const T* Ct = xbc + bt * s.CD + s.c_off(h);
        const T* dyt = dy + bt * s.DI + h * P;
        const T dtt = dt[bt * s.H + h];
        const T decay = std::exp(dtt * A[h]);
        const T* prev = states.data() + t * PN;
        const T* cur = states.data() + (t + 1) * PN;
        T* dCt = dC_heads.data() + (bt * s.H + h) * N;
        T* dBt = dB_heads.data() + (bt * s.H + h) * N;
        T* dxt = dxbc + bt * s.CD + s.x_off(h);
        for (int64_t n = 0; n < N; ++n) {
          T acc = 0;
          for (int64_t p = 0; p < P; ++p) acc += cur[p * N + n] * dyt[p];
          dCt[n] = acc;
        }
        for (int64_t p = 0; p < P; ++p)
          for (int64_t n = 0; n < N; ++n) dh[p * N + n] += dyt[p] * Ct[n];
        T d_decay = 0, x_dh_B = 0;
        for (int64_t p = 0; p < P; ++p) {
          T dhB = 0;
          for (int64_t n = 0; n < N; ++n) {
            dhB += dh[p * N + n] * Bt[n];
            d_decay += dh[p * N + n] * prev[p * N + n];
          }
          dxt[p] = dtt * dhB;
          x_dh_B += xt[p] * dhB;
        }
        for (int64_t n = 0; n < N; ++n) {
          T acc = 0;
          for (int64_t p = 0; p < P; ++p) acc += dh[p * N + n] * xt[p];
          dBt[n] = dtt * acc;
        }
        ddt[bt * s.H + h] = x_dh_B + d_decay * decay * A[h];
        dA_sum += d_decay * decay * dtt;
        for (int64_t i = 0; i < PN; ++i) dh[i] *= decay;
      }
      dA_parts[b * s.H + h] = dA_sum;
    }
  reduce_head_grads(s, dxbc, dA, dB_heads, dC_heads, dA_parts, B, Tn);
}

// ---- SSM core: chunked SSD ------------------------------------------------------------
//
// Per (batch, head), chunks of L tokens in order, with S the state entering the chunk:
//   Y   = (C B^T o decay) diag(dt) X  +  diag(exp(acum)) C S^T    (intra-chunk + state-to-output)
//   S' = exp(acum[L-1]) S  +  X^T diag(dend o dt) B                (state passing + chunk state)
// X [L, P], B and C [L, N] are the chunk's rows; S [P, N]. The entering states are saved.

template <class T>
void mamba2_chunk_forward(const Mamba2Config& c, T* y, T* chunk_states, const T* xbc, const T* dt, const T* A,
                          int64_t B, int64_t Tn) {
  const SsmLayout s(c);
  const int64_t P = s.P, N = s.N, Q = c.chunk_size, NC = c.n_chunks(Tn);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < s.H; ++h) {
      Mat<T> state = Mat<T>::Zero(P, N), decay, M;
      Vec<T> a, acum, dend, dtv;
      for (int64_t k = 0; k < NC; ++k) {
        const int64_t t0 = k * Q, L = std::min(Q, Tn - t0);
        const T* rows = xbc + (b * Tn + t0) * s.CD;
        CStridedMap<T> X(rows + s.x_off(h), L, P, Eigen::OuterStride<>(s.CD));
        CStridedMap<T> Bm(rows + s.b_off(h), L, N, Eigen::OuterStride<>(s.CD));
        CStridedMap<T> Cm(rows + s.c_off(h), L, N, Eigen::OuterStride<>(s.CD));
        StridedMap<T> Y(y + (b * Tn + t0) * s.DI + h * P, L, P, Eigen::OuterStride<>(s.DI));
        dtv.resize(L);
        for (int64_t t = 0; t < L; ++t) dtv[t] = dt[(b * Tn + t0 + t) * s.H + h];
        a = dtv * A[h];
        chunk_decays(a, acum, dend, decay);
        const Vec<T> eacum = acum.array().exp();

        Eigen::Map<Mat<T>>(chunk_states + ((b * s.H + h) * NC + k) * P * N, P, N) = state;
        M.noalias() = (Cm * Bm.transpose()).cwiseProduct(decay) * dtv.asDiagonal();
        Y.noalias() = M * X;
        Y.noalias() += eacum.asDiagonal() * (Cm * state.transpose());
        const Vec<T> w = dend.cwiseProduct(dtv);
        const Mat<T> wB = w.asDiagonal() * Bm;
        state = eacum[L - 1] * state;
        state.noalias() += X.transpose() * wB;
      }
    }
}

// Exact gradient of the chunked computation, chunks in reverse with dS = dL/dS' (the
// state leaving the chunk). Log-decay gradients are gathered as dacum[t] = dL/dacum[t]
// and turned into da by a reverse cumulative sum (acum[t] = sum_{r <= t} a_r):
//   S' = e S + X^T diag(w) B, e = exp(acum[L-1]), w = dend o dt:
//       dS_prev = e dS + ...,  dacum[L-1] += e <S, dS>,
//       dX = diag(w) B dS^T,  dB = diag(w) X dS,  dw = rowsum(X o (B dS^T)),
//       ddt += dend o dw,  dacum[L-1] += sum(w o dw),  dacum -= w o dw
//   Y_off = diag(exp(acum)) C S^T:
//       dC = diag(exp(acum)) dY S,  dS_prev += (diag(exp(acum)) dY)^T C,  dacum += rowsum(dY o Y_off)
//   Y_diag = M X, M = (C B^T o decay) diag(dt), dM = dY X^T:
//       dX += M^T dY,  ddt += colsum(dM o C B^T o decay),  dCB = (dM o decay) diag(dt),
//       dC += dCB B,  dB += dCB^T C,  dacum += rowsum(dM o M) - colsum(dM o M)
//   a = dt A:  da = revcumsum(dacum),  ddt += A da,  dA += <da, dt>
template <class T>
void mamba2_chunk_backward(const Mamba2Config& c, T* dxbc, T* ddt, T* dA, const T* dy, const T* xbc, const T* dt,
                           const T* A, const T* chunk_states, int64_t B, int64_t Tn) {
  const SsmLayout s(c);
  const int64_t P = s.P, N = s.N, Q = c.chunk_size, NC = c.n_chunks(Tn);
  std::vector<T> dB_heads(B * Tn * s.H * N), dC_heads(B * Tn * s.H * N), dA_parts(B * s.H);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < s.H; ++h) {
      Mat<T> dstate = Mat<T>::Zero(P, N), decay, CBd, M, dM, dCB, U;
      Vec<T> a, acum, dend, dtv, dacum, ddt_chunk;
      T dA_sum = 0;
      for (int64_t k = NC - 1; k >= 0; --k) {
        const int64_t t0 = k * Q, L = std::min(Q, Tn - t0);
        const T* rows = xbc + (b * Tn + t0) * s.CD;
        CStridedMap<T> X(rows + s.x_off(h), L, P, Eigen::OuterStride<>(s.CD));
        CStridedMap<T> Bm(rows + s.b_off(h), L, N, Eigen::OuterStride<>(s.CD));
        CStridedMap<T> Cm(rows + s.c_off(h), L, N, Eigen::OuterStride<>(s.CD));
        CStridedMap<T> dY(dy + (b * Tn + t0) * s.DI + h * P, L, P, Eigen::OuterStride<>(s.DI));
        StridedMap<T> dX(dxbc + (b * Tn + t0) * s.CD + s.x_off(h), L, P, Eigen::OuterStride<>(s.CD));
        StridedMap<T> dBm(dB_heads.data() + ((b * Tn + t0) * s.H + h) * N, L, N, Eigen::OuterStride<>(s.H * N));
        StridedMap<T> dCm(dC_heads.data() + ((b * Tn + t0) * s.H + h) * N, L, N, Eigen::OuterStride<>(s.H * N));
        Eigen::Map<const Mat<T>> S(chunk_states + ((b * s.H + h) * NC + k) * P * N, P, N);
        dtv.resize(L);
        for (int64_t t = 0; t < L; ++t) dtv[t] = dt[(b * Tn + t0 + t) * s.H + h];
        a = dtv * A[h];
        chunk_decays(a, acum, dend, decay);
        const Vec<T> eacum = acum.array().exp();
        const T e_end = eacum[L - 1];
        dacum.setZero(L);

        // state passing and chunk state: S' = e_end S + X^T diag(w) B
        dacum[L - 1] += e_end * S.cwiseProduct(dstate).sum();
        const Vec<T> w = dend.cwiseProduct(dtv);
        U.noalias() = Bm * dstate.transpose();  // [L, P]
        dX.noalias() = w.asDiagonal() * U;
        dBm.noalias() = w.asDiagonal() * (X * dstate);
        const Vec<T> dw = X.cwiseProduct(U).rowwise().sum();
        ddt_chunk = dend.cwiseProduct(dw);
        const Vec<T> g = w.cwiseProduct(dw);
        dacum[L - 1] += g.sum();
        dacum -= g;

        // state-to-output: Y_off = diag(exp(acum)) C S^T
        const Mat<T> Yoff = eacum.asDiagonal() * (Cm * S.transpose());
        dacum += dY.cwiseProduct(Yoff).rowwise().sum();
        const Mat<T> dYe = eacum.asDiagonal() * dY;
        dCm.noalias() = dYe * S;
        dstate *= e_end;
        dstate.noalias() += dYe.transpose() * Cm;  // now dL/dS for the previous chunk

        // intra-chunk: Y_diag = M X, M = (C B^T o decay) diag(dt)
        CBd.noalias() = (Cm * Bm.transpose()).cwiseProduct(decay);
        M.noalias() = CBd * dtv.asDiagonal();
        dM.noalias() = dY * X.transpose();
        dX.noalias() += M.transpose() * dY;
        ddt_chunk += dM.cwiseProduct(CBd).colwise().sum().transpose();
        dCB.noalias() = dM.cwiseProduct(decay) * dtv.asDiagonal();
        dCm.noalias() += dCB * Bm;
        dBm.noalias() += dCB.transpose() * Cm;
        const Mat<T> gM = dM.cwiseProduct(M);
        dacum += gM.rowwise().sum();
        dacum -= gM.colwise().sum().transpose();

        // a = dt A, acum = cumsum(a)
        T da = 0;
        for (int64_t t = L - 1; t >= 0; --t) {
          da += dacum[t];
          ddt_chunk[t] += da * A[h];
          dA_sum += da * dtv[t];
        }
        for (int64_t t = 0; t < L; ++t) ddt[(b * Tn + t0 + t) * s.H + h] = ddt_chunk[t];
      }
      dA_parts[b * s.H + h] = dA_sum;
    }
  reduce_head_grads(s, dxbc, dA, dB_heads, dC_heads, dA_parts, B, Tn);
}

// ---- the full layer -----------------------------------------------------------------

template <class T>
void mamba2_forward(const Mamba2Config& c, const Mamba2Params<T>& p, const Mamba2Acts<T>& a, T* y, const T* x,
                    int64_t B, int64_t Tn) {
  const int64_t BT = B * Tn, D = c.d_model, DI = c.d_inner(), CD = c.conv_dim(), DIP = c.d_in_proj();
  const int64_t H = c.n_heads(), P = c.headdim, G = c.n_groups, GS = DI / G;
  cpu::linear_forward(a.zxbcdt, x, p.in_proj, BT, D, DIP);
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < BT; ++bt) {
    const T* row = a.zxbcdt + bt * DIP;
    std::copy(row + DI, row + DI + CD, a.xbc_in + bt * CD);
    for (int64_t h = 0; h < H; ++h) a.dt[bt * H + h] = cpu::softplus(row[DI + CD + h] + p.dt_bias[h]);
  }
  short_conv_forward(a.xbc, a.xbc_pre, a.xbc_in, p.conv1d_weight, p.conv1d_bias, B, Tn, CD, c.conv_size, true);
  std::vector<T> A(H);
  for (int64_t h = 0; h < H; ++h) A[h] = -std::exp(p.A_log[h]);
  if (c.chunk_size > 0) mamba2_chunk_forward(c, a.y, a.chunk_states, a.xbc, a.dt, A.data(), B, Tn);
  else mamba2_recurrent_forward(c, a.y, a.xbc, a.dt, A.data(), B, Tn);
  // D skip, gate, then RMSNorm per group of GS channels (gate before the norm).
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < BT; ++bt) {
    const T* z = a.zxbcdt + bt * DIP;
    const T* xs = a.xbc + bt * CD;
    T* yr = a.y + bt * DI;
    T* yg = a.y_gated + bt * DI;
    for (int64_t i = 0; i < DI; ++i) {
      yr[i] += p.D[i / P] * xs[i];
      yg[i] = yr[i] * cpu::silu(z[i]);
    }
    for (int64_t g = 0; g < G; ++g) {
      const T* v = yg + g * GS;
      double ss = 0;  // in double, as in layers/rmsnorm.cpp
      for (int64_t j = 0; j < GS; ++j) ss += double(v[j]) * double(v[j]);
      const T r = T(1.0 / std::sqrt(ss / double(GS) + c.norm_eps));
      a.rstd[bt * G + g] = r;
      for (int64_t j = 0; j < GS; ++j) a.y_norm[bt * DI + g * GS + j] = v[j] * r * p.norm_w[g * GS + j];
    }
  }
  cpu::linear_forward(y, a.y_norm, p.out_proj, BT, DI, D);
}

template <class T>
void mamba2_backward(const Mamba2Config& c, const Mamba2Params<T>& p, const Mamba2Params<T>& grad,
                     const Mamba2Acts<T>& a, T* dx, const T* dy, const T* x, int64_t B, int64_t Tn) {
  const int64_t BT = B * Tn, D = c.d_model, DI = c.d_inner(), CD = c.conv_dim(), DIP = c.d_in_proj();
  const int64_t H = c.n_heads(), P = c.headdim, G = c.n_groups, GS = DI / G;
  std::vector<T> d_ynorm(BT * DI), d_y(BT * DI), d_zxbcdt(BT * DIP), d_xbc(BT * CD), d_xbc_in(BT * CD), d_dt(BT * H),
      dA(H), A(H);
  for (int64_t h = 0; h < H; ++h) A[h] = -std::exp(p.A_log[h]);

  cpu::linear_backward(d_ynorm.data(), grad.out_proj, dy, a.y_norm, p.out_proj, BT, DI, D);
  // norm_w: sum over rows, parallel over channels (fixed order).
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < DI; ++i) {
    T sw = 0;
    for (int64_t bt = 0; bt < BT; ++bt) sw += d_ynorm[bt * DI + i] * a.y_gated[bt * DI + i] * a.rstd[bt * G + i / GS];
    grad.norm_w[i] += sw;
  }
  // Group RMSNorm (v = y_gated, r = rstd, gw = d_ynorm w): dv = r (gw - v r mean(gw v r));
  // then the gate yg = y silu(z): dy = dv silu(z), dz = dv y silu'(z).
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < BT; ++bt) {
    const T* z = a.zxbcdt + bt * DIP;
    T* dz = d_zxbcdt.data() + bt * DIP;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t o = bt * DI + g * GS;
      const T r = a.rstd[bt * G + g];
      T m = 0;
      for (int64_t j = 0; j < GS; ++j) m += d_ynorm[o + j] * p.norm_w[g * GS + j] * a.y_gated[o + j] * r;
      m /= T(GS);
      for (int64_t j = 0; j < GS; ++j) {
        const int64_t i = g * GS + j;
        const T dv = r * (d_ynorm[o + j] * p.norm_w[i] - a.y_gated[o + j] * r * m);
        d_y[o + j] = dv * cpu::silu(z[i]);
        dz[i] = dv * a.y[o + j] * cpu::silu_grad(z[i]);
      }
    }
  }
  // D skip: y += D x  (per head)
#pragma omp parallel for schedule(static)
  for (int64_t h = 0; h < H; ++h) {
    T sd = 0;
    for (int64_t bt = 0; bt < BT; ++bt)
      for (int64_t q = 0; q < P; ++q) sd += d_y[bt * DI + h * P + q] * a.xbc[bt * CD + h * P + q];
    grad.D[h] += sd;
  }
  if (c.chunk_size > 0)
    mamba2_chunk_backward(c, d_xbc.data(), d_dt.data(), dA.data(), d_y.data(), a.xbc, a.dt, A.data(), a.chunk_states,
                          B, Tn);
  else mamba2_recurrent_backward(c, d_xbc.data(), d_dt.data(), dA.data(), d_y.data(), a.xbc, a.dt, A.data(), B, Tn);
  // dt = softplus(u), u = dt_raw + dt_bias: du = ddt sigmoid(u). Also the D path into x.
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < BT; ++bt) {
    for (int64_t i = 0; i < DI; ++i) d_xbc[bt * CD + i] += p.D[i / P] * d_y[bt * DI + i];
    const T* raw = a.zxbcdt + bt * DIP + DI + CD;
    for (int64_t h = 0; h < H; ++h)
      d_zxbcdt[bt * DIP + DI + CD + h] = d_dt[bt * H + h] * cpu::sigmoid(raw[h] + p.dt_bias[h]);
  }
  for (int64_t h = 0; h < H; ++h) {
    T sb = 0;
    for (int64_t bt = 0; bt < BT; ++bt) sb += d_zxbcdt[bt * DIP + DI + CD + h];
    grad.dt_bias[h] += sb;
    grad.A_log[h] += dA[h] * A[h];  // A = -exp(A_log): dA/dA_log = A
  }
  short_conv_backward(d_xbc_in.data(), grad.conv1d_weight, grad.conv1d_bias, d_xbc.data(), a.xbc_in, a.xbc_pre,
                      p.conv1d_weight, B, Tn, CD, c.conv_size, true);
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < BT; ++bt)
    std::copy(d_xbc_in.data() + bt * CD, d_xbc_in.data() + (bt + 1) * CD, d_zxbcdt.data() + bt * DIP + DI);
  cpu::linear_backward(dx, grad.in_proj, d_zxbcdt.data(), x, p.in_proj, BT, D, DIP);
}

// Counts follow the code above: 2 per multiply-add, 1 per other add/multiply, 1 per
// exp / softplus / sigmoid (silu = 2); index arithmetic and copies are free.
int64_t mamba2_flops(const Mamba2Config& c, int64_t B, int64_t Tn) {
  const int64_t BT = B * Tn, D = c.d_model, DI = c.d_inner(), CD = c.conv_dim(), DIP = c.d_in_proj();
  const int64_t H = c.n_heads(), P = c.headdim, N = c.d_state, G = c.n_groups, K = c.conv_size;
  int64_t taps = 0;  // causal conv: token t has min(t + 1, K) taps
  for (int64_t t = 0; t < Tn; ++t) taps += std::min(t + 1, K);
  int64_t f = 2 * BT * D * DIP;          // in_proj
  f += 2 * BT * H;                       // dt: add bias, softplus
  f += B * CD * (2 * taps + 2 * Tn);     // conv multiply-adds + silu
  f += H;                                // A = -exp(A_log)
  int64_t core = 0;                      // per (batch, head)
  if (c.chunk_size > 0) {
    for (int64_t t0 = 0; t0 < Tn; t0 += c.chunk_size) {
      const int64_t L = std::min(c.chunk_size, Tn - t0);
      core += L;                              // a = dt A
      core += 3 * L + L * (L + 1);            // chunk_decays: acum, dend (add + exp), decay (add + exp)
      core += L;                              // exp(acum)
      core += 2 * L * L * N + 2 * L * L;      // M = (C B^T o decay) diag(dt)
      core += 2 * L * L * P;                  // M X
      core += 2 * L * N * P + 2 * L * P;      // diag(exp(acum)) C S^T, added to Y
      core += L + L * N + 2 * P * L * N;      // w = dend dt, diag(w) B, X^T (w B)
      core += 2 * P * N;                      // S' = e S + ...
    }
  } else {
    core = Tn * (2 + P + 5 * P * N);  // exp(dt A); u = dt x; h = e h + u B; y = h C
  }
  f += B * H * core;
  f += 5 * BT * DI;                      // D skip (2), silu(z) (2), gate multiply (1)
  f += 4 * BT * DI + 4 * BT * G;         // group RMSNorm: sum of squares, scale by r and w; rstd
  f += 2 * BT * DI * D;                  // out_proj
  return f;
}

#define INSTANTIATE(T)                                                                                                \
  template void mamba2_forward<T>(const Mamba2Config&, const Mamba2Params<T>&, const Mamba2Acts<T>&, T*, const T*,    \
                                  int64_t, int64_t);                                                                  \
  template void mamba2_backward<T>(const Mamba2Config&, const Mamba2Params<T>&, const Mamba2Params<T>&,               \
                                   const Mamba2Acts<T>&, T*, const T*, const T*, int64_t, int64_t);                  \
  template void mamba2_recurrent_forward<T>(const Mamba2Config&, T*, const T*, const T*, const T*, int64_t, int64_t); \
  template void mamba2_recurrent_backward<T>(const Mamba2Config&, T*, T*, T*, const T*, const T*, const T*,          \
                                             const T*, int64_t, int64_t);                                            \
  template void mamba2_chunk_forward<T>(const Mamba2Config&, T*, T*, const T*, const T*, const T*, int64_t, int64_t); \
  template void mamba2_chunk_backward<T>(const Mamba2Config&, T*, T*, T*, const T*, const T*, const T*, const T*,    \
                                         const T*, int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace hysim
