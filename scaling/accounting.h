// Model accounting from a ModelConfig alone: exact parameter counts, forward and
// training FLOPs per token at a sequence length, and per-device memory.
//
// Parameter counts follow the layers' visit_params tensor by tensor (d = d_model):
//   embedding    embed_tokens [V, d]
//   attention    q_proj [H dh, d], k_proj, v_proj [Hkv dh, d], o_proj [d, H dh],
//                q_norm [H dh], k_norm [Hkv dh] (qk_norm)                       per A/W layer
//   GDN          q_proj, k_proj [Hq dk, d], v_proj, g_proj [Hv dv, d], o_proj [d, Hv dv],
//                q/k/v_conv1d [channels, K], a_proj, b_proj [Hv, d], A_log, dt_bias [Hv], o_norm [dv]
//   Mamba2       in_proj [2 di + 2 G N + nh, d], conv1d_weight [di + 2 G N, K], conv1d_bias,
//                dt_bias, A_log, D [nh], norm_w [di], out_proj [d, di]     (di = expand d, nh = di / P)
//   MLP          gate_proj, up_proj [F, d], down_proj [d, F]                   per layer when F > 0
//   norms        mixer_norm [d] and (F > 0) mlp_norm [d] per block, final_norm [d]
//   lm_head      [V, d] unless tied
// A mixer's internal norms (q_norm/k_norm, o_norm, norm_w) count towards the mixer.
//
// FLOPs (2 per multiply-add; exp, log, sqrt count as one) are those of the algorithms the
// layers run: projections 2 x weights per token; attention QK^T and PV over the pairs the
// causal (and sliding-window) mask keeps; the GDN chunked WY form and Mamba2 SSD with
// their full intra-chunk blocks and a shorter last chunk (token recurrences when the chunk
// length is 0); elementwise work (convs, norms, gates, RoPE, residual adds) with nominal
// per-element counts. Per token = the cost of one sequence of length seq_len / seq_len.
// The backward costs two forwards (3 x forward per training token; 4 x with per-block
// activation checkpointing, which repeats the forward). The embedding lookup costs 0.
#pragma once
#include <cstdint>
#include <string>

#include "core/config.h"
#include "core/model_config.h"

namespace hysim {

// ---- parameters -----------------------------------------------------------------------

struct ParamCounts {
  int64_t embedding = 0, attention = 0, gdn = 0, mamba2 = 0, mlp = 0, norms = 0, lm_head = 0;
  int64_t total() const { return embedding + attention + gdn + mamba2 + mlp + norms + lm_head; }
  int64_t non_embedding() const { return total() - embedding; }  // Kaplan et al.'s N
};

// One layer of each kind (the mixer including its internal norms; the MLP without its norm).
int64_t attention_layer_params(const ModelConfig& m);
int64_t gdn_layer_params(const ModelConfig& m);
int64_t mamba2_layer_params(const ModelConfig& m);
int64_t mlp_layer_params(const ModelConfig& m);

// The whole model, by category; throws ConfigError if the pattern does not tile n_layers.
ParamCounts count_params(const ModelConfig& m);

// ---- FLOPs ------------------------------------------------------------------------------

// Forward FLOPs per token, averaged over the positions of one sequence of length seq_len.
// *_proj: the dense projections (2 x weights); *_mix: the sequence mixing proper
// (attention scores and values; GDN/Mamba2 recurrent cores, short convs, gates, inner norms).
struct FlopCounts {
  double attention_proj = 0, attention_mix = 0;
  double gdn_proj = 0, gdn_mix = 0;
  double mamba2_proj = 0, mamba2_mix = 0;
  double mlp = 0;      // SwiGLU projections + activation
  double norms = 0;    // block norms, final norm, residual adds
  double lm_head = 0;  // logits (2 d V)
  double forward() const {
    return attention_proj + attention_mix + gdn_proj + gdn_mix + mamba2_proj + mamba2_mix + mlp + norms + lm_head;
  }
  double forward_backward() const { return 3 * forward(); }
};

FlopCounts forward_flops_per_token(const ModelConfig& m, int64_t seq_len);
// Training FLOPs per token: forward + backward (+ the recomputed forward when checkpointing).
double train_flops_per_token(const ModelConfig& m, int64_t seq_len, bool activation_checkpointing = false);

// Number of (query, key) pairs a causal mask keeps in a sequence of length T when each
// query sees itself and at most window-1 earlier keys (window <= 0: full causal).
int64_t attention_pairs(int64_t T, int64_t window);

// The parameters that take part in matmuls: all but the input embedding (all when tied).
int64_t matmul_params(const ModelConfig& m);
// The 6ND approximation of training FLOPs, N = matmul_params(m), D = tokens.
double six_nd(const ModelConfig& m, double tokens);

// ---- memory -----------------------------------------------------------------------------

// Activation elements saved for the backward per token, per layer of a kind ('A', 'W',
// 'G', 'M'): the block's residual stream, norms and MLP plus the mixer's own saved
// tensors. Mamba2 follows layers/mamba2.h visit_acts exactly; attention and GDN follow
// what their layers save (q, k, v after norm/RoPE, attention output and row statistics;
// GDN projections before and after the conv, normalised q/k, gates, core output, gated
// norm, chunk states and, as the CUDA backend saves it, T = (I + A)^-1 per chunk).
double block_acts_per_token(const ModelConfig& m, char letter, int64_t seq_len);

struct MemoryOptions {
  int64_t param_bytes = 2;      // weights as used by forward/backward (bf16 on GPU; 4 float, 8 double on CPU)
  int64_t grad_bytes = 4;       // fp32: the CUDA backend accumulates gradients for the fp32 master update
  int64_t act_bytes = 2;
  int64_t opt_state_bytes = 4;  // each of AdamW's m and v
  int64_t master_bytes = 4;     // fp32 master copy of the weights; 0 when the weights are the master
  int64_t data_parallel = 1;    // GPUs (ranks) holding a replica
  bool zero1 = false;           // shard optimizer state (m, v, master) over the data-parallel ranks
  bool activation_checkpointing = false;  // keep only block inputs; recompute one block at a time
  int64_t micro_batch = 1;      // sequences per device per forward
  int64_t seq_len = 2048;
};

// Bytes per device.
struct MemoryEstimate {
  double params = 0, grads = 0, optimizer = 0, activations = 0;
  double acts_per_token = 0;               // elements, without checkpointing
  double acts_per_token_checkpointed = 0;  // elements, with per-block checkpointing
  double total() const { return params + grads + optimizer + activations; }
};

MemoryEstimate estimate_memory(const ModelConfig& m, const MemoryOptions& o);

// A human-readable summary (for `hysim info`): parameters by category, FLOPs per token
// at c.train.seq_len, 6ND per token, memory per device with options o.
std::string accounting_report(const Config& c, const MemoryOptions& o);

}  // namespace hysim
