// Import of HuggingFace transformers' OlmoHybridForCausalLM (model_type "olmo_hybrid")
// weights into a hysim checkpoint.
//
// Input: an HDF5 file with one dataset per HF state-dict tensor, hf/<HF name> (float32 or
// float64, HF shapes), and the root attribute config_json (the model's config.json text),
// as written by scripts/npz_to_h5.py (tests/fixtures/olmo_hybrid_tiny_*.h5).
//
// Config: hidden_size -> d_model, intermediate_size -> d_mlp, layer_types -> pattern (one
// letter per layer: linear_attention G, full_attention A; n_layers = its length),
// num_attention_heads / num_key_value_heads / head_dim (default hidden_size / heads),
// rms_norm_eps -> norm_eps, rope_parameters.rope_theta -> rope_theta (rope_theta: null is
// NoPE; rope_parameters null or absent is RoPE with theta 10000, as transformers 5.x
// resolves it when loading a config.json), linear_num_key_heads / linear_num_value_heads / linear_key_head_dim /
// linear_value_head_dim / linear_conv_kernel_dim / linear_allow_neg_eigval -> gdn_*, with
// HF's defaults for missing or null keys; gdn_norm_eps = 1e-5 (HF hard-codes the gated
// output norm's eps), qk_norm on, norm_gdn pre, norm_attention reordered. Settings hysim
// cannot represent (attention_bias, hidden_act other than silu, scaled RoPE, other layer
// types) are rejected rather than silently dropped.
//
// Weights (i = layer; G = linear_attention layer, A = full_attention layer):
//   model.embed_tokens.weight                     -> embed_tokens
//   model.layers.i.input_layernorm.weight        (G) -> blocks.i.mixer_norm.w   (pre-norm)
//   model.layers.i.post_attention_layernorm.weight (G) -> blocks.i.mlp_norm.w  (pre-norm of the MLP)
//   model.layers.i.post_attention_layernorm.weight (A) -> blocks.i.mixer_norm.w (reordered: after attn)
//   model.layers.i.post_feedforward_layernorm.weight (A) -> blocks.i.mlp_norm.w
//   model.layers.i.linear_attn.{q,k,v,a,b,g,o}_proj.weight, A_log, dt_bias, o_norm.weight
//                                                 -> blocks.i.mixer.{..}_proj, A_log, dt_bias, o_norm
//   model.layers.i.linear_attn.conv1d.weight [2 H dk + Hv dv, 1, K] (q, k, v channels fused,
//     transformers 5.x) or {q,k,v}_conv1d.weight [C, 1, K] (earlier versions)
//                                                 -> blocks.i.mixer.{q,k,v}_conv1d [C, K]
//   model.layers.i.self_attn.{q,k,v,o}_proj.weight, q_norm.weight, k_norm.weight
//                                                 -> blocks.i.mixer.{q,k,v,o}_proj, q_norm, k_norm
//   model.layers.i.mlp.{gate,up,down}_proj.weight -> blocks.i.mlp.{gate,up,down}_proj
//   model.norm.weight -> final_norm.w,  lm_head.weight -> lm_head (absent when tied)
// Every hysim parameter must be found with the right shape and every HF tensor used;
// anything else throws.
#pragma once
#include <string>

#include "core/checkpoint.h"
#include "core/model_config.h"

namespace hysim {

// HF OlmoHybridConfig JSON text -> ModelConfig. Throws std::invalid_argument naming the
// key for malformed JSON, missing/ill-typed keys and unsupported settings.
ModelConfig olmo_hybrid_model_config(const std::string& config_json);

// The HF state-dict name that holds a hysim parameter path under `cfg` (for the GDN convs
// of transformers 5.x: the fused linear_attn.conv1d.weight). Throws std::invalid_argument
// for a path that is not a parameter of an Olmo Hybrid model.
std::string olmo_hybrid_hf_name(const ModelConfig& cfg, const std::string& hysim_path);

// Reads `h5_path` (layout above) and returns a checkpoint at step 0 holding every hysim
// parameter (in the model's parameter order), config_text = the resolved hysim config as
// INI, meta = {source, hf_model_type, hf_config_json, and versions when the file has it}.
// *out_cfg (if not null) receives the model config. Throws std::runtime_error naming the
// file and tensor, or std::invalid_argument for config problems.
Checkpoint import_olmo_hybrid(const std::string& h5_path, ModelConfig* out_cfg);

}  // namespace hysim
