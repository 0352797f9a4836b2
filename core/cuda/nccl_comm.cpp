#include "core/cuda/nccl_comm.h"

#include <nccl.h>

#include <cstring>
#include <string>
#include <filesystem>
#include <exception>
#include <stdexcept>
#include <vector>

#include "core/cuda/check.h"

namespace hysim::cuda {

namespace {

void check_nccl(ncclResult_t r, const char* call, int rank, const std::string& what = {}) {
  if (r != ncclSuccess && r != ncclInProgress)
    throw std::runtime_error(std::string(call) + " failed on rank " + std::to_string(rank) + ": " +
                             ncclGetErrorString(r) + (what.empty() ? "" : " (" + what + ")") +
                             (r == ncclSystemError || r == ncclRemoteError ? "; NCCL_DEBUG=WARN says more" : ""));
}
#define NCCL_CHECK(call, ...) check_nccl((call), #call, world_.rank __VA_OPT__(, ) __VA_ARGS__)

ncclComm_t as_comm(void* c) { return static_cast<ncclComm_t>(c); }

}  // namespace

int local_device(const WorldInfo& world) {
  const int n = device_count();
  if (n == 0) throw std::runtime_error("no CUDA device is visible (driver missing or no GPU)");
  // One visible GPU: the scheduler bound one to each task (Slurm's --gpus-per-task). Several:
  // the local rank picks one, and a rank past them would share a GPU, which NCCL refuses.
  if (n == 1) return 0;
  if (world.local_rank >= n)
    throw std::runtime_error("local rank " + std::to_string(world.local_rank) + " but only " + std::to_string(n) +
                             " GPUs are visible on this node: start at most one rank per GPU");
  return world.local_rank;
}

NcclComm::NcclComm(Context& ctx, const WorldInfo& world, const std::string& rendezvous_file)
    : ctx_(ctx), world_(world) {
  ncclUniqueId id{};
  std::vector<char> bytes(sizeof id);
  if (world_.leader()) {
    NCCL_CHECK(ncclGetUniqueId(&id));
    std::memcpy(bytes.data(), &id, sizeof id);
  }
  bytes = exchange_through_file(world_, rendezvous_file, bytes);
  if (bytes.size() != sizeof id)
    throw std::runtime_error("rendezvous file " + rendezvous_file + " holds " + std::to_string(bytes.size()) +
                             " bytes, not an NCCL id (" + std::to_string(sizeof id) + ")");
  std::memcpy(&id, bytes.data(), sizeof id);
  CUDA_CHECK(cudaSetDevice(ctx_.device));
  ncclComm_t c = nullptr;
  NCCL_CHECK(ncclCommInitRank(&c, world_.size, id, world_.rank), "world " + std::to_string(world_.size));
  comm_ = c;
  CUDA_CHECK(cudaMalloc(&dev_sum_, 64 * sizeof(double)));
  // Every rank has read the id once the (collective) init returned: the file can go.
  if (world_.leader()) {
    std::error_code ec;
    std::filesystem::remove(rendezvous_file, ec);
  }
}

NcclComm::~NcclComm() {
  // Unwinding from an error: the other ranks may never join the queued collectives, which
  // ncclCommDestroy would wait for; abort lets this rank exit (and the launcher stop the rest).
  if (comm_) (std::uncaught_exceptions() > 0 ? ncclCommAbort : ncclCommDestroy)(as_comm(comm_));
  if (dev_sum_) cudaFree(dev_sum_);
}

void NcclComm::reduce_scatter_mean(float* buf, int64_t shard) {
  NCCL_CHECK(ncclReduceScatter(buf, buf + int64_t(world_.rank) * shard, size_t(shard), ncclFloat32, ncclAvg,
                               as_comm(comm_), ctx_.stream),
             shape_str("shard", shard));
}

void NcclComm::all_gather(bf16* buf, int64_t shard) {
  NCCL_CHECK(ncclAllGather(buf + int64_t(world_.rank) * shard, buf, size_t(shard), ncclBfloat16, as_comm(comm_),
                           ctx_.stream),
             shape_str("shard", shard));
}

void NcclComm::all_gather(float* buf, int64_t shard) {
  NCCL_CHECK(ncclAllGather(buf + int64_t(world_.rank) * shard, buf, size_t(shard), ncclFloat32, as_comm(comm_),
                           ctx_.stream),
             shape_str("shard", shard));
}

void NcclComm::sum(double* values, int n) {
  if (n > 64) throw std::invalid_argument("NcclComm::sum: at most 64 values at once");
  CUDA_CHECK(cudaMemcpyAsync(dev_sum_, values, size_t(n) * sizeof(double), cudaMemcpyHostToDevice, ctx_.stream));
  NCCL_CHECK(ncclAllReduce(dev_sum_, dev_sum_, size_t(n), ncclFloat64, ncclSum, as_comm(comm_), ctx_.stream));
  CUDA_CHECK(cudaMemcpyAsync(values, dev_sum_, size_t(n) * sizeof(double), cudaMemcpyDeviceToHost, ctx_.stream));
  ctx_.sync();
}

}  // namespace hysim::cuda
