#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <omp.h>

#include "layers/model.h"
#include "tests/gradcheck.h"

using namespace hysim;
using namespace hysim::test;

// A tiny model exercising every option: GQA, QK-norm, RoPE, windows shorter than T,
// grouped GDN value heads with d_k != d_v, Mamba2 with 2 groups, chunks shorter than T.
static ModelConfig tiny_config(const std::string& pattern, int64_t n_layers) {
  ModelConfig c;
  c.pattern = pattern;
  c.n_layers = n_layers;
  c.d_model = 8;
  c.vocab_size = 11;
  c.d_mlp = 12;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.d_head = 4;
  c.window = 3;
  c.attn_tile = 4;
  c.gdn_n_heads = 1;
  c.gdn_n_v_heads = 2;
  c.gdn_d_head_k = 4;
  c.gdn_d_head_v = 6;
  c.gdn_chunk = 4;
  c.m2_d_state = 4;
  c.m2_headdim = 4;
  c.m2_n_groups = 2;
  c.m2_chunk = 4;
  c.init_std = 0.3;  // large enough that every branch matters to the loss
  // Decays that matter over a few tokens, so A_log / dt_bias gradients are not tiny
  // compared with the finite-difference round-off of the whole-model loss.
  c.dt_min = 0.05;
  c.dt_max = 0.5;
  c.a_init_max = 4.0;
  return c;
}

struct Batch {
  std::vector<int32_t> tokens, targets;
  std::vector<float> mask;
};
static Batch make_batch(int64_t B, int64_t T, int64_t V, uint64_t seed) {
  Batch b;
  CounterRng r(seed, 1);
  for (int64_t i = 0; i < B * T; ++i) {
    b.tokens.push_back(int32_t(r.below(2 * i, V)));
    b.targets.push_back(int32_t(r.below(2 * i + 1, V)));
    b.mask.push_back(i % 5 == 3 ? 0.0f : 1.0f);  // some positions don't count
  }
  return b;
}

// Perturb the non-unit norm weights so their gradients are not a special case.
static void randomise_norms(Model<double>& m) {
  for (size_t i = 0; i < m.store.specs.size(); ++i)
    if (m.store.specs[i].init.kind == Init::Ones) {
      CounterRng r(99, i);
      for (int64_t j = 0; j < m.store.specs[i].numel(); ++j) m.store.value[m.store.offsets[i] + j] = 1.0 + 0.3 * r.normal(j);
    }
}

static void check_model_gradients(ModelConfig c, const std::string& what) {
  const int64_t B = 2, T = 6;
  const double z_loss = 1e-2;
  Model<double> m(c, B, T);
  m.init(1234);
  randomise_norms(m);
  Batch b = make_batch(B, T, c.vocab_size, 7);
  auto loss = [&] {
    StepStats s = m.forward_backward(b.tokens.data(), b.targets.data(), b.mask.data(), B, T, z_loss, false);
    return s.loss + s.z_loss;
  };
  m.store.zero_grad();
  m.forward_backward(b.tokens.data(), b.targets.data(), b.mask.data(), B, T, z_loss, true);
  const std::vector<double> grad = m.store.grad;
  double worst = 0;
  for (size_t i = 0; i < m.store.specs.size(); ++i) {
    const int64_t off = m.store.offsets[i], n = m.store.specs[i].numel();
    const double e = grad_rel_error(m.store.value.data() + off, grad.data() + off, n, loss, "", 12, 1e-5);
    if (e >= 1e-6) MESSAGE(what << ": " << m.store.specs[i].name << " rel err " << e);
    CHECK(e < 1e-6);
    worst = std::max(worst, e);
  }
  MESSAGE(what << ": " << m.store.specs.size() << " parameter tensors, worst rel err " << worst);
}

TEST_CASE("model: fp64 gradients of every parameter, each mixer alone and in hybrids") {
  for (const char* p : {"A", "W", "G", "M"}) check_model_gradients(tiny_config(p, 2), p);
  for (const char* p : {"GGGA", "MMMA", "WWWA"}) check_model_gradients(tiny_config(p, 4), p);
}

TEST_CASE("model: gradients with both norm placements, tied embeddings, no MLP") {
  ModelConfig c = tiny_config("GA", 2);
  c.norm_gdn = NormPlacement::reordered;
  c.norm_attention = NormPlacement::pre;
  c.tie_embeddings = true;
  check_model_gradients(c, "GA swapped norms, tied");
  c = tiny_config("MW", 2);
  c.d_mlp = 0;
  check_model_gradients(c, "MW no mlp");
}

TEST_CASE("model: pattern errors name the rule") {
  ModelConfig c = tiny_config("GGGA", 6);
  try {
    Model<double> m(c, 1, 4);
    FAIL("expected an error");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("n_layers = 6 must be a positive multiple of the pattern length 4") !=
          std::string::npos);
  }
  CHECK_THROWS_WITH_AS(expand_pattern("GXA", 3), doctest::Contains("unknown mixer letter 'X'"), std::invalid_argument);
  CHECK(expand_pattern("GGGA", 8) == "GGGAGGGA");
}

TEST_CASE("model: parameter names follow the checkpoint paths") {
  Model<float> m(tiny_config("GA", 2), 1, 4);
  std::vector<std::string> names;
  for (auto& s : m.store.specs) names.push_back(s.name);
  auto has = [&](const std::string& n) { return std::find(names.begin(), names.end(), n) != names.end(); };
  CHECK(has("embed_tokens"));
  CHECK(has("blocks.0.mixer.q_proj"));
  CHECK(has("blocks.0.mixer.A_log"));
  CHECK(has("blocks.1.mixer.o_proj"));
  CHECK(has("blocks.1.mlp.down_proj"));
  CHECK(has("final_norm.w"));
  CHECK(has("lm_head"));
}

TEST_CASE("model: float agrees with double; 1 and 2 threads give identical results") {
  ModelConfig c = tiny_config("GGMA", 4);
  c.init_std = 0.1;
  const int64_t B = 2, T = 9;
  Batch b = make_batch(B, T, c.vocab_size, 3);
  Model<double> md(c, B, T);
  Model<float> mf(c, B, T);
  md.init(5);
  mf.init(5);
  StepStats sd = md.forward_backward(b.tokens.data(), b.targets.data(), b.mask.data(), B, T, 0.0, true);
  StepStats sf = mf.forward_backward(b.tokens.data(), b.targets.data(), b.mask.data(), B, T, 0.0, true);
  CHECK(sf.loss == doctest::Approx(sd.loss).epsilon(1e-5));
  double num = 0, den = 0;
  for (size_t i = 0; i < md.store.grad.size(); ++i) {
    num = std::max(num, std::abs(double(mf.store.grad[i]) - md.store.grad[i]));
    den = std::max(den, std::abs(md.store.grad[i]));
  }
  CHECK(num / den < 1e-4);

  std::vector<std::vector<float>> grads;
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    mf.store.zero_grad();
    mf.forward_backward(b.tokens.data(), b.targets.data(), b.mask.data(), B, T, 0.0, true);
    grads.push_back(mf.store.grad);
  }
  omp_set_num_threads(2);
  CHECK(grads[0] == grads[1]);
}

TEST_CASE("ParamStore: an aligned layout (the GPU's) holds the same parameters; relayout maps values both ways") {
  const ModelConfig c = tiny_config("GMWA", 4);
  ModelParams<float> v1, g1, v2, g2;
  ParamStore<float> packed, aligned;
  auto visit = [&](ModelParams<float>& p, auto&& v) { visit_params(c, p, v); };
  packed.build(v1, g1, visit);
  aligned.build(v2, g2, visit, 64);
  REQUIRE(aligned.specs.size() == packed.specs.size());
  int64_t gaps = 0;
  for (size_t i = 0; i < aligned.specs.size(); ++i) {
    CHECK(aligned.offsets[i] % 64 == 0);
    if (i > 0) gaps += aligned.offsets[i] - (aligned.offsets[i - 1] + aligned.specs[i - 1].numel());
  }
  CHECK(gaps > 0);  // this config has tensors whose sizes are not multiples of 64
  CHECK(aligned.n_params() == packed.size());
  CHECK(aligned.size() == packed.size() + gaps);
  CHECK(v2.embed_tokens == aligned.value.data() + aligned.offsets[0]);  // bound at the aligned offsets
  packed.init(3);
  aligned.init(3);
  CHECK(relayout(packed.value, packed, aligned) == aligned.value);
  CHECK(relayout(aligned.value, aligned, packed) == packed.value);
}
