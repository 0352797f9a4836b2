#include "scaling/accounting.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace hysim {

namespace {

// The mixer letter of every layer (pattern repeated to n_layers).
std::string layer_letters(const ModelConfig& m) {
  if (m.pattern.empty() || m.n_layers <= 0 || m.n_layers % int64_t(m.pattern.size()) != 0 ||
      m.pattern.find_first_not_of("AWGM") != std::string::npos)
    throw ConfigError("model.pattern = " + m.pattern + ", model.n_layers = " + std::to_string(m.n_layers) +
                      ": need letters from A, W, G, M and n_layers a positive multiple of the pattern length");
  std::string letters;
  for (int64_t i = 0; i < m.n_layers; ++i) letters += m.pattern[i % m.pattern.size()];
  return letters;
}

int64_t count_letter(const std::string& letters, char l) { return std::count(letters.begin(), letters.end(), l); }

// Shapes shared by parameter, FLOP and activation counts.
struct GdnDims {
  int64_t qk, v, conv_channels, Hv;  // q/k width Hq dk, value width Hv dv, conv channels
  explicit GdnDims(const ModelConfig& m)
      : qk(m.gdn_n_heads * m.gdn_d_head_k), v(m.gdn_n_v_heads * m.gdn_d_head_v), conv_channels(2 * qk + v),
        Hv(m.gdn_n_v_heads) {}
};
struct Mamba2Dims {
  int64_t d_inner, n_heads, conv_dim, d_in_proj;
  explicit Mamba2Dims(const ModelConfig& m)
      : d_inner(m.m2_expand * m.d_model), n_heads(d_inner / m.m2_headdim),
        conv_dim(d_inner + 2 * m.m2_n_groups * m.m2_d_state), d_in_proj(d_inner + conv_dim + n_heads) {}
};

// Weights that multiply activations (the "2 x params" part of each layer).
int64_t attention_matmul_params(const ModelConfig& m) {
  return m.d_model * (m.n_heads + 2 * m.n_kv_heads) * m.d_head + m.n_heads * m.d_head * m.d_model;
}
int64_t gdn_matmul_params(const ModelConfig& m) {
  const GdnDims g(m);
  return m.d_model * (2 * g.qk + 2 * g.v + 2 * g.Hv) + g.v * m.d_model;  // q k v g a b, o
}
int64_t mamba2_matmul_params(const ModelConfig& m) {
  const Mamba2Dims d(m);
  return d.d_in_proj * m.d_model + m.d_model * d.d_inner;
}

// Sum of f(len) over the chunks of a length-T sequence (the last chunk may be shorter).
template <class F> double over_chunks(int64_t T, int64_t chunk, F f) {
  const int64_t full = T / chunk, rest = T % chunk;
  return double(full) * f(double(chunk)) + (rest ? f(double(rest)) : 0.0);
}

// Per-sequence FLOPs of one mixer's non-projection work.
double attention_mix_flops(const ModelConfig& m, int64_t T, char letter) {
  const int64_t window = letter == 'W' ? m.window : 0;
  const double qk_width = double((m.n_heads + m.n_kv_heads) * m.d_head);
  // per kept pair and query head: q.k (2 dh), p v (2 dh), scale + exp + running sum (3)
  double f = double(attention_pairs(T, window)) * double(m.n_heads) * double(4 * m.d_head + 3);
  if (m.qk_norm) f += double(T) * 4 * qk_width;
  if (m.pos_encoding == "rope") f += double(T) * 3 * qk_width;  // x cos - y sin per element
  return f;
}

double gdn_mix_flops(const ModelConfig& m, int64_t T) {
  const GdnDims g(m);
  const double dk = double(m.gdn_d_head_k), dv = double(m.gdn_d_head_v), Hv = double(g.Hv);
  double f = double(T) * (double(2 * m.gdn_conv + 4) * double(g.conv_channels)  // conv + SiLU
                          + 3.0 * double(2 * g.qk)                                // L2 norm of q, k
                          + 10.0 * Hv                                             // beta, decay gates
                          + 9.0 * double(g.v));                                   // gated RMSNorm
  if (m.gdn_chunk > 0) {
    // per value head and chunk of length l (WY/UT form): K K^T, Q K^T and the solve of the
    // l x l unit lower-triangular system (l^3/3); W = T(beta K), U = T(beta V); intra-chunk
    // output (Q K^T . M) V_new; inter-chunk V_new = U - W S, Q S and the state update K^T V_new;
    // decay masks and the decay scaling of q and k.
    f += Hv * over_chunks(T, m.gdn_chunk, [&](double l) {
      return (6 * dk + 4 * dv) * l * l + l * l * l / 3 + 6 * l * dk * dv + 2 * l * l + 4 * l * dk;
    });
  } else {
    // per token and value head: decay S, k^T S, rank-1 delta update, q^T S
    f += double(T) * Hv * 7 * dk * dv;
  }
  return f;
}

double mamba2_mix_flops(const ModelConfig& m, int64_t T) {
  const Mamba2Dims d(m);
  const double H = double(d.n_heads), P = double(m.m2_headdim), N = double(m.m2_d_state), G = double(m.m2_n_groups);
  double f = double(T) * (double(2 * m.m2_conv + 5) * double(d.conv_dim)  // conv + bias + SiLU
                          + 5.0 * H                                         // dt softplus, dt A, exp
                          + 2.0 * double(d.d_inner)                         // D x skip
                          + 9.0 * double(d.d_inner));                       // silu(z) gate + RMSNorm
  if (m.m2_chunk > 0) {
    // per chunk of length l: C B^T per group; per head the decay mask (3 l^2), the
    // intra-chunk (C B^T . L) X, the chunk state B^T X, the inter-chunk C S and decay
    // scaling, and passing the state to the next chunk.
    f += over_chunks(T, m.m2_chunk, [&](double l) {
      return 2 * l * l * N * G + H * (3 * l * l + 2 * l * l * P + 4 * l * N * P + 2 * l * P + 2 * N * P);
    });
  } else {
    f += double(T) * H * 5 * N * P;  // decay h, dt x B^T, h C
  }
  return f;
}

double attention_mixer_acts(const ModelConfig& m) {
  const double H = double(m.n_heads), Hkv = double(m.n_kv_heads), dh = double(m.d_head);
  double a = (H + 2 * Hkv) * dh  // q, k (normed, rotated), v
             + H * dh           // attention output (o_proj input)
             + H;               // log-sum-exp per row and head
  if (m.qk_norm) a += (H + Hkv) * dh + 2;  // q, k before the norm + rstd
  return a;
}

double gdn_mixer_acts(const ModelConfig& m, int64_t T) {
  const GdnDims g(m);
  // = layers/gated_deltanet.h visit_gdn_acts / (B T)
  double a = 3.0 * double(g.conv_channels)  // q k v: projections, conv pre-activations, after SiLU (q, k L2-normalised)
             + 2 * m.gdn_n_heads            // q, k norms
             + 3.0 * double(g.Hv)           // a projection, decay g, beta
             + 3.0 * double(g.v)            // core output, gate projection, normed output
             + double(g.Hv);                // gated norm rstd
  if (m.gdn_chunk > 0) {
    const int64_t n_chunks = (T + m.gdn_chunk - 1) / m.gdn_chunk;
    a += double(g.Hv * m.gdn_d_head_k * m.gdn_d_head_v) * double(n_chunks) / double(T);
    // T = (I + A)^-1 per chunk, which the CUDA backend saves for its backward (C^2 per chunk
    // and value head; the CPU recomputes it, so this overstates a CPU run by ~C Hv per token)
    a += double(g.Hv * m.gdn_chunk * m.gdn_chunk) * double(n_chunks) / double(T);
  }
  return a;
}

double mamba2_mixer_acts(const ModelConfig& m, int64_t T) {  // = layers/mamba2.h visit_acts / (B T)
  const Mamba2Dims d(m);
  double a = double(d.d_in_proj + 3 * d.conv_dim + d.n_heads + 3 * d.d_inner + m.m2_n_groups);
  if (m.m2_chunk > 0) {
    const int64_t n_chunks = (T + m.m2_chunk - 1) / m.m2_chunk;
    a += double(d.n_heads * m.m2_headdim * m.m2_d_state) * double(n_chunks) / double(T);
  }
  return a;
}

std::string human(double x, const char* unit) {
  const char* prefixes[] = {"", "K", "M", "G", "T", "P", "E"};
  int i = 0;
  while (std::abs(x) >= 1000 && i < 6) x /= 1000, ++i;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3g %s%s", x, prefixes[i], unit);
  return buf;
}

std::string gib(double bytes) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / double(1ull << 30));
  return buf;
}

}  // namespace

// ---- parameters -------------------------------------------------------------------------

int64_t attention_layer_params(const ModelConfig& m) {
  return attention_matmul_params(m) + (m.qk_norm ? (m.n_heads + m.n_kv_heads) * m.d_head : 0);
}

int64_t gdn_layer_params(const ModelConfig& m) {
  const GdnDims g(m);
  return gdn_matmul_params(m)                // q k v g a b o projections
         + g.conv_channels * m.gdn_conv      // q_conv1d, k_conv1d, v_conv1d
         + 2 * g.Hv                          // A_log, dt_bias
         + m.gdn_d_head_v;                   // o_norm (shared by the heads)
}

int64_t mamba2_layer_params(const ModelConfig& m) {
  const Mamba2Dims d(m);
  return mamba2_matmul_params(m)             // in_proj, out_proj
         + d.conv_dim * m.m2_conv + d.conv_dim  // conv1d_weight, conv1d_bias
         + 3 * d.n_heads                     // dt_bias, A_log, D
         + d.d_inner;                        // norm_w
}

int64_t mlp_layer_params(const ModelConfig& m) { return 3 * m.d_model * m.d_mlp; }

ParamCounts count_params(const ModelConfig& m) {
  const std::string letters = layer_letters(m);
  const int64_t n_attn = count_letter(letters, 'A') + count_letter(letters, 'W');
  ParamCounts p;
  p.embedding = m.vocab_size * m.d_model;
  p.attention = n_attn * attention_layer_params(m);
  p.gdn = count_letter(letters, 'G') * gdn_layer_params(m);
  p.mamba2 = count_letter(letters, 'M') * mamba2_layer_params(m);
  p.mlp = m.d_mlp > 0 ? m.n_layers * mlp_layer_params(m) : 0;
  p.norms = m.n_layers * (m.d_mlp > 0 ? 2 : 1) * m.d_model + m.d_model;
  p.lm_head = m.tie_embeddings ? 0 : m.vocab_size * m.d_model;
  return p;
}

int64_t matmul_params(const ModelConfig& m) {
  const ParamCounts p = count_params(m);
  return m.tie_embeddings ? p.total() : p.non_embedding();
}

double six_nd(const ModelConfig& m, double tokens) { return 6.0 * double(matmul_params(m)) * tokens; }

// ---- FLOPs ------------------------------------------------------------------------------

int64_t attention_pairs(int64_t T, int64_t window) {
  if (window <= 0 || window >= T) return T * (T + 1) / 2;
  // queries 0..window-1 see t+1 keys; the remaining T-window see `window` keys
  return window * (window + 1) / 2 + (T - window) * window;
}

FlopCounts forward_flops_per_token(const ModelConfig& m, int64_t seq_len) {
  if (seq_len <= 0) throw ConfigError("seq_len = " + std::to_string(seq_len) + " must be > 0");
  const std::string letters = layer_letters(m);
  const double T = double(seq_len), D = double(m.d_model);
  FlopCounts f;
  for (char l : letters) {
    switch (l) {
      case 'A': case 'W':
        f.attention_proj += 2.0 * double(attention_matmul_params(m));
        f.attention_mix += attention_mix_flops(m, seq_len, l) / T;
        break;
      case 'G':
        f.gdn_proj += 2.0 * double(gdn_matmul_params(m));
        f.gdn_mix += gdn_mix_flops(m, seq_len) / T;
        break;
      case 'M':
        f.mamba2_proj += 2.0 * double(mamba2_matmul_params(m));
        f.mamba2_mix += mamba2_mix_flops(m, seq_len) / T;
        break;
    }
    f.norms += 4 * D + D;  // mixer sub-block norm + residual add
    if (m.d_mlp > 0) {
      f.mlp += 2.0 * double(mlp_layer_params(m)) + 5.0 * double(m.d_mlp);  // 3 projections + silu(g) * u
      f.norms += 4 * D + D;
    }
  }
  f.norms += 4 * D;  // final norm
  f.lm_head = 2.0 * D * double(m.vocab_size);
  return f;
}

double train_flops_per_token(const ModelConfig& m, int64_t seq_len, bool activation_checkpointing) {
  const double fwd = forward_flops_per_token(m, seq_len).forward();
  return (activation_checkpointing ? 4.0 : 3.0) * fwd;
}

// ---- memory -----------------------------------------------------------------------------

double block_acts_per_token(const ModelConfig& m, char letter, int64_t seq_len) {
  const double D = double(m.d_model);
  double a = 4 * D + 1;  // x, norm1, mixer_out, h, rstd1 (layers/model.h)
  switch (letter) {
    case 'A': case 'W': a += attention_mixer_acts(m); break;
    case 'G': a += gdn_mixer_acts(m, seq_len); break;
    case 'M': a += mamba2_mixer_acts(m, seq_len); break;
    default: throw ConfigError(std::string("unknown mixer letter '") + letter + "'");
  }
  if (m.d_mlp > 0) a += 2 * D + 1 + 3.0 * double(m.d_mlp);  // norm2, mlp_out, rstd2; gate, up, silu(g) u
  return a;
}

MemoryEstimate estimate_memory(const ModelConfig& m, const MemoryOptions& o) {
  if (o.data_parallel <= 0 || o.micro_batch <= 0 || o.seq_len <= 0)
    throw ConfigError("estimate_memory: data_parallel, micro_batch and seq_len must be > 0");
  const std::string letters = layer_letters(m);
  const double N = double(count_params(m).total()), D = double(m.d_model);
  MemoryEstimate e;
  e.params = N * double(o.param_bytes);
  e.grads = N * double(o.grad_bytes);
  e.optimizer = N * double(2 * o.opt_state_bytes + o.master_bytes) / double(o.zero1 ? o.data_parallel : 1);

  const double final_acts = 2 * D + 1;  // x_final, normed, rstd
  double all_blocks = 0, largest_block = 0;
  for (char l : letters) {
    const double b = block_acts_per_token(m, l, o.seq_len);
    all_blocks += b;
    largest_block = std::max(largest_block, b);
  }
  e.acts_per_token = all_blocks + final_acts;
  // Checkpointing keeps each block's input and recomputes one block at a time.
  e.acts_per_token_checkpointed = double(m.n_layers) * D + largest_block + final_acts;
  const double per_token = o.activation_checkpointing ? e.acts_per_token_checkpointed : e.acts_per_token;
  e.activations = per_token * double(o.micro_batch * o.seq_len) * double(o.act_bytes);
  return e;
}

std::string accounting_report(const Config& c, const MemoryOptions& o) {
  const ModelConfig& m = c.model;
  const ParamCounts p = count_params(m);
  const FlopCounts f = forward_flops_per_token(m, c.train.seq_len);
  const MemoryEstimate e = estimate_memory(m, o);
  std::string s;
  char buf[256];
  auto line = [&](const char* name, double v, const char* unit) {
    if (v == 0) return;  // a mixer the pattern does not use
    std::snprintf(buf, sizeof buf, "  %-22s %14.0f  (%s)\n", name, v, human(v, unit).c_str());
    s += buf;
  };
  s += "parameters (pattern " + m.pattern + ", " + std::to_string(m.n_layers) + " layers)\n";
  line("embedding", double(p.embedding), "");
  line("attention", double(p.attention), "");
  line("gdn", double(p.gdn), "");
  line("mamba2", double(p.mamba2), "");
  line("mlp", double(p.mlp), "");
  line("norms", double(p.norms), "");
  line("lm_head", double(p.lm_head), "");
  line("total", double(p.total()), "");
  line("non-embedding", double(p.non_embedding()), "");
  s += "forward FLOPs per token at seq_len " + std::to_string(c.train.seq_len) + "\n";
  line("attention proj", f.attention_proj, "FLOP");
  line("attention mix", f.attention_mix, "FLOP");
  line("gdn proj", f.gdn_proj, "FLOP");
  line("gdn mix", f.gdn_mix, "FLOP");
  line("mamba2 proj", f.mamba2_proj, "FLOP");
  line("mamba2 mix", f.mamba2_mix, "FLOP");
  line("mlp", f.mlp, "FLOP");
  line("norms + residual", f.norms, "FLOP");
  line("lm_head", f.lm_head, "FLOP");
  line("forward", f.forward(), "FLOP");
  line("forward + backward", f.forward_backward(), "FLOP");
  line("6N", six_nd(m, 1.0), "FLOP");
  // batch_size is per device and micro-batch: a step sees batch_size x grad_accum x GPUs sequences
  const double tokens = double(c.train.steps) * double(c.train.grad_accum * c.train.batch_size) *
                        double(c.train.seq_len) * double(o.data_parallel);
  s += "training run (" + human(tokens, "tokens") + " on " + std::to_string(o.data_parallel) + " device(s))\n";
  line(o.activation_checkpointing ? "exact (+ recompute)" : "exact", tokens * train_flops_per_token(m, c.train.seq_len, o.activation_checkpointing), "FLOP");
  line("6ND", six_nd(m, tokens), "FLOP");
  std::snprintf(buf, sizeof buf,
                "memory per device (%lld GPU%s%s, micro-batch %lld x %lld, %s)\n", (long long)o.data_parallel,
                o.data_parallel == 1 ? "" : "s", o.zero1 ? ", ZeRO-1" : "", (long long)o.micro_batch,
                (long long)o.seq_len, o.activation_checkpointing ? "activation checkpointing" : "no checkpointing");
  s += buf;
  auto mem = [&](const char* name, double bytes) {
    std::snprintf(buf, sizeof buf, "  %-22s %14s\n", name, gib(bytes).c_str());
    s += buf;
  };
  mem("params", e.params);
  mem("grads", e.grads);
  mem("optimizer", e.optimizer);
  mem("activations", e.activations);
  mem("total", e.total());
  line("acts/token", e.acts_per_token, "elements");
  line("acts/token (ckpt)", e.acts_per_token_checkpointed, "elements");
  return s;
}

}  // namespace hysim
