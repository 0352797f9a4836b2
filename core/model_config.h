// ModelConfig: everything that defines a model's architecture. Parsed from the
// [model] section of an INI file by core/config.cpp (INI key model.<field>, one per
// field, same name; validated there); turned into per-layer configs by layers/model.cpp.
// Defaults describe a tiny CPU model.
#pragma once
#include <cstdint>
#include <string>

namespace hysim {

enum class NormPlacement { pre, reordered };  // pre: x + f(norm(x)); reordered: x + norm(f(x))

struct ModelConfig {
  // stack
  std::string pattern = "GGGA";  // letters A (full attn), W (sliding window), G (GDN), M (Mamba2); repeated
  int64_t n_layers = 4;          // must be a multiple of pattern.size()
  int64_t d_model = 64;
  int64_t vocab_size = 256;
  bool tie_embeddings = false;
  double norm_eps = 1e-6;       // block norms and final norm
  NormPlacement norm_attention = NormPlacement::reordered;  // Olmo 2/3 around attention (A, W) blocks
  NormPlacement norm_gdn = NormPlacement::pre;               // Olmo Hybrid around GDN blocks
  NormPlacement norm_mamba2 = NormPlacement::pre;
  double init_std = 0.02;       // N(0, init_std) for all projection and embedding weights

  // MLP (SwiGLU) in every block; 0 disables the MLP sub-block
  int64_t d_mlp = 172;

  // attention (A and W)
  int64_t n_heads = 4;
  int64_t n_kv_heads = 4;       // GQA when < n_heads
  int64_t d_head = 16;
  bool qk_norm = true;          // RMSNorm over the full q and k projections (Olmo 2/3)
  std::string pos_encoding = "rope";  // "rope" or "none" (NoPE; released Olmo Hybrid 7B)
  double rope_theta = 10000.0;
  // YaRN: run a model trained at rope_original_len at rope_scaling_factor times that length
  // (layers/attention.h, rope_frequencies). "none" or "yarn".
  std::string rope_scaling = "none";
  double rope_scaling_factor = 1.0;
  int64_t rope_original_len = 0;
  int64_t window = 64;          // sliding window (W layers): a query sees itself and window-1 previous keys
  int64_t attn_tile = 64;       // key/query tile of the online-softmax kernel

  // Gated DeltaNet (G)
  int64_t gdn_n_heads = 4;      // q/k heads
  int64_t gdn_n_v_heads = 4;    // value heads (a multiple of gdn_n_heads: grouped value heads)
  int64_t gdn_d_head_k = 16;
  int64_t gdn_d_head_v = 32;
  int64_t gdn_conv = 4;         // short conv kernel on q, k, v
  bool gdn_allow_neg_eigval = true;  // beta = 2 sigmoid(.) so eigenvalues of (I - beta k k^T) lie in [-1, 1]
  int64_t gdn_chunk = 64;       // 0 = token-by-token recurrence
  double gdn_norm_eps = 1e-5;

  // Mamba2 (M)
  int64_t m2_d_state = 16;
  int64_t m2_headdim = 16;
  int64_t m2_expand = 2;
  int64_t m2_n_groups = 1;
  int64_t m2_conv = 4;
  int64_t m2_chunk = 64;        // 0 = recurrence
  double m2_norm_eps = 1e-5;

  // initialisation of decays (GDN and Mamba2): A ~ U(a_init_min, a_init_max), stored as A_log;
  // dt log-uniform in [dt_min, dt_max], floored at dt_floor, stored as dt_bias = softplus^-1(dt)
  // (a_init_min = 0, the published GDN init A ~ U(0, 16), is fine: CounterRng::uniform never
  // returns exactly 0, so A_log is finite)
  double a_init_min = 1.0, a_init_max = 16.0;
  double dt_min = 1e-3, dt_max = 1e-1, dt_floor = 1e-4;

  bool operator==(const ModelConfig&) const = default;
};

}  // namespace hysim
