#include "layers/gated_deltanet.h"

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
// Row-major views of one head's rows inside wider token rows.
template <class T> using StridedMap = cpu::SMapRM<T>;
template <class T> using CStridedMap = cpu::CSMapRM<T>;

// Where value head hv finds its q/k head and its value channels in a token row.
struct GdnLayout {
  int64_t H, Hv, dk, dv, QK, DV, group;
  explicit GdnLayout(const GdnConfig& c)
      : H(c.n_heads), Hv(c.n_v_heads), dk(c.d_head_k), dv(c.d_head_v), QK(c.d_qk()), DV(c.d_v()),
        group(c.n_v_heads / c.n_heads) {}
  int64_t qk_off(int64_t hv) const { return (hv / group) * dk; }
  int64_t v_off(int64_t hv) const { return hv * dv; }
};

// Value heads of one group share q and k, so the core backwards write per-value-head dq, dk
// ([B, T, Hv, dk]) and sum the group here in a fixed order: no atomics, the same result
// for any thread count.
template <class T>
void reduce_group_heads(const GdnLayout& s, T* dq, T* dk, const std::vector<T>& dq_heads,
                        const std::vector<T>& dk_heads, int64_t BT) {
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < BT; ++bt)
    for (int64_t h = 0; h < s.H; ++h)
      for (int64_t i = 0; i < s.dk; ++i) {
        T sq = 0, sk = 0;
        for (int64_t hv = h * s.group; hv < (h + 1) * s.group; ++hv) {
          sq += dq_heads[(bt * s.Hv + hv) * s.dk + i];
          sk += dk_heads[(bt * s.Hv + hv) * s.dk + i];
        }
        dq[bt * s.QK + h * s.dk + i] = sq;
        dk[bt * s.QK + h * s.dk + i] = sk;
      }
}

// Per-chunk quantities of the WY/UT form, shared by the chunked forward and backward
// (which recomputes them from the saved entering state). For a chunk of L tokens:
//   gam[i]    = sum_{r <= i} g_r                  (log decay from the chunk start through i)
//   Gam       = exp(gam)
//   decay     = exp(gam_i - gam_j) for j <= i, else 0
//   A         = strictly lower part of diag(beta) (K K^T o decay)
//   U         = (I + A)^-1 diag(beta) V,   W = (I + A)^-1 diag(beta Gam) K     (forward substitution)
//   Delta     = U - W S^T                       (rows: delta_j = beta_j (v_j - alpha_j S_{j-1} k_j))
//   P         = Q K^T o decay
template <class T> struct ChunkWY {
  Vec<T> beta, gam, Gam;
  Mat<T> decay, KK, A, U, W, Delta, P;

  template <class MK, class MV, class MQ, class MS>
  void compute(const MQ& Q, const MK& K, const MV& V, const MS& S, const T* beta_p, const T* g_p, int64_t stride) {
    const int64_t L = K.rows();
    beta.resize(L);
    gam.resize(L);
    T run = 0;
    for (int64_t i = 0; i < L; ++i) {
      beta[i] = beta_p[i * stride];
      gam[i] = (run += g_p[i * stride]);
    }
    Gam = gam.array().exp();
    decay.setZero(L, L);
    for (int64_t i = 0; i < L; ++i)
      for (int64_t j = 0; j <= i; ++j) decay(i, j) = std::exp(gam[i] - gam[j]);
    KK.noalias() = K * K.transpose();
    A.setZero(L, L);
    A.template triangularView<Eigen::StrictlyLower>() = beta.asDiagonal() * KK.cwiseProduct(decay);
    U.noalias() = beta.asDiagonal() * V;
    A.template triangularView<Eigen::UnitLower>().solveInPlace(U);
    W.noalias() = beta.cwiseProduct(Gam).asDiagonal() * K;
    A.template triangularView<Eigen::UnitLower>().solveInPlace(W);
    Delta = U;
    Delta.noalias() -= W * S.transpose();
    P.noalias() = Q * K.transpose();
    P = P.cwiseProduct(decay);
  }
};

}  // namespace

// ---- core: token-by-token recurrence (the reference) ----------------------------------
//
// Per (batch, value head), with a = S_{t-1} k_t:
//   S_t = alpha_t S_{t-1} + beta_t (v_t - alpha_t a) k_t^T,   o_t = scale S_t q_t
// (the same as alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T).

template <class T>
void gdn_recurrent_forward(const GdnConfig& c, T* o, const T* q, const T* k, const T* v, const T* beta, const T* g,
                           int64_t B, int64_t Tn) {
  const GdnLayout s(c);
  const int64_t dk = s.dk, dv = s.dv;
  const T scale = T(1.0 / std::sqrt(double(dk)));
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t hv = 0; hv < s.Hv; ++hv) {
      std::vector<T> S(dv * dk, T(0)), u(dv);
      for (int64_t t = 0; t < Tn; ++t) {
        const int64_t bt = b * Tn + t;
        const T* qt = q + bt * s.QK + s.qk_off(hv);
        const T* kt = k + bt * s.QK + s.qk_off(hv);
        const T* vt = v + bt * s.DV + s.v_off(hv);
        T* ot = o + bt * s.DV + s.v_off(hv);
        const T bet = beta[bt * s.Hv + hv], alpha = std::exp(g[bt * s.Hv + hv]);
        for (int64_t i = 0; i < dv; ++i) {
          T a = 0;
          for (int64_t j = 0; j < dk; ++j) a += S[i * dk + j] * kt[j];
          u[i] = bet * (vt[i] - alpha * a);
        }
        for (int64_t i = 0; i < dv; ++i) {
          T acc = 0;
          for (int64_t j = 0; j < dk; ++j) {
            T& sij = S[i * dk + j];
            sij = alpha * sij + u[i] * kt[j];
            acc += sij * qt[j];
          }
          ot[i] = scale * acc;
        }
      }
    }
}

// Reverse-time sweep with dS = dL/dS_t; the states are recomputed first. With X = S_{t-1},
// a = X k, r = v - alpha a, w = dS k (after adding the output term):
//   o_t = scale S_t q:  dq = scale S_t^T do,  dS += scale do q^T
//   dv = beta w,  dbeta = r . w,  dalpha = <dS, X> - beta a . w  (dg = alpha dalpha),
//   dk = beta dS^T r - alpha beta X^T w,  dS_{t-1} = alpha (dS - beta w k^T)
template <class T>
void gdn_recurrent_backward(const GdnConfig& c, T* dq, T* dk, T* dv, T* dbeta, T* dg, const T* d_o, const T* q,
                            const T* k, const T* v, const T* beta, const T* g, int64_t B, int64_t Tn) {
  const GdnLayout s(c);
  const int64_t Dk = s.dk, Dv = s.dv, SN = Dk * Dv;
  const T scale = T(1.0 / std::sqrt(double(Dk)));
  std::vector<T> dq_heads(B * Tn * s.Hv * Dk), dk_heads(B * Tn * s.Hv * Dk);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t hv = 0; hv < s.Hv; ++hv) {
      std::vector<T> states((Tn + 1) * SN, T(0));  // states[t + 1] = S_t; states[0] = S_{-1} = 0
      std::vector<T> a(Dv), r(Dv), w(Dv), dS(SN, T(0));
      for (int64_t t = 0; t < Tn; ++t) {
        const int64_t bt = b * Tn + t;
        const T* kt = k + bt * s.QK + s.qk_off(hv);
        const T* vt = v + bt * s.DV + s.v_off(hv);
        const T bet = beta[bt * s.Hv + hv], alpha = std::exp(g[bt * s.Hv + hv]);
        const T* X = states.data() + t * SN;
        T* Sn = states.data() + (t + 1) * SN;
        for (int64_t i = 0; i < Dv; ++i) {
          T ai = 0;
          for (int64_t j = 0; j < Dk; ++j) ai += X[i * Dk + j] * kt[j];
          const T ui = bet * (vt[i] - alpha * ai);
          for (int64_t j = 0; j < Dk; ++j) Sn[i * Dk + j] = alpha * X[i * Dk + j] + ui * kt[j];
        }
      }
      for (int64_t t = Tn - 1; t >= 0; --t) {
        const int64_t bt = b * Tn + t;
        const T* qt = q + bt * s.QK + s.qk_off(hv);
        const T* kt = k + bt * s.QK + s.qk_off(hv);
        const T* vt = v + bt * s.DV + s.v_off(hv);
        const T* dot = d_o + bt * s.DV + s.v_off(hv);
        const T bet = beta[bt * s.Hv + hv], alpha = std::exp(g[bt * s.Hv + hv]);
        const T* X = states.data() + t * SN;
        const T* St = states.data() + (t + 1) * SN;
        T* dqt = dq_heads.data() + (bt * s.Hv + hv) * Dk;
        T* dkt = dk_heads.data() + (bt * s.Hv + hv) * Dk;
        T* dvt = dv + bt * s.DV + s.v_off(hv);
        // output
        for (int64_t j = 0; j < Dk; ++j) {
          T acc = 0;
          for (int64_t i = 0; i < Dv; ++i) acc += St[i * Dk + j] * dot[i];
          dqt[j] = scale * acc;
        }
        for (int64_t i = 0; i < Dv; ++i)
          for (int64_t j = 0; j < Dk; ++j) dS[i * Dk + j] += scale * dot[i] * qt[j];
        // state update
        T dS_X = 0, a_w = 0, r_w = 0;
        for (int64_t i = 0; i < Dv; ++i) {
          T ai = 0, wi = 0;
          for (int64_t j = 0; j < Dk; ++j) {
            ai += X[i * Dk + j] * kt[j];
            wi += dS[i * Dk + j] * kt[j];
            dS_X += dS[i * Dk + j] * X[i * Dk + j];
          }
          a[i] = ai;
          w[i] = wi;
          r[i] = vt[i] - alpha * ai;
          a_w += ai * wi;
          r_w += r[i] * wi;
          dvt[i] = bet * wi;
        }
        dbeta[bt * s.Hv + hv] = r_w;
        dg[bt * s.Hv + hv] = alpha * (dS_X - bet * a_w);
        for (int64_t j = 0; j < Dk; ++j) {
          T dSr = 0, Xw = 0;
          for (int64_t i = 0; i < Dv; ++i) {
            dSr += dS[i * Dk + j] * r[i];
            Xw += X[i * Dk + j] * w[i];
          }
          dkt[j] = bet * dSr - alpha * bet * Xw;
        }
        for (int64_t i = 0; i < Dv; ++i)
          for (int64_t j = 0; j < Dk; ++j) dS[i * Dk + j] = alpha * (dS[i * Dk + j] - bet * w[i] * kt[j]);
      }
    }
  reduce_group_heads(s, dq, dk, dq_heads, dk_heads, B * Tn);
}

// ---- core: chunked WY/UT form ---------------------------------------------------------
//
// Per (batch, value head), chunks of L tokens in order, with S [dv, dk] the state entering
// the chunk and ChunkWY's quantities (Q, K [L, dk], V [L, dv] the chunk's rows):
//   O  = scale (diag(Gam) Q S^T + P Delta)
//   S' = Gam[L-1] S + Delta^T diag(dend) K,   dend[j] = decay(L-1, j) = exp(gam[L-1] - gam[j])
// The entering states are saved for the backward.

template <class T>
void gdn_chunk_forward(const GdnConfig& c, T* o, T* chunk_states, const T* q, const T* k, const T* v, const T* beta,
                       const T* g, int64_t B, int64_t Tn) {
  const GdnLayout s(c);
  const int64_t dk = s.dk, dv = s.dv, C = c.chunk_size, NC = c.n_chunks(Tn);
  const T scale = T(1.0 / std::sqrt(double(dk)));
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t hv = 0; hv < s.Hv; ++hv) {
      Mat<T> S = Mat<T>::Zero(dv, dk);
      ChunkWY<T> wy;
      for (int64_t kc = 0; kc < NC; ++kc) {
        const int64_t t0 = kc * C, L = std::min(C, Tn - t0), bt0 = b * Tn + t0;
        CStridedMap<T> Q(q + bt0 * s.QK + s.qk_off(hv), L, dk, Eigen::OuterStride<>(s.QK));
        CStridedMap<T> K(k + bt0 * s.QK + s.qk_off(hv), L, dk, Eigen::OuterStride<>(s.QK));
        CStridedMap<T> V(v + bt0 * s.DV + s.v_off(hv), L, dv, Eigen::OuterStride<>(s.DV));
        StridedMap<T> O(o + bt0 * s.DV + s.v_off(hv), L, dv, Eigen::OuterStride<>(s.DV));
        Eigen::Map<Mat<T>>(chunk_states + ((b * s.Hv + hv) * NC + kc) * dv * dk, dv, dk) = S;
        wy.compute(Q, K, V, S, beta + bt0 * s.Hv + hv, g + bt0 * s.Hv + hv, s.Hv);
        O.noalias() = wy.Gam.asDiagonal() * (Q * S.transpose());
        O.noalias() += wy.P * wy.Delta;
        O *= scale;
        const Vec<T> dend = wy.decay.row(L - 1).transpose();
        S *= wy.Gam[L - 1];
        S.noalias() += wy.Delta.transpose() * (dend.asDiagonal() * K);
      }
    }
}

// Exact gradient of the chunked computation, chunks in reverse with dS = dL/dS' (the state
// leaving the chunk). Log-decay gradients are gathered as dgam[i] = dL/dgam[i] and turned
// into dg by a reverse cumulative sum (gam[i] = sum_{r <= i} g_r); a term f(gam_i - gam_j)
// x decay(i, j) contributes G = (dL/d decay) o decay as dgam += rowsum(G) - colsum(G).
//   S' = Gam[L-1] S + Delta^T diag(dend) K:
//       dS_prev = Gam[L-1] dS,  dgam[L-1] += Gam[L-1] <S, dS>,
//       dDelta = diag(dend) K dS^T,  dK = diag(dend) Delta dS,  G_end = dend o rowsum(K o Delta dS)
//   O = scale diag(Gam) Q S^T + scale P Delta   (dOs = scale dO):
//       dQ += diag(Gam) dOs S,  dS_prev += (diag(Gam) dOs)^T Q,  dgam += Gam o rowsum(dOs o Q S^T),
//       dP = dOs Delta^T,  dDelta += P^T dOs,  dQ += (dP o decay) K,  dK += (dP o decay)^T Q,  G += dP o P
//   Delta = U - W S^T:  dU = dDelta,  dW = -dDelta S,  dS_prev -= dDelta^T W
//   U = M^-1 diag(beta) V, W = M^-1 diag(beta Gam) K, M = I + A:
//       dRU = M^-T dU,  dRW = M^-T dW,  dA = -strictly_lower(dRU U^T + dRW W^T),
//       dV = diag(beta) dRU,  dbeta += rowsum(dRU o V) + Gam o rowsum(dRW o K),
//       dK += diag(beta Gam) dRW,  dgam += beta o Gam o rowsum(dRW o K)
//   A = strictly_lower(diag(beta) (K K^T o decay)):
//       dbeta += rowsum(dA o K K^T o decay),  dKK = diag(beta) (dA o decay),  dK += (dKK + dKK^T) K,
//       G += dA o A
template <class T>
void gdn_chunk_backward(const GdnConfig& c, T* dq, T* dk, T* dv, T* dbeta, T* dg, const T* d_o, const T* q,
                        const T* k, const T* v, const T* beta, const T* g, const T* chunk_states, int64_t B,
                        int64_t Tn) {
  const GdnLayout s(c);
  const int64_t Dk = s.dk, Dv = s.dv, C = c.chunk_size, NC = c.n_chunks(Tn);
  const T scale = T(1.0 / std::sqrt(double(Dk)));
  std::vector<T> dq_heads(B * Tn * s.Hv * Dk), dk_heads(B * Tn * s.Hv * Dk);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t hv = 0; hv < s.Hv; ++hv) {
      Mat<T> dS = Mat<T>::Zero(Dv, Dk), dS_prev, dDelta, DdS, dOs, dOg, dP, dPd, G, dRU, dRW, dA, dKK;
      Vec<T> dgam, dbeta_c, dend, t_rw;
      ChunkWY<T> wy;
      for (int64_t kc = NC - 1; kc >= 0; --kc) {
        const int64_t t0 = kc * C, L = std::min(C, Tn - t0), bt0 = b * Tn + t0;
        CStridedMap<T> Q(q + bt0 * s.QK + s.qk_off(hv), L, Dk, Eigen::OuterStride<>(s.QK));
        CStridedMap<T> K(k + bt0 * s.QK + s.qk_off(hv), L, Dk, Eigen::OuterStride<>(s.QK));
        CStridedMap<T> V(v + bt0 * s.DV + s.v_off(hv), L, Dv, Eigen::OuterStride<>(s.DV));
        CStridedMap<T> dO(d_o + bt0 * s.DV + s.v_off(hv), L, Dv, Eigen::OuterStride<>(s.DV));
        StridedMap<T> dQ(dq_heads.data() + (bt0 * s.Hv + hv) * Dk, L, Dk, Eigen::OuterStride<>(s.Hv * Dk));
        StridedMap<T> dK(dk_heads.data() + (bt0 * s.Hv + hv) * Dk, L, Dk, Eigen::OuterStride<>(s.Hv * Dk));
        StridedMap<T> dV(dv + bt0 * s.DV + s.v_off(hv), L, Dv, Eigen::OuterStride<>(s.DV));
        Eigen::Map<const Mat<T>> S(chunk_states + ((b * s.Hv + hv) * NC + kc) * Dv * Dk, Dv, Dk);
        wy.compute(Q, K, V, S, beta + bt0 * s.Hv + hv, g + bt0 * s.Hv + hv, s.Hv);
        const Vec<T>& bet = wy.beta;
        const Vec<T>& Gam = wy.Gam;
        dgam.setZero(L);
        dbeta_c.setZero(L);

        // state passing: S' = Gam[L-1] S + Delta^T diag(dend) K
        dend = wy.decay.row(L - 1).transpose();
        dgam[L - 1] += Gam[L - 1] * S.cwiseProduct(dS).sum();
        dS_prev = Gam[L - 1] * dS;
        dDelta.noalias() = dend.asDiagonal() * (K * dS.transpose());
        DdS.noalias() = wy.Delta * dS;  // [L, dk]
        dK.noalias() = dend.asDiagonal() * DdS;
        {
          const Vec<T> g_end = dend.cwiseProduct(K.cwiseProduct(DdS).rowwise().sum());
          dgam[L - 1] += g_end.sum();
          dgam -= g_end;
        }

        // state-to-output: O1 = scale diag(Gam) Q S^T
        dOs = scale * dO;
        dgam += Gam.cwiseProduct(dOs.cwiseProduct(Q * S.transpose()).rowwise().sum());
        dOg = Gam.asDiagonal() * dOs;
        dQ.noalias() = dOg * S;
        dS_prev.noalias() += dOg.transpose() * Q;

        // intra-chunk: O2 = scale P Delta, P = Q K^T o decay
        dP.noalias() = dOs * wy.Delta.transpose();
        dDelta.noalias() += wy.P.transpose() * dOs;
        dPd = dP.cwiseProduct(wy.decay);
        dQ.noalias() += dPd * K;
        dK.noalias() += dPd.transpose() * Q;
        G = dP.cwiseProduct(wy.P);

        // Delta = U - W S^T
        dRU = dDelta;
        dRW.noalias() = -dDelta * S;
        dS_prev.noalias() -= dDelta.transpose() * wy.W;

        // U = M^-1 diag(beta) V, W = M^-1 diag(beta Gam) K: back-substitution with M^T
        wy.A.transpose().template triangularView<Eigen::UnitUpper>().solveInPlace(dRU);
        wy.A.transpose().template triangularView<Eigen::UnitUpper>().solveInPlace(dRW);
        dA.setZero(L, L);
        dA.template triangularView<Eigen::StrictlyLower>() = -(dRU * wy.U.transpose() + dRW * wy.W.transpose());
        dV.noalias() = bet.asDiagonal() * dRU;
        dbeta_c += dRU.cwiseProduct(V).rowwise().sum();
        t_rw = dRW.cwiseProduct(K).rowwise().sum();
        dbeta_c += Gam.cwiseProduct(t_rw);
        dgam += bet.cwiseProduct(Gam).cwiseProduct(t_rw);
        dK.noalias() += bet.cwiseProduct(Gam).asDiagonal() * dRW;

        // A = strictly_lower(diag(beta) (K K^T o decay))
        dbeta_c += dA.cwiseProduct(wy.KK).cwiseProduct(wy.decay).rowwise().sum();
        dKK = bet.asDiagonal() * dA.cwiseProduct(wy.decay);
        dK.noalias() += (dKK + dKK.transpose()) * K;
        G += dA.cwiseProduct(wy.A);

        dgam += G.rowwise().sum();
        dgam -= G.colwise().sum().transpose();

        // gam = cumsum(g)
        T run = 0;
        for (int64_t i = L - 1; i >= 0; --i) {
          run += dgam[i];
          dg[(bt0 + i) * s.Hv + hv] = run;
          dbeta[(bt0 + i) * s.Hv + hv] = dbeta_c[i];
        }
        dS = dS_prev;
      }
    }
  reduce_group_heads(s, dq, dk, dq_heads, dk_heads, B * Tn);
}

// ---- the full layer -----------------------------------------------------------------

namespace {

// In place: x[n, h, :] *= 1 / sqrt(sum x[n, h, :]^2 + eps), saving the factor (fla's l2norm).
template <class T> void l2norm_forward(T* x, T* rstd, int64_t N, int64_t H, int64_t d, double eps) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h) {
      T* xr = x + (n * H + h) * d;
      double ss = 0;  // in double, as in layers/rmsnorm.cpp
      for (int64_t i = 0; i < d; ++i) ss += double(xr[i]) * double(xr[i]);
      const T r = T(1.0 / std::sqrt(ss + eps));
      rstd[n * H + h] = r;
      for (int64_t i = 0; i < d; ++i) xr[i] *= r;
    }
}

// In place: dxn (gradient w.r.t. the normalised xn = x r) -> dx = r (dxn - xn (xn . dxn)).
template <class T> void l2norm_backward(T* dx, const T* xn, const T* rstd, int64_t N, int64_t H, int64_t d) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h) {
      T* dr = dx + (n * H + h) * d;
      const T* xr = xn + (n * H + h) * d;
      const T r = rstd[n * H + h];
      T m = 0;
      for (int64_t i = 0; i < d; ++i) m += xr[i] * dr[i];
      for (int64_t i = 0; i < d; ++i) dr[i] = r * (dr[i] - xr[i] * m);
    }
}

}  // namespace

template <class T>
void gdn_forward(const GdnConfig& c, const GdnParams<T>& p, const GdnActs<T>& a, T* y, const T* x, int64_t B,
                 int64_t Tn) {
  c.validate();
  const int64_t BT = B * Tn, D = c.d_model, QK = c.d_qk(), DV = c.d_v(), H = c.n_heads, Hv = c.n_v_heads;
  const int64_t dk = c.d_head_k, dv = c.d_head_v, K = c.conv_size;
  cpu::linear_forward(a.q_in, x, p.q_proj, BT, D, QK);
  cpu::linear_forward(a.k_in, x, p.k_proj, BT, D, QK);
  cpu::linear_forward(a.v_in, x, p.v_proj, BT, D, DV);
  short_conv_forward(a.q, a.q_pre, a.q_in, p.q_conv1d, (const T*)nullptr, B, Tn, QK, K, true);
  short_conv_forward(a.k, a.k_pre, a.k_in, p.k_conv1d, (const T*)nullptr, B, Tn, QK, K, true);
  short_conv_forward(a.v, a.v_pre, a.v_in, p.v_conv1d, (const T*)nullptr, B, Tn, DV, K, true);
  l2norm_forward(a.q, a.q_rstd, BT, H, dk, c.l2_eps);
  l2norm_forward(a.k, a.k_rstd, BT, H, dk, c.l2_eps);

  // beta = beta_scale sigmoid(x W_b^T); g = -exp(A_log) softplus(x W_a^T + dt_bias)
  const T beta_scale = c.allow_neg_eigval ? T(2) : T(1);
  cpu::linear_forward(a.beta, x, p.b_proj, BT, D, Hv);
  cpu::linear_forward(a.a_in, x, p.a_proj, BT, D, Hv);
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < BT; ++bt)
    for (int64_t h = 0; h < Hv; ++h) {
      const int64_t i = bt * Hv + h;
      a.beta[i] = beta_scale * cpu::sigmoid(a.beta[i]);
      a.g[i] = -std::exp(p.A_log[h]) * cpu::softplus(a.a_in[i] + p.dt_bias[h]);
    }

  if (c.chunk_size > 0) gdn_chunk_forward(c, a.o, a.chunk_states, a.q, a.k, a.v, a.beta, a.g, B, Tn);
  else gdn_recurrent_forward(c, a.o, a.q, a.k, a.v, a.beta, a.g, B, Tn);

  // Gated RMSNorm per value head: o' = o r o_norm silu(gate)
  cpu::linear_forward(a.gate, x, p.g_proj, BT, D, DV);
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < BT; ++bt)
    for (int64_t h = 0; h < Hv; ++h) {
      const int64_t o0 = bt * DV + h * dv;
      double ss = 0;
      for (int64_t j = 0; j < dv; ++j) ss += double(a.o[o0 + j]) * double(a.o[o0 + j]);
      const T r = T(1.0 / std::sqrt(ss / double(dv) + c.norm_eps));
      a.o_rstd[bt * Hv + h] = r;
      for (int64_t j = 0; j < dv; ++j) a.o_gated[o0 + j] = a.o[o0 + j] * r * p.o_norm[j] * cpu::silu(a.gate[o0 + j]);
    }
  cpu::linear_forward(y, a.o_gated, p.o_proj, BT, DV, D);
}

template <class T>
void gdn_backward(const GdnConfig& c, const GdnParams<T>& p, const GdnParams<T>& grad, const GdnActs<T>& a, T* dx,
                  const T* dy, const T* x, int64_t B, int64_t Tn) {
  c.validate();
  const int64_t BT = B * Tn, D = c.d_model, QK = c.d_qk(), DV = c.d_v(), H = c.n_heads, Hv = c.n_v_heads;
  const int64_t dk = c.d_head_k, dv = c.d_head_v, K = c.conv_size;
  std::vector<T> d_og(BT * DV), d_o(BT * DV), d_gate(BT * DV), d_q(BT * QK), d_k(BT * QK), d_v(BT * DV),
      d_beta(BT * Hv), d_g(BT * Hv), d_in(BT * std::max(QK, DV));

  cpu::linear_backward(d_og.data(), grad.o_proj, dy, a.o_gated, p.o_proj, BT, DV, D);
  // o_norm: sum over tokens and heads, parallel over channels (fixed order).
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < dv; ++j) {
    T sw = 0;
    for (int64_t bt = 0; bt < BT; ++bt)
      for (int64_t h = 0; h < Hv; ++h) {
        const int64_t i = bt * DV + h * dv + j;
        sw += d_og[i] * a.o[i] * a.o_rstd[bt * Hv + h] * cpu::silu(a.gate[i]);
      }
    grad.o_norm[j] += sw;
  }
  // o' = n w z with n = o r, z = silu(gate): dgate = do' n w silu'(gate); dn = do' w z;
  // do = r (dn - n mean(dn n)).
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < BT; ++bt)
    for (int64_t h = 0; h < Hv; ++h) {
      const int64_t o0 = bt * DV + h * dv;
      const T r = a.o_rstd[bt * Hv + h];
      T m = 0;
      for (int64_t j = 0; j < dv; ++j) {
        const T n = a.o[o0 + j] * r, gt = a.gate[o0 + j];
        const T dn = d_og[o0 + j] * p.o_norm[j] * cpu::silu(gt);
        d_gate[o0 + j] = d_og[o0 + j] * n * p.o_norm[j] * cpu::silu_grad(gt);
        d_o[o0 + j] = dn;
        m += dn * n;
      }
      m /= T(dv);
      for (int64_t j = 0; j < dv; ++j) d_o[o0 + j] = r * (d_o[o0 + j] - a.o[o0 + j] * r * m);
    }
  cpu::linear_backward(dx, grad.g_proj, d_gate.data(), x, p.g_proj, BT, D, DV);

  if (c.chunk_size > 0)
    gdn_chunk_backward(c, d_q.data(), d_k.data(), d_v.data(), d_beta.data(), d_g.data(), d_o.data(), a.q, a.k, a.v,
                       a.beta, a.g, a.chunk_states, B, Tn);
  else
    gdn_recurrent_backward(c, d_q.data(), d_k.data(), d_v.data(), d_beta.data(), d_g.data(), d_o.data(), a.q, a.k,
                           a.v, a.beta, a.g, B, Tn);

  // beta = s sigmoid(u): du = dbeta beta (1 - beta / s).
  // g = -exp(A_log) softplus(u + dt_bias): du = dg (-exp(A_log)) sigmoid(u + dt_bias) (= d dt_bias),
  // d A_log = dg g.
  const T beta_scale = c.allow_neg_eigval ? T(2) : T(1);
  std::vector<T> d_a(BT * Hv);
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < BT; ++bt)
    for (int64_t h = 0; h < Hv; ++h) {
      const int64_t i = bt * Hv + h;
      d_beta[i] *= a.beta[i] * (T(1) - a.beta[i] / beta_scale);
      d_a[i] = -d_g[i] * std::exp(p.A_log[h]) * cpu::sigmoid(a.a_in[i] + p.dt_bias[h]);
    }
  for (int64_t h = 0; h < Hv; ++h) {
    T s_alog = 0, s_dt = 0;
    for (int64_t bt = 0; bt < BT; ++bt) {
      s_alog += d_g[bt * Hv + h] * a.g[bt * Hv + h];
      s_dt += d_a[bt * Hv + h];
    }
    grad.A_log[h] += s_alog;
    grad.dt_bias[h] += s_dt;
  }
  cpu::linear_backward(dx, grad.b_proj, d_beta.data(), x, p.b_proj, BT, D, Hv, true);
  cpu::linear_backward(dx, grad.a_proj, d_a.data(), x, p.a_proj, BT, D, Hv, true);

  // q, k: L2 norm, then conv + SiLU, then projection; v: conv + SiLU, projection.
  l2norm_backward(d_q.data(), a.q, a.q_rstd, BT, H, dk);
  l2norm_backward(d_k.data(), a.k, a.k_rstd, BT, H, dk);
  short_conv_backward(d_in.data(), grad.q_conv1d, (T*)nullptr, d_q.data(), a.q_in, a.q_pre, p.q_conv1d, B, Tn, QK, K,
                      true);
  cpu::linear_backward(dx, grad.q_proj, d_in.data(), x, p.q_proj, BT, D, QK, true);
  short_conv_backward(d_in.data(), grad.k_conv1d, (T*)nullptr, d_k.data(), a.k_in, a.k_pre, p.k_conv1d, B, Tn, QK, K,
                      true);
  cpu::linear_backward(dx, grad.k_proj, d_in.data(), x, p.k_proj, BT, D, QK, true);
  short_conv_backward(d_in.data(), grad.v_conv1d, (T*)nullptr, d_v.data(), a.v_in, a.v_pre, p.v_conv1d, B, Tn, DV, K,
                      true);
  cpu::linear_backward(dx, grad.v_proj, d_in.data(), x, p.v_proj, BT, D, DV, true);
}

// Counts follow the code above: 2 per multiply-add, 1 per other add/multiply, 1 per
// exp / softplus / sigmoid / rsqrt (silu = 2); index arithmetic and copies are free. Dense
// Eigen products count in full (K K^T and Q K^T are computed as full L x L products); the
// unit-triangular solves count L (L - 1) per right-hand-side column.
int64_t gdn_flops(const GdnConfig& c, int64_t B, int64_t Tn) {
  const int64_t BT = B * Tn, D = c.d_model, QK = c.d_qk(), DV = c.d_v(), H = c.n_heads, Hv = c.n_v_heads;
  const int64_t dk = c.d_head_k, dv = c.d_head_v, K = c.conv_size;
  int64_t taps = 0;  // causal conv: token t has min(t + 1, K) taps
  for (int64_t t = 0; t < Tn; ++t) taps += std::min(t + 1, K);
  int64_t f = 2 * BT * D * (2 * QK + DV);       // q, k, v projections
  f += B * (2 * QK + DV) * (2 * taps + 2 * Tn);  // conv multiply-adds + silu
  f += 2 * (3 * BT * QK + 2 * BT * H);          // L2 norm of q and k: sum of squares, scale; rstd
  f += 2 * 2 * BT * D * Hv;                     // b_proj, a_proj
  f += 6 * BT * Hv;                             // beta: sigmoid, scale; g: add, softplus, exp, multiply
  int64_t core = 0;                             // per (batch, value head)
  if (c.chunk_size > 0) {
    for (int64_t t0 = 0; t0 < Tn; t0 += c.chunk_size) {
      const int64_t L = std::min(c.chunk_size, Tn - t0);
      core += 2 * L + L * (L + 1);                  // gam, Gam = exp(gam), decay (subtract + exp)
      core += 2 * L * L * dk + L * (L - 1);         // K K^T; A = beta (K K^T o decay), strictly lower
      core += L * dv + L * (L - 1) * dv;            // U: beta V, solve
      core += L + L * dk + L * (L - 1) * dk;        // W: beta Gam, times K, solve
      core += 2 * L * dk * dv;                      // Delta = U - W S^T
      core += 2 * L * L * dk + L * L;               // P = Q K^T o decay
      core += 2 * L * dk * dv + L * dv;             // diag(Gam) Q S^T
      core += 2 * L * L * dv + L * dv;              // + P Delta, times scale
      core += dv * dk + L * dk + 2 * L * dv * dk;   // S' = Gam[L-1] S + Delta^T diag(dend) K
    }
  } else {
    core = Tn * (1 + 7 * dv * dk + 4 * dv);  // alpha; a = S k; u; S = alpha S + u k^T; o = scale S q
  }
  f += B * Hv * core;
  f += 2 * BT * D * DV;                         // g_proj
  f += 7 * BT * DV + 3 * BT * Hv;               // gated RMSNorm: sum of squares, o r w silu(gate); rstd
  f += 2 * BT * DV * D;                         // o_proj
  return f;
}

#define INSTANTIATE(T)                                                                                               \
  template void gdn_forward<T>(const GdnConfig&, const GdnParams<T>&, const GdnActs<T>&, T*, const T*, int64_t,     \
                               int64_t);                                                                             \
  template void gdn_backward<T>(const GdnConfig&, const GdnParams<T>&, const GdnParams<T>&, const GdnActs<T>&, T*,  \
                                const T*, const T*, int64_t, int64_t);                                               \
  template void gdn_recurrent_forward<T>(const GdnConfig&, T*, const T*, const T*, const T*, const T*, const T*,    \
                                         int64_t, int64_t);                                                          \
  template void gdn_recurrent_backward<T>(const GdnConfig&, T*, T*, T*, T*, T*, const T*, const T*, const T*,       \
                                          const T*, const T*, const T*, int64_t, int64_t);                           \
  template void gdn_chunk_forward<T>(const GdnConfig&, T*, T*, const T*, const T*, const T*, const T*, const T*,    \
                                     int64_t, int64_t);                                                              \
  template void gdn_chunk_backward<T>(const GdnConfig&, T*, T*, T*, T*, T*, const T*, const T*, const T*, const T*, \
                                      const T*, const T*, const T*, int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace hysim
