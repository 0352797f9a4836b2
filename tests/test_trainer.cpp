// The training loop end to end: loss goes down, results are readable, a run killed with
// SIGKILL and resumed from its checkpoint ends with exactly the parameters of an
// uninterrupted run, and a diverging run stops with a clear error.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <filesystem>
#include <thread>

#include "core/checkpoint.h"
#include "core/hdf5_io.h"
#include "core/trainer.h"
#include "tests/test_util.h"

extern char** environ;
using namespace hysim;
namespace fs = std::filesystem;

using hysim::test::scratch_dir;

// A small byte-level GGGA hybrid on tinyshakespeare: a few ms per step.
static std::vector<std::string> tiny_overrides(const fs::path& out, const std::string& run, int64_t steps) {
  return {"--model.pattern=GGWA", "--model.n_layers=4", "--model.d_model=32", "--model.d_mlp=64",
          "--model.n_heads=2", "--model.n_kv_heads=2", "--model.d_head=16", "--model.window=16",
          "--model.gdn_n_heads=2", "--model.gdn_n_v_heads=2", "--model.gdn_d_head_k=8",
          "--model.gdn_d_head_v=16", "--model.gdn_chunk=16", "--model.vocab_size=256",
          "--train.batch_size=4", "--train.seq_len=32", "--train.steps=" + std::to_string(steps),
          "--train.lr=3e-3", "--train.warmup_steps=5", "--train.eval_every=10", "--train.eval_batches=2",
          "--train.log_every=1", "--data.source=text",
          std::string("--data.path=") + HYSIM_SOURCE_DIR + "/data/tinyshakespeare.txt", "--run.out_dir=" + out.string(),
          "--run.experiment=t", "--run.name=" + run};
}

// Sets --key=value in an override list, replacing an earlier value of the key.
static std::vector<std::string> with(std::vector<std::string> ov, const std::string& key, const std::string& value) {
  const std::string prefix = "--" + key + "=";
  std::erase_if(ov, [&](const std::string& s) { return s.rfind(prefix, 0) == 0; });
  ov.push_back(prefix + value);
  return ov;
}

TEST_CASE("trainer: loss decreases and the results file has the metrics") {
  fs::path out = scratch_dir("basic");
  Config cfg = parse_config("", tiny_overrides(out, "r", 30));
  TrainOptions o;
  o.quiet = true;
  TrainOutcome r = train(cfg, o);
  CHECK(r.steps_done == 30);
  CHECK(std::isfinite(r.val_loss));
  CHECK(r.val_loss < std::log(256.0) - 1.0);  // well below the uniform guess (5.55 nats)
  h5::File f = h5::File::open(r.results_path);
  std::vector<double> loss = f.read<double>("metrics/train_loss");
  REQUIRE(loss.size() == 30);
  CHECK(loss.back() < loss.front() - 1.0);
  CHECK(f.attr_string("config").find("pattern = GGWA") != std::string::npos);
  Checkpoint ck = load_checkpoint(r.checkpoint_path);
  CHECK(ck.step == 30);
}

TEST_CASE("trainer: kill -9 mid-run, resume, and the final parameters equal an uninterrupted run") {
  const int64_t steps = 300;
  fs::path out = scratch_dir("resume");
  // Uninterrupted reference, in process.
  TrainOptions quiet;
  quiet.quiet = true;
  TrainOutcome ref = train(parse_config("", tiny_overrides(out, "ref", steps)), quiet);

  // The same run through the CLI, checkpointing every 7 steps, killed after its first checkpoint.
  std::vector<std::string> args = {HYSIM_BIN, "train", "--quiet", "--train.checkpoint_every=7"};
  for (auto& s : tiny_overrides(out, "killed", steps)) args.push_back(s);
  std::vector<char*> argv;
  for (auto& s : args) argv.push_back(s.data());
  argv.push_back(nullptr);
  pid_t pid;
  REQUIRE(posix_spawn(&pid, HYSIM_BIN, nullptr, nullptr, argv.data(), environ) == 0);
  const fs::path ckpt = out / "t" / "killed.ckpt.h5";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!fs::exists(ckpt) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  REQUIRE(fs::exists(ckpt));
  CHECK(WIFSIGNALED(status));  // it really was killed, not finished
  const int64_t killed_at = load_checkpoint(ckpt.string()).step;
  MESSAGE("killed after the checkpoint at step " << killed_at << " of " << steps);
  CHECK(killed_at < steps);

  std::vector<std::string> ov = with(tiny_overrides(out, "killed", steps), "train.checkpoint_every", "7");
  ov = with(ov, "run.resume", ckpt.string());
  TrainOutcome resumed = train(parse_config("", ov), quiet);
  CHECK(resumed.steps_done == steps);

  Checkpoint a = load_checkpoint(ref.checkpoint_path), b = load_checkpoint(resumed.checkpoint_path);
  REQUIRE(a.params.size() == b.params.size());
  size_t differing = 0;
  for (size_t i = 0; i < a.params.size(); ++i) differing += a.params[i].data != b.params[i].data;
  CHECK(differing == 0);
  CHECK(resumed.train_loss == ref.train_loss);  // bit-identical loss at the last step
  // The resumed results file continues the killed run's history without gaps or repeats.
  std::vector<int64_t> st = h5::File::open(resumed.results_path).read<int64_t>("metrics/step");
  REQUIRE(st.size() == size_t(steps));
  for (int64_t i = 0; i < steps; ++i) CHECK(st[i] == i + 1);
}

TEST_CASE("trainer: resumed with another grad_accum, the data continues where it stopped") {
  // 4 steps of 2 micro-batches, then 2 more of 1: micro-batches 0-7, then 8 and 9 (not 4 and 5
  // again); the token axis counts the tokens seen, 10 micro-batches of 4 x 32.
  fs::path out = scratch_dir("resume_accum");
  TrainOptions quiet;
  quiet.quiet = true;
  const auto run = [&](int64_t steps) { return with(tiny_overrides(out, "a", steps), "train.warmup_steps", "2"); };
  TrainOutcome a = train(parse_config("", with(run(4), "train.grad_accum", "2")), quiet);
  CHECK(load_checkpoint(a.checkpoint_path).data_cursor == std::vector<int64_t>{8});
  TrainOutcome b = train(parse_config("", with(run(6), "run.resume", a.checkpoint_path)), quiet);
  CHECK(b.steps_done == 6);
  CHECK(load_checkpoint(b.checkpoint_path).data_cursor == std::vector<int64_t>{10});
  const std::vector<int64_t> tokens = h5::File::open(b.results_path).read<int64_t>("metrics/tokens");
  REQUIRE(tokens.size() == 6);
  CHECK(tokens[3] == 8 * 4 * 32);
  CHECK(tokens[5] == 10 * 4 * 32);
}

TEST_CASE("trainer: a diverging run stops at a non-finite loss, names the step, keeps the checkpoint") {
  fs::path out = scratch_dir("nan");
  std::vector<std::string> ov = tiny_overrides(out, "nan", 20);
  ov = with(ov, "train.lr", "1e30");
  ov = with(ov, "train.warmup_steps", "0");
  ov = with(ov, "train.grad_clip", "0");
  ov = with(ov, "train.weight_decay", "0");
  ov = with(ov, "train.checkpoint_every", "1");
  TrainOptions o;
  o.quiet = true;
  std::string msg;
  try {
    train(parse_config("", ov), o);
  } catch (const TrainingError& e) {
    msg = e.what();
  }
  MESSAGE(msg);
  REQUIRE(!msg.empty());
  CHECK(msg.find("non-finite") != std::string::npos);
  CHECK(msg.find("at step ") != std::string::npos);
  const fs::path ckpt = out / "t" / "nan.ckpt.h5";
  CHECK(fs::exists(ckpt));
  CHECK_NOTHROW(load_checkpoint(ckpt.string()));  // the last good checkpoint is intact
  h5::File f = h5::File::open((out / "t" / "nan.h5").string());
  CHECK(f.exists("events"));
}

TEST_CASE("trainer: bad inputs are refused with a message naming them") {
  fs::path out = scratch_dir("bad");
  TrainOptions o;
  o.quiet = true;
  auto ov = with(tiny_overrides(out, "x", 10), "data.path", "/nonexistent/corpus.txt");
  CHECK_THROWS_WITH(train(parse_config("", ov), o), doctest::Contains("/nonexistent/corpus.txt"));
  ov = with(tiny_overrides(out, "x", 10), "run.resume", "/nonexistent/ckpt.h5");
  CHECK_THROWS_WITH(train(parse_config("", ov), o), doctest::Contains("/nonexistent/ckpt.h5"));
  // the CLI: two config files, a missing one, an unknown option
  auto cli_error = [&](const std::string& args) {
    const fs::path log = out / "cli.log";
    const std::string cmd = std::string(HYSIM_BIN) + " train " + args + " > " + log.string() + " 2>&1";
    CHECK(std::system(cmd.c_str()) != 0);
    std::ifstream in(log);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  CHECK(cli_error("-c a.ini -c b.ini").find("-c given twice (a.ini, b.ini)") != std::string::npos);
  CHECK(cli_error("-c /nonexistent/run.ini").find("config file /nonexistent/run.ini does not exist") !=
        std::string::npos);
  CHECK(cli_error("--frobnicate").find("unknown option --frobnicate") != std::string::npos);
  // run.device = cuda where the binary or the machine has no GPU: refused naming the key and
  // the reason, before anything is written (a CUDA build on a GPU machine trains instead).
  ov = with(tiny_overrides(out, "on_gpu", 10), "run.device", "cuda");
  try {
    train(parse_config("", ov), o);
  } catch (const std::runtime_error& e) {
    MESSAGE(std::string(e.what()));
    CHECK(std::string(e.what()).rfind("run.device = cuda: ", 0) == 0);
    CHECK(!fs::exists(out / "t" / "on_gpu.h5"));
  }
}

TEST_CASE("trainer: WSDS main run saves stable checkpoints; a branch decays from one to min lr") {
  fs::path out = scratch_dir("wsds");
  TrainOptions o;
  o.quiet = true;
  auto ov = tiny_overrides(out, "main", 20);
  ov = with(ov, "train.schedule", "wsds");
  ov = with(ov, "train.wsds_decays", "0.5,1.0");
  ov = with(ov, "train.decay_fraction", "0.2");
  Config main_cfg = parse_config("", ov);
  train(main_cfg, o);
  const std::string stable10 = stable_checkpoint_path(main_cfg, 10);
  REQUIRE(fs::exists(stable10));
  CHECK(fs::exists(stable_checkpoint_path(main_cfg, 20)));
  // The main run never decays: its lr stays at the peak after warmup.
  std::vector<double> lr_main = h5::File::open(run_results_path(main_cfg)).read<double>("metrics/lr");
  CHECK(lr_main.back() == doctest::Approx(3e-3));

  auto bov = with(with(with(ov, "train.wsds_branch", "0"), "run.name", "main_b0"), "run.resume", stable10);
  Config bcfg = parse_config("", bov);
  TrainOutcome b = train(bcfg, o);
  CHECK(b.steps_done > 10);
  std::vector<double> lr_b = h5::File::open(run_results_path(bcfg)).read<double>("metrics/lr");
  CHECK(lr_b.back() == doctest::Approx(3e-4));  // min_lr_ratio 0.1 at the branch's last step
  // Resuming branch 0 from the wrong stable point is refused, naming the right checkpoint.
  bov = with(bov, "run.resume", stable_checkpoint_path(main_cfg, 20));
  CHECK_THROWS_WITH(train(parse_config("", bov), o), doctest::Contains(".stable10.ckpt.h5, not from a checkpoint of step 20"));
}

TEST_CASE("expressivity: a small grid runs, writes the summary, and a re-run recomputes nothing") {
  fs::path out = scratch_dir("grid");
  const std::string cmd = std::string(HYSIM_BIN) + " expressivity --model.d_model=16 --model.d_mlp=32 " +
                          "--model.n_heads=2 --model.n_kv_heads=2 --model.d_head=8 --model.gdn_n_heads=2 " +
                          "--model.gdn_n_v_heads=2 --model.gdn_d_head_k=8 --model.gdn_d_head_v=8 " +
                          "--model.vocab_size=16 --train.steps=3 --train.warmup_steps=1 --train.batch_size=2 " +
                          "--model.pattern=G " +  // a key the presets set: each preset's value wins in its column
                          "--train.seq_len=16 --train.eval_every=0 --grid.architectures=transformer,gdn " +
                          "--data.source=parity --grid.tasks=parity,modadd,modadd '--grid.task_args=-;m=3' --grid.seeds=1 " +
                          "--grid.jobs=2 --grid.length_multipliers=1,2 " +
                          "--run.experiment=g --run.out_dir=" + out.string() + " > " + (out / "log").string() + " 2>&1";
  REQUIRE(std::system(cmd.c_str()) == 0);
  h5::File f = h5::File::open((out / "g" / "expressivity.h5").string());
  Shape shape;
  std::vector<double> acc = f.read<double>("accuracy", &shape);
  CHECK(shape == Shape{2, 3, 1, 2});  // architecture, task, seed, length
  for (double a : acc) CHECK((a >= 0.0 && a <= 1.0));
  CHECK(f.read<int64_t>("lengths") == std::vector<int64_t>{16, 32});
  // the same task with other arguments is another column, named by them
  CHECK(f.read_strings("tasks") == std::vector<std::string>{"parity", "modadd-m3", "modadd"});
  CHECK(f.read_strings("task_args") == std::vector<std::string>{"", "m=3", ""});
  const std::vector<double> chance = f.read<double>("chance");
  REQUIRE(chance.size() == 3);
  CHECK(chance[0] == 0.5);
  CHECK(chance[1] == doctest::Approx(1.0 / 3));
  CHECK(chance[2] == doctest::Approx(0.2));
  CHECK(fs::exists(out / "g-cells" / "gdn__modadd-m3__s0.h5"));
  const std::string transformer_config = h5::File::open((out / "g-cells" / "transformer__parity__s0.h5").string())
                                             .attr_string("config");
  CHECK(transformer_config.find("pattern = A\n") != std::string::npos);
  REQUIRE(std::system(cmd.c_str()) == 0);
  std::ifstream log(out / "log");
  std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  CHECK(text.find("6 already done") != std::string::npos);
  // a grid whose columns cannot be told apart, or with arguments for more tasks than it names
  auto grid_error = [&](const std::string& grid) {
    const std::string c = std::string(HYSIM_BIN) + " expressivity --run.out_dir=" + out.string() + " " + grid + " > " +
                          (out / "err").string() + " 2>&1";
    CHECK(std::system(c.c_str()) != 0);
    std::ifstream in(out / "err");
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  CHECK(grid_error("--grid.architectures=gdn --grid.tasks=modadd,modadd '--grid.task_args=m=3;m=3'")
            .find("task 'modadd-m3' appears twice") != std::string::npos);
  CHECK(grid_error("--grid.architectures=gdn --grid.tasks=parity '--grid.task_args=-;m=3'")
            .find("gives arguments for 2 tasks but grid.tasks names 1") != std::string::npos);
  CHECK(grid_error("--grid.architectures=gdn --grid.tasks=mqar --grid.task_args=n_pairz=3").find("n_pairz") !=
        std::string::npos);
}
