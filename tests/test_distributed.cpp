// Data-parallel process placement (core/distributed.h): the launchers' environment
// variables, the rendezvous file, `hysim launch` starting and stopping ranks, and the
// trainer refusing a multi-process CPU run. The NCCL side runs on GPUs
// (tests/test_cuda_data_parallel.cpp).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>

#include "core/config.h"
#include "core/distributed.h"
#include "core/trainer.h"

using namespace hysim;
namespace fs = std::filesystem;

namespace {

EnvLookup env_of(const std::map<std::string, std::string>& m) {
  return [m](const char* name) -> const char* {
    auto it = m.find(name);
    return it == m.end() ? nullptr : it->second.c_str();
  };
}

fs::path fresh_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("hysim_test_distributed_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string read_file(const fs::path& p) {
  std::ifstream f(p);
  std::string s;
  std::getline(f, s);
  return s;
}

}  // namespace

TEST_CASE("world_from_env: each launcher's variables, and clear errors") {
  const WorldInfo none = world_from_env(env_of({}));
  CHECK(none.size == 1);
  CHECK(none.rank == 0);
  CHECK_FALSE(none.distributed());

  const WorldInfo t = world_from_env(env_of({{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}}));
  CHECK(t.rank == 3);
  CHECK(t.size == 4);
  CHECK(t.local_rank == 1);
  CHECK(t.distributed());
  CHECK_FALSE(t.leader());
  CHECK(world_from_env(env_of({{"RANK", "2"}, {"WORLD_SIZE", "4"}})).local_rank == 2);  // one node

  const WorldInfo o = world_from_env(env_of(
      {{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}}));
  CHECK(o.rank == 1);
  CHECK(o.size == 2);
  CHECK(o.source == "OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE");

  const WorldInfo s = world_from_env(
      env_of({{"SLURM_PROCID", "5"}, {"SLURM_STEP_NUM_TASKS", "8"}, {"SLURM_LOCALID", "1"}, {"SLURM_NTASKS", "8"}}));
  CHECK(s.rank == 5);
  CHECK(s.size == 8);
  CHECK(s.local_rank == 1);
  // A batch script outside srun: SLURM_PROCID without a step's task count is one process.
  CHECK(world_from_env(env_of({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "8"}})).size == 1);
  // The explicit RANK/WORLD_SIZE win over the scheduler's.
  CHECK(world_from_env(env_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"SLURM_PROCID", "7"},
                               {"SLURM_STEP_NUM_TASKS", "8"}}))
            .size == 2);

  CHECK_THROWS_WITH_AS(world_from_env(env_of({{"RANK", "x"}, {"WORLD_SIZE", "2"}})),
                       doctest::Contains("RANK=x is not a non-negative integer"), std::runtime_error);
  CHECK_THROWS_WITH_AS(world_from_env(env_of({{"RANK", "2"}, {"WORLD_SIZE", "2"}})),
                       doctest::Contains("RANK=2 is not below WORLD_SIZE=2"), std::runtime_error);
  CHECK_THROWS_WITH_AS(world_from_env(env_of({{"RANK", "0"}})),
                       doctest::Contains("RANK is set but WORLD_SIZE is not"), std::runtime_error);
  CHECK_THROWS_WITH_AS(world_from_env(env_of({{"RANK", "0"}, {"WORLD_SIZE", "0"}})),
                       doctest::Contains("WORLD_SIZE=0"), std::runtime_error);
  CHECK_THROWS_WITH_AS(world_from_env(env_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "-1"}})),
                       doctest::Contains("LOCAL_RANK=-1"), std::runtime_error);
}

TEST_CASE("rendezvous_path: HYSIM_RENDEZVOUS, srun's job and step, or an error saying what to set") {
  WorldInfo two;
  two.size = 2;
  CHECK(rendezvous_path(two, "out", env_of({{"HYSIM_RENDEZVOUS", "/shared/x"}})) == "/shared/x");
  CHECK(rendezvous_path(two, "out", env_of({{"SLURM_JOB_ID", "42"}, {"SLURM_STEP_ID", "3"}})) ==
        (fs::path("out") / ".rendezvous" / "slurm-42.3").string());
  CHECK(rendezvous_path(WorldInfo{}, "out", env_of({})).empty());
  CHECK_THROWS_WITH_AS(rendezvous_path(two, "out", env_of({})), doctest::Contains("set HYSIM_RENDEZVOUS"),
                       std::runtime_error);
}

TEST_CASE("exchange_through_file: rank 0 publishes, the others read; stale files and timeouts are errors") {
  const fs::path dir = fresh_dir("exchange");
  const std::string path = (dir / "sub" / "id").string();
  WorldInfo r0, r1;
  r0.size = r1.size = 2;
  r1.rank = 1;
  const std::vector<char> id = {'n', 'c', 'c', 'l', '\0', 'i', 'd'};
  std::vector<char> got;
  std::thread follower([&] { got = exchange_through_file(r1, path, {}, 20); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the follower waits first
  CHECK(exchange_through_file(r0, path, id) == id);
  follower.join();
  CHECK(got == id);
  // A second launch on the same path: rank 0 refuses the old id.
  CHECK_THROWS_WITH_AS(exchange_through_file(r0, path, id), doctest::Contains("already exists"), std::runtime_error);
  CHECK_THROWS_WITH_AS(exchange_through_file(r1, (dir / "never").string(), {}, 0.2),
                       doctest::Contains("no rendezvous file"), std::runtime_error);
  fs::remove_all(dir);
}

TEST_CASE("hysim launch: every rank gets its variables; one failing rank stops the others") {
  const fs::path dir = fresh_dir("launch");
  const std::string cmd = std::string(HYSIM_BIN) + " launch --gpus 3 --rendezvous-dir " + (dir / "rdzv").string() +
                          " /bin/sh -c 'echo \"$RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $HYSIM_RENDEZVOUS\" > " +
                          (dir / "out.").string() + "$RANK'";
  const int rc = std::system(cmd.c_str());
  REQUIRE(WIFEXITED(rc));
  CHECK(WEXITSTATUS(rc) == 0);
  std::string rdzv;
  for (int r = 0; r < 3; ++r) {
    const std::string line = read_file(dir / ("out." + std::to_string(r)));
    const std::string want = std::to_string(r) + " 3 " + std::to_string(r) + " 3 ";
    CHECK(line.rfind(want, 0) == 0);
    const std::string path = line.substr(want.size());
    CHECK(path.rfind((dir / "rdzv").string(), 0) == 0);
    if (r == 0) rdzv = path;
    CHECK(path == rdzv);  // one rendezvous for all ranks
  }

  // Rank 1 fails at once; the others would sleep for a minute: launch stops them and
  // returns rank 1's status.
  const auto t0 = std::chrono::steady_clock::now();
  const int code = launch(3, {"/bin/sh", "-c", "if [ \"$RANK\" = 1 ]; then exit 3; fi; exec sleep 60"}, dir.string());
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(code == 3);
  CHECK(s < 20);
  CHECK(launch(2, {"/nonexistent/program"}, dir.string()) == 127);

  // A SIGTERM to the launcher alone (as a scheduler sends it) reaches the ranks: the
  // launcher returns soon with 128 + 15 instead of waiting a minute for them.
  const pid_t launcher = ::fork();
  REQUIRE(launcher >= 0);
  if (launcher == 0) std::_Exit(launch(2, {"/bin/sh", "-c", "exec sleep 60"}, dir.string()));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the ranks are running
  const auto t1 = std::chrono::steady_clock::now();
  ::kill(launcher, SIGTERM);
  int status = 0;
  ::waitpid(launcher, &status, 0);
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 128 + SIGTERM);
  CHECK(waited < 10);

  const std::string bad = std::string(HYSIM_BIN) + " launch train -c x.ini 2>/dev/null";
  const int rc_bad = std::system(bad.c_str());
  CHECK(WEXITSTATUS(rc_bad) == 1);  // --gpus missing: an error, nothing started
  fs::remove_all(dir);
}

TEST_CASE("the trainer refuses what only the CUDA backend does: several processes, activation checkpointing") {
  ::setenv("RANK", "0", 1);
  ::setenv("WORLD_SIZE", "2", 1);
  const fs::path dir = fresh_dir("cpu_dp");
  const Config cfg = parse_config("", {"--run.out_dir=" + dir.string(), "--train.steps=1", "--train.warmup_steps=0", "--data.source=parity",
                                       "--model.vocab_size=8"});
  CHECK_THROWS_WITH_AS(train(cfg, {true, {}}), doctest::Contains("RANK/WORLD_SIZE: 2 processes) needs run.device = cuda"),
                       std::runtime_error);
  ::unsetenv("RANK");
  ::unsetenv("WORLD_SIZE");
  // One process, but a setting the CPU model would silently ignore.
  const Config ck = parse_config("", {"--run.out_dir=" + dir.string(), "--train.steps=1", "--train.warmup_steps=0",
                                      "--data.source=parity", "--model.vocab_size=8",
                                      "--train.activation_checkpointing=true"});
  CHECK_THROWS_WITH_AS(train(ck, {true, {}}), doctest::Contains("train.activation_checkpointing = true: implemented by"),
                       std::runtime_error);
  fs::remove_all(dir);
}
