// The whole training step of a model on one GPU, as `hysim train --run.device=cuda` runs
// it (the CUDA TrainBackend: forward, fused LM head + loss, backward, clip + AdamW), with
// the hardware limit measured in the same process:
//   MFU = model FLOPs per step / (step time x bf16 GEMM peak)
// where model FLOPs = 3 x the exact forward FLOPs of layers/model.h (model_forward_flops:
// every GEMM, attention/GDN mixing, norms) and the peak is cuBLASLt's bf16 8192^3 GEMM,
// timed here. Peak device memory (cudaMemGetInfo, all of the process's allocations: the
// arenas, the cuBLASLt workspace and the CUDA context) is printed next to `hysim info`'s
// estimate for the same config and batch.
//
//   bench_gpu_model [config.ini, default experiments/configs/olmo_hybrid_1b.ini]
//                   [--section.key=value ...] [--steps=N]
// Prints a table and `RESULT model_step <tokens/s> <step ms> <MFU> <peak GiB>` for
// bench/gpu/model_peer.py --ours.
//
// Data parallel: started by `hysim launch --gpus N build/gpu/bench_gpu_model ...`, each
// rank runs the step on its GPU (ZeRO-1, NCCL); rank 0 prints tokens/s over all ranks,
// MFU per GPU, and its own memory next to the estimate for N ranks with ZeRO-1.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench/gpu/bench_common.h"
#include "core/config.h"
#include "core/cuda/nccl_comm.h"
#include "core/distributed.h"
#include "core/cuda/gemm.h"
#include "core/cuda/phase_timer.h"
#include "core/rng.h"
#include "core/train_backend.h"
#include "scaling/accounting.h"

using namespace hysim;
using namespace hysim::cuda;
using namespace hysim::cuda::bench;

static double used_gib() {
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return double(total_b - free_b) / double(1ull << 30);
}

// cuBLASLt bf16 GEMM throughput at 8192^3 (TFLOP/s), the MFU denominator.
static double gemm_peak_tflops(int device) {
  const int64_t S = 8192;
  Context ctx(size_t(64) << 20, device);
  DeviceArena arena(size_t(3 * S * S * 2 + (64 << 20)), "gemm peak");
  cuda::bf16 *x = random_bf16(ctx, arena, S * S, 1, 1.0), *W = random_bf16(ctx, arena, S * S, 2, 0.01);
  cuda::bf16* y = arena.alloc<cuda::bf16>(S * S);
  const double ms = median_ms(ctx, [&] { linear_forward<cuda::bf16, cuda::bf16>(ctx, y, x, W, S, S, S); }, 5, 20);
  return 2.0 * double(S) * S * S / ms / 1e9;
}

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // lines reach a redirected log as they come
  if (device_count() == 0) {
    std::printf("SKIP: no CUDA device\n");
    return 0;
  }
  std::string path = "experiments/configs/olmo_hybrid_1b.ini";
  std::vector<std::string> overrides;
  int steps = 6;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--steps=", 0) == 0) steps = std::atoi(a.c_str() + 8);
    else if (a.rfind("--", 0) == 0) overrides.push_back(a);
    else path = a;
  }
  const Config cfg = parse_config(path, overrides);
  const ModelConfig& mc = cfg.model;
  const int64_t B = cfg.train.batch_size, T = cfg.train.seq_len;
  const WorldInfo world = world_from_env();
  const int device = local_device(world);
  if (!world.leader()) std::freopen("/dev/null", "w", stdout);  // rank 0 reports
  std::printf("device: %s\n", device_summary(device).c_str());
  std::printf("config: %s, pattern %s x %lld layers, d_model %lld, batch %lld x %lld per GPU, %d GPU(s)%s\n",
              path.c_str(), mc.pattern.c_str(), (long long)mc.n_layers, (long long)mc.d_model, (long long)B,
              (long long)T, world.size, cfg.train.activation_checkpointing ? ", activation checkpointing" : "");

  const double peak = gemm_peak_tflops(device);
  std::printf("bf16 GEMM peak (cuBLASLt 8192^3, this run): %.1f TFLOP/s\n", peak);

  const double base_gib = used_gib();  // the CUDA context and the other processes' share
  AdamWConfig ac;
  std::unique_ptr<TrainBackend> model;
  try {
    CudaOptions o;
    o.world = world;
    o.rendezvous_file = rendezvous_path(world, "results");
    o.activation_checkpointing = cfg.train.activation_checkpointing;
    model = make_cuda_backend(mc, ac, B, T, 0, o);
  } catch (const std::exception& e) {
    std::printf("does not fit: %s\n", e.what());
    std::printf("RESULT model_step 0 0 0 0\n");
    return 0;
  }
  Batch batch;
  batch.resize(B, T);
  CounterRng r(5, 9);
  for (int64_t i = 0; i < B * T; ++i) {
    batch.tokens[i] = int32_t(r.uniform(2 * i) * double(mc.vocab_size)) % int32_t(mc.vocab_size);
    batch.targets[i] = int32_t(r.uniform(2 * i + 1) * double(mc.vocab_size)) % int32_t(mc.vocab_size);
    batch.loss_mask[i] = 1.f;
  }
  auto step = [&] {
    model->zero_grad();
    model->forward_backward(batch, cfg.train.z_loss, true);
    return model->update(1e-4, 1.0);  // synchronizes (the gradient norm)
  };
  step();
  step();
  std::vector<double> ms;
  for (int i = 0; i < steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    step();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  const double step_ms = ms[ms.size() / 2];
  const double peak_gib = used_gib() - base_gib;
  const double flops = 3.0 * double(model_forward_flops(mc, B, T));
  const double tok_s = double(world.size * B * T) / (step_ms / 1e3);  // all ranks
  const double mfu = flops / (step_ms / 1e3) / (peak * 1e12);

  MemoryOptions mo;
  mo.micro_batch = B;
  mo.data_parallel = world.size;
  mo.zero1 = world.distributed();
  mo.activation_checkpointing = cfg.train.activation_checkpointing;
  mo.seq_len = T;
  const MemoryEstimate est = estimate_memory(mc, mo);
  const double est_gib = est.total() / double(1ull << 30);

  std::printf("%-36s %12lld\n", "parameters", (long long)model->n_params());
  std::printf("%-36s %12.1f  (median of %d)\n", "step ms", step_ms, steps);
  std::printf("%-36s %12.0f\n", "tokens/s", tok_s);
  std::printf("%-36s %12.1f\n", "model TFLOP/s (3 x forward FLOPs)", flops / (step_ms / 1e3) / 1e12);
  std::printf("%-36s %11.1f%%\n", "MFU (of the measured GEMM peak)", 100 * mfu);
  std::printf("%-36s %12.2f GiB\n", "device memory used", peak_gib);
  std::printf("%-36s %12.2f GiB  (params %.2f, grads %.2f, optimizer %.2f, activations %.2f)\n",
              "hysim info estimate", est_gib, est.params / double(1ull << 30), est.grads / double(1ull << 30),
              est.optimizer / double(1ull << 30), est.activations / double(1ull << 30));
  std::printf("%-36s %+11.1f%%\n", "measured vs estimate", 100 * (peak_gib / est_gib - 1));
  std::printf("RESULT model_step %.1f %.3f %.4f %.3f\n", tok_s, step_ms, mfu, peak_gib);

  // Where the time goes: one more step with the phase spans on (CUDA events between phases;
  // the step's own time is the sum of the top-level spans plus host gaps).
  PhaseTimer::global().enable(true);
  step();
  PhaseTimer::global().enable(false);
  std::printf("\n%-46s %9s %7s %6s\n", "phase (one step, spans nest)", "ms", "% step", "calls");
  for (const PhaseTotal& t : PhaseTimer::global().collect())
    std::printf("%-46s %9.1f %6.1f%% %6d\n", t.name.c_str(), t.ms, 100 * t.ms / step_ms, t.count);
  return 0;
}
