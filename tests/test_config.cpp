#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "core/config.h"

using namespace hysim;

static const std::string kConfigs = std::string(HYSIM_SOURCE_DIR) + "/experiments/configs/";

// The ConfigError message of parse_config_text(ini, overrides), or "" when it parses.
static std::string error_of(const std::string& ini, const std::vector<std::string>& overrides = {}) {
  try {
    parse_config_text(ini, overrides, "test.ini");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

static bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

TEST_CASE("config: defaults with no file and no overrides are the struct defaults and valid") {
  const Config c = parse_config("", {});
  CHECK(c == Config{});
  CHECK(config_problems(Config{}).empty());
  CHECK(c.model.pattern == "GGGA");
  CHECK(c.run.out_dir == "results");
}

TEST_CASE("config: INI sections map 1:1 to fields; comments and blanks are ignored") {
  const std::string ini =
      "# a comment\n"
      "[model]\n"
      "pattern = MMMA   # trailing comment\n"
      "n_layers = 8\n"
      "d_model=32\n"
      "gdn_d_head_k = 24\n"
      "norm_gdn = reordered\n"
      "tie_embeddings = yes\n"
      "[train]\n"
      "lr = 1e-3\n"
      "schedule = wsds\n"
      "wsds_decays = 0.25, 0.5 ,1.0\n"
      "[data]\n"
      "source = mqar\n"
      "task_args = n_keys=8 vocab=64\n"
      "[eval]\n"
      "tasks = mqar,parity\n"
      "lengths = 64,128\n"
      "[run]\n"
      "device = cuda\n"
      "threads = 2\n";
  const Config c = parse_config_text(ini);
  CHECK(c.model.pattern == "MMMA");
  CHECK(c.model.n_layers == 8);
  CHECK(c.model.d_model == 32);
  CHECK(c.model.gdn_d_head_k == 24);
  CHECK(c.model.norm_gdn == NormPlacement::reordered);
  CHECK(c.model.tie_embeddings);
  CHECK(c.train.lr == 1e-3);
  CHECK(c.train.schedule == "wsds");
  CHECK(c.train.wsds_decays == std::vector<double>{0.25, 0.5, 1.0});
  CHECK(c.data.source == "mqar");
  CHECK(c.data.task_args == "n_keys=8 vocab=64");
  CHECK(c.eval.tasks == std::vector<std::string>{"mqar", "parity"});
  CHECK(c.eval.lengths == std::vector<int64_t>{64, 128});
  CHECK(c.run.device == "cuda");
  CHECK(c.run.threads == 2);
  // untouched keys keep their defaults
  CHECK(c.model.d_mlp == ModelConfig{}.d_mlp);
  CHECK(c.train.beta2 == TrainConfig{}.beta2);
}

TEST_CASE("config: command-line overrides win over the file and work without a file") {
  const std::string ini = "[model]\nd_model = 32\nn_layers = 8\n[train]\nlr = 1e-3\n";
  const Config c = parse_config_text(ini, {"--model.d_model=48", "--train.steps=70", "--model.qk_norm=false"});
  CHECK(c.model.d_model == 48);  // overridden
  CHECK(c.model.n_layers == 8);  // from the file
  CHECK(c.train.lr == 1e-3);     // from the file
  CHECK(c.train.steps == 70);    // override of a default
  CHECK_FALSE(c.model.qk_norm);

  const Config d = parse_config("", {"--model.d_model=512", "--model.tie_embeddings", "--run.name=abc"});
  CHECK(d.model.d_model == 512);
  CHECK(d.model.tie_embeddings);  // a bare boolean flag means true
  CHECK(d.run.name == "abc");
  CHECK(d.model.n_layers == ModelConfig{}.n_layers);
}

TEST_CASE("config: unknown keys are rejected, in the file and on the command line") {
  std::string e = error_of("[model]\nd_modle = 64\n");
  MESSAGE(e);
  CHECK(contains(e, "unknown key 'model.d_modle'"));
  CHECK(contains(e, "test.ini"));
  CHECK(contains(e, "did you mean model.d_model"));

  e = error_of("", {"--train.learning_rate=0.1"});
  MESSAGE(e);
  CHECK(contains(e, "unknown key 'train.learning_rate'"));
  CHECK(contains(e, "command line"));

  e = error_of("[modle]\nd_model = 64\n");  // wrong section
  CHECK(contains(e, "unknown key 'modle.d_model'"));
  CHECK(contains(e, "did you mean model.d_model"));

  e = error_of("d_model = 64\n");  // outside any section
  MESSAGE(e);
  CHECK(contains(e, "unknown key 'd_model'"));
  CHECK(contains(e, "model.d_model"));

  e = error_of("[train]\nd_model = 64\n");  // a key of another section
  CHECK(contains(e, "unknown key 'train.d_model'"));
  CHECK(contains(e, "did you mean model.d_model"));

  e = error_of("[model]\ncompletely_unrelated_thing = 1\n");
  CHECK(contains(e, "unknown key 'model.completely_unrelated_thing'"));
}

TEST_CASE("config: values of the wrong type are rejected naming key and value") {
  struct Case {
    std::string override, key, value, rule;
  };
  const std::vector<Case> cases = {
      {"--model.d_model=abc", "model.d_model", "abc", "not an integer"},
      {"--model.n_layers=12abc", "model.n_layers", "12abc", "not an integer"},
      {"--train.steps=1e3", "train.steps", "1e3", "not an integer"},
      {"--train.steps=99999999999999999999", "train.steps", "99999999999999999999", "out of the range"},
      {"--train.lr=fast", "train.lr", "fast", "not a number"},
      {"--train.lr=inf", "train.lr", "inf", "not a finite number"},
      {"--model.qk_norm=maybe", "model.qk_norm", "maybe", "not a boolean"},
      {"--model.norm_attention=post", "model.norm_attention", "post", "pre | reordered"},
      {"--train.wsds_decays=0.5,x", "train.wsds_decays[1]", "x", "not a number"},
      {"--train.wsds_decays=0.5,,1", "train.wsds_decays", "0.5,,1", "empty item"},
      {"--eval.lengths=64,1.5", "eval.lengths[1]", "1.5", "not an integer"},
      {"--model.d_model=", "model.d_model", "''", "not an integer"},
  };
  for (const auto& k : cases) {
    const std::string e = error_of("", {k.override});
    INFO(k.override, " -> ", e);
    CHECK(contains(e, k.key + " = "));
    CHECK(contains(e, k.value));
    CHECK(contains(e, k.rule));
  }
  // the same in a file
  const std::string e = error_of("[model]\nd_model = 6x4\n");
  CHECK(contains(e, "model.d_model = '6x4' is not an integer"));
}

TEST_CASE("config: inconsistent values are rejected naming key, value and rule") {
  struct Case {
    std::vector<std::string> overrides;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"--model.n_layers=6"}, "model.n_layers = 6 must be a multiple of the pattern length 4 (pattern GGGA)"},
      {{"--model.pattern=GGXA"}, "model.pattern = GGXA: unknown mixer letter 'X'"},
      {{"--model.pattern="}, "model.pattern is empty"},
      {{"--model.n_kv_heads=3"}, "model.n_heads = 4 must be a multiple of model.n_kv_heads = 3"},
      {{"--model.gdn_n_v_heads=6"}, "model.gdn_n_v_heads = 6 must be a multiple of model.gdn_n_heads = 4"},
      {{"--model.window=0"}, "model.window = 0 must be >= 1"},
      {{"--model.d_head=15"}, "model.d_head = 15 must be even when model.pos_encoding = rope"},
      {{"--model.pos_encoding=alibi"}, "model.pos_encoding = alibi must be one of rope | none"},
      {{"--model.pattern=MA", "--model.n_layers=2", "--model.m2_headdim=48"},
       "model.m2_expand * model.d_model = 128 must be a multiple of model.m2_headdim = 48"},
      {{"--model.pattern=M", "--model.n_layers=1", "--model.m2_n_groups=3"},
       "must be a multiple of model.m2_n_groups = 3"},
      {{"--model.d_model=0"}, "model.d_model = 0 must be > 0"},
      {{"--model.gdn_d_head_k=-1"}, "model.gdn_d_head_k = -1 must be > 0"},
      {{"--model.d_mlp=-5"}, "model.d_mlp = -5 must be >= 0"},
      {{"--model.a_init_min=-1"}, "need 0 <= a_init_min < a_init_max"},
      {{"--model.dt_min=0.5", "--model.dt_max=0.1"}, "need 0 < dt_min <= dt_max"},
      {{"--train.lr=0"}, "train.lr = 0 must be > 0"},
      {{"--train.warmup_steps=300", "--train.steps=200"}, "train.warmup_steps = 300 must be <= train.steps = 200"},
      {{"--train.schedule=linear"}, "train.schedule = linear must be one of cosine | wsd | wsds"},
      {{"--train.schedule=wsd", "--train.warmup_steps=100", "--train.steps=200", "--train.decay_fraction=0.6"},
       "must not exceed train.steps = 200 (schedule wsd)"},
      {{"--train.schedule=wsds", "--train.wsds_decays=0.5,0.25"}, "must be strictly increasing"},
      {{"--train.schedule=wsds", "--train.wsds_decays=0.5,1.5"}, "item 1.5 must be in (0, 1]"},
      {{"--train.schedule=wsds", "--train.wsds_decays="}, "train.wsds_decays is empty"},
      {{"--train.beta1=1"}, "train.beta1 = 1 must be in [0, 1)"},
      {{"--train.min_lr_ratio=2"}, "train.min_lr_ratio = 2 must be in [0, 1]"},
      {{"--train.grad_clip=-1"}, "train.grad_clip = -1 must be >= 0"},
      {{"--train.log_every=0"}, "train.log_every = 0 must be > 0"},
      {{"--data.val_fraction=1.5"}, "data.val_fraction = 1.5 must be in [0, 1)"},
      {{"--data.val_fraction=0"}, "leaves no validation data"},
      {{"--data.token_dtype=int8"}, "data.token_dtype = int8 must be one of uint16 | uint32"},
      {{"--data.source=tokens", "--model.vocab_size=100352"}, "does not fit data.token_dtype = uint16"},
      {{"--data.source=text", "--model.vocab_size=100"}, "model.vocab_size = 100 must be >= 256"},
      {{"--data.source=text", "--data.path="}, "data.path is empty but data.source = text"},
      {{"--data.source=Bad Task"}, "data.source = Bad Task must be text, tokens or a synthetic task name"},
      {{"--eval.lengths=64,0"}, "item 0 must be > 0"},
      {{"--eval.tasks=mqar,Parity"}, "item 'Parity' is not a task name"},
      {{"--eval.context_extension=ntk"}, "eval.context_extension = ntk must be one of none | yarn | drop_pe"},
      {{"--eval.context_extension=yarn", "--model.pos_encoding=none"}, "it needs model.pos_encoding = rope"},
      {{"--model.rope_scaling=yarn", "--model.rope_scaling_factor=4"}, "model.rope_original_len = 0 must be >= 1"},
      {{"--model.rope_scaling=yarn", "--model.rope_original_len=64", "--model.rope_scaling_factor=0.5"},
       "model.rope_scaling_factor = 0.5 must be >= 1"},
      {{"--model.rope_scaling=ntk"}, "model.rope_scaling = ntk must be one of none | yarn"},
      {{"--run.device=tpu"}, "run.device = tpu must be one of cpu | cuda"},
      {{"--run.name=a/b"}, "run.name = a/b must be a file name"},
      {{"--run.threads=-2"}, "run.threads = -2 must be >= 0"},
  };
  for (const auto& k : cases) {
    const std::string e = error_of("", k.overrides);
    INFO(k.overrides[0], " -> ", e);
    CHECK(contains(e, k.message));
  }
  MESSAGE(error_of("", {"--model.n_layers=6"}));
  // a mixer's divisibility rules apply only when the pattern uses that mixer
  CHECK(error_of("", {"--model.pattern=GGGG", "--model.n_kv_heads=3", "--model.d_head=15"}) == "");
  CHECK(error_of("", {"--model.pattern=A", "--model.n_layers=3", "--model.gdn_n_v_heads=6"}) == "");
  CHECK(error_of("", {"--model.pos_encoding=none", "--model.d_head=15"}) == "");
  // every problem is reported, one per line
  const std::string e = error_of("", {"--model.window=0", "--train.lr=-1", "--run.device=gpu"});
  MESSAGE(e);
  CHECK(contains(e, "model.window = 0"));
  CHECK(contains(e, "train.lr = -1"));
  CHECK(contains(e, "run.device = gpu"));
}

TEST_CASE("config: the model evaluated at a length under eval.context_extension") {
  Config c = parse_config("", {"--train.seq_len=64"});
  CHECK(eval_model_config(c, 256) == c.model);  // none
  c.eval.context_extension = "yarn";
  CHECK(eval_model_config(c, 64) == c.model);  // the trained length needs no extension
  const ModelConfig y = eval_model_config(c, 256);
  CHECK(y.rope_scaling == "yarn");
  CHECK(y.rope_scaling_factor == 4.0);
  CHECK(y.rope_original_len == 64);
  c.eval.context_extension = "drop_pe";
  CHECK(eval_model_config(c, 64).pos_encoding == "none");
  CHECK(eval_model_config(c, 256).pos_encoding == "none");
}

TEST_CASE("config: malformed input is rejected") {
  CHECK(contains(error_of("[model]\nd_model = 32\nd_model = 64\n"), "more than once"));
  CHECK(contains(error_of("", {"--model.d_model=32", "--model.d_model=64"}), "more than once"));
  CHECK(contains(error_of("[model]\nthis line has no equals sign\n"), "test.ini"));
  CHECK(contains(error_of("", {"model.d_model=32"}), "is not of the form --section.key=value"));
  CHECK(contains(error_of("", {"--model.d_model"}), "--model.d_model needs a value"));  // not a boolean
  try {
    parse_config("/nonexistent/hysim.ini", {});
    FAIL("expected ConfigError");
  } catch (const ConfigError& e) {
    CHECK(contains(e.what(), "cannot open config file '/nonexistent/hysim.ini'"));
  }
  // validate() on a struct built in code
  Config c;
  c.train.warmup_steps = c.train.steps + 1;
  CHECK_THROWS_AS(validate(c), ConfigError);
  c.train.warmup_steps = 0;
  c.data.task_args = "a # b";  // could not be written to INI and read back
  CHECK_THROWS_AS(validate(c), ConfigError);
}

TEST_CASE("config: to_ini round trip gives back the same config") {
  std::vector<Config> configs;
  configs.push_back(Config{});
  for (const char* f : {"tiny.ini", "shakespeare_hybrid.ini", "olmo_hybrid_7b.ini", "olmo3_7b.ini"})
    configs.push_back(parse_config(kConfigs + f, {}));
  // unusual values: lists, free-form strings with '=', doubles that are not short decimals
  configs.push_back(parse_config("", {"--train.schedule=wsds", "--train.wsds_decays=0.25,0.5,1.0",
                                      "--train.lr=0.30000000000000004", "--model.norm_eps=1.2345678901234567e-7",
                                      "--data.source=mqar", "--data.task_args=n_keys=8 mode=a,b",
                                      "--eval.tasks=mqar,parity", "--eval.lengths=64,128,256",
                                      "--model.norm_attention=pre", "--model.norm_gdn=reordered",
                                      "--model.tie_embeddings=true", "--train.seed=12345678901",
                                      "--run.resume=results/x/ckpt.h5"}));
  for (const Config& c : configs) {
    const std::string text = to_ini(c);
    const Config back = parse_config_text(text, {}, "to_ini");
    CHECK(back == c);
    CHECK(to_ini(back) == text);
  }
  CHECK(configs.back().train.lr == 0.30000000000000004);  // exact, not 0.3
  const std::string text = to_ini(configs.back());
  MESSAGE(text);
  CHECK(contains(text, "[model]\npattern = GGGA\n"));
  CHECK(contains(text, "wsds_decays = 0.25,0.5,1\n"));
  CHECK(contains(text, "task_args = n_keys=8 mode=a,b\n"));
}

TEST_CASE("config: reference configurations") {
  const Config h = parse_config(kConfigs + "olmo_hybrid_7b.ini", {});
  CHECK(h.model.pattern == "GGGA");
  CHECK(h.model.n_layers == 32);
  CHECK(h.model.d_model == 3840);
  CHECK(h.model.n_heads == 30);
  CHECK(h.model.n_kv_heads == 30);
  CHECK(h.model.d_head == 128);
  CHECK(h.model.qk_norm);
  CHECK(h.model.pos_encoding == "none");
  CHECK(h.model.rope_theta == 5e5);
  CHECK(h.model.gdn_n_heads == 30);
  CHECK(h.model.gdn_d_head_k == 96);
  CHECK(h.model.gdn_d_head_v == 192);
  CHECK(h.model.gdn_conv == 4);
  CHECK(h.model.gdn_allow_neg_eigval);
  CHECK(h.model.d_mlp == 11008);
  CHECK(h.model.vocab_size == 100352);
  CHECK_FALSE(h.model.tie_embeddings);
  CHECK(h.model.norm_eps == 1e-6);
  CHECK(h.model.norm_gdn == NormPlacement::pre);
  CHECK(h.model.norm_attention == NormPlacement::reordered);
  CHECK(h.model.a_init_min == 0);
  CHECK(h.model.a_init_max == 16);
  CHECK(h.train.seq_len == 8192);
  CHECK(h.train.lr == 3e-4);
  CHECK(h.train.warmup_steps == 2000);
  CHECK(h.train.z_loss == 1e-5);
  CHECK(h.train.weight_decay == 0.1);
  CHECK(h.train.beta2 == 0.95);
  CHECK(h.eval.lengths.back() == 65536);

  const Config o = parse_config(kConfigs + "olmo3_7b.ini", {});
  CHECK(o.model.pattern == "WWWA");
  CHECK(o.model.d_model == 4096);
  CHECK(o.model.n_heads == 32);
  CHECK(o.model.window == 4096);
  CHECK(o.model.pos_encoding == "rope");
  CHECK(o.model.rope_theta == 5e5);
  CHECK(o.model.norm_attention == NormPlacement::reordered);

  const Config t = parse_config(kConfigs + "tiny.ini", {});
  CHECK(t.model.vocab_size == 256);
  CHECK(t.model.d_model == 64);
  CHECK(t.model.n_layers == 4);
  CHECK(t.model.pattern == "GGGA");
  CHECK(t.run.device == "cpu");

  const Config s = parse_config(kConfigs + "shakespeare_hybrid.ini", {});
  CHECK(s.model.vocab_size == 256);
  CHECK(s.data.source == "text");
  CHECK(s.data.path == "data/tinyshakespeare.txt");
  CHECK(s.run.device == "cpu");
  // 3:1 hybrid: three GDN layers per attention layer
  int g = 0, a = 0;
  for (char ch : s.model.pattern) (ch == 'G' ? g : a) += 1;
  CHECK(g == 3 * a);
}

TEST_CASE("config: help lists every key with its default") {
  const std::string h = config_help();
  CHECK(contains(h, "--model.gdn_d_head_k"));
  CHECK(contains(h, "--train.wsds_decays"));
  CHECK(contains(h, "--run.resume"));
  CHECK(contains(h, "--model.d_model 64 "));  // the default as the value name
  CHECK(contains(h, "--model.qk_norm true "));
}
