#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cstdio>
#include <string>

#include "core/config.h"
#include "layers/gated_deltanet.h"  // header-only visit_acts, to cross-check the GDN activations
#include "layers/mamba2.h"          // header-only visit_params / visit_acts, to cross-check the Mamba2 counts
#include "scaling/accounting.h"

using namespace hysim;

static const std::string kConfigs = std::string(HYSIM_SOURCE_DIR) + "/experiments/configs/";

TEST_CASE("accounting: tiny config counted by hand") {
  // ModelConfig defaults: GGGA x 1, d 64, V 256 untied, F 172; attention 4 x 16 with QK-norm;
  // GDN 4 heads, dk 16, dv 32, conv 4.
  const ModelConfig m;
  // attention: q, k, v, o 64 x 64 each = 16384; q_norm, k_norm 64 each
  CHECK(attention_layer_params(m) == 4 * 4096 + 128);
  // GDN: q, k [64, 64] = 8192; v [128, 64] = 8192; g [128, 64] = 8192; o [64, 128] = 8192;
  //      convs (64 + 64 + 128) x 4 = 1024; a, b [4, 64] = 512; A_log, dt_bias 8; o_norm 32
  CHECK(gdn_layer_params(m) == 8192 + 8192 + 8192 + 8192 + 1024 + 512 + 8 + 32);
  CHECK(mlp_layer_params(m) == 3 * 64 * 172);
  const ParamCounts p = count_params(m);
  CHECK(p.embedding == 256 * 64);
  CHECK(p.lm_head == 256 * 64);
  CHECK(p.attention == 16512);
  CHECK(p.gdn == 3 * 34344);
  CHECK(p.mamba2 == 0);
  CHECK(p.mlp == 4 * 33024);
  CHECK(p.norms == 4 * 2 * 64 + 64);  // two per block + final
  CHECK(p.total() == 284984);
  CHECK(p.non_embedding() == 284984 - 16384);
  CHECK(matmul_params(m) == 284984 - 16384);

  ModelConfig tied = m;
  tied.tie_embeddings = true;
  CHECK(count_params(tied).lm_head == 0);
  CHECK(count_params(tied).total() == 284984 - 16384);
  CHECK(matmul_params(tied) == 284984 - 16384);  // the embedding does the LM head's matmul

  ModelConfig no_mlp = m;
  no_mlp.d_mlp = 0;  // no MLP and no MLP norm
  CHECK(count_params(no_mlp).mlp == 0);
  CHECK(count_params(no_mlp).norms == 4 * 64 + 64);

  ModelConfig gqa = m;
  gqa.pattern = "WA";
  gqa.n_layers = 4;
  gqa.n_kv_heads = 2;
  gqa.qk_norm = false;
  // q [64, 64], k, v [32, 64], o [64, 64]
  CHECK(attention_layer_params(gqa) == 4096 + 2048 + 2048 + 4096);
  CHECK(count_params(gqa).attention == 4 * 12288);
  CHECK(count_params(gqa).gdn == 0);

  ModelConfig gvh = m;  // grouped GDN value heads
  gvh.gdn_n_v_heads = 8;
  // q, k [64, 64]; v, g [256, 64]; o [64, 256]; convs (128 + 256) x 4; a, b [8, 64]; 16; o_norm 32
  CHECK(gdn_layer_params(gvh) == 8192 + 3 * 16384 + 1536 + 1024 + 16 + 32);
}

TEST_CASE("accounting: Mamba2 counts by hand and against layers/mamba2.h") {
  ModelConfig m;
  m.pattern = "MMMA";
  // d_inner 128, 8 heads, conv_dim 128 + 2 x 16 = 160:
  // in_proj [2 x 128 + 32 + 8, 64] = 18944; conv [160, 4] + bias 160; dt_bias, A_log, D 24;
  // norm_w 128; out_proj [64, 128] = 8192
  CHECK(mamba2_layer_params(m) == 18944 + 640 + 160 + 24 + 128 + 8192);
  CHECK(count_params(m).mamba2 == 3 * 28088);

  for (int variant = 0; variant < 3; ++variant) {
    ModelConfig v = m;
    if (variant == 1) v.m2_n_groups = 2, v.m2_d_state = 8, v.m2_expand = 3, v.m2_headdim = 32;
    if (variant == 2) v.d_model = 48, v.m2_chunk = 0, v.m2_conv = 3;
    Mamba2Config c;
    c.d_model = v.d_model, c.d_state = v.m2_d_state, c.headdim = v.m2_headdim, c.expand = v.m2_expand;
    c.n_groups = v.m2_n_groups, c.conv_size = v.m2_conv, c.chunk_size = v.m2_chunk;
    Mamba2Params<float> params;
    int64_t n = 0;
    visit_params(c, params, [&](float*&, const ParamSpec& s) { n += s.numel(); });
    CHECK(mamba2_layer_params(v) == n);

    // saved activations per token: the block's own tensors + exactly what visit_acts declares
    const int64_t B = 2, T = 100;  // T not a multiple of the chunk: a partial last chunk
    Mamba2Acts<float> acts;
    int64_t n_acts = 0;
    visit_acts(c, B, T, acts, [&](float*&, const char*, int64_t k) { n_acts += k; });
    const double block = 6 * v.d_model + 2 + 3 * v.d_mlp;
    CHECK(block_acts_per_token(v, 'M', T) == doctest::Approx(block + double(n_acts) / double(B * T)).epsilon(1e-12));
  }
}

TEST_CASE("accounting: GDN activations against layers/gated_deltanet.h and the CUDA backend's T") {
  for (int variant = 0; variant < 3; ++variant) {
    ModelConfig m;  // GGGA
    if (variant == 1) m.gdn_n_v_heads = 8, m.gdn_chunk = 16;
    if (variant == 2) m.gdn_chunk = 0;  // the recurrence: no chunk states, no T
    GdnConfig c;
    c.d_model = m.d_model, c.n_heads = m.gdn_n_heads, c.n_v_heads = m.gdn_n_v_heads, c.d_head_k = m.gdn_d_head_k;
    c.d_head_v = m.gdn_d_head_v, c.conv_size = m.gdn_conv, c.chunk_size = m.gdn_chunk;
    const int64_t B = 2, T = 100;  // T not a multiple of the chunk: a partial last chunk
    GdnActs<float> acts;
    int64_t n_acts = 0;
    visit_acts(c, B, T, acts, [&](float*&, const char*, int64_t k) { n_acts += k; });
    // + core/cuda/layers.h's t_inv: C x C per chunk and value head
    n_acts += B * c.n_v_heads * c.n_chunks(T) * c.chunk_size * c.chunk_size;
    const double block = 6 * m.d_model + 2 + 3 * m.d_mlp;
    CHECK(block_acts_per_token(m, 'G', T) == doctest::Approx(block + double(n_acts) / double(B * T)).epsilon(1e-12));
  }
}

TEST_CASE("accounting: reference 7B models") {
  const Config h = parse_config(kConfigs + "olmo_hybrid_7b.ini", {});
  const ParamCounts ph = count_params(h.model);
  const Config o = parse_config(kConfigs + "olmo3_7b.ini", {});
  const ParamCounts po = count_params(o.model);
  MESSAGE("olmo_hybrid_7b params: " << ph.total() << " (attention " << ph.attention << ", gdn " << ph.gdn << ", mlp "
                                    << ph.mlp << ", embedding " << ph.embedding << ")");
  MESSAGE("olmo3_7b params: " << po.total());
  CHECK(ph.total() > 7.3e9);
  CHECK(ph.total() < 7.5e9);
  CHECK(po.total() > 7.2e9);
  CHECK(po.total() < 7.4e9);
  // by hand (Hq dk = 2880, Hv dv = 5760): GDN q, k; v, g, o; convs; a, b; A_log, dt_bias; o_norm
  CHECK(gdn_layer_params(h.model) ==
        2 * 3840 * 2880 + 3 * 3840 * 5760 + (2 * 2880 + 5760) * 4 + 2 * 30 * 3840 + 60 + 192);
  // embedding + lm_head, MLPs, 8 attention layers (q k v o + QK-norm), 24 GDN layers, norms
  CHECK(ph.total() == 2 * 100352LL * 3840 + 32LL * 3 * 3840 * 11008 + 8 * (4LL * 3840 * 3840 + 2 * 3840) +
                          24 * gdn_layer_params(h.model) + 32 * 2 * 3840 + 3840);

  // Training FLOPs: 6N is a good approximation at 8192; attention's quadratic term adds a few %.
  const double exact = train_flops_per_token(h.model, 8192);
  const double approx = six_nd(h.model, 1.0);
  MESSAGE("olmo_hybrid_7b train FLOPs/token at 8192: exact " << exact << ", 6N " << approx << ", ratio "
                                                             << exact / approx);
  CHECK(exact / approx > 1.0);
  CHECK(exact / approx < 1.15);
  // at 65536 both have 8 full-attention layers; Olmo 3's have more heads and it adds 24
  // windowed ones, so the hybrid's attention mixing is cheaper
  const FlopCounts fh = forward_flops_per_token(h.model, 65536), fo = forward_flops_per_token(o.model, 65536);
  MESSAGE("attention mix FLOPs/token at 65536: hybrid " << fh.attention_mix << ", olmo3 " << fo.attention_mix);
  CHECK(fh.attention_mix < fo.attention_mix);

  MemoryOptions mo;
  mo.data_parallel = 8, mo.zero1 = true, mo.activation_checkpointing = true, mo.micro_batch = 2, mo.seq_len = 8192;
  const MemoryEstimate e = estimate_memory(h.model, mo);
  MESSAGE("\n" << accounting_report(h, mo));
  CHECK(e.params == doctest::Approx(2.0 * ph.total()));
  CHECK(e.grads == doctest::Approx(4.0 * ph.total()));
  CHECK(e.optimizer == doctest::Approx(12.0 * ph.total() / 8));
  CHECK(e.total() < 80e9);  // fits an H100 with checkpointing and ZeRO-1 over 8 GPUs
  mo.activation_checkpointing = false;
  CHECK(estimate_memory(h.model, mo).total() > e.total());
}

TEST_CASE("accounting: attention pairs under causal and sliding-window masks") {
  for (int64_t T : {1, 2, 7, 64, 100})
    for (int64_t w : {0, 1, 3, 64, 200}) {
      int64_t brute = 0;
      for (int64_t q = 0; q < T; ++q)
        for (int64_t k = 0; k <= q; ++k) brute += (w <= 0 || q - k < w);
      CHECK(attention_pairs(T, w) == brute);
    }
}

TEST_CASE("accounting: forward FLOPs per token") {
  ModelConfig m;  // tiny GGGA
  const FlopCounts f = forward_flops_per_token(m, 128);
  // projections: 2 FLOPs per weight per token
  CHECK(f.attention_proj == 2.0 * 4 * 4096);
  CHECK(f.gdn_proj == 2.0 * 3 * (8192 * 4 + 512));
  CHECK(f.mlp == 2.0 * 4 * 33024 + 4 * 5 * 172);
  CHECK(f.lm_head == 2.0 * 64 * 256);
  CHECK(f.mamba2_proj == 0);
  CHECK(f.mamba2_mix == 0);
  CHECK(f.forward_backward() == 3 * f.forward());
  CHECK(train_flops_per_token(m, 128, true) == doctest::Approx(4 * f.forward()));

  // full attention: QK^T and PV over T(T+1)/2 pairs, (4 dh + 3) FLOPs per pair and head
  ModelConfig a = m;
  a.pattern = "A";
  a.n_layers = 1;
  a.qk_norm = false;
  a.pos_encoding = "none";
  for (int64_t T : {1, 16, 100, 1000})
    CHECK(forward_flops_per_token(a, T).attention_mix ==
          doctest::Approx(double(T * (T + 1) / 2) * 4 * (4 * 16 + 3) / double(T)).epsilon(1e-12));
  // a window >= T is full attention; a short window makes the cost flat in T
  ModelConfig w = a;
  w.pattern = "W";
  w.window = 2000;
  CHECK(forward_flops_per_token(w, 1000).attention_mix == forward_flops_per_token(a, 1000).attention_mix);
  w.window = 32;
  const double w1 = forward_flops_per_token(w, 4096).attention_mix, w2 = forward_flops_per_token(w, 8192).attention_mix;
  CHECK(w2 > w1);
  CHECK(w2 < w1 * 1.01);
  CHECK(w2 < forward_flops_per_token(a, 8192).attention_mix / 50);

  // GDN and Mamba2: per-token cost independent of T at multiples of the chunk, and a
  // partial last chunk is cheaper per token (smaller intra-chunk blocks)
  for (const char* pattern : {"G", "M"}) {
    ModelConfig r = m;
    r.pattern = pattern;
    const double c1 = forward_flops_per_token(r, 64).forward(), c4 = forward_flops_per_token(r, 256).forward();
    CHECK(c4 == doctest::Approx(c1).epsilon(1e-12));
    CHECK(forward_flops_per_token(r, 256 + 8).forward() < c4);
    // chunk length 0 = recurrence, also flat in T
    r.gdn_chunk = 0, r.m2_chunk = 0;
    CHECK(forward_flops_per_token(r, 7).forward() == doctest::Approx(forward_flops_per_token(r, 300).forward()));
  }
  // GDN core by hand for one chunk of 64 (Hv 4, dk 16, dv 32), T = 64
  ModelConfig g = m;
  g.pattern = "G";
  g.n_layers = 1;
  const double l = 64, dk = 16, dv = 32;
  const double core = 4 * ((6 * dk + 4 * dv) * l * l + l * l * l / 3 + 6 * l * dk * dv + 2 * l * l + 4 * l * dk);
  const double elementwise = 64 * ((2 * 4 + 4) * 256 + 3 * 128 + 10 * 4 + 9 * 128);
  CHECK(forward_flops_per_token(g, 64).gdn_mix == doctest::Approx((core + elementwise) / 64).epsilon(1e-12));

  CHECK_THROWS_AS(forward_flops_per_token(m, 0), ConfigError);
  ModelConfig bad = m;
  bad.n_layers = 6;
  CHECK_THROWS_AS(count_params(bad), ConfigError);
}

TEST_CASE("accounting: memory per device") {
  const ModelConfig m;
  const double N = double(count_params(m).total());
  MemoryOptions o;
  o.param_bytes = 4, o.grad_bytes = 4, o.act_bytes = 4, o.master_bytes = 0, o.micro_batch = 3, o.seq_len = 128;
  const MemoryEstimate e = estimate_memory(m, o);
  CHECK(e.params == 4 * N);
  CHECK(e.grads == 4 * N);
  CHECK(e.optimizer == 8 * N);  // m and v
  CHECK(e.activations == doctest::Approx(e.acts_per_token * 3 * 128 * 4));
  // ZeRO-1 shards exactly the optimizer state
  o.data_parallel = 4, o.zero1 = true;
  const MemoryEstimate z = estimate_memory(m, o);
  CHECK(z.optimizer == 2 * N);
  CHECK(z.params == e.params);
  CHECK(z.activations == e.activations);
  // activations scale with the micro-batch
  o.micro_batch = 6;
  CHECK(estimate_memory(m, o).activations == doctest::Approx(2 * e.activations));
  // checkpointing keeps n_layers block inputs + one block
  o.activation_checkpointing = true;
  const MemoryEstimate c = estimate_memory(m, o);
  const double largest = std::max(block_acts_per_token(m, 'G', 128), block_acts_per_token(m, 'A', 128));
  CHECK(c.acts_per_token_checkpointed == doctest::Approx(4 * 64 + largest + 2 * 64 + 1));
  CHECK(c.activations == doctest::Approx(c.acts_per_token_checkpointed * 6 * 128 * 4));
  CHECK(c.acts_per_token_checkpointed < c.acts_per_token);
  // the per-token total is the sum over blocks + the final norm
  CHECK(e.acts_per_token ==
        doctest::Approx(3 * block_acts_per_token(m, 'G', 128) + block_acts_per_token(m, 'A', 128) + 2 * 64 + 1));
}
