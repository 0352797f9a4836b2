#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>

#include "core/checkpoint.h"
#include "core/hdf5_io.h"
#include "core/hf_import.h"
#include "layers/model.h"
#include "tests/test_util.h"

// Agreement with an independent implementation: tests/fixtures/olmo_hybrid_tiny_{rope,nope}.h5
// hold a tiny random-weight HuggingFace OlmoHybridForCausalLM (transformers 5.17, layers
// GGGA, hidden 64, GQA 4/2 heads, GDN 2 key / 4 value heads, d_k 16, d_v 32, vocab 97, every
// norm weight random, weights float32-representable), a (2, 37) token batch and HF's
// float64 logits, both as shipped ("logits": HF computes its norms, RoPE, softmax and GDN
// core in float32) and with those float32 casts made float64 ("logits_fp64"). Made by
// scripts/hf_fixture.py on the GPU machine's CPU and scripts/npz_to_h5.py.

using namespace hysim;
namespace fs = std::filesystem;
using hysim::test::TempDir;

namespace {

std::string fixture(const std::string& variant) {
  return std::string(HYSIM_SOURCE_DIR) + "/tests/fixtures/olmo_hybrid_tiny_" + variant + ".h5";
}


struct Reference {
  std::vector<int32_t> tokens;
  int64_t B = 0, T = 0, V = 0;
  std::vector<double> logits, logits_fp64;  // [B, T, V]
};

Reference read_reference(const std::string& path) {
  const h5::File f = h5::File::open(path);
  Reference r;
  Shape ts, ls;
  const std::vector<int64_t> tok = f.read<int64_t>("tokens", &ts);
  r.tokens.assign(tok.begin(), tok.end());
  r.logits = f.read<double>("logits", &ls);
  r.logits_fp64 = f.read<double>("logits_fp64");
  REQUIRE(ts.size() == 2);
  REQUIRE(ls == Shape{ts[0], ts[1], ls[2]});
  r.B = ts[0], r.T = ts[1], r.V = ls[2];
  return r;
}

double rel_error(const std::vector<double>& ours, const std::vector<double>& ref) {
  REQUIRE(ours.size() == ref.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (ours[i] - ref[i]) * (ours[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

template <class T> void load_params(Model<T>& model, const std::vector<NamedTensor>& params) {
  std::map<std::string, const NamedTensor*> by_name;
  for (const NamedTensor& t : params) by_name[t.name] = &t;
  REQUIRE(by_name.size() == model.store.specs.size());
  for (size_t i = 0; i < model.store.specs.size(); ++i) {
    const ParamSpec& s = model.store.specs[i];
    auto it = by_name.find(s.name);
    REQUIRE_MESSAGE(it != by_name.end(), "missing parameter " << s.name);
    REQUIRE(it->second->shape == s.shape);
    std::copy(it->second->data.begin(), it->second->data.end(), model.store.value.begin() + model.store.offsets[i]);
  }
}

template <class T> std::vector<double> logits_of(const ModelConfig& cfg, const Checkpoint& ck, const Reference& r) {
  Model<T> model(cfg, r.B, r.T);
  load_params(model, ck.params);
  std::vector<T> out(size_t(r.B * r.T * r.V));
  model.forward_logits(r.tokens.data(), r.B, r.T, out.data());
  return {out.begin(), out.end()};
}

// Copies a fixture, applying `edit` to the hf/ tensors and `config_json`.
void rewrite_fixture(const std::string& src, const std::string& dst,
                     const std::function<void(std::map<std::string, std::pair<Shape, std::vector<float>>>&,
                                              std::string&)>& edit) {
  std::map<std::string, std::pair<Shape, std::vector<float>>> tensors;
  std::string config_json;
  {
    const h5::File f = h5::File::open(src);
    config_json = f.attr_string("config_json");
    const h5::Group g = f.open_group("hf");
    for (const std::string& n : g.list_datasets()) {
      Shape s;
      std::vector<float> d = g.read<float>(n, &s);
      tensors[n] = {s, std::move(d)};
    }
  }
  edit(tensors, config_json);
  h5::File f = h5::File::create(dst);
  f.set_attr("config_json", config_json);
  for (const auto& [n, t] : tensors) f.write<float>("hf/" + n, t.second.data(), t.first);
  f.close();
}

}  // namespace

TEST_CASE("HF OlmoHybrid config maps to ModelConfig") {
  ModelConfig rope, nope;
  import_olmo_hybrid(fixture("rope"), &rope);
  import_olmo_hybrid(fixture("nope"), &nope);
  for (const ModelConfig* c : {&rope, &nope}) {
    CHECK(c->pattern == "GGGA");
    CHECK(c->n_layers == 4);
    CHECK(c->d_model == 64);
    CHECK(c->vocab_size == 97);
    CHECK(c->d_mlp == 80);
    CHECK(c->n_heads == 4);
    CHECK(c->n_kv_heads == 2);
    CHECK(c->d_head == 16);
    CHECK(c->qk_norm);
    CHECK(c->gdn_n_heads == 2);
    CHECK(c->gdn_n_v_heads == 4);
    CHECK(c->gdn_d_head_k == 16);
    CHECK(c->gdn_d_head_v == 32);
    CHECK(c->gdn_conv == 4);
    CHECK(c->gdn_allow_neg_eigval);
    CHECK(c->gdn_norm_eps == 1e-5);
    CHECK(c->norm_eps == 1e-6);
    CHECK(!c->tie_embeddings);
    CHECK(c->norm_gdn == NormPlacement::pre);
    CHECK(c->norm_attention == NormPlacement::reordered);
  }
  CHECK(rope.pos_encoding == "rope");
  CHECK(rope.rope_theta == 10000.0);
  CHECK(nope.pos_encoding == "none");

  // HF defaults for absent keys; unsupported settings are refused, naming the key
  const std::string base = R"({"model_type": "olmo_hybrid", "hidden_size": 48, "vocab_size": 10,
    "intermediate_size": 20, "num_hidden_layers": 8, "num_attention_heads": 4, "rope_parameters": null)";
  const ModelConfig d = olmo_hybrid_model_config(base + "}");
  CHECK(d.pattern == "GGGAGGGA");
  CHECK(d.n_kv_heads == 4);
  CHECK(d.d_head == 12);
  CHECK(d.gdn_n_heads == 4);
  CHECK(d.gdn_d_head_k == 9);   // int(0.75 * 48 / 4)
  CHECK(d.gdn_d_head_v == 18);  // 2 d_k
  // transformers 5.x: rope_parameters null means the default RoPE (theta 10000); NoPE is rope_theta null
  CHECK(d.pos_encoding == "rope");
  CHECK(d.rope_theta == 10000.0);
  const ModelConfig d2 = olmo_hybrid_model_config(base + R"(, "rope_parameters": {"rope_theta": null}})");
  CHECK(d2.pos_encoding == "none");
  const ModelConfig d3 = olmo_hybrid_model_config(base + R"(, "rope_parameters": {"rope_theta": 5e5}})");
  CHECK(d3.pos_encoding == "rope");
  CHECK(d3.rope_theta == 500000.0);
  auto error_of = [&](const std::string& extra) {
    try {
      olmo_hybrid_model_config(base + extra + "}");
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK(error_of(R"(, "attention_bias": true)").find("attention_bias") != std::string::npos);
  CHECK(error_of(R"(, "hidden_act": "gelu")").find("hidden_act") != std::string::npos);
  CHECK(error_of(R"(, "layer_types": ["linear_attention", "sliding_attention"])").find("layer_types") !=
        std::string::npos);
  CHECK(error_of(R"(, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4})").find("rope_type") !=
        std::string::npos);
  CHECK(error_of(R"(, "hidden_size": "64")").find("hidden_size") != std::string::npos);
  CHECK(error_of(R"(, "linear_num_value_heads": 6, "linear_num_key_heads": 4)").find("gdn_n_v_heads") !=
        std::string::npos);
  CHECK_THROWS_AS(olmo_hybrid_model_config(base), std::invalid_argument);  // unterminated object
}

TEST_CASE("hysim reproduces HF OlmoHybridForCausalLM logits") {
  TempDir tmp;
  for (const std::string variant : {"rope", "nope"}) {
    CAPTURE(variant);
    const Reference ref = read_reference(fixture(variant));
    ModelConfig cfg;
    const Checkpoint imported = import_olmo_hybrid(fixture(variant), &cfg);
    CHECK(imported.meta.at("hf_model_type") == "olmo_hybrid");

    // through a saved checkpoint, as the converter is meant to be used
    const std::string ck_path = tmp.file(variant + ".ckpt.h5");
    save_checkpoint(ck_path, imported);
    const Checkpoint ck = load_checkpoint(ck_path);
    REQUIRE(ck.params.size() == imported.params.size());

    // GDN chunked with one partial chunk (64 > T), several chunks, and the recurrence;
    // attention with one and with several tiles
    for (auto [chunk, tile] : {std::pair<int64_t, int64_t>{64, 64}, {16, 8}, {0, 64}}) {
      ModelConfig c = cfg;
      c.gdn_chunk = chunk;
      c.attn_tile = tile;
      const std::vector<double> ours = logits_of<double>(c, ck, ref);
      const double err_fp64 = rel_error(ours, ref.logits_fp64), err_hf = rel_error(ours, ref.logits);
      MESSAGE(variant << " gdn_chunk " << chunk << " attn_tile " << tile << ": rel error vs HF float64 "
                      << err_fp64 << ", vs HF as shipped " << err_hf);
      CHECK(err_fp64 <= 1e-12);
      CHECK(err_hf <= 1e-5);
    }
    const double err_float = rel_error(logits_of<float>(cfg, ck, ref), ref.logits_fp64);
    MESSAGE(variant << " Model<float>: rel error vs HF float64 " << err_float);
    CHECK(err_float <= 1e-5);
  }
}

TEST_CASE("the comparison detects wrong imports") {
  TempDir tmp;
  const Reference ref = read_reference(fixture("rope"));
  ModelConfig cfg;
  const Checkpoint ck = import_olmo_hybrid(fixture("rope"), &cfg);

  // NoPE on RoPE weights
  ModelConfig nope = cfg;
  nope.pos_encoding = "none";
  const double err_nope = rel_error(logits_of<double>(nope, ck, ref), ref.logits_fp64);
  MESSAGE("RoPE fixture run without RoPE: rel error " << err_nope);
  CHECK(err_nope > 1e-3);

  // q and k convolutions swapped (a wrong split of the fused conv1d)
  Checkpoint swapped = ck;
  for (NamedTensor& t : swapped.params)
    if (t.name == "blocks.1.mixer.q_conv1d")
      for (NamedTensor& u : swapped.params)
        if (u.name == "blocks.1.mixer.k_conv1d") std::swap(t.data, u.data);
  const double err_swap = rel_error(logits_of<double>(cfg, swapped, ref), ref.logits_fp64);
  MESSAGE("q/k conv swapped in layer 1: rel error " << err_swap);
  CHECK(err_swap > 1e-3);

  // a single norm weight off by 1e-3 (relative) in the attention layer's reordered norm
  Checkpoint nudged = ck;
  for (NamedTensor& t : nudged.params)
    if (t.name == "blocks.3.mixer_norm.w") t.data[5] *= 1.001f;
  const double err_nudge = rel_error(logits_of<double>(cfg, nudged, ref), ref.logits_fp64);
  MESSAGE("one norm weight * 1.001: rel error " << err_nudge);
  CHECK(err_nudge > 1e-9);
}

TEST_CASE("the importer rejects incomplete or inconsistent weight files") {
  TempDir tmp;
  auto error_of = [&](const std::function<void(std::map<std::string, std::pair<Shape, std::vector<float>>>&,
                                               std::string&)>& edit) {
    const std::string path = tmp.file("edited.h5");
    rewrite_fixture(fixture("nope"), path, edit);
    try {
      import_olmo_hybrid(path, nullptr);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  // unchanged copy imports
  CHECK(error_of([](auto&, std::string&) {}) == "");
  CHECK(error_of([](auto& t, std::string&) { t.erase("model.layers.2.linear_attn.dt_bias"); })
            .find("missing HF tensor model.layers.2.linear_attn.dt_bias") != std::string::npos);
  CHECK(error_of([](auto& t, std::string&) { t["model.layers.9.mlp.extra.weight"] = {Shape{1}, {0.f}}; })
            .find("no hysim parameter: model.layers.9.mlp.extra.weight") != std::string::npos);
  CHECK(error_of([](auto& t, std::string&) {
          auto& w = t.at("model.layers.3.self_attn.k_proj.weight");
          w.first = Shape{64, 32};
        }).find("has shape [64, 32], expected [32, 64]") != std::string::npos);
  // transformers 4.x-style separate q/k/v convs are read too; mixing both forms is an error
  CHECK(error_of([](auto& t, std::string&) {
          for (int i = 0; i < 3; ++i) {
            const std::string p = "model.layers." + std::to_string(i) + ".linear_attn.";
            const auto fused = t.at(p + "conv1d.weight");
            t.erase(p + "conv1d.weight");
            const int64_t rows[3] = {32, 32, 128};
            int64_t off = 0;
            for (int j = 0; j < 3; ++j) {
              const char* name[3] = {"q_conv1d.weight", "k_conv1d.weight", "v_conv1d.weight"};
              std::vector<float> d(fused.second.begin() + off * 4, fused.second.begin() + (off + rows[j]) * 4);
              t[p + name[j]] = {Shape{rows[j], 1, 4}, d};
              off += rows[j];
            }
          }
        }) == "");
  CHECK(error_of([](auto& t, std::string&) {
          t["model.layers.0.linear_attn.q_conv1d.weight"] = {Shape{32, 1, 4}, std::vector<float>(128)};
        }).find("no hysim parameter: model.layers.0.linear_attn.q_conv1d.weight") != std::string::npos);
  CHECK(error_of([](auto&, std::string& json) { json = "{\"model_type\": \"llama\"}"; }).find("model_type") !=
        std::string::npos);
}
