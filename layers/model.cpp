#include "layers/model.h"

#include <stdexcept>

namespace hysim {

std::string expand_pattern(const std::string& pattern, int64_t n_layers) {
  if (pattern.empty()) throw std::invalid_argument("model.pattern is empty: use letters A, W, G, M (e.g. GGGA)");
  for (char ch : pattern)
    if (ch != 'A' && ch != 'W' && ch != 'G' && ch != 'M')
      throw std::invalid_argument(std::string("model.pattern = ") + pattern + ": unknown mixer letter '" + ch +
                                  "' (allowed: A full attention, W sliding window, G Gated DeltaNet, M Mamba2)");
  if (n_layers <= 0 || n_layers % int64_t(pattern.size()) != 0)
    throw std::invalid_argument("model.n_layers = " + std::to_string(n_layers) +
                                " must be a positive multiple of the pattern length " +
                                std::to_string(pattern.size()) + " (pattern " + pattern + ")");
  std::string letters;
  for (int64_t i = 0; i < n_layers; ++i) letters += pattern[i % pattern.size()];
  return letters;
}

AttentionConfig attention_config(const ModelConfig& m, char letter) {
  AttentionConfig c;
  c.d_model = m.d_model;
  c.n_heads = m.n_heads;
  c.n_kv_heads = m.n_kv_heads;
  c.d_head = m.d_head;
  c.qk_norm = m.qk_norm;
  c.norm_eps = m.norm_eps;
  c.rope = m.pos_encoding == "rope";
  c.rope_theta = m.rope_theta;
  if (m.rope_scaling == "yarn") {
    c.rope_yarn_factor = m.rope_scaling_factor;
    c.rope_yarn_original_len = m.rope_original_len;
  }
  c.window = letter == 'W' ? m.window : 0;
  c.tile = m.attn_tile;
  c.init_std = m.init_std;
  return c;
}

// The init shared by GDN and Mamba2: projections N(0, init_std), A ~ U(a_init_min,
// a_init_max), dt log-uniform in [dt_min, dt_max] floored at dt_floor.
template <class C> void set_decay_init(const ModelConfig& m, C& c) {
  c.init_std = m.init_std;
  c.a_init_min = m.a_init_min;
  c.a_init_max = m.a_init_max;
  c.dt_min = m.dt_min;
  c.dt_max = m.dt_max;
  c.dt_floor = m.dt_floor;
}

GdnConfig gdn_config(const ModelConfig& m) {
  GdnConfig c;
  c.d_model = m.d_model;
  c.n_heads = m.gdn_n_heads;
  c.n_v_heads = m.gdn_n_v_heads;
  c.d_head_k = m.gdn_d_head_k;
  c.d_head_v = m.gdn_d_head_v;
  c.conv_size = m.gdn_conv;
  c.allow_neg_eigval = m.gdn_allow_neg_eigval;
  c.chunk_size = m.gdn_chunk;
  c.norm_eps = m.gdn_norm_eps;
  set_decay_init(m, c);
  return c;
}

Mamba2Config mamba2_config(const ModelConfig& m) {
  Mamba2Config c;
  c.d_model = m.d_model;
  c.d_state = m.m2_d_state;
  c.headdim = m.m2_headdim;
  c.expand = m.m2_expand;
  c.n_groups = m.m2_n_groups;
  c.conv_size = m.m2_conv;
  c.chunk_size = m.m2_chunk;
  c.norm_eps = m.m2_norm_eps;
  set_decay_init(m, c);
  return c;
}

SwiGLUConfig mlp_config(const ModelConfig& m) {
  SwiGLUConfig c;
  c.d_model = m.d_model;
  c.d_hidden = m.d_mlp;
  c.init_std = m.init_std;
  return c;
}

NormPlacement norm_placement(const ModelConfig& m, char letter) {
  switch (letter) {
    case 'G': return m.norm_gdn;
    case 'M': return m.norm_mamba2;
    default: return m.norm_attention;
  }
}

// ---- mixer dispatch: the one place that switches on the mixer letter ----------------

template <class T>
static void mixer_forward(const ModelConfig& m, const BlockParams<T>& p, const BlockActs<T>& a, T* y, const T* x,
                          int64_t B, int64_t Tn) {
  switch (p.letter) {
    case 'A': case 'W': attention_forward(attention_config(m, p.letter), p.attn, a.attn, y, x, B, Tn); break;
    case 'G': gdn_forward(gdn_config(m), p.gdn, a.gdn, y, x, B, Tn); break;
    case 'M': mamba2_forward(mamba2_config(m), p.m2, a.m2, y, x, B, Tn); break;
  }
}

template <class T>
static void mixer_backward(const ModelConfig& m, const BlockParams<T>& p, const BlockParams<T>& g,
                           const BlockActs<T>& a, T* dx, const T* dy, const T* x, int64_t B, int64_t Tn) {
  switch (p.letter) {
    case 'A': case 'W':
      attention_backward(attention_config(m, p.letter), p.attn, g.attn, a.attn, dx, dy, x, B, Tn);
      break;
    case 'G': gdn_backward(gdn_config(m), p.gdn, g.gdn, a.gdn, dx, dy, x, B, Tn); break;
    case 'M': mamba2_backward(mamba2_config(m), p.m2, g.m2, a.m2, dx, dy, x, B, Tn); break;
  }
}

// ---- model ---------------------------------------------------------------------------

template <class T>
Model<T>::Model(const ModelConfig& c, int64_t B, int64_t Tn)
    : cfg(c), letters(expand_pattern(c.pattern, c.n_layers)), max_B(B), max_T(Tn) {
  store.build(params, grads, [&](ModelParams<T>& p, auto&& v) { visit_params(cfg, p, v); });
  if (cfg.tie_embeddings) {
    params.lm_head = params.embed_tokens;
    grads.lm_head = grads.embed_tokens;
  }
  act_store.build(acts, [&](ModelActs<T>& a, auto&& v) { visit_acts(cfg, B, Tn, a, v); });
  const size_t ND = size_t(B * Tn * cfg.d_model);
  d_embed_.resize(ND);
  dx_.resize(ND);
  dh_.resize(ND);
  dtmp_.resize(ND);
  dtmp2_.resize(ND);
}

// Sub-block forward: out = x + [pre] f(norm(x)) | [reordered] norm(f(x)).
// buf_norm/buf_out/rstd are the sub-block's saved activations.
template <class T, class F>
static void residual_forward(NormPlacement place, F f, const T* norm_w, double eps, const T* x, T* buf_norm, T* rstd,
                             T* buf_out, T* out, int64_t N, int64_t D) {
  if (place == NormPlacement::pre) {
    rmsnorm_forward(buf_norm, rstd, x, norm_w, N, D, eps);
    f(buf_out, buf_norm);
  } else {
    f(buf_norm, x);
    rmsnorm_forward(buf_out, rstd, buf_norm, norm_w, N, D, eps);
  }
  for (int64_t i = 0; i < N * D; ++i) out[i] = x[i] + buf_out[i];
}

// Sub-block backward: dx = dy + d/dx of the branch. f_bwd(dx_branch, dy_branch, x_branch).
template <class T, class FB>
static void residual_backward(NormPlacement place, FB f_bwd, const T* norm_w, T* dnorm_w, const T* x,
                              const T* buf_norm, const T* rstd, T* dx, const T* dy, T* tmp, int64_t N, int64_t D) {
  if (place == NormPlacement::pre) {
    f_bwd(tmp, dy, buf_norm);                                              // tmp = d norm(x)
    rmsnorm_backward(dx, dnorm_w, tmp, x, norm_w, rstd, N, D);             // dx = d branch / dx
  } else {
    rmsnorm_backward(tmp, dnorm_w, dy, buf_norm, norm_w, rstd, N, D);     // tmp = d f(x)
    f_bwd(dx, tmp, x);
  }
  for (int64_t i = 0; i < N * D; ++i) dx[i] += dy[i];
}

void check_activation_plan(int64_t B, int64_t Tn, int64_t max_B, int64_t max_T) {
  if (B > max_B || Tn > max_T)
    throw std::invalid_argument("batch " + std::to_string(B) + "x" + std::to_string(Tn) +
                                " exceeds the model's activation plan " + std::to_string(max_B) + "x" +
                                std::to_string(max_T));
}

template <class T> void Model<T>::forward_blocks(const int32_t* tokens, int64_t B, int64_t Tn) {
  check_activation_plan(B, Tn, max_B, max_T);
  const int64_t N = B * Tn, D = cfg.d_model;
  embedding_forward(acts.blocks.empty() ? acts.x_final : acts.blocks[0].x, tokens, params.embed_tokens, N, D,
                    cfg.vocab_size);
  for (size_t i = 0; i < letters.size(); ++i) {
    const BlockParams<T>& p = params.blocks[i];
    const BlockActs<T>& a = acts.blocks[i];
    T* out = i + 1 < letters.size() ? acts.blocks[i + 1].x : acts.x_final;
    const NormPlacement place = norm_placement(cfg, p.letter);
    T* h = cfg.d_mlp > 0 ? a.h : out;
    residual_forward(place, [&](T* y, const T* x) { mixer_forward(cfg, p, a, y, x, B, Tn); }, p.mixer_norm.w,
                     cfg.norm_eps, a.x, a.norm1, a.rstd1, a.mixer_out, h, N, D);
    if (cfg.d_mlp > 0) {
      const SwiGLUConfig mc = mlp_config(cfg);
      residual_forward(place, [&](T* y, const T* x) { swiglu_forward(mc, p.mlp, a.mlp, y, x, B, Tn); },
                       p.mlp_norm.w, cfg.norm_eps, a.h, a.norm2, a.rstd2, a.mlp_out, out, N, D);
    }
  }
  rmsnorm_forward(acts.normed, acts.rstd, acts.x_final, params.final_norm.w, N, D, cfg.norm_eps);
}

template <class T>
StepStats Model<T>::forward_backward(const int32_t* tokens, const int32_t* targets, const float* loss_mask,
                                     int64_t B, int64_t Tn, double z_loss, bool compute_grad) {
  forward_blocks(tokens, B, Tn);
  const int64_t N = B * Tn, D = cfg.d_model;
  const LmHeadStats s = lm_head_loss(dx_.data(), compute_grad ? grads.lm_head : nullptr, acts.normed, params.lm_head,
                                     targets, loss_mask, N, D, cfg.vocab_size, z_loss, lm_head_chunk_rows,
                                     compute_grad);
  StepStats st{s.loss, s.z_loss_term, s.weight_sum, s.n_correct};
  if (!compute_grad) return st;

  // dx_ holds d loss / d normed; walk back through the final norm and the blocks.
  T* dy = dtmp2_.data();
  rmsnorm_backward(dy, grads.final_norm.w, dx_.data(), acts.x_final, params.final_norm.w, acts.rstd, N, D);
  for (size_t ii = letters.size(); ii-- > 0;) {
    const BlockParams<T>& p = params.blocks[ii];
    const BlockParams<T>& g = grads.blocks[ii];
    const BlockActs<T>& a = acts.blocks[ii];
    const NormPlacement place = norm_placement(cfg, p.letter);
    const T* dh = dy;
    if (cfg.d_mlp > 0) {
      const SwiGLUConfig mc = mlp_config(cfg);
      residual_backward(
          place, [&](T* dxb, const T* dyb, const T* xb) { swiglu_backward(mc, p.mlp, g.mlp, a.mlp, dxb, dyb, xb, B, Tn); },
          p.mlp_norm.w, g.mlp_norm.w, a.h, a.norm2, a.rstd2, dh_.data(), dy, dtmp_.data(), N, D);
      dh = dh_.data();
    }
    residual_backward(
        place, [&](T* dxb, const T* dyb, const T* xb) { mixer_backward(cfg, p, g, a, dxb, dyb, xb, B, Tn); },
        p.mixer_norm.w, g.mixer_norm.w, a.x, a.norm1, a.rstd1, dx_.data(), dh, dtmp_.data(), N, D);
    std::swap(dx_, dtmp2_);  // block input gradient becomes the next (earlier) block's dy
    dy = dtmp2_.data();
  }
  std::copy(dy, dy + N * D, d_embed_.begin());
  embedding_backward(grads.embed_tokens, dy, tokens, N, D);
  return st;
}

template <class T> void Model<T>::forward_logits(const int32_t* tokens, int64_t B, int64_t Tn, T* logits) {
  forward_blocks(tokens, B, Tn);
  lm_head_logits(logits, acts.normed, params.lm_head, B * Tn, cfg.d_model, cfg.vocab_size);
}

int64_t model_forward_flops(const ModelConfig& cfg, int64_t B, int64_t Tn) {
  const int64_t N = B * Tn, D = cfg.d_model;
  int64_t f = 2 * N * D * cfg.vocab_size + rmsnorm_flops(N, D);
  for (char l : expand_pattern(cfg.pattern, cfg.n_layers)) {
    switch (l) {
      case 'A': case 'W': f += attention_flops(attention_config(cfg, l), B, Tn); break;
      case 'G': f += gdn_flops(gdn_config(cfg), B, Tn); break;
      case 'M': f += mamba2_flops(mamba2_config(cfg), B, Tn); break;
    }
    f += rmsnorm_flops(N, D) + N * D;  // the sub-block's norm and residual add
    if (cfg.d_mlp > 0) f += swiglu_flops(mlp_config(cfg), B, Tn) + rmsnorm_flops(N, D) + N * D;
  }
  return f;
}

template class Model<float>;
template class Model<double>;

}  // namespace hysim
