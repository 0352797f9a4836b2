// The data-parallel communicator of the CUDA backend: one NCCL communicator over the
// ranks of core/distributed.h, its collectives ordered on the context's stream.
// ZeRO-1 (DESIGN.md, GPUs) needs three: the gradient reduce-scatter (mean over ranks)
// into each rank's shard, the bf16 weights' all-gather from the shards after the
// optimizer step, and small sums (loss, gradient norm, evaluation counts).
#pragma once
#include <cstdint>
#include <string>

#include "core/cuda/context.h"
#include "core/cuda/convert.h"
#include "core/distributed.h"

namespace hysim::cuda {

class NcclComm {
 public:
  // Collective over every rank of `world`: rank 0 creates the NCCL id and hands it out
  // through the rendezvous file (removed again once all ranks hold the communicator).
  NcclComm(Context& ctx, const WorldInfo& world, const std::string& rendezvous_file);
  ~NcclComm();
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  const WorldInfo& world() const { return world_; }

  // buf[rank * shard .. (rank + 1) * shard) = mean over ranks of buf[that range]
  // (in place: buf holds world.size * shard floats; the rest of buf is left undefined).
  void reduce_scatter_mean(float* buf, int64_t shard);
  // Every rank's shard buf[r * shard ..) copied to all ranks (in place, world.size * shard elements).
  void all_gather(bf16* buf, int64_t shard);
  void all_gather(float* buf, int64_t shard);
  // Host values summed over ranks (in place); synchronizes.
  void sum(double* values, int n);

 private:
  Context& ctx_;
  WorldInfo world_;
  void* comm_ = nullptr;  // ncclComm_t (nccl.h stays out of this header)
  double* dev_sum_ = nullptr;
};

// The GPU this rank should use: its local rank among the visible devices.
int local_device(const WorldInfo& world);

}  // namespace hysim::cuda
