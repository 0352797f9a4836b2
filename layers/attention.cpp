#include "layers/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <vector>

#include "core/cpu/gemm.h"
#include "layers/rmsnorm.h"

namespace hysim {

namespace {

// First key query t sees (the last is t itself).
inline int64_t first_key(int64_t t, int64_t window) { return window > 0 ? std::max<int64_t>(0, t - window + 1) : 0; }

template <class T> inline T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

// ---- RoPE ---------------------------------------------------------------------------------

RopeFrequencies rope_frequencies(const AttentionConfig& c) {
  const int64_t half = c.d_head / 2;
  RopeFrequencies out;
  out.f.resize(half);
  for (int64_t i = 0; i < half; ++i) out.f[i] = std::pow(c.rope_theta, -double(2 * i) / double(c.d_head));
  const double s = c.rope_yarn_factor;
  if (s == 1.0) return out;
  // The (fractional) pair index whose frequency turns `rotations` times over L0, rounded
  // outwards as HF does, then a ramp from keep (index <= lo) to interpolate (>= hi).
  const double L0 = double(c.rope_yarn_original_len), dh = double(c.d_head), ln_theta = std::log(c.rope_theta);
  auto index_turning = [&](double rotations) { return dh * std::log(L0 / (rotations * 2 * std::numbers::pi)) / (2 * ln_theta); };
  const double lo = std::max(0.0, std::floor(index_turning(c.rope_yarn_beta_fast)));
  double hi = std::min(dh - 1, std::ceil(index_turning(c.rope_yarn_beta_slow)));
  if (hi == lo) hi += 0.001;
  for (int64_t i = 0; i < half; ++i) {
    const double interpolate = std::clamp((double(i) - lo) / (hi - lo), 0.0, 1.0);
    out.f[i] = out.f[i] / s * interpolate + out.f[i] * (1 - interpolate);
  }
  out.scale = 0.1 * std::log(s) + 1.0;
  return out;
}

// HF rotate_half: out_i = x_i cos - x_{i+h} sin, out_{i+h} = x_{i+h} cos + x_i sin (h = dh/2),
// times freq.scale. The inverse (= transpose) uses -sin.
template <class T>
void rope_apply(T* x, int64_t B, int64_t Tn, int64_t n_heads, const RopeFrequencies& freq, bool inverse) {
  const int64_t half = int64_t(freq.f.size()), dh = 2 * half;
  std::vector<T> cos_t(Tn * half), sin_t(Tn * half);
  for (int64_t i = 0; i < half; ++i) {
    for (int64_t t = 0; t < Tn; ++t) {
      const double angle = double(t) * freq.f[i];
      cos_t[t * half + i] = T(freq.scale * std::cos(angle));
      sin_t[t * half + i] = T(freq.scale * (inverse ? -std::sin(angle) : std::sin(angle)));
    }
  }
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tn; ++t) {
      const T* cs = cos_t.data() + t * half;
      const T* sn = sin_t.data() + t * half;
      for (int64_t h = 0; h < n_heads; ++h) {
        T* r = x + ((b * Tn + t) * n_heads + h) * dh;
        for (int64_t i = 0; i < half; ++i) {
          const T x1 = r[i], x2 = r[i + half];
          r[i] = x1 * cs[i] - x2 * sn[i];
          r[i + half] = x2 * cs[i] + x1 * sn[i];
        }
      }
    }
}

// ---- core: tiled online softmax -------------------------------------------------------------

// Per (batch, head), query tiles [i0, i1) against the key tiles that hold any kept key. Each
// query row keeps a running max m, running sum l and unnormalised output acc; a new key tile
// with row max m' rescales them by exp(m - max(m, m')). Every row sees at least its own key,
// so m is finite after the diagonal tile.
template <class T>
void attention_core_forward(const AttentionConfig& c, T* o, T* lse, const T* q, const T* k, const T* v, int64_t B,
                            int64_t Tn) {
  const int64_t H = c.n_heads, dh = c.d_head, Bt = c.tile, group = H / c.n_kv_heads;
  const int64_t qs = c.q_dim(), ks = c.kv_dim();  // row strides of q/o and k/v
  const T scale = T(1.0 / std::sqrt(double(dh)));
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / group;
      const T* qb = q + b * Tn * qs + h * dh;
      const T* kb = k + b * Tn * ks + g * dh;
      const T* vb = v + b * Tn * ks + g * dh;
      T* ob = o + b * Tn * qs + h * dh;
      T* lb = lse + (b * H + h) * Tn;
      std::vector<T> m(Bt), l(Bt), acc(Bt * dh), s(Bt);
      for (int64_t i0 = 0; i0 < Tn; i0 += Bt) {
        const int64_t i1 = std::min(i0 + Bt, Tn);
        std::fill(m.begin(), m.end(), -std::numeric_limits<T>::infinity());
        std::fill(l.begin(), l.end(), T(0));
        std::fill(acc.begin(), acc.end(), T(0));
        // key tiles from the one holding the first key of row i0 up to the diagonal tile
        for (int64_t j0 = first_key(i0, c.window) / Bt * Bt; j0 < i1; j0 += Bt) {
          const int64_t j1 = std::min(j0 + Bt, Tn);
          for (int64_t t = i0; t < i1; ++t) {
            const int64_t lo = std::max(j0, first_key(t, c.window)), hi = std::min(j1, t + 1);
            if (lo >= hi) continue;  // this row keeps nothing in this tile
            const int64_t r = t - i0;
            const T* qt = qb + t * qs;
            T mx = -std::numeric_limits<T>::infinity();
            for (int64_t j = lo; j < hi; ++j) {
              s[j - lo] = scale * dot(qt, kb + j * ks, dh);
              mx = std::max(mx, s[j - lo]);
            }
            const T m_new = std::max(m[r], mx);
            const T corr = std::exp(m[r] - m_new);
            T* ar = acc.data() + r * dh;
            T sum = 0;
            for (int64_t i = 0; i < dh; ++i) ar[i] *= corr;
            for (int64_t j = lo; j < hi; ++j) {
              const T pj = std::exp(s[j - lo] - m_new);
              sum += pj;
              const T* vj = vb + j * ks;
              for (int64_t i = 0; i < dh; ++i) ar[i] += pj * vj[i];
            }
            l[r] = l[r] * corr + sum;
            m[r] = m_new;
          }
        }
        for (int64_t t = i0; t < i1; ++t) {
          const int64_t r = t - i0;
          const T inv = T(1) / l[r];
          for (int64_t i = 0; i < dh; ++i) ob[t * qs + i] = acc[r * dh + i] * inv;
          lb[t] = m[r] + std::log(l[r]);
        }
      }
    }
}

// With P = exp(S - lse) recomputed tile by tile and D_t = dO_t . O_t (= sum_j P_tj dP_tj):
//   dV_j += P_tj dO_t,  dP_tj = dO_t . V_j,  dS_tj = P_tj (dP_tj - D_t),
//   dQ_t += scale dS_tj K_j,  dK_j += scale dS_tj Q_t.
// dK, dV are first gathered per query head (each (b, h) owns its slice, so no races) and
// then summed over the heads of each GQA group in a fixed order: thread-count independent.
template <class T>
void attention_core_backward(const AttentionConfig& c, T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k,
                             const T* v, const T* o, const T* lse, int64_t B, int64_t Tn) {
  const int64_t H = c.n_heads, Hkv = c.n_kv_heads, dh = c.d_head, Bt = c.tile, group = H / Hkv;
  const int64_t qs = c.q_dim(), ks = c.kv_dim();
  const T scale = T(1.0 / std::sqrt(double(dh)));
  std::vector<T> dk_head(B * Tn * qs, T(0)), dv_head(B * Tn * qs, T(0));  // [B, T, H, dh]
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / group;
      const int64_t qoff = b * Tn * qs + h * dh;
      const T *qb = q + qoff, *ob = o + qoff, *dob = dout + qoff;
      const T* kb = k + b * Tn * ks + g * dh;
      const T* vb = v + b * Tn * ks + g * dh;
      T *dqb = dq + qoff, *dkb = dk_head.data() + qoff, *dvb = dv_head.data() + qoff;
      const T* lb = lse + (b * H + h) * Tn;
      std::vector<T> D(Bt), dq_acc(Bt * dh);
      for (int64_t i0 = 0; i0 < Tn; i0 += Bt) {
        const int64_t i1 = std::min(i0 + Bt, Tn);
        for (int64_t t = i0; t < i1; ++t) D[t - i0] = dot(dob + t * qs, ob + t * qs, dh);
        std::fill(dq_acc.begin(), dq_acc.end(), T(0));
        for (int64_t j0 = first_key(i0, c.window) / Bt * Bt; j0 < i1; j0 += Bt) {
          const int64_t j1 = std::min(j0 + Bt, Tn);
          for (int64_t t = i0; t < i1; ++t) {
            const int64_t lo = std::max(j0, first_key(t, c.window)), hi = std::min(j1, t + 1);
            const int64_t r = t - i0;
            const T *qt = qb + t * qs, *dout_t = dob + t * qs;
            T* dqr = dq_acc.data() + r * dh;
            for (int64_t j = lo; j < hi; ++j) {
              const T* kj = kb + j * ks;
              const T* vj = vb + j * ks;
              const T p = std::exp(scale * dot(qt, kj, dh) - lb[t]);
              const T ds = scale * p * (dot(dout_t, vj, dh) - D[r]);
              T *dkj = dkb + j * qs, *dvj = dvb + j * qs;
              for (int64_t i = 0; i < dh; ++i) {
                dvj[i] += p * dout_t[i];
                dqr[i] += ds * kj[i];
                dkj[i] += ds * qt[i];
              }
            }
          }
        }
        for (int64_t t = i0; t < i1; ++t)
          for (int64_t i = 0; i < dh; ++i) dqb[t * qs + i] = dq_acc[(t - i0) * dh + i];
      }
    }
  // sum the per-query-head dK, dV over each group
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tn; ++t) {
      const int64_t row = b * Tn + t;
      for (int64_t g = 0; g < Hkv; ++g)
        for (int64_t i = 0; i < dh; ++i) {
          T sk = 0, sv = 0;
          for (int64_t h = g * group; h < (g + 1) * group; ++h) {
            sk += dk_head[row * qs + h * dh + i];
            sv += dv_head[row * qs + h * dh + i];
          }
          dk[row * ks + g * dh + i] = sk;
          dv[row * ks + g * dh + i] = sv;
        }
    }
}

// ---- full layer -------------------------------------------------------------------------------

template <class T>
void attention_forward(const AttentionConfig& c, const AttentionParams<T>& p, const AttentionActs<T>& a, T* y,
                       const T* x, int64_t B, int64_t Tn) {
  c.validate();
  const int64_t BT = B * Tn, D = c.d_model, QD = c.q_dim(), KD = c.kv_dim();
  if (c.qk_norm) {
    cpu::linear_forward(a.q_raw, x, p.q_proj, BT, D, QD);
    cpu::linear_forward(a.k_raw, x, p.k_proj, BT, D, KD);
    rmsnorm_forward(a.q, a.q_rstd, a.q_raw, p.q_norm, BT, QD, c.norm_eps);
    rmsnorm_forward(a.k, a.k_rstd, a.k_raw, p.k_norm, BT, KD, c.norm_eps);
  } else {
    cpu::linear_forward(a.q, x, p.q_proj, BT, D, QD);
    cpu::linear_forward(a.k, x, p.k_proj, BT, D, KD);
  }
  cpu::linear_forward(a.v, x, p.v_proj, BT, D, KD);
  if (c.rope) {
    const RopeFrequencies freq = rope_frequencies(c);
    rope_apply(a.q, B, Tn, c.n_heads, freq, false);
    rope_apply(a.k, B, Tn, c.n_kv_heads, freq, false);
  }
  attention_core_forward(c, a.o, a.lse, a.q, a.k, a.v, B, Tn);
  cpu::linear_forward(y, a.o, p.o_proj, BT, QD, D);
}

template <class T>
void attention_backward(const AttentionConfig& c, const AttentionParams<T>& p, const AttentionParams<T>& grad,
                        const AttentionActs<T>& a, T* dx, const T* dy, const T* x, int64_t B, int64_t Tn) {
  c.validate();
  const int64_t BT = B * Tn, D = c.d_model, QD = c.q_dim(), KD = c.kv_dim();
  std::vector<T> d_o(BT * QD), dq(BT * QD), dk(BT * KD), dv(BT * KD);
  cpu::linear_backward(d_o.data(), grad.o_proj, dy, a.o, p.o_proj, BT, QD, D);
  attention_core_backward(c, dq.data(), dk.data(), dv.data(), d_o.data(), a.q, a.k, a.v, a.o, a.lse, B, Tn);
  if (c.rope) {  // a scaled rotation: its transpose rotates back
    const RopeFrequencies freq = rope_frequencies(c);
    rope_apply(dq.data(), B, Tn, c.n_heads, freq, true);
    rope_apply(dk.data(), B, Tn, c.n_kv_heads, freq, true);
  }
  const T* dq_proj = dq.data();  // gradient of the q projection output
  const T* dk_proj = dk.data();
  std::vector<T> dq_raw, dk_raw;
  if (c.qk_norm) {
    dq_raw.resize(BT * QD);
    dk_raw.resize(BT * KD);
    rmsnorm_backward(dq_raw.data(), grad.q_norm, dq.data(), a.q_raw, p.q_norm, a.q_rstd, BT, QD);
    rmsnorm_backward(dk_raw.data(), grad.k_norm, dk.data(), a.k_raw, p.k_norm, a.k_rstd, BT, KD);
    dq_proj = dq_raw.data();
    dk_proj = dk_raw.data();
  }
  cpu::linear_backward(dx, grad.v_proj, dv.data(), x, p.v_proj, BT, D, KD);
  cpu::linear_backward(dx, grad.q_proj, dq_proj, x, p.q_proj, BT, D, QD, true);
  cpu::linear_backward(dx, grad.k_proj, dk_proj, x, p.k_proj, BT, D, KD, true);
}

#define INSTANTIATE(T)                                                                                        \
  template void rope_apply<T>(T*, int64_t, int64_t, int64_t, const RopeFrequencies&, bool);                          \
  template void attention_core_forward<T>(const AttentionConfig&, T*, T*, const T*, const T*, const T*,       \
                                          int64_t, int64_t);                                                  \
  template void attention_core_backward<T>(const AttentionConfig&, T*, T*, T*, const T*, const T*, const T*,  \
                                           const T*, const T*, const T*, int64_t, int64_t);                   \
  template void attention_forward<T>(const AttentionConfig&, const AttentionParams<T>&,                      \
                                     const AttentionActs<T>&, T*, const T*, int64_t, int64_t);                \
  template void attention_backward<T>(const AttentionConfig&, const AttentionParams<T>&,                     \
                                      const AttentionParams<T>&, const AttentionActs<T>&, T*, const T*,        \
                                      const T*, int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace hysim
