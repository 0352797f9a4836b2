// Model: a stack of blocks built from a pattern string (A full attention, W sliding
// window attention, G Gated DeltaNet, M Mamba2), repeated to n_layers, between a token
// embedding and a final RMSNorm + LM head with fused cross-entropy.
//
// A block is two residual sub-blocks, mixer then SwiGLU MLP, each with its norm placed
// by the block's mixer type (ModelConfig::norm_attention / norm_gdn / norm_mamba2):
//   pre-norm:  h = x + f(norm(x))          (Olmo Hybrid's GDN blocks)
//   reordered: h = x + norm(f(x))          (Olmo 2/3 attention blocks)
//
// All parameters and gradients live in one ParamStore, all saved activations in one
// ActStore, both sized once from the config and (B, T).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/model_config.h"
#include "core/params.h"
#include "layers/attention.h"
#include "layers/embedding.h"
#include "layers/gated_deltanet.h"
#include "layers/lm_head.h"
#include "layers/mamba2.h"
#include "layers/rmsnorm.h"
#include "layers/swiglu_mlp.h"

namespace hysim {

// Checks the pattern and returns one mixer letter per layer. Throws std::invalid_argument
// naming the rule when n_layers is not a multiple of the pattern length or a letter is unknown.
std::string expand_pattern(const std::string& pattern, int64_t n_layers);

// Per-layer configs derived from the model config.
AttentionConfig attention_config(const ModelConfig& m, char letter);
GdnConfig gdn_config(const ModelConfig& m);
Mamba2Config mamba2_config(const ModelConfig& m);
SwiGLUConfig mlp_config(const ModelConfig& m);
NormPlacement norm_placement(const ModelConfig& m, char letter);

template <class T> struct BlockParams {
  char letter = 'A';
  AttentionParams<T> attn;  // used when letter is A or W
  GdnParams<T> gdn;         // G
  Mamba2Params<T> m2;       // M
  RMSNormParams<T> mixer_norm, mlp_norm;
  SwiGLUParams<T> mlp;
};

template <class T> struct ModelParams {
  T* embed_tokens = nullptr;
  std::vector<BlockParams<T>> blocks;
  RMSNormParams<T> final_norm;
  T* lm_head = nullptr;  // == embed_tokens when tied
};

// Parameter paths: embed_tokens, blocks.<i>.{mixer,mixer_norm,mlp,mlp_norm}.<name>, final_norm.w, lm_head.
template <class T, class V> void visit_params(const ModelConfig& c, ModelParams<T>& p, V&& v) {
  const std::string letters = expand_pattern(c.pattern, c.n_layers);
  p.blocks.resize(letters.size());
  v(p.embed_tokens, ParamSpec{"embed_tokens", {c.vocab_size, c.d_model}, Init::normal(c.init_std), false});
  for (size_t i = 0; i < letters.size(); ++i) {
    BlockParams<T>& b = p.blocks[i];
    b.letter = letters[i];
    const std::string pre = "blocks." + std::to_string(i) + ".";
    auto vm = prefixed(pre + "mixer.", v);
    switch (b.letter) {
      case 'A': case 'W': visit_params(attention_config(c, b.letter), b.attn, vm); break;
      case 'G': visit_params(gdn_config(c), b.gdn, vm); break;
      case 'M': visit_params(mamba2_config(c), b.m2, vm); break;
    }
    visit_params(RMSNormConfig{c.d_model, c.norm_eps}, b.mixer_norm, prefixed(pre + "mixer_norm.", v));
    if (c.d_mlp > 0) {
      visit_params(mlp_config(c), b.mlp, prefixed(pre + "mlp.", v));
      visit_params(RMSNormConfig{c.d_model, c.norm_eps}, b.mlp_norm, prefixed(pre + "mlp_norm.", v));
    }
  }
  visit_params(RMSNormConfig{c.d_model, c.norm_eps}, p.final_norm, prefixed("final_norm.", v));
  if (!c.tie_embeddings)
    v(p.lm_head, ParamSpec{"lm_head", {c.vocab_size, c.d_model}, Init::normal(c.init_std), true});
}

template <class T> struct BlockActs {
  T* x = nullptr;                 // block input (residual stream)
  T* norm1 = nullptr;             // pre: norm(x) (mixer input); reordered: f(x) (norm input)
  T* rstd1 = nullptr;
  T* mixer_out = nullptr;         // pre: f(norm(x)); reordered: norm(f(x))
  T* h = nullptr;                 // after the mixer residual
  T* norm2 = nullptr, *rstd2 = nullptr, *mlp_out = nullptr;
  AttentionActs<T> attn;
  GdnActs<T> gdn;
  Mamba2Acts<T> m2;
  SwiGLUActs<T> mlp;
};

template <class T> struct ModelActs {
  std::vector<BlockActs<T>> blocks;
  T* x_final = nullptr;     // output of the last block
  T* normed = nullptr;      // final norm output (LM head input)
  T* rstd = nullptr;
};

// One block's saved activations, for any block struct with the fields of BlockActs (the
// CPU's, and the GPU's DeviceBlockActs in core/cuda/model.h): the mixer's own visit_acts is
// picked by the type of b.attn / b.gdn / b.m2 / b.mlp.
template <class Block, class V>
void visit_block_acts(const ModelConfig& c, char letter, int64_t B, int64_t Tn, Block& b, V&& v) {
  const int64_t N = B * Tn, D = c.d_model;
  v(b.x, "x", N * D);
  v(b.norm1, "norm1", N * D);
  v(b.rstd1, "rstd1", N);
  v(b.mixer_out, "mixer_out", N * D);
  v(b.h, "h", N * D);
  switch (letter) {
    case 'A': case 'W': visit_acts(attention_config(c, letter), B, Tn, b.attn, v); break;
    case 'G': visit_acts(gdn_config(c), B, Tn, b.gdn, v); break;
    case 'M': visit_acts(mamba2_config(c), B, Tn, b.m2, v); break;
  }
  if (c.d_mlp > 0) {
    v(b.norm2, "norm2", N * D);
    v(b.rstd2, "rstd2", N);
    v(b.mlp_out, "mlp_out", N * D);
    visit_acts(mlp_config(c), B, Tn, b.mlp, v);
  }
}

template <class T, class V>
void visit_acts(const ModelConfig& c, int64_t B, int64_t Tn, ModelActs<T>& a, V&& v) {
  const std::string letters = expand_pattern(c.pattern, c.n_layers);
  const int64_t N = B * Tn, D = c.d_model;
  a.blocks.resize(letters.size());
  for (size_t i = 0; i < letters.size(); ++i) visit_block_acts(c, letters[i], B, Tn, a.blocks[i], v);
  v(a.x_final, "x_final", N * D);
  v(a.normed, "normed", N * D);
  v(a.rstd, "rstd", N);
}

// Loss statistics of one forward(+backward) pass.
struct StepStats {
  double loss = 0;          // mean cross-entropy over positions with mask > 0 (nats/token)
  double z_loss = 0;        // the z-loss term added to the objective
  double weight_sum = 0;    // sum of the loss mask
  int64_t n_correct = 0;    // argmax == target among counted positions
};

// Throws std::invalid_argument naming both shapes when a B x Tn batch exceeds the
// max_B x max_T a model's activations were sized for.
void check_activation_plan(int64_t B, int64_t Tn, int64_t max_B, int64_t max_T);

// Forward FLOPs of one batch of B x Tn tokens (exact per-layer counts, 2 per multiply-add).
int64_t model_forward_flops(const ModelConfig& cfg, int64_t B, int64_t Tn);

template <class T> class Model {
 public:
  // Sizes activations for batches of up to B sequences of up to Tn tokens.
  Model(const ModelConfig& cfg, int64_t B, int64_t Tn);

  const ModelConfig cfg;
  const std::string letters;  // one mixer letter per layer
  const int64_t max_B, max_T;

  ParamStore<T> store;        // all parameter values and gradients
  ModelParams<T> params, grads;
  ActStore<T> act_store;
  ModelActs<T> acts;
  int64_t lm_head_chunk_rows = 256;

  void init(uint64_t seed) { store.init(seed); }

  // Forward and (when compute_grad) backward of the mean cross-entropy (+ z_loss * lse^2)
  // over positions with loss_mask > 0 (loss_mask may be null: all positions count).
  // Parameter gradients ACCUMULATE into store.grad (zero them with store.zero_grad()).
  StepStats forward_backward(const int32_t* tokens, const int32_t* targets, const float* loss_mask, int64_t B,
                             int64_t Tn, double z_loss, bool compute_grad);

  // Logits [B*Tn, V] for a batch of tokens.
  void forward_logits(const int32_t* tokens, int64_t B, int64_t Tn, T* logits);

  // Gradient w.r.t. the embedding output of the last forward_backward (for tests): [B*Tn, D].
  const std::vector<T>& d_embedding() const { return d_embed_; }

  // Forward FLOPs of one batch (exact per-layer counts): model_forward_flops.
  int64_t forward_flops(int64_t B, int64_t Tn) const { return model_forward_flops(cfg, B, Tn); }

 private:
  void forward_blocks(const int32_t* tokens, int64_t B, int64_t Tn);
  std::vector<T> d_embed_, dx_, dh_, dtmp_, dtmp2_;
};

}  // namespace hysim
