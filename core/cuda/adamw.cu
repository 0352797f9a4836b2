#include "core/cuda/adamw.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "core/cuda/device_util.cuh"

namespace hysim::cuda {

namespace {

constexpr int64_t kChunk = int64_t(1) << 14;  // elements per chunk (= the CPU's norm block)
constexpr int kThreads = 256;

struct Chunk {
  int64_t offset, numel;  // in the whole parameter array (grad, params)
  int decay;              // the group has weight decay
};

__global__ void sum_squares_kernel(double* __restrict__ partial, const Chunk* __restrict__ chunks,
                                   const float* __restrict__ grad, bool vec_ok) {
  const Chunk c = chunks[blockIdx.x];
  double s = 0;
  if (vec_ok && ((c.offset | c.numel) & 3) == 0) {  // 16-byte loads where the chunk allows
    const float4* g4 = reinterpret_cast<const float4*>(grad + c.offset);
    for (int64_t i = threadIdx.x; i < c.numel / 4; i += kThreads) {
      const float4 g = g4[i];
      s += double(g.x) * g.x + double(g.y) * g.y + double(g.z) * g.z + double(g.w) * g.w;
    }
  } else {
    for (int64_t i = threadIdx.x; i < c.numel; i += kThreads) {
      const double g = grad[c.offset + i];
      s += g * g;
    }
  }
  __shared__ double part[kThreads];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int off = kThreads / 2; off > 0; off >>= 1) {  // fixed tree: deterministic
    if (threadIdx.x < off) part[threadIdx.x] += part[threadIdx.x + off];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = part[0];
}

// One block of 1024 threads: contiguous ranges of chunks in order, then a fixed tree.
__global__ void ordered_sum_kernel(double* __restrict__ out, const double* __restrict__ partial, int64_t n) {
  __shared__ double part[1024];
  const int64_t per = (n + 1023) / 1024, lo = threadIdx.x * per, hi = min(n, lo + per);
  double s = 0;
  for (int64_t i = lo; i < hi; ++i) s += partial[i];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int off = 512; off > 0; off >>= 1) {
    if (threadIdx.x < off) part[threadIdx.x] += part[threadIdx.x + off];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = part[0];
}

// master, m, v hold the shard starting at parameter `lo` (a multiple of 4).
__global__ void adamw_step_kernel(float* __restrict__ master_shard, bf16* __restrict__ params,
                                  float* __restrict__ m_shard, float* __restrict__ v_shard,
                                  const float* __restrict__ grad, const Chunk* __restrict__ chunks, int64_t lo,
                                  float b1, float b2, float eps, float step_size, float inv_sqrt_bc2, float decay,
                                  float grad_scale, bool vec_ok) {
  const Chunk c = chunks[blockIdx.x];
  float* __restrict__ master = master_shard + (c.offset - lo);  // this chunk's elements, indexed from 0
  float* __restrict__ m = m_shard + (c.offset - lo);
  float* __restrict__ v = v_shard + (c.offset - lo);
  grad += c.offset;
  if (params) params += c.offset;
  const float dec = c.decay ? decay : 0.f;
  // One element's update; the same expression on both paths below.
  auto update = [&](float g, float& mi, float& vi, float& p) {
    g *= grad_scale;
    mi = b1 * mi + (1.f - b1) * g;
    vi = b2 * vi + (1.f - b2) * g * g;
    p -= dec * p;
    p -= step_size * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
  };
  if (vec_ok && ((c.offset | c.numel) & 3) == 0) {  // 16-byte accesses where the chunk allows
    for (int64_t j = threadIdx.x; j < c.numel / 4; j += kThreads) {
      const int64_t i = 4 * j;
      const float4 g = *reinterpret_cast<const float4*>(grad + i);
      float4 mi = *reinterpret_cast<const float4*>(m + i), vi = *reinterpret_cast<const float4*>(v + i),
             p = *reinterpret_cast<const float4*>(master + i);
      update(g.x, mi.x, vi.x, p.x), update(g.y, mi.y, vi.y, p.y);
      update(g.z, mi.z, vi.z, p.z), update(g.w, mi.w, vi.w, p.w);
      *reinterpret_cast<float4*>(m + i) = mi;
      *reinterpret_cast<float4*>(v + i) = vi;
      *reinterpret_cast<float4*>(master + i) = p;
      if (params) {
        *reinterpret_cast<__nv_bfloat162*>(params + i) = __floats2bfloat162_rn(p.x, p.y);
        *reinterpret_cast<__nv_bfloat162*>(params + i + 2) = __floats2bfloat162_rn(p.z, p.w);
      }
    }
  } else {
    for (int64_t i = threadIdx.x; i < c.numel; i += kThreads) {
      float mi = m[i], vi = v[i], p = master[i];
      update(grad[i], mi, vi, p);
      m[i] = mi;
      v[i] = vi;
      master[i] = p;
      if (params) params[i] = __float2bfloat16_rn(p);
    }
  }
}

bool aligned(const void* p, uintptr_t a) { return (reinterpret_cast<uintptr_t>(p) & (a - 1)) == 0; }

}  // namespace

AdamW::AdamW(Context& ctx, std::vector<ParamGroup> groups, AdamWConfig cfg, int64_t shard_lo, int64_t shard_hi)
    : groups_(std::move(groups)), cfg_(cfg) {
  if (!(cfg_.beta1 >= 0 && cfg_.beta1 < 1) || !(cfg_.beta2 >= 0 && cfg_.beta2 < 1))
    throw std::invalid_argument("AdamW (CUDA): betas must be in [0, 1)");
  for (const ParamGroup& g : groups_) {
    if (g.offset < 0 || g.numel < 0)
      throw std::invalid_argument("AdamW (CUDA): group '" + g.name + "' has negative offset or numel");
    size_ = std::max(size_, g.offset + g.numel);
  }
  if (shard_lo < 0 || shard_lo % 4 != 0 || (shard_hi >= 0 && shard_hi < shard_lo))
    throw std::invalid_argument("AdamW (CUDA): shard [" + std::to_string(shard_lo) + ", " + std::to_string(shard_hi) +
                                ") of " + std::to_string(size_) + " parameters (its start must be a multiple of 4)");
  // A shard past the parameters (a small model over many ranks: the padding's shard) is empty.
  lo_ = std::min(shard_lo, size_);
  hi_ = shard_hi < 0 ? size_ : std::clamp(shard_hi, lo_, size_);
  // Each group's part inside the shard, cut into chunks from that part's start.
  std::vector<Chunk> table;
  for (const ParamGroup& g : groups_) {
    const int64_t a = std::max(g.offset, lo_), b = std::min(g.offset + g.numel, hi_);
    for (int64_t o = a; o < b; o += kChunk) table.push_back({o, std::min(kChunk, b - o), g.weight_decay ? 1 : 0});
  }
  n_chunks_ = int64_t(table.size());
  const size_t shard_bytes = DeviceArena::round_up(size_t(hi_ - lo_) * sizeof(float));
  const size_t bytes = 3 * shard_bytes + DeviceArena::round_up(table.size() * sizeof(Chunk)) +
                       DeviceArena::round_up((table.size() + 1) * sizeof(double)) + 2 * DeviceArena::kAlign;
  arena_ = DeviceArena(bytes, "adamw");
  master_ = arena_.alloc<float>(hi_ - lo_, "adam master");
  m_ = arena_.alloc<float>(hi_ - lo_, "adam m");
  v_ = arena_.alloc<float>(hi_ - lo_, "adam v");
  chunks_ = arena_.alloc<Chunk>(int64_t(table.size()), "adam chunk table");
  partial_ = arena_.alloc<double>(int64_t(table.size()), "adam norm partial sums");
  norm_sq_ = arena_.alloc<double>(1, "adam norm");
  for (float* p : {master_, m_, v_}) CUDA_CHECK(cudaMemsetAsync(p, 0, size_t(hi_ - lo_) * sizeof(float), ctx.stream));
  if (!table.empty()) to_device(ctx, static_cast<Chunk*>(chunks_), table.data(), int64_t(table.size()));
  ctx.sync();  // the host table goes away
}

void AdamW::set_master(Context& ctx, const float* all_values) {
  to_device(ctx, master_, all_values + lo_, hi_ - lo_);
  ctx.sync();  // the caller's values may go away
}

double AdamW::grad_sq_sum(Context& ctx, const float* grad) {
  if (n_chunks_ == 0) return 0.0;
  sum_squares_kernel<<<unsigned(n_chunks_), kThreads, 0, ctx.stream>>>(partial_, static_cast<const Chunk*>(chunks_),
                                                                      grad, aligned(grad, 16));
  CUDA_CHECK_LAUNCH("sum_squares_kernel", shape_str("chunks", n_chunks_));
  ordered_sum_kernel<<<1, 1024, 0, ctx.stream>>>(norm_sq_, partial_, n_chunks_);
  CUDA_CHECK_LAUNCH("ordered_sum_kernel", shape_str("chunks", n_chunks_));
  double s = 0;
  to_host(ctx, &s, norm_sq_, 1);
  return s;
}

void AdamW::step(Context& ctx, bf16* params, const float* grad, double lr, float grad_scale) {
  ++step_count_;
  if (n_chunks_ == 0) return;
  const double t = double(step_count_);
  const float step_size = float(lr / (1 - std::pow(cfg_.beta1, t)));
  const float inv_sqrt_bc2 = float(1 / std::sqrt(1 - std::pow(cfg_.beta2, t)));
  adamw_step_kernel<<<unsigned(n_chunks_), kThreads, 0, ctx.stream>>>(
      master_, params, m_, v_, grad, static_cast<const Chunk*>(chunks_), lo_, float(cfg_.beta1), float(cfg_.beta2),
      float(cfg_.eps), step_size, inv_sqrt_bc2, float(lr * cfg_.weight_decay), grad_scale,
      aligned(grad, 16) && aligned(params, 4));  // master_, m_, v_: arena, 256-aligned; lo_ % 4 == 0
  CUDA_CHECK_LAUNCH("adamw_step_kernel", shape_str("chunks, size", n_chunks_, size_));
}

double AdamW::update(Context& ctx, bf16* params, const float* grad, double lr, double max_norm,
                     const RankSum& sum_over_ranks) {
  double sq = grad_sq_sum(ctx, grad);
  if (sum_over_ranks) sq = sum_over_ranks(sq);
  const double norm = std::sqrt(sq);
  if (!std::isfinite(norm)) return norm;
  const float scale = max_norm > 0 && norm > max_norm ? float(max_norm / norm) : 1.f;
  step(ctx, params, grad, lr, scale);
  return norm;
}

}  // namespace hysim::cuda
