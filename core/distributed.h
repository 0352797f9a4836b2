// Data-parallel runs, the host side (DESIGN.md, GPUs): which process this is, how the
// processes find each other, and `hysim launch`, which starts them. No NCCL here (the
// CUDA backend's communicator, core/cuda/nccl_comm.h, is built on these).
//
// One process per GPU. Each learns its place from the environment, so that `mpirun`,
// `srun`, torchrun-style launchers and `hysim launch --gpus N` all start the same program:
//   RANK / WORLD_SIZE / LOCAL_RANK                       (hysim launch, torchrun)
//   OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK           (Open MPI's mpirun)
//   SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID  (srun; a batch script outside srun is one process)
// The first set present wins. The NCCL unique id travels through a file that every rank
// can read (a shared path works across the nodes of a cluster): rank 0 writes it
// atomically, the others wait for it.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace hysim {

struct WorldInfo {
  int rank = 0, size = 1, local_rank = 0;
  std::string source = "single process";  // which variables said so
  bool distributed() const { return size > 1; }
  bool leader() const { return rank == 0; }  // writes results, checkpoints and progress
};

using EnvLookup = std::function<const char*(const char*)>;  // getenv by default; tests pass a map
// Throws std::runtime_error naming the variable for a value that is not an integer, a
// rank outside [0, size), or a rank without its size.
WorldInfo world_from_env(const EnvLookup& env = {});

// The file through which rank 0 hands out the NCCL id: $HYSIM_RENDEZVOUS when set (hysim
// launch sets a fresh one), else under srun <fallback_dir>/.rendezvous/slurm-<job>.<step>.
// Throws, saying what to set, when a multi-process world has neither.
std::string rendezvous_path(const WorldInfo& w, const std::string& fallback_dir, const EnvLookup& env = {});

// Rank 0 writes `payload` to `path` (a temporary name, then rename: never seen half
// written) and returns it; every other rank waits up to timeout_s for the file and returns
// its contents. Rank 0 refuses a file that already exists (another launch's: a stale id
// would hang the new one). Throws naming the path on a timeout or an I/O error.
std::vector<char> exchange_through_file(const WorldInfo& w, const std::string& path, const std::vector<char>& payload,
                                        double timeout_s = 300);

// `hysim launch`: starts `command` (argv; argv[0] found on PATH) `gpus` times with RANK,
// WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and HYSIM_RENDEZVOUS (a fresh file in
// rendezvous_dir, removed at the end) set, waits for all of them and returns 0 when every
// rank succeeded. When one rank fails, the others are stopped (SIGTERM) and its status
// is returned (128 + signal for a signal), after a line naming the rank. A SIGTERM or
// SIGINT sent to the launcher is passed on to every rank.
int launch(int gpus, const std::vector<std::string>& command, const std::string& rendezvous_dir = "");

}  // namespace hysim
