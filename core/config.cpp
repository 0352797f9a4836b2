#include "core/config.h"

#include <algorithm>
#include <boost/program_options.hpp>
#include <charconv>
#include <cmath>
#include <fstream>
#include <sstream>
#include <type_traits>

namespace po = boost::program_options;

namespace hysim {

const char* to_string(NormPlacement p) { return p == NormPlacement::pre ? "pre" : "reordered"; }

namespace {

// ---- the one list of keys: parsing, printing, help and validation messages all use it ----

// v(key, field, help) for every configurable field, in INI order (section by section).
template <class C, class V> void visit_fields(C& c, V&& v) {
  auto& m = c.model;
  v("model.pattern", m.pattern, "mixer letters repeated to n_layers: A full attn, W sliding window, G GDN, M Mamba2");
  v("model.n_layers", m.n_layers, "number of blocks (a multiple of the pattern length)");
  v("model.d_model", m.d_model, "residual stream width");
  v("model.vocab_size", m.vocab_size, "vocabulary size (256 for bytes)");
  v("model.tie_embeddings", m.tie_embeddings, "LM head shares the embedding matrix");
  v("model.norm_eps", m.norm_eps, "eps of block norms, final norm and QK-norm");
  v("model.norm_attention", m.norm_attention, "norm placement around A/W blocks: pre | reordered");
  v("model.norm_gdn", m.norm_gdn, "norm placement around G blocks: pre | reordered");
  v("model.norm_mamba2", m.norm_mamba2, "norm placement around M blocks: pre | reordered");
  v("model.init_std", m.init_std, "std of the normal init of projections and embeddings");
  v("model.d_mlp", m.d_mlp, "SwiGLU hidden width; 0 = no MLP sub-block");
  v("model.n_heads", m.n_heads, "attention query heads");
  v("model.n_kv_heads", m.n_kv_heads, "attention key/value heads (GQA when < n_heads)");
  v("model.d_head", m.d_head, "attention head width");
  v("model.qk_norm", m.qk_norm, "RMSNorm over the full q and k projections");
  v("model.pos_encoding", m.pos_encoding, "rope | none");
  v("model.rope_theta", m.rope_theta, "RoPE base");
  v("model.rope_scaling", m.rope_scaling, "none | yarn (context extension of RoPE)");
  v("model.rope_scaling_factor", m.rope_scaling_factor, "yarn: target context / rope_original_len (>= 1)");
  v("model.rope_original_len", m.rope_original_len, "yarn: context length the model was trained at");
  v("model.window", m.window, "sliding window of W layers (query sees itself + window-1 keys)");
  v("model.attn_tile", m.attn_tile, "tile size of the online-softmax attention kernel");
  v("model.gdn_n_heads", m.gdn_n_heads, "GDN q/k heads");
  v("model.gdn_n_v_heads", m.gdn_n_v_heads, "GDN value heads (a multiple of gdn_n_heads)");
  v("model.gdn_d_head_k", m.gdn_d_head_k, "GDN key head width");
  v("model.gdn_d_head_v", m.gdn_d_head_v, "GDN value head width");
  v("model.gdn_conv", m.gdn_conv, "GDN short conv kernel size");
  v("model.gdn_allow_neg_eigval", m.gdn_allow_neg_eigval, "beta = 2 sigmoid(.) instead of sigmoid(.)");
  v("model.gdn_chunk", m.gdn_chunk, "GDN chunk length; 0 = token-by-token recurrence");
  v("model.gdn_norm_eps", m.gdn_norm_eps, "eps of the GDN gated output norm");
  v("model.m2_d_state", m.m2_d_state, "Mamba2 state size N");
  v("model.m2_headdim", m.m2_headdim, "Mamba2 head width P");
  v("model.m2_expand", m.m2_expand, "Mamba2 d_inner = m2_expand * d_model");
  v("model.m2_n_groups", m.m2_n_groups, "Mamba2 B/C groups");
  v("model.m2_conv", m.m2_conv, "Mamba2 conv kernel size");
  v("model.m2_chunk", m.m2_chunk, "Mamba2 SSD chunk length; 0 = recurrence");
  v("model.m2_norm_eps", m.m2_norm_eps, "eps of the Mamba2 gated norm");
  v("model.a_init_min", m.a_init_min, "decay init A ~ U(a_init_min, a_init_max) (GDN, Mamba2)");
  v("model.a_init_max", m.a_init_max, "see a_init_min");
  v("model.dt_min", m.dt_min, "dt init log-uniform in [dt_min, dt_max]");
  v("model.dt_max", m.dt_max, "see dt_min");
  v("model.dt_floor", m.dt_floor, "dt init floor");

  auto& t = c.train;
  v("train.steps", t.steps, "optimizer steps");
  v("train.batch_size", t.batch_size, "sequences per micro-batch per device");
  v("train.seq_len", t.seq_len, "tokens per sequence");
  v("train.grad_accum", t.grad_accum, "micro-batches per optimizer step");
  v("train.lr", t.lr, "peak learning rate");
  v("train.min_lr_ratio", t.min_lr_ratio, "final lr as a fraction of lr");
  v("train.warmup_steps", t.warmup_steps, "linear warmup steps");
  v("train.schedule", t.schedule, "cosine | wsd | wsds");
  v("train.decay_fraction", t.decay_fraction, "wsd/wsds: decay length as a fraction of steps");
  v("train.wsds_decays", t.wsds_decays, "wsds: step fractions where a decay branch starts (e.g. 0.25,0.5,1.0)");
  v("train.wsds_branch", t.wsds_branch,
    "wsds: -1 = the stable main run (saves <run>.stable<step>.ckpt.h5 at each branch start); k = decay branch k, "
    "resumed from that checkpoint");
  v("train.beta1", t.beta1, "AdamW beta1");
  v("train.beta2", t.beta2, "AdamW beta2");
  v("train.adam_eps", t.adam_eps, "AdamW eps");
  v("train.weight_decay", t.weight_decay, "AdamW decoupled weight decay");
  v("train.grad_clip", t.grad_clip, "global gradient-norm clip; 0 = off");
  v("train.z_loss", t.z_loss, "z-loss coefficient; 0 = off");
  v("train.seed", t.seed, "seed of init and data order");
  v("train.eval_every", t.eval_every, "steps between validation passes; 0 = never");
  v("train.eval_batches", t.eval_batches, "batches per validation pass");
  v("train.checkpoint_every", t.checkpoint_every, "steps between checkpoints; 0 = at the end only");
  v("train.log_every", t.log_every, "steps between logged metric rows");
  v("train.activation_checkpointing", t.activation_checkpointing, "recompute block activations in the backward");

  auto& d = c.data;
  v("data.source", d.source, "text | tokens | <synthetic task name>");
  v("data.path", d.path, "input file (text, tokens)");
  v("data.val_fraction", d.val_fraction, "fraction held out for validation");
  v("data.token_dtype", d.token_dtype, "token shard dtype: uint16 | uint32");
  v("data.task_args", d.task_args, "free-form arguments of a synthetic task");

  v("eval.tasks", c.eval.tasks, "evaluation tasks (comma list)");
  v("eval.lengths", c.eval.lengths, "evaluation sequence lengths (comma list)");
  v("eval.context_extension", c.eval.context_extension, "attention positions at eval: none | yarn | drop_pe");

  auto& r = c.run;
  v("run.name", r.name, "run name (results/<experiment>/<name>.h5)");
  v("run.experiment", r.experiment, "experiment folder under out_dir");
  v("run.out_dir", r.out_dir, "results root");
  v("run.device", r.device, "cpu | cuda");
  v("run.threads", r.threads, "OpenMP threads; 0 = OpenMP default");
  v("run.resume", r.resume, "checkpoint to resume from; empty = fresh start");

  auto& g = c.grid;
  v("grid.architectures", g.architectures, "expressivity: architecture presets (comma list)");
  v("grid.tasks", g.tasks, "expressivity: synthetic tasks (comma list)");
  v("grid.task_args", g.task_args, "expressivity: per-task arguments in task order, ';'-separated (- = the task's defaults)");
  v("grid.seeds", g.seeds, "expressivity: seeds per cell");
  v("grid.jobs", g.jobs, "expressivity: cells trained in parallel processes");
  v("grid.length_multipliers", g.length_multipliers, "expressivity: eval lengths as multiples of train.seq_len");
}

std::vector<std::string> all_keys() {
  std::vector<std::string> keys;
  Config c;
  visit_fields(c, [&](const char* key, auto&, const char*) { keys.push_back(key); });
  return keys;
}

// ---- values <-> text -----------------------------------------------------------------

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> items;
  if (trim(s).empty()) return items;
  std::string cur;
  std::istringstream in(s);
  while (std::getline(in, cur, ',')) items.push_back(trim(cur));
  if (!s.empty() && s.back() == ',') items.push_back("");
  return items;
}

std::string fmt(int64_t v) { return std::to_string(v); }
std::string fmt(bool v) { return v ? "true" : "false"; }
std::string fmt(const std::string& v) { return v; }
std::string fmt(NormPlacement v) { return to_string(v); }
std::string fmt(double v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v);  // shortest text that parses back exactly
  return std::string(buf, r.ptr);
}
template <class T> std::string fmt(const std::vector<T>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ',';
    s += fmt(v[i]);
  }
  return s;
}

[[noreturn]] void bad_value(const std::string& key, const std::string& text, const std::string& what) {
  throw ConfigError(key + " = " + text + " " + what);
}

void parse_value(const std::string& key, const std::string& s, int64_t& out) {
  const char* e = s.data() + s.size();
  auto r = std::from_chars(s.data(), e, out);
  if (r.ec == std::errc::result_out_of_range) bad_value(key, s, "is out of the range of a 64-bit integer");
  if (s.empty() || r.ec != std::errc() || r.ptr != e) bad_value(key, "'" + s + "'", "is not an integer");
}
void parse_value(const std::string& key, const std::string& s, double& out) {
  const char* e = s.data() + s.size();
  auto r = std::from_chars(s.data(), e, out);
  if (s.empty() || r.ec != std::errc() || r.ptr != e) bad_value(key, "'" + s + "'", "is not a number");
  if (!std::isfinite(out)) bad_value(key, s, "is not a finite number");
}
void parse_value(const std::string& key, const std::string& s, bool& out) {
  std::string l = s;
  std::transform(l.begin(), l.end(), l.begin(), [](unsigned char ch) { return char(std::tolower(ch)); });
  if (l == "true" || l == "1" || l == "yes" || l == "on") out = true;
  else if (l == "false" || l == "0" || l == "no" || l == "off") out = false;
  else bad_value(key, "'" + s + "'", "is not a boolean (true/false, 1/0, yes/no, on/off)");
}
void parse_value(const std::string&, const std::string& s, std::string& out) { out = s; }
void parse_value(const std::string& key, const std::string& s, NormPlacement& out) {
  if (s == "pre") out = NormPlacement::pre;
  else if (s == "reordered") out = NormPlacement::reordered;
  else bad_value(key, "'" + s + "'", "is not a norm placement (pre | reordered)");
}
template <class T> void parse_value(const std::string& key, const std::string& s, std::vector<T>& out) {
  std::vector<T> v;
  const auto items = split_list(s);
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].empty()) bad_value(key, "'" + s + "'", "has an empty item (comma list expected)");
    T x{};
    parse_value(key + "[" + std::to_string(i) + "]", items[i], x);
    v.push_back(x);
  }
  out = std::move(v);
}

// ---- Boost.Program_options -----------------------------------------------------------

po::options_description make_description() {
  po::options_description desc(
      "hysim configuration: INI [section] key = value, or --section.key=value (shown: the default)", 110, 55);
  Config defaults;
  // Every value is read as text and converted by parse_value, so that a wrong type is
  // reported with the key, the value and the expected form.
  visit_fields(defaults, [&](const char* key, auto& field, const char* help) {
    const std::string shown = fmt(field);
    desc.add_options()(key, po::value<std::string>()->value_name(shown.empty() ? "\"\"" : shown), help);
  });
  return desc;
}

bool is_bool_key(const std::string& key) {
  bool found = false;
  Config c;
  visit_fields(c, [&](const char* k, auto& field, const char*) {
    if constexpr (std::is_same_v<std::decay_t<decltype(field)>, bool>) found = found || key == k;
  });
  return found;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string unknown_key_message(std::string name, const std::string& where) {
  while (!name.empty() && name[0] == '-') name.erase(0, 1);
  std::string msg = "unknown key '" + name + "' " + where;
  std::string best;
  size_t best_d = 4;
  for (const auto& k : all_keys()) {
    size_t d = edit_distance(name, k);
    // a key written without its section, or in the wrong one, matches on the field name
    const auto dot = k.find('.'), ndot = name.find('.');
    if (k.substr(dot + 1) == (ndot == std::string::npos ? name : name.substr(ndot + 1))) d = 1;
    if (d < best_d) best_d = d, best = k;
  }
  if (!best.empty()) msg += " (did you mean " + best + "?)";
  else msg += " (keys are section.key with sections model, train, data, eval, run, grid; see hysim --help)";
  return msg;
}

void store_checked(const po::parsed_options& parsed, po::variables_map& vm, const std::string& where) {
  try {
    po::store(parsed, vm);
  } catch (const po::multiple_occurrences& e) {
    throw ConfigError("key '" + e.get_option_name() + "' is given more than once " + where);
  } catch (const po::error& e) {
    throw ConfigError(std::string(e.what()) + " " + where);
  }
}

Config parse_impl(const std::string* ini_text, const std::string& source, const std::vector<std::string>& overrides) {
  const po::options_description desc = make_description();
  po::variables_map vm;
  // Command line first: Boost keeps the first value stored for a key, so overrides win.
  // Overrides are split here rather than by po::command_line_parser, which rejects an
  // empty value ("--run.resume=") and reports unknown keys less precisely.
  if (!overrides.empty()) {
    po::parsed_options parsed(&desc);
    for (const auto& o : overrides) {
      if (o.size() < 3 || o.compare(0, 2, "--") != 0)
        throw ConfigError("command-line override '" + o + "' is not of the form --section.key=value");
      const auto eq = o.find('=');
      const std::string key = o.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
      const po::option_description* d = desc.find_nothrow(key, /*approx=*/false);
      if (!d) throw ConfigError(unknown_key_message(key, "on the command line"));
      std::string value;
      if (eq != std::string::npos) value = o.substr(eq + 1);
      else if (is_bool_key(key)) value = "true";  // a bare boolean flag
      else throw ConfigError("--" + key + " needs a value on the command line: --" + key + "=VALUE");
      parsed.options.emplace_back(key, std::vector<std::string>{value});
      parsed.options.back().original_tokens = {o};
    }
    store_checked(parsed, vm, "on the command line");
  }
  if (ini_text) {
    std::istringstream in(*ini_text);
    po::parsed_options parsed(&desc);
    try {
      parsed = po::parse_config_file(in, desc, /*allow_unregistered=*/false);
    } catch (const po::unknown_option& e) {
      throw ConfigError(unknown_key_message(e.get_option_name(), "in " + source));
    } catch (const po::error& e) {
      throw ConfigError(std::string(e.what()) + " in " + source);
    }
    store_checked(parsed, vm, "in " + source);
  }
  Config c;
  visit_fields(c, [&](const char* key, auto& field, const char*) {
    if (vm.count(key)) parse_value(key, trim(vm[key].as<std::string>()), field);
  });
  validate(c);
  return c;
}

// ---- validation helpers ----------------------------------------------------------------

bool is_identifier(const std::string& s, bool allow_upper_dot_dash) {
  if (s.empty()) return false;
  for (unsigned char ch : s) {
    const bool ok = std::islower(ch) || std::isdigit(ch) || ch == '_' ||
                    (allow_upper_dot_dash && (std::isupper(ch) || ch == '.' || ch == '-'));
    if (!ok) return false;
  }
  return true;
}

}  // namespace

Config parse_config(const std::string& ini_path, const std::vector<std::string>& overrides) {
  if (ini_path.empty()) return parse_impl(nullptr, "", overrides);
  std::ifstream f(ini_path);
  if (!f) throw ConfigError("cannot open config file '" + ini_path + "'");
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();
  return parse_impl(&text, ini_path, overrides);
}

Config parse_config_text(const std::string& ini_text, const std::vector<std::string>& overrides,
                         const std::string& source) {
  return parse_impl(&ini_text, source, overrides);
}

std::vector<std::string> config_problems(const Config& c) {
  std::vector<std::string> p;
  auto is = [](const char* key, const auto& v) { return std::string(key) + " = " + fmt(v); };
  auto need = [&](bool ok, const std::string& msg) {
    if (!ok) p.push_back(msg);
  };
  auto positive = [&](const char* key, auto v) { need(v > 0, is(key, v) + " must be > 0"); };
  auto non_negative = [&](const char* key, auto v) { need(v >= 0, is(key, v) + " must be >= 0"); };
  auto one_of = [&](const char* key, const std::string& v, std::initializer_list<const char*> allowed) {
    std::string list;
    for (const char* a : allowed) {
      if (v == a) return;
      list += (list.empty() ? "" : " | ") + std::string(a);
    }
    p.push_back(is(key, v) + " must be one of " + list);
  };

  // ---- model
  const ModelConfig& m = c.model;
  bool pattern_ok = !m.pattern.empty();
  if (m.pattern.empty()) p.push_back("model.pattern is empty: use mixer letters A, W, G, M (e.g. GGGA)");
  for (char ch : m.pattern)
    if (ch != 'A' && ch != 'W' && ch != 'G' && ch != 'M') {
      p.push_back(is("model.pattern", m.pattern) + ": unknown mixer letter '" + ch +
                  "' (allowed: A full attention, W sliding window, G Gated DeltaNet, M Mamba2)");
      pattern_ok = false;
      break;
    }
  positive("model.n_layers", m.n_layers);
  if (pattern_ok && m.n_layers > 0 && m.n_layers % int64_t(m.pattern.size()) != 0)
    p.push_back(is("model.n_layers", m.n_layers) + " must be a multiple of the pattern length " +
                std::to_string(m.pattern.size()) + " (pattern " + m.pattern + ")");
  positive("model.d_model", m.d_model);
  positive("model.vocab_size", m.vocab_size);
  positive("model.norm_eps", m.norm_eps);
  positive("model.init_std", m.init_std);
  non_negative("model.d_mlp", m.d_mlp);
  const bool has_attn = m.pattern.find_first_of("AW") != std::string::npos;
  const bool has_gdn = m.pattern.find('G') != std::string::npos;
  const bool has_m2 = m.pattern.find('M') != std::string::npos;

  // attention
  positive("model.n_heads", m.n_heads);
  positive("model.n_kv_heads", m.n_kv_heads);
  positive("model.d_head", m.d_head);
  positive("model.rope_theta", m.rope_theta);
  need(m.window >= 1, is("model.window", m.window) + " must be >= 1 (a query always sees itself)");
  positive("model.attn_tile", m.attn_tile);
  one_of("model.pos_encoding", m.pos_encoding, {"rope", "none"});
  one_of("model.rope_scaling", m.rope_scaling, {"none", "yarn"});
  if (m.rope_scaling == "yarn") {
    need(m.pos_encoding == "rope", is("model.rope_scaling", m.rope_scaling) + " needs model.pos_encoding = rope");
    need(m.rope_scaling_factor >= 1, is("model.rope_scaling_factor", m.rope_scaling_factor) + " must be >= 1");
    need(m.rope_original_len >= 1, is("model.rope_original_len", m.rope_original_len) +
                                       " must be >= 1 with model.rope_scaling = yarn (the trained context)");
  }
  if (has_attn) {
    if (m.n_heads > 0 && m.n_kv_heads > 0)
      need(m.n_heads % m.n_kv_heads == 0, is("model.n_heads", m.n_heads) + " must be a multiple of model.n_kv_heads = " +
                                              fmt(m.n_kv_heads) + " (GQA groups)");
    if (m.pos_encoding == "rope")
      need(m.d_head % 2 == 0, is("model.d_head", m.d_head) + " must be even when model.pos_encoding = rope");
  }

  // GDN
  positive("model.gdn_n_heads", m.gdn_n_heads);
  positive("model.gdn_n_v_heads", m.gdn_n_v_heads);
  positive("model.gdn_d_head_k", m.gdn_d_head_k);
  positive("model.gdn_d_head_v", m.gdn_d_head_v);
  positive("model.gdn_conv", m.gdn_conv);
  non_negative("model.gdn_chunk", m.gdn_chunk);
  positive("model.gdn_norm_eps", m.gdn_norm_eps);
  if (has_gdn && m.gdn_n_heads > 0 && m.gdn_n_v_heads > 0)
    need(m.gdn_n_v_heads % m.gdn_n_heads == 0, is("model.gdn_n_v_heads", m.gdn_n_v_heads) +
                                                   " must be a multiple of model.gdn_n_heads = " + fmt(m.gdn_n_heads));

  // Mamba2
  positive("model.m2_d_state", m.m2_d_state);
  positive("model.m2_headdim", m.m2_headdim);
  positive("model.m2_expand", m.m2_expand);
  positive("model.m2_n_groups", m.m2_n_groups);
  positive("model.m2_conv", m.m2_conv);
  non_negative("model.m2_chunk", m.m2_chunk);
  positive("model.m2_norm_eps", m.m2_norm_eps);
  if (has_m2 && m.m2_headdim > 0 && m.m2_expand > 0 && m.d_model > 0 && m.m2_n_groups > 0) {
    const int64_t d_inner = m.m2_expand * m.d_model;
    if (d_inner % m.m2_headdim != 0)
      p.push_back("model.m2_expand * model.d_model = " + fmt(d_inner) + " must be a multiple of model.m2_headdim = " +
                  fmt(m.m2_headdim));
    else
      need((d_inner / m.m2_headdim) % m.m2_n_groups == 0,
           "Mamba2 heads m2_expand * d_model / m2_headdim = " + fmt(d_inner / m.m2_headdim) +
               " must be a multiple of model.m2_n_groups = " + fmt(m.m2_n_groups));
  }

  // decay init
  need(m.a_init_min >= 0 && m.a_init_min < m.a_init_max,
       "model.a_init_min = " + fmt(m.a_init_min) + ", model.a_init_max = " + fmt(m.a_init_max) +
           ": need 0 <= a_init_min < a_init_max (A ~ U(min, max))");
  need(m.dt_min > 0 && m.dt_min <= m.dt_max,
       "model.dt_min = " + fmt(m.dt_min) + ", model.dt_max = " + fmt(m.dt_max) + ": need 0 < dt_min <= dt_max");
  positive("model.dt_floor", m.dt_floor);

  // ---- train
  const TrainConfig& t = c.train;
  positive("train.steps", t.steps);
  positive("train.batch_size", t.batch_size);
  positive("train.seq_len", t.seq_len);
  positive("train.grad_accum", t.grad_accum);
  positive("train.lr", t.lr);
  need(t.min_lr_ratio >= 0 && t.min_lr_ratio <= 1, is("train.min_lr_ratio", t.min_lr_ratio) + " must be in [0, 1]");
  non_negative("train.warmup_steps", t.warmup_steps);
  need(t.warmup_steps <= t.steps, is("train.warmup_steps", t.warmup_steps) +
                                      " must be <= train.steps = " + fmt(t.steps));
  one_of("train.schedule", t.schedule, {"cosine", "wsd", "wsds"});
  need(t.decay_fraction > 0 && t.decay_fraction <= 1,
       is("train.decay_fraction", t.decay_fraction) + " must be in (0, 1]");
  if (t.schedule == "wsd" && t.decay_fraction > 0 && t.decay_fraction <= 1)
    need(double(t.warmup_steps) + t.decay_fraction * double(t.steps) <= double(t.steps) + 1e-9,
         "train.warmup_steps = " + fmt(t.warmup_steps) + " plus the decay train.decay_fraction * train.steps = " +
             fmt(t.decay_fraction * double(t.steps)) + " must not exceed train.steps = " + fmt(t.steps) +
             " (schedule wsd)");
  if (t.schedule == "wsds") {
    need(!t.wsds_decays.empty(), "train.wsds_decays is empty: schedule wsds needs the step fractions of its decays");
    for (size_t i = 0; i < t.wsds_decays.size(); ++i) {
      const double f = t.wsds_decays[i];
      need(f > 0 && f <= 1, is("train.wsds_decays", t.wsds_decays) + ": item " + fmt(f) + " must be in (0, 1]");
      if (i > 0)
        need(f > t.wsds_decays[i - 1], is("train.wsds_decays", t.wsds_decays) + " must be strictly increasing");
      need(f * double(t.steps) >= double(t.warmup_steps),
           is("train.wsds_decays", t.wsds_decays) + ": decay at " + fmt(f) + " * train.steps starts before the end " +
               "of warmup (train.warmup_steps = " + fmt(t.warmup_steps) + ")");
    }
  }
  need(t.wsds_branch >= -1, is("train.wsds_branch", t.wsds_branch) + " must be -1 (main run) or a branch index");
  if (t.wsds_branch >= 0)
    need(t.schedule == "wsds" && t.wsds_branch < int64_t(t.wsds_decays.size()),
         is("train.wsds_branch", t.wsds_branch) + " needs train.schedule = wsds and an index below the " +
             fmt(int64_t(t.wsds_decays.size())) + " entries of train.wsds_decays");
  need(t.beta1 >= 0 && t.beta1 < 1, is("train.beta1", t.beta1) + " must be in [0, 1)");
  need(t.beta2 >= 0 && t.beta2 < 1, is("train.beta2", t.beta2) + " must be in [0, 1)");
  positive("train.adam_eps", t.adam_eps);
  non_negative("train.weight_decay", t.weight_decay);
  non_negative("train.grad_clip", t.grad_clip);
  non_negative("train.z_loss", t.z_loss);
  non_negative("train.seed", t.seed);
  non_negative("train.eval_every", t.eval_every);
  if (t.eval_every > 0) positive("train.eval_batches", t.eval_batches);
  else non_negative("train.eval_batches", t.eval_batches);
  non_negative("train.checkpoint_every", t.checkpoint_every);
  positive("train.log_every", t.log_every);

  // ---- data
  const DataConfig& d = c.data;
  if (d.source != "text" && d.source != "tokens" && !is_identifier(d.source, false))
    p.push_back(is("data.source", d.source) + " must be text, tokens or a synthetic task name ([a-z0-9_]+)");
  if (d.source == "text" || d.source == "tokens")
    need(!d.path.empty(), "data.path is empty but data.source = " + d.source + " reads a file");
  if (d.source == "text")
    need(m.vocab_size >= 256, is("model.vocab_size", m.vocab_size) +
                                  " must be >= 256 when data.source = text (byte-level tokens)");
  need(d.val_fraction >= 0 && d.val_fraction < 1, is("data.val_fraction", d.val_fraction) + " must be in [0, 1)");
  one_of("data.token_dtype", d.token_dtype, {"uint16", "uint32"});
  if (d.source == "tokens" && d.token_dtype == "uint16")
    need(m.vocab_size <= 65536, is("model.vocab_size", m.vocab_size) +
                                    " does not fit data.token_dtype = uint16 (max 65536); use uint32");
  if ((d.source == "text" || d.source == "tokens") && t.eval_every > 0)
    need(d.val_fraction > 0, is("data.val_fraction", d.val_fraction) + " leaves no validation data but " +
                                 is("train.eval_every", t.eval_every) + " (set eval_every = 0 or val_fraction > 0)");

  // ---- eval
  for (const auto& task : c.eval.tasks)
    need(is_identifier(task, false), is("eval.tasks", c.eval.tasks) + ": item '" + task + "' is not a task name ([a-z0-9_]+)");
  for (int64_t L : c.eval.lengths)
    need(L > 0, is("eval.lengths", c.eval.lengths) + ": item " + fmt(L) + " must be > 0");
  one_of("eval.context_extension", c.eval.context_extension, {"none", "yarn", "drop_pe"});
  if (c.eval.context_extension != "none")
    need(m.pos_encoding == "rope" && m.rope_scaling == "none",
         is("eval.context_extension", c.eval.context_extension) +
             " extends a RoPE model: it needs model.pos_encoding = rope and model.rope_scaling = none");
  need(c.grid.seeds >= 1, is("grid.seeds", c.grid.seeds) + " must be >= 1");
  need(c.grid.jobs >= 1, is("grid.jobs", c.grid.jobs) + " must be >= 1");
  for (int64_t m : c.grid.length_multipliers)
    need(m >= 1, is("grid.length_multipliers", c.grid.length_multipliers) + ": item " + fmt(m) + " must be >= 1");

  // ---- run
  const RunConfig& r = c.run;
  for (auto [key, val] : {std::pair{"run.name", &r.name}, std::pair{"run.experiment", &r.experiment}})
    need(is_identifier(*val, true) && *val != "." && *val != "..",
         is(key, *val) + " must be a file name made of [A-Za-z0-9._-]");
  need(!r.out_dir.empty(), "run.out_dir is empty");
  one_of("run.device", r.device, {"cpu", "cuda"});
  non_negative("run.threads", r.threads);

  // ---- anything that to_ini could not write back unchanged
  Config copy = c;
  visit_fields(copy, [&](const char* key, auto& field, const char*) {
    using F = std::decay_t<decltype(field)>;
    if constexpr (std::is_same_v<F, std::string> || std::is_same_v<F, std::vector<std::string>>) {
      const std::string s = fmt(field);
      need(s.find_first_of("#\n\r") == std::string::npos && s == trim(s),
           std::string(key) + " = '" + s + "' cannot be written to INI ('#', line breaks or surrounding blanks)");
      if constexpr (std::is_same_v<F, std::vector<std::string>>)
        for (const auto& item : field)
          need(!item.empty() && item.find(',') == std::string::npos && item == trim(item),
               std::string(key) + ": item '" + item + "' must be non-empty, without commas or surrounding blanks");
    }
  });
  return p;
}

ModelConfig eval_model_config(const Config& c, int64_t L) {
  ModelConfig m = c.model;
  const std::string& ext = c.eval.context_extension;
  if (ext == "drop_pe") {
    m.pos_encoding = "none";
  } else if (ext == "yarn" && L > c.train.seq_len) {
    m.rope_scaling = "yarn";
    m.rope_scaling_factor = double(L) / double(c.train.seq_len);
    m.rope_original_len = c.train.seq_len;
  }
  return m;
}

void validate(const Config& c) {
  const auto problems = config_problems(c);
  if (problems.empty()) return;
  std::string msg = problems.size() == 1 ? "invalid configuration: " : "invalid configuration:\n  ";
  for (size_t i = 0; i < problems.size(); ++i) msg += (i ? "\n  " : "") + problems[i];
  throw ConfigError(msg);
}

std::string to_ini(const Config& c) {
  std::string out, section;
  visit_fields(c, [&](const char* key, const auto& field, const char*) {
    const std::string k = key;
    const auto dot = k.find('.');
    if (k.substr(0, dot) != section) {
      section = k.substr(0, dot);
      out += (out.empty() ? "[" : "\n[") + section + "]\n";
    }
    out += k.substr(dot + 1) + " = " + fmt(field) + "\n";
  });
  return out;
}

std::string config_help() {
  std::ostringstream os;
  os << make_description();
  return os.str();
}

}  // namespace hysim
