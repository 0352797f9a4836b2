// The model on one GPU (core/cuda/model.h): the block walk of layers/model.cpp with the
// CUDA layers. Kept line for line parallel to the CPU's forward_blocks/forward_backward
// so that the two can be read side by side.
#include <optional>
#include <stdexcept>
#include <string>

#include "core/cuda/check.h"
#include "core/cuda/device_util.cuh"
#include "core/cuda/model.h"
#include "core/cuda/phase_timer.h"

namespace hysim::cuda {

namespace {

// out = a + b (the residual add), fp32 arithmetic, one rounding.
struct ResidualAdd {
  bf16* out;
  const bf16 *a, *b;
  template <int W> __device__ void apply(int64_t i) const {
    float x[W], y[W];
    load_w<W>(a + i, x), load_w<W>(b + i, y);
#pragma unroll
    for (int j = 0; j < W; ++j) x[j] += y[j];
    store_w<W>(out + i, x);
  }
};
struct Scale {  // x *= s
  float* x;
  float s;
  template <int W> __device__ void apply(int64_t i) const {
    float v[W];
    load_w<W>(x + i, v);
#pragma unroll
    for (int j = 0; j < W; ++j) v[j] *= s;
    store_w<W>(x + i, v);
  }
};

void residual_add(Context& ctx, bf16* out, const bf16* a, const bf16* b, int64_t n) {
  launch_elementwise(ctx.stream, ResidualAdd{out, a, b}, n, out, a, b);
  CUDA_CHECK_LAUNCH("residual_add", shape_str("n", n));
}

// Sub-block forward: out = x + [pre] f(norm(x)) | [reordered] norm(f(x)).
template <class F>
void residual_forward(Context& ctx, NormPlacement place, F f, const bf16* norm_w, double eps, const bf16* x,
                      bf16* buf_norm, float* rstd, bf16* buf_out, bf16* out, int64_t N, int64_t D) {
  if (place == NormPlacement::pre) {
    rmsnorm_forward(ctx, buf_norm, rstd, x, norm_w, N, D, eps);
    f(buf_out, buf_norm);
  } else {
    f(buf_norm, x);
    rmsnorm_forward(ctx, buf_out, rstd, buf_norm, norm_w, N, D, eps);
  }
  residual_add(ctx, out, x, buf_out, N * D);
}

// Sub-block backward: dx = dy + d/dx of the branch; f_bwd(dx_branch, dy_branch, x_branch)
// overwrites dx_branch. tmp: [N, D] scratch.
template <class FB>
void residual_backward(Context& ctx, NormPlacement place, FB f_bwd, const bf16* norm_w, float* dnorm_w,
                       const bf16* x, const bf16* buf_norm, const float* rstd, bf16* dx, const bf16* dy, bf16* tmp,
                       int64_t N, int64_t D) {
  if (place == NormPlacement::pre) {
    f_bwd(tmp, dy, buf_norm);                                      // tmp = d norm(x)
    rmsnorm_backward(ctx, dx, dnorm_w, tmp, x, norm_w, rstd, N, D);  // dx = d branch / dx
  } else {
    rmsnorm_backward(ctx, tmp, dnorm_w, dy, buf_norm, norm_w, rstd, N, D);  // tmp = d f(x)
    f_bwd(dx, tmp, x);
  }
  residual_add(ctx, dx, dx, dy, N * D);
}

void check_supported(const ModelConfig& m, const std::string& letters) {
  for (char l : letters) {
    if ((l == 'A' || l == 'W') && m.d_head != 64 && m.d_head != 128)
      throw std::invalid_argument("model.d_head = " + std::to_string(m.d_head) +
                                  ": the CUDA attention kernel supports head dimensions 64 and 128");
    if (l == 'G' && m.gdn_chunk <= 0)
      throw std::invalid_argument(
          "model.gdn_chunk = 0 (token-by-token recurrence) is CPU-only: the CUDA GDN is chunked");
    if (l == 'M' && m.m2_chunk <= 0)
      throw std::invalid_argument(
          "model.m2_chunk = 0 (token-by-token recurrence) is CPU-only: the CUDA Mamba2 is chunked");
  }
}

// Binds pointers to consecutive kAlign-rounded slices of an arena, in two passes: count,
// then allocate (the arena is sized exactly once).
struct ArenaPlan {
  size_t bytes = 0;
  template <class P> void count(P*&, const char*, int64_t n) { bytes += DeviceArena::round_up(size_t(n) * sizeof(P)); }
};

}  // namespace

DeviceModel::DeviceModel(Context& ctx, const ModelConfig& c, int64_t B, int64_t Tn, int shards,
                         bool activation_checkpointing)
    : cfg(c),
      letters(expand_pattern(c.pattern, c.n_layers)),
      max_B(B),
      max_T(Tn),
      checkpointing(activation_checkpointing),
      ctx_(ctx) {
  check_supported(cfg, letters);
  // Parameter layout from the CPU's visit (names, shapes, offsets); values stay on the host side empty.
  {
    ModelParams<float> host_values, host_grads;
    layout.build(
        host_values, host_grads, [&](ModelParams<float>& p, auto&& v) { visit_params(cfg, p, v); }, kParamAlign);
    n_params_ = layout.n_params();
    layout_size_ = layout.size();
    layout.value.clear();
    layout.value.shrink_to_fit();
    layout.grad.clear();
    layout.grad.shrink_to_fit();
  }
  if (shards < 1) throw std::invalid_argument("DeviceModel: shards = " + std::to_string(shards) + " (need >= 1)");
  shard_ = (layout_size_ + kParamAlign * shards - 1) / (kParamAlign * shards) * kParamAlign;
  padded_ = shard_ * shards;
  const int64_t N = B * Tn, D = cfg.d_model, P = padded_;
  const int64_t rope_dh = cfg.d_head;
  {
    ArenaPlan plan;
    plan.count(grad_, "", P);
    plan.count(weights_, "", P);
    plan.count(tokens_, "", N);
    plan.count(targets_, "", N);
    plan.count(loss_mask_, "", N);
    plan.count(rope_table_, "", Tn * rope_dh);
    params_arena_ = DeviceArena(plan.bytes, "model parameters");
  }
  grad_ = params_arena_.alloc<float>(P, "grad");
  weights_ = params_arena_.alloc<bf16>(P, "weights");
  tokens_ = params_arena_.alloc<int32_t>(N, "tokens");
  targets_ = params_arena_.alloc<int32_t>(N, "targets");
  loss_mask_ = params_arena_.alloc<float>(N, "loss_mask");
  rope_table_ = params_arena_.alloc<float>(Tn * rope_dh, "rope table");
  {
    size_t i = 0;
    auto bind_w = [&](bf16*& p, const ParamSpec&) { p = weights_ + layout.offsets[i++]; };
    visit_params(cfg, params_, bind_w);
    i = 0;
    auto bind_g = [&](float*& p, const ParamSpec&) { p = grad_ + layout.offsets[i++]; };
    visit_params(cfg, grads_, bind_g);
  }
  if (cfg.tie_embeddings) {
    params_.lm_head = params_.embed_tokens;
    grads_.lm_head = grads_.embed_tokens;
  }

  // Saved activations, bound by the layers' visit functions. With activation checkpointing
  // only each block's input (x) is kept per block; the rest of one block's activations
  // lives in one work region that every block shares (the backward recomputes a block's
  // forward into it just before its backward), carved for each mixer letter from the same
  // base: one block is live at a time.
  blocks_.resize(letters.size());
  auto visit_all = [&](auto&& v) {
    for (size_t i = 0; i < letters.size(); ++i) {
      if (checkpointing) v(blocks_[i].x, "x", N * D);
      else visit_block_acts(cfg, letters[i], B, Tn, blocks_[i], v);
    }
    v(x_final_, "x_final", N * D);
    v(normed_, "normed", N * D);
    v(rstd_, "rstd", N);
  };
  auto alloc_from = [](DeviceArena& arena) {
    return [&arena](auto*& p, const char* name, int64_t n) {
      using P = std::remove_reference_t<decltype(*p)>;
      p = arena.alloc<P>(n, name);
    };
  };
  {
    ArenaPlan plan;
    visit_all([&](auto*& p, const char* name, int64_t n) { plan.count(p, name, n); });
    acts_arena_ = DeviceArena(plan.bytes, "model activations");
    visit_all(alloc_from(acts_arena_));
  }
  if (checkpointing) {
    std::string distinct;
    for (char l : letters)
      if (distinct.find(l) == std::string::npos) distinct += l;
    size_t work_bytes = 0;
    for (char l : distinct) {
      ArenaPlan plan;
      DeviceBlockActs probe;
      visit_block_acts(cfg, l, B, Tn, probe, [&](auto*& p, const char* name, int64_t n) { plan.count(p, name, n); });
      work_bytes = std::max(work_bytes, plan.bytes);
    }
    work_arena_ = DeviceArena(work_bytes, "one block's activations (checkpointing)");
    for (char l : distinct) {
      work_arena_.reset();
      DeviceBlockActs shared;
      visit_block_acts(cfg, l, B, Tn, shared, alloc_from(work_arena_));
      for (size_t i = 0; i < letters.size(); ++i)
        if (letters[i] == l) {
          bf16* x = blocks_[i].x;  // the block's own saved input
          blocks_[i] = shared;
          blocks_[i].x = x;
        }
    }
  }
  grads_arena_ = DeviceArena(5 * DeviceArena::round_up(size_t(N * D) * sizeof(bf16)), "model backward buffers");
  for (bf16** p : {&d_normed_, &dy_, &dx_, &dh_, &dtmp_}) *p = grads_arena_.alloc<bf16>(N * D, "d residual");

  if (letters.find_first_of("AW") != std::string::npos) {
    const RopeFrequencies f = rope_frequencies(attention_config(cfg, 'A'));
    if (!f.f.empty()) {
      const std::vector<float> table = rope_table(f.f, f.scale, Tn);
      to_device(ctx_, rope_table_, table.data(), int64_t(table.size()));
    }
  }
  zero_grad();
}

size_t DeviceModel::scratch_bytes(const ModelConfig& m, int64_t B, int64_t Tn) {
  const size_t N = size_t(B * Tn);
  // LM head: chunks of fp32 logits + bf16 dlogits within 1 GiB (layers/lm_head.cu).
  size_t need = std::min<size_t>(size_t(1) << 30, N * size_t(m.vocab_size) * 6);
  // SwiGLU backward: dh fp32 + dgate, dup bf16 per hidden unit.
  need = std::max(need, N * size_t(m.d_mlp) * 8);
  // Attention backward: d_o, dq, dk, dv, dk_raw (bf16) and the core's B Tn H floats.
  const size_t q = size_t(m.n_heads * m.d_head), kv = size_t(m.n_kv_heads * m.d_head);
  need = std::max(need, N * ((2 * q + 3 * kv) * 2 + size_t(m.n_heads) * 4));
  // GDN: the backward's intermediates and the chunked core's (T, W, Delta, dDelta, dS per chunk;
  // the forward's W and U are fewer).
  const std::string letters = expand_pattern(m.pattern, m.n_layers);
  if (letters.find('G') != std::string::npos) {
    const GdnConfig g = gdn_config(m);
    need = std::max(
        {need, gdn_backward_scratch_bytes(g, B, Tn), gdn_chunk_forward_scratch_bytes(g, B, Tn, sizeof(bf16))});
  }
  // Mamba2 backward: at most a few fp32 gradients of every projection output.
  if (letters.find('M') != std::string::npos) {
    const Mamba2Config m2 = mamba2_config(m);
    need = std::max(need, N * size_t(m2.d_in_proj() + 2 * m2.conv_dim()) * 8);
  }
  return need + (size_t(64) << 20);
}

std::vector<float> DeviceModel::initial_values(uint64_t seed) const {
  std::vector<float> v(static_cast<size_t>(layout_size_));
  for (size_t i = 0; i < layout.specs.size(); ++i)
    init_values(v.data() + layout.offsets[i], layout.specs[i], layout.specs[i].name, seed);
  return v;
}

void DeviceModel::set_values(const std::vector<float>& v) {
  if (int64_t(v.size()) != layout_size_)
    throw std::invalid_argument("DeviceModel::set_values: " + std::to_string(v.size()) + " values for a layout of " +
                                std::to_string(layout_size_));
  // The fp32 gradient array is free between steps: the staging buffer for the rounding.
  CUDA_CHECK(cudaMemsetAsync(grad_, 0, size_t(padded_) * sizeof(float), ctx_.stream));
  to_device(ctx_, grad_, v.data(), layout_size_);
  f32_to_bf16(ctx_, weights_, grad_, padded_);
  zero_grad();
  ctx_.sync();  // v may go out of scope
}

void DeviceModel::copy_weights(const DeviceModel& from) {
  if (from.layout_size_ != layout_size_)
    throw std::invalid_argument("DeviceModel::copy_weights: a layout of " + std::to_string(from.layout_size_) +
                                " into one of " + std::to_string(layout_size_));
  CUDA_CHECK(cudaMemcpyAsync(weights_, from.weights_, size_t(layout_size_) * sizeof(bf16), cudaMemcpyDeviceToDevice,
                             ctx_.stream));
  ctx_.sync();
}

void DeviceModel::zero_grad() {
  CUDA_CHECK(cudaMemsetAsync(grad_, 0, size_t(padded_) * sizeof(float), ctx_.stream), shape_str("grad", padded_));
}

void DeviceModel::scale_grad(float s) {
  launch_elementwise(ctx_.stream, Scale{grad_, s}, layout_size_, grad_);
  CUDA_CHECK_LAUNCH("scale_grad", shape_str("n", layout_size_));
}

// ---- mixer dispatch: the one place on the GPU that switches on the mixer letter ------

// PhaseTimer span names (static strings) of a block's mixer, forward or backward.
static const char* phase_name(char letter, bool backward) {
  switch (letter) {
    case 'A': return backward ? "bwd attention (norm, mixer, residual)" : "fwd attention (norm, mixer, residual)";
    case 'W':
      return backward ? "bwd sliding window (norm, mixer, residual)" : "fwd sliding window (norm, mixer, residual)";
    case 'G': return backward ? "bwd GDN (norm, mixer, residual)" : "fwd GDN (norm, mixer, residual)";
    default: return backward ? "bwd Mamba2 (norm, mixer, residual)" : "fwd Mamba2 (norm, mixer, residual)";
  }
}

void DeviceModel::forward_block(size_t i, bf16* out, int64_t B, int64_t Tn) {
  const int64_t N = B * Tn, D = cfg.d_model;
  const BlockParams<bf16>& p = params_.blocks[i];
  const DeviceBlockActs& a = blocks_[i];
  const NormPlacement place = norm_placement(cfg, p.letter);
  bf16* h = cfg.d_mlp > 0 ? a.h : out;
  auto mixer = [&](bf16* y, const bf16* x) {
    switch (p.letter) {
      case 'A': case 'W':
        attention_forward(ctx_, attention_config(cfg, p.letter), p.attn, a.attn, rope_table_, y, x, B, Tn);
        break;
      case 'G': gdn_forward(ctx_, gdn_config(cfg), p.gdn, a.gdn, y, x, B, Tn); break;
      case 'M': mamba2_forward(ctx_, mamba2_config(cfg), p.m2, a.m2, y, x, B, Tn); break;
    }
  };
  {
    PhaseScope span(ctx_.stream, phase_name(p.letter, false));
    residual_forward(ctx_, place, mixer, p.mixer_norm.w, cfg.norm_eps, a.x, a.norm1, a.rstd1, a.mixer_out, h, N, D);
  }
  if (cfg.d_mlp > 0) {
    PhaseScope span(ctx_.stream, "fwd MLP (norm, SwiGLU, residual)");
    const SwiGLUConfig mc = mlp_config(cfg);
    residual_forward(
        ctx_, place, [&](bf16* y, const bf16* x) { swiglu_forward(ctx_, mc, p.mlp, a.mlp, y, x, B, Tn); },
        p.mlp_norm.w, cfg.norm_eps, a.h, a.norm2, a.rstd2, a.mlp_out, out, N, D);
  }
}

void DeviceModel::forward_blocks(int64_t B, int64_t Tn) {
  const int64_t N = B * Tn, D = cfg.d_model;
  PhaseScope fwd_span(ctx_.stream, "forward (all)");
  embedding_forward(ctx_, blocks_.empty() ? x_final_ : blocks_[0].x, tokens_, params_.embed_tokens, N, D,
                    cfg.vocab_size);
  for (size_t i = 0; i < letters.size(); ++i) forward_block(i, i + 1 < letters.size() ? blocks_[i + 1].x : x_final_, B, Tn);
  rmsnorm_forward(ctx_, normed_, rstd_, x_final_, params_.final_norm.w, N, D, cfg.norm_eps);
}

StepStats DeviceModel::forward_backward(const int32_t* tokens, const int32_t* targets, const float* loss_mask,
                                        int64_t B, int64_t Tn, double z_loss, bool compute_grad) {
  const int64_t N = B * Tn, D = cfg.d_model;
  check_activation_plan(B, Tn, max_B, max_T);  // before the uploads into the planned buffers
  to_device(ctx_, tokens_, tokens, N);
  to_device(ctx_, targets_, targets, N);
  if (loss_mask) to_device(ctx_, loss_mask_, loss_mask, N);
  forward_blocks(B, Tn);
  std::optional<PhaseScope> head_span(std::in_place, ctx_.stream, "LM head + loss (fwd and bwd)");
  const LmHeadStats s = lm_head_loss(ctx_, compute_grad ? d_normed_ : nullptr, compute_grad ? grads_.lm_head : nullptr,
                                     normed_, params_.lm_head, targets_, loss_mask ? loss_mask_ : nullptr, N, D,
                                     cfg.vocab_size, z_loss, 0, compute_grad);
  head_span.reset();
  StepStats st{s.loss, s.z_loss_term, s.weight_sum, s.n_correct};
  if (!compute_grad) return st;
  PhaseScope bwd_span(ctx_.stream, "backward (all)");

  // d_normed holds d loss / d normed; walk back through the final norm and the blocks.
  // dy: gradient w.r.t. the current block's output; dx: w.r.t. its input.
  bf16 *dy = dy_, *dx = dx_;
  rmsnorm_backward(ctx_, dy, grads_.final_norm.w, d_normed_, x_final_, params_.final_norm.w, rstd_, N, D);
  for (size_t ii = letters.size(); ii-- > 0;) {
    const BlockParams<bf16>& p = params_.blocks[ii];
    const BlockParams<float>& g = grads_.blocks[ii];
    const DeviceBlockActs& a = blocks_[ii];
    const NormPlacement place = norm_placement(cfg, p.letter);
    if (checkpointing) {  // this block's activations again, from its saved input (its output is not needed)
      PhaseScope span(ctx_.stream, "recompute (activation checkpointing)");
      forward_block(ii, dtmp_, B, Tn);
    }
    const bf16* dh = dy;
    if (cfg.d_mlp > 0) {
      PhaseScope span(ctx_.stream, "bwd MLP (norm, SwiGLU, residual)");
      const SwiGLUConfig mc = mlp_config(cfg);
      residual_backward(
          ctx_, place,
          [&](bf16* dxb, const bf16* dyb, const bf16* xb) {
            swiglu_backward(ctx_, mc, p.mlp, g.mlp, a.mlp, dxb, dyb, xb, B, Tn);
          },
          p.mlp_norm.w, g.mlp_norm.w, a.h, a.norm2, a.rstd2, dh_, dy, dtmp_, N, D);
      dh = dh_;
    }
    auto mixer_bwd = [&](bf16* dxb, const bf16* dyb, const bf16* xb) {
      switch (p.letter) {
        case 'A': case 'W':
          attention_backward(ctx_, attention_config(cfg, p.letter), p.attn, g.attn, a.attn, rope_table_, dxb, dyb, xb,
                             B, Tn);
          break;
        case 'G': gdn_backward(ctx_, gdn_config(cfg), p.gdn, g.gdn, a.gdn, dxb, dyb, xb, B, Tn); break;
        case 'M': mamba2_backward(ctx_, mamba2_config(cfg), p.m2, g.m2, a.m2, dxb, dyb, xb, B, Tn); break;
      }
    };
    {
      PhaseScope span(ctx_.stream, phase_name(p.letter, true));
      residual_backward(ctx_, place, mixer_bwd, p.mixer_norm.w, g.mixer_norm.w, a.x, a.norm1, a.rstd1, dx, dh,
                        dtmp_, N, D);
    }
    std::swap(dx, dy);  // the block's input gradient is the earlier block's output gradient
  }
  embedding_backward(ctx_, grads_.embed_tokens, dy, tokens_, N, D);
  return st;
}

}  // namespace hysim::cuda
