#include "core/distributed.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <thread>

namespace hysim {

namespace fs = std::filesystem;

namespace {

const char* lookup(const EnvLookup& env, const char* name) { return env ? env(name) : std::getenv(name); }

int env_int(const EnvLookup& env, const char* name) {
  const char* v = lookup(env, name);
  char* end = nullptr;
  errno = 0;
  const long x = v && *v ? std::strtol(v, &end, 10) : 0;
  if (!v || !*v || *end != '\0' || errno != 0 || x < 0 || x > 1 << 20)
    throw std::runtime_error(std::string("environment: ") + name + "=" + (v ? v : "") +
                             " is not a non-negative integer");
  return int(x);
}

// The first of the launchers' variable sets that is present.
struct EnvScheme {
  const char *rank, *size, *local_rank;
};
constexpr EnvScheme kSchemes[] = {
    {"RANK", "WORLD_SIZE", "LOCAL_RANK"},
    {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
    {"SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID"},
};

volatile sig_atomic_t g_launch_signal = 0;  // a signal the launcher received (launch)

}  // namespace

WorldInfo world_from_env(const EnvLookup& env) {
  for (const EnvScheme& s : kSchemes) {
    const bool has_rank = lookup(env, s.rank), has_size = lookup(env, s.size);
    if (!has_rank && !has_size) continue;
    // srun in a batch script sets SLURM_PROCID without a step's task count: one process.
    if (std::string(s.rank) == "SLURM_PROCID" && !has_size) continue;
    if (!has_rank || !has_size)
      throw std::runtime_error(std::string("environment: ") + (has_rank ? s.rank : s.size) + " is set but " +
                               (has_rank ? s.size : s.rank) + " is not: both or neither");
    WorldInfo w;
    w.rank = env_int(env, s.rank);
    w.size = env_int(env, s.size);
    if (w.size < 1) throw std::runtime_error(std::string("environment: ") + s.size + "=0: need at least one process");
    if (w.rank >= w.size)
      throw std::runtime_error(std::string("environment: ") + s.rank + "=" + std::to_string(w.rank) +
                               " is not below " + s.size + "=" + std::to_string(w.size));
    w.local_rank = lookup(env, s.local_rank) ? env_int(env, s.local_rank) : w.rank;
    w.source = std::string(s.rank) + "/" + s.size;
    return w;
  }
  return {};
}

std::string rendezvous_path(const WorldInfo& w, const std::string& fallback_dir, const EnvLookup& env) {
  if (const char* p = lookup(env, "HYSIM_RENDEZVOUS"); p && *p) return p;
  const char* job = lookup(env, "SLURM_JOB_ID");
  const char* step = lookup(env, "SLURM_STEP_ID");
  if (job && step && *job && *step)
    return (fs::path(fallback_dir) / ".rendezvous" / ("slurm-" + std::string(job) + "." + step)).string();
  if (!w.distributed()) return "";
  throw std::runtime_error("data parallel (" + w.source + ", " + std::to_string(w.size) +
                           " processes): set HYSIM_RENDEZVOUS to a fresh file path that every rank can read "
                           "(`hysim launch` sets it; under srun the job and step ids name one)");
}

std::vector<char> exchange_through_file(const WorldInfo& w, const std::string& path, const std::vector<char>& payload,
                                        double timeout_s) {
  if (w.leader()) {
    if (fs::exists(path))
      throw std::runtime_error("rendezvous file " + path +
                               " already exists (left by another launch?): remove it or use a fresh path");
    const fs::path p(path);
    if (p.has_parent_path()) fs::create_directories(p.parent_path());
    const std::string tmp = path + ".tmp" + std::to_string(::getpid());
    {
      std::ofstream f(tmp, std::ios::binary);
      f.write(payload.data(), std::streamsize(payload.size()));
      if (!f.good()) throw std::runtime_error("rendezvous: cannot write " + tmp);
    }
    fs::rename(tmp, path);
    return payload;
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    if (fs::exists(path)) {
      std::ifstream f(path, std::ios::binary);
      std::vector<char> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      if (!data.empty()) return data;
    }
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > timeout_s)
      throw std::runtime_error("rank " + std::to_string(w.rank) + ": no rendezvous file " + path + " after " +
                               std::to_string(int(timeout_s)) + " s (did rank 0 start, with the same path?)");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

int launch(int gpus, const std::vector<std::string>& command, const std::string& rendezvous_dir) {
  if (gpus < 1) throw std::runtime_error("hysim launch: --gpus must be >= 1");
  if (command.empty()) throw std::runtime_error("hysim launch: no command to run");
  const fs::path dir = rendezvous_dir.empty() ? fs::temp_directory_path() : fs::path(rendezvous_dir);
  fs::create_directories(dir);
  const auto now = std::chrono::system_clock::now().time_since_epoch().count();
  const std::string rdzv =
      (dir / ("hysim-rendezvous-" + std::to_string(::getpid()) + "-" + std::to_string(now))).string();

  std::vector<char*> argv;
  for (const std::string& a : command) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  // A SIGTERM / SIGINT sent to the launcher alone (a scheduler cancelling the job) is passed
  // on to every rank: caught from before the first fork, so that none is orphaned.
  g_launch_signal = 0;
  struct sigaction on_signal {}, old_term {}, old_int {};
  on_signal.sa_handler = [](int sig) { g_launch_signal = sig; };
  sigemptyset(&on_signal.sa_mask);
  ::sigaction(SIGTERM, &on_signal, &old_term);
  ::sigaction(SIGINT, &on_signal, &old_int);
  const auto restore_signals = [&] {
    ::sigaction(SIGTERM, &old_term, nullptr);
    ::sigaction(SIGINT, &old_int, nullptr);
  };
  std::vector<pid_t> pids;
  for (int r = 0; r < gpus; ++r) {
    const pid_t pid = ::fork();
    if (pid < 0) {  // stop the ranks already started: they would wait for this one forever
      const std::string err = std::strerror(errno);
      for (pid_t p : pids) ::kill(p, SIGTERM);
      for (pid_t p : pids) ::waitpid(p, nullptr, 0);
      restore_signals();
      throw std::runtime_error("hysim launch: fork failed for rank " + std::to_string(r) + ": " + err);
    }
    if (pid == 0) {
      ::signal(SIGTERM, SIG_DFL);  // the parent's handlers, if any, are not the child's (until exec)
      ::signal(SIGINT, SIG_DFL);
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(gpus).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(gpus).c_str(), 1);
      ::setenv("HYSIM_RENDEZVOUS", rdzv.c_str(), 1);
      ::execvp(argv[0], argv.data());
      std::fprintf(stderr, "hysim launch: cannot run %s: %s\n", argv[0], std::strerror(errno));
      std::_Exit(127);
    }
    pids.push_back(pid);
  }
  // Wait for every rank; the first failure stops the rest (they would wait forever in a
  // collective for the one that is gone). Polled, so that a signal arriving at any moment
  // is passed on within 20 ms.
  int result = 0, running = gpus;
  bool forwarded = false;
  while (running > 0) {
    if (g_launch_signal != 0 && !forwarded) {
      forwarded = true;
      std::fprintf(stderr, "hysim launch: signal %d; passing it to the ranks\n", int(g_launch_signal));
      for (pid_t p : pids)
        if (p > 0) ::kill(p, g_launch_signal);
    }
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid == 0 || (pid < 0 && errno == EINTR)) {
      ::usleep(20000);
      continue;
    }
    if (pid < 0) break;
    int rank = -1;
    for (int r = 0; r < gpus; ++r)
      if (pids[size_t(r)] == pid) rank = r, pids[size_t(r)] = 0;
    if (rank < 0) continue;
    --running;
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (code != 0 && result == 0) {
      result = code;
      std::fprintf(stderr, "hysim launch: rank %d %s %d; stopping the other ranks\n", rank,
                   WIFEXITED(status) ? "exited with status" : "was killed by signal",
                   WIFEXITED(status) ? code : WTERMSIG(status));
      for (pid_t p : pids)
        if (p > 0) ::kill(p, SIGTERM);
    }
  }
  restore_signals();
  std::error_code ec;
  fs::remove(rdzv, ec);  // normally removed by rank 0 once every rank has read it
  if (result == 0 && g_launch_signal != 0) result = 128 + int(g_launch_signal);
  return result;
}

}  // namespace hysim
