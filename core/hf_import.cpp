#include "core/hf_import.h"

#include <cmath>
#include <cstdlib>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <utility>
#include <vector>

#include "core/config.h"
#include "core/hdf5_io.h"
#include "layers/model.h"

namespace hysim {

namespace {

// ---- a small JSON reader: enough for a transformers config.json -----------------------

struct Json {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  bool boolean = false;
  double number = 0;
  std::string str;
  std::vector<Json> items;                            // Array
  std::vector<std::pair<std::string, Json>> members;  // Object, in file order

  const Json* find(const std::string& key) const {  // the last of duplicate keys wins, as in Python's json
    for (auto it = members.rbegin(); it != members.rend(); ++it)
      if (it->first == key) return &it->second;
    return nullptr;
  }
};

class JsonReader {
 public:
  explicit JsonReader(const std::string& text) : s_(text) {}
  Json parse_document() {
    Json v = value(0);
    skip_ws();
    if (i_ != s_.size()) fail("trailing characters after the JSON value");
    return v;
  }

 private:
  const std::string& s_;
  size_t i_ = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::invalid_argument("HF config JSON: " + what + " at offset " + std::to_string(i_));
  }
  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  bool consume(const char* word) {
    size_t n = std::char_traits<char>::length(word);
    if (s_.compare(i_, n, word) != 0) return false;
    i_ += n;
    return true;
  }
  Json value(int depth) {
    if (depth > 64) fail("nesting too deep");
    skip_ws();
    if (i_ >= s_.size()) fail("unexpected end of input");
    Json v;
    const char c = s_[i_];
    if (c == '{') {
      v.kind = Json::Object;
      ++i_;
      skip_ws();
      if (i_ < s_.size() && s_[i_] == '}') { ++i_; return v; }
      for (;;) {
        skip_ws();
        if (i_ >= s_.size() || s_[i_] != '"') fail("expected a string key");
        std::string key = string_literal();
        skip_ws();
        if (i_ >= s_.size() || s_[i_] != ':') fail("expected ':'");
        ++i_;
        v.members.emplace_back(std::move(key), value(depth + 1));
        skip_ws();
        if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
        if (i_ < s_.size() && s_[i_] == '}') { ++i_; return v; }
        fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      v.kind = Json::Array;
      ++i_;
      skip_ws();
      if (i_ < s_.size() && s_[i_] == ']') { ++i_; return v; }
      for (;;) {
        v.items.push_back(value(depth + 1));
        skip_ws();
        if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
        if (i_ < s_.size() && s_[i_] == ']') { ++i_; return v; }
        fail("expected ',' or ']'");
      }
    }
    if (c == '"') { v.kind = Json::String; v.str = string_literal(); return v; }
    if (consume("true")) { v.kind = Json::Bool; v.boolean = true; return v; }
    if (consume("false")) { v.kind = Json::Bool; return v; }
    if (consume("null")) return v;
    // Python's json writes these for non-finite floats
    if (consume("NaN")) { v.kind = Json::Number; v.number = NAN; return v; }
    if (consume("Infinity")) { v.kind = Json::Number; v.number = INFINITY; return v; }
    if (consume("-Infinity")) { v.kind = Json::Number; v.number = -INFINITY; return v; }
    if (c == '-' || (c >= '0' && c <= '9')) {
      const char* begin = s_.c_str() + i_;
      char* end = nullptr;
      v.kind = Json::Number;
      v.number = std::strtod(begin, &end);
      if (end == begin) fail("bad number");
      i_ += size_t(end - begin);
      return v;
    }
    fail(std::string("unexpected character '") + c + "'");
  }
  void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }
  uint32_t hex4() {
    if (i_ + 4 > s_.size()) fail("truncated \\u escape");
    uint32_t cp = 0;
    for (int k = 0; k < 4; ++k) {
      const char h = s_[i_++];
      cp <<= 4;
      if (h >= '0' && h <= '9') cp |= uint32_t(h - '0');
      else if (h >= 'a' && h <= 'f') cp |= uint32_t(h - 'a' + 10);
      else if (h >= 'A' && h <= 'F') cp |= uint32_t(h - 'A' + 10);
      else fail("bad \\u escape");
    }
    return cp;
  }
  std::string string_literal() {
    ++i_;  // opening quote
    std::string out;
    while (i_ < s_.size() && s_[i_] != '"') {
      char c = s_[i_++];
      if (c != '\\') { out += c; continue; }
      if (i_ >= s_.size()) break;
      switch (char e = s_[i_++]) {
        case '"': case '\\': case '/': out += e; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00 && consume("\\u")) {  // surrogate pair
            const uint32_t lo = hex4();
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default: fail(std::string("bad escape \\") + e);
      }
    }
    if (i_ >= s_.size()) fail("unterminated string");
    ++i_;  // closing quote
    return out;
  }
};

// Typed access to the config object; a missing key and JSON null both mean "not given".
struct ConfigView {
  const Json& obj;

  const Json* given(const std::string& key) const {
    const Json* v = obj.find(key);
    return v && v->kind != Json::Null ? v : nullptr;
  }
  [[noreturn]] static void bad(const std::string& key, const std::string& what) {
    throw std::invalid_argument("HF config: " + key + " " + what);
  }
  std::optional<double> number(const std::string& key) const {
    const Json* v = given(key);
    if (!v) return std::nullopt;
    if (v->kind != Json::Number) bad(key, "must be a number");
    return v->number;
  }
  std::optional<int64_t> integer(const std::string& key) const {
    std::optional<double> d = number(key);
    if (!d) return std::nullopt;
    if (!std::isfinite(*d) || std::floor(*d) != *d || std::fabs(*d) > 9e15) bad(key, "must be an integer");
    return int64_t(*d);
  }
  std::optional<bool> boolean(const std::string& key) const {
    const Json* v = given(key);
    if (!v) return std::nullopt;
    if (v->kind != Json::Bool) bad(key, "must be true or false");
    return v->boolean;
  }
  std::optional<std::string> string(const std::string& key) const {
    const Json* v = given(key);
    if (!v) return std::nullopt;
    if (v->kind != Json::String) bad(key, "must be a string");
    return v->str;
  }
  template <class T> static T required(std::optional<T> v, const std::string& key) {
    if (!v) bad(key, "is missing");
    return *v;
  }
};

struct HfTensor {
  Shape shape;
  std::vector<float> data;
};

// "blocks.<i>.<rest>" -> (i, rest); false for other paths.
bool split_block_path(const std::string& path, int64_t* layer, std::string* rest) {
  if (path.rfind("blocks.", 0) != 0) return false;
  const size_t dot = path.find('.', 7);
  if (dot == std::string::npos || dot == 7) return false;
  for (size_t k = 7; k < dot; ++k)
    if (path[k] < '0' || path[k] > '9') return false;
  *layer = std::stoll(path.substr(7, dot - 7));
  *rest = path.substr(dot + 1);
  return true;
}

}  // namespace

ModelConfig olmo_hybrid_model_config(const std::string& config_json) {
  const Json root = JsonReader(config_json).parse_document();
  if (root.kind != Json::Object) throw std::invalid_argument("HF config: the JSON document is not an object");
  const ConfigView c{root};
  using CV = ConfigView;

  if (auto mt = c.string("model_type"); mt && *mt != "olmo_hybrid")
    CV::bad("model_type", "= \"" + *mt + "\": only \"olmo_hybrid\" (OlmoHybridForCausalLM) is supported");
  if (auto act = c.string("hidden_act"); act && *act != "silu")
    CV::bad("hidden_act", "= \"" + *act + "\": hysim's MLP and GDN convolutions use silu only");
  if (c.boolean("attention_bias").value_or(false))
    CV::bad("attention_bias", "= true: hysim's attention has no biases");

  ModelConfig m;
  m.d_model = CV::required(c.integer("hidden_size"), "hidden_size");
  m.vocab_size = CV::required(c.integer("vocab_size"), "vocab_size");
  m.d_mlp = CV::required(c.integer("intermediate_size"), "intermediate_size");
  const int64_t n_layers = CV::required(c.integer("num_hidden_layers"), "num_hidden_layers");
  m.n_heads = CV::required(c.integer("num_attention_heads"), "num_attention_heads");
  if (m.d_model <= 0 || m.vocab_size <= 0 || m.d_mlp <= 0 || n_layers <= 0 || m.n_heads <= 0)
    CV::bad("hidden_size/vocab_size/intermediate_size/num_hidden_layers/num_attention_heads", "must be positive");
  m.n_kv_heads = c.integer("num_key_value_heads").value_or(m.n_heads);
  m.d_head = c.integer("head_dim").value_or(m.d_model / m.n_heads);
  m.norm_eps = c.number("rms_norm_eps").value_or(1e-6);
  m.tie_embeddings = c.boolean("tie_word_embeddings").value_or(false);
  m.init_std = c.number("initializer_range").value_or(0.02);
  m.qk_norm = true;  // HF OlmoHybridAttention always norms q and k (over the full projections)
  m.norm_attention = NormPlacement::reordered;
  m.norm_gdn = NormPlacement::pre;

  // layer_types -> one letter per layer (HF default: full attention when i % 4 == 3)
  std::string letters;
  if (const Json* lt = c.given("layer_types")) {
    if (lt->kind != Json::Array) CV::bad("layer_types", "must be a list");
    for (const Json& t : lt->items) {
      if (t.kind != Json::String) CV::bad("layer_types", "must be a list of strings");
      if (t.str == "linear_attention") letters += 'G';
      else if (t.str == "full_attention") letters += 'A';
      else CV::bad("layer_types", "has \"" + t.str + "\": only linear_attention and full_attention are supported");
    }
    if (int64_t(letters.size()) != n_layers)
      CV::bad("layer_types", "has " + std::to_string(letters.size()) + " entries but num_hidden_layers = " +
                                 std::to_string(n_layers));
  } else {
    for (int64_t i = 0; i < n_layers; ++i) letters += i % 4 == 3 ? 'A' : 'G';
    if (letters.find('A') == std::string::npos) letters.back() = 'A';
  }
  m.pattern = letters;
  m.n_layers = n_layers;

  // RoPE, as transformers 5.x resolves it when it loads a config.json: rope_parameters null
  // or absent, or without a rope_theta key, become the default RoPE with the top-level
  // rope_theta or else 10000 (PreTrainedConfig.default_theta); only rope_theta = null
  // switches RoPE off (NoPE: OlmoHybridModel.rotary_emb = None).
  const double theta_fallback = c.number("rope_theta").value_or(10000.0);
  m.pos_encoding = "rope";
  m.rope_theta = theta_fallback;
  if (c.given("rope_scaling")) CV::bad("rope_scaling", "is set: only unscaled RoPE is supported");
  if (const Json* rp = c.given("rope_parameters")) {
    if (rp->kind != Json::Object) CV::bad("rope_parameters", "must be an object or null");
    const ConfigView r{*rp};
    if (auto type = r.string("rope_type"); type && *type != "default")
      CV::bad("rope_parameters.rope_type", "= \"" + *type + "\": only the default (unscaled) RoPE is supported");
    if (auto f = r.number("partial_rotary_factor"); f && *f != 1.0)
      CV::bad("rope_parameters.partial_rotary_factor", "is not 1: hysim rotates the whole head");
    if (rp->find("rope_theta") && !r.given("rope_theta")) m.pos_encoding = "none";
    else m.rope_theta = r.number("rope_theta").value_or(theta_fallback);
  }

  // Gated DeltaNet (HF defaults for keys not given)
  m.gdn_n_heads = c.integer("linear_num_key_heads").value_or(m.n_heads);
  m.gdn_n_v_heads = c.integer("linear_num_value_heads").value_or(m.n_heads);
  if (m.gdn_n_heads <= 0) CV::bad("linear_num_key_heads", "must be positive");
  m.gdn_d_head_k = c.integer("linear_key_head_dim").value_or(int64_t(0.75 * double(m.d_model) / double(m.gdn_n_heads)));
  m.gdn_d_head_v = c.integer("linear_value_head_dim").value_or(2 * m.gdn_d_head_k);
  m.gdn_conv = c.integer("linear_conv_kernel_dim").value_or(4);
  m.gdn_allow_neg_eigval = c.boolean("linear_allow_neg_eigval").value_or(true);
  m.gdn_norm_eps = 1e-5;  // HF: OlmoHybridRMSNormGated(head_v_dim, eps=1e-5), whatever rms_norm_eps is
  // initialisation ranges (unused by a forward; kept so that a re-initialised model matches HF's init)
  m.a_init_min = c.number("linear_a_log_min").value_or(0.0);
  m.a_init_max = c.number("linear_a_log_max").value_or(16.0);
  m.dt_min = c.number("linear_dt_min").value_or(1e-3);
  m.dt_max = c.number("linear_dt_max").value_or(1e-1);
  m.dt_floor = c.number("linear_dt_init_floor").value_or(1e-4);

  Config full;
  full.model = m;
  std::string problems;
  for (const std::string& p : config_problems(full))  // the model's own rules, not its fit to a data source
    if (p.rfind("model.", 0) == 0 && p.find("data.") == std::string::npos)
      problems += (problems.empty() ? "" : "; ") + p;
  if (!problems.empty()) throw std::invalid_argument("HF config maps to an invalid hysim model: " + problems);
  return m;
}

std::string olmo_hybrid_hf_name(const ModelConfig& cfg, const std::string& path) {
  if (path == "embed_tokens") return "model.embed_tokens.weight";
  if (path == "final_norm.w") return "model.norm.weight";
  if (path == "lm_head") return cfg.tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  int64_t i = 0;
  std::string rest;
  const std::string letters = expand_pattern(cfg.pattern, cfg.n_layers);
  if (!split_block_path(path, &i, &rest) || i >= int64_t(letters.size()))
    throw std::invalid_argument("not an Olmo Hybrid parameter path: " + path);
  const std::string layer = "model.layers." + std::to_string(i) + ".";
  const char letter = letters[size_t(i)];
  if (rest.rfind("mlp.", 0) == 0) return layer + rest + ".weight";
  if (letter == 'G') {
    if (rest == "mixer_norm.w") return layer + "input_layernorm.weight";
    if (rest == "mlp_norm.w") return layer + "post_attention_layernorm.weight";
    if (rest == "mixer.A_log" || rest == "mixer.dt_bias") return layer + "linear_attn." + rest.substr(6);
    if (rest == "mixer.q_conv1d" || rest == "mixer.k_conv1d" || rest == "mixer.v_conv1d")
      return layer + "linear_attn.conv1d.weight";
    if (rest.rfind("mixer.", 0) == 0) return layer + "linear_attn." + rest.substr(6) + ".weight";
  } else if (letter == 'A') {
    if (rest == "mixer_norm.w") return layer + "post_attention_layernorm.weight";
    if (rest == "mlp_norm.w") return layer + "post_feedforward_layernorm.weight";
    if (rest.rfind("mixer.", 0) == 0) return layer + "self_attn." + rest.substr(6) + ".weight";
  }
  throw std::invalid_argument("no HF OlmoHybrid tensor for hysim parameter " + path + " (layer type " + letter + ")");
}

Checkpoint import_olmo_hybrid(const std::string& h5_path, ModelConfig* out_cfg) {
  // Read everything first; the HDF5 objects close before the mapping starts.
  std::map<std::string, HfTensor> hf;
  std::string config_json, versions;
  {
    const h5::File f = h5::File::open(h5_path);
    if (!f.has_attr("config_json"))
      throw std::runtime_error(h5_path + ": no attribute config_json (the HF config.json text)");
    config_json = f.attr_string("config_json");
    if (f.has_attr("versions")) versions = f.attr_string("versions");
    if (!f.is_group("hf")) throw std::runtime_error(h5_path + ": no group hf/ (HF state-dict tensors)");
    const h5::Group g = f.open_group("hf");
    for (const std::string& name : g.list_datasets(true)) {
      const h5::Dataset d = g.open_dataset(name);
      HfTensor t;
      t.shape = d.shape();
      const std::string type = d.type_name();
      if (type == "float32") {
        t.data = d.read<float>();
      } else if (type == "float64") {
        const std::vector<double> v = d.read<double>();
        t.data.assign(v.begin(), v.end());
      } else {
        throw std::runtime_error(h5_path + ": dataset hf/" + name + " has type " + type + " (want float32/float64)");
      }
      hf.emplace(name, std::move(t));
    }
  }

  const ModelConfig cfg = olmo_hybrid_model_config(config_json);
  const GdnConfig gc = gdn_config(cfg);
  std::set<std::string> used;
  auto tensor = [&](const std::string& name) -> const HfTensor& {
    auto it = hf.find(name);
    if (it == hf.end()) throw std::runtime_error(h5_path + ": missing HF tensor " + name);
    used.insert(name);
    return it->second;
  };

  Checkpoint ck;
  ModelParams<float> layout;
  visit_params(cfg, layout, [&](float*&, const ParamSpec& s) {
    if (s.name == "lm_head" && cfg.tie_embeddings) return;  // tied: not a separate parameter
    NamedTensor nt{s.name, s.shape, {}};
    const std::string hf_name = olmo_hybrid_hf_name(cfg, s.name);
    const bool conv = s.name.size() > 7 && s.name.compare(s.name.size() - 7, 7, "_conv1d") == 0;
    if (conv) {
      // [C, 1, K] -> [C, K]; transformers 5.x fuses the q, k, v convs along C (q, k, v order)
      const std::string which = s.name.substr(s.name.size() - 8, 1);  // "q", "k" or "v"
      const std::string prefix = hf_name.substr(0, hf_name.size() - std::string("conv1d.weight").size());
      const std::string separate = prefix + which + "_conv1d.weight";
      const int64_t C = s.shape[0], K = s.shape[1];
      const bool fused = hf.count(hf_name) > 0;  // else the separate form (then a stray fused one is "unused")
      const HfTensor& t = tensor(fused ? hf_name : separate);
      const int64_t offset = !fused ? 0 : which == "q" ? 0 : which == "k" ? gc.d_qk() : 2 * gc.d_qk();
      const int64_t rows = fused ? 2 * gc.d_qk() + gc.d_v() : C;
      if (t.shape != Shape{rows, 1, K})
        throw std::runtime_error(h5_path + ": HF tensor " + (fused ? hf_name : separate) + " has shape " +
                                 shape_str(t.shape) + ", expected " + shape_str(Shape{rows, 1, K}) + " for " +
                                 s.name);
      nt.data.assign(t.data.begin() + offset * K, t.data.begin() + (offset + C) * K);
    } else {
      const HfTensor& t = tensor(hf_name);
      if (t.shape != s.shape)
        throw std::runtime_error(h5_path + ": HF tensor " + hf_name + " has shape " + shape_str(t.shape) +
                                 ", expected " + shape_str(s.shape) + " for " + s.name);
      nt.data = t.data;
    }
    ck.params.push_back(std::move(nt));
  });
  // A tied model's state dict may still list lm_head.weight (the same tensor as the embedding).
  if (cfg.tie_embeddings && hf.count("lm_head.weight")) {
    if (hf.at("lm_head.weight").data != hf.at("model.embed_tokens.weight").data)
      throw std::runtime_error(h5_path + ": tie_word_embeddings is true but lm_head.weight differs from the embedding");
    used.insert("lm_head.weight");
  }
  std::string unused;
  for (const auto& [name, t] : hf)
    if (!used.count(name)) unused += (unused.empty() ? "" : ", ") + name;
  if (!unused.empty()) throw std::runtime_error(h5_path + ": HF tensors with no hysim parameter: " + unused);

  Config full;
  full.model = cfg;
  ck.step = 0;
  ck.config_text = to_ini(full);
  ck.meta["source"] = "HuggingFace OlmoHybridForCausalLM via import_olmo_hybrid(" + h5_path + ")";
  ck.meta["hf_model_type"] = "olmo_hybrid";
  ck.meta["hf_config_json"] = config_json;
  if (!versions.empty()) ck.meta["versions"] = versions;
  if (out_cfg) *out_cfg = cfg;
  return ck;
}

}  // namespace hysim
