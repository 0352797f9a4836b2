// The model of layers/model.h on one GPU (implemented in layers/model.cu): the same
// pattern of blocks, norm placements and parameter layout, with the CUDA layers of
// core/cuda/layers.h.
//
// Precision (DESIGN.md, GPUs): the layers read bf16 weights and keep bf16 activations
// (the residual stream and its gradient included), with fp32 statistics and fp32
// accumulation; parameter gradients are fp32, and the fp32 master weights live with the
// optimizer (core/cuda/adamw.h; sharded under ZeRO-1). The flat arrays (weights, grad)
// have the CPU ParamStore's layout (same names, order and offsets), so the AdamW groups,
// checkpoints and initial values are those of the CPU model: a checkpoint written by one
// backend loads in the other. Data parallel runs pad both arrays to a whole number of
// equal shards (`padded_params`; the tail is zero and belongs to no parameter).
//
// Memory: one arena for parameters, gradients and batch inputs, one for the activations
// saved for the backward (sized by the layers' visit_acts; with activation checkpointing
// the blocks' inputs, plus one block's activations in a shared work arena), one for the backward's
// residual-gradient buffers; the layers' temporaries come from ctx.scratch. Nothing is
// allocated while training runs.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/cuda/arena.h"
#include "core/cuda/context.h"
#include "core/cuda/layers.h"
#include "core/model_config.h"
#include "core/params.h"
#include "layers/model.h"

namespace hysim::cuda {

struct DeviceBlockActs {
  bf16* x = nullptr;          // block input (residual stream)
  bf16* norm1 = nullptr;      // pre: norm(x); reordered: f(x)
  float* rstd1 = nullptr;
  bf16* mixer_out = nullptr;  // pre: f(norm(x)); reordered: norm(f(x))
  bf16* h = nullptr;          // after the mixer residual
  bf16* norm2 = nullptr;
  float* rstd2 = nullptr;
  bf16* mlp_out = nullptr;
  AttentionActsCuda attn;
  GdnActsCuda gdn;
  Mamba2ActsCuda m2;
  SwiGLUActs<bf16> mlp;
};

class DeviceModel {
 public:
  // Sizes everything for batches of up to B sequences of up to Tn tokens. Throws
  // std::invalid_argument for configurations the CUDA layers do not support (naming the
  // key): attention d_head other than 64/128, unchunked GDN/Mamba2.
  // activation_checkpointing: keep each block's input only and recompute the block's
  // forward in the backward (one block's activations in memory instead of all of them).
  DeviceModel(Context& ctx, const ModelConfig& cfg, int64_t B, int64_t Tn, int shards = 1,
              bool activation_checkpointing = false);

  // Bytes of ctx.scratch the layers' temporaries need at most for batches of B x Tn
  // (the LM head's logit chunks or the largest layer backward, whichever is more).
  static size_t scratch_bytes(const ModelConfig& cfg, int64_t B, int64_t Tn);

  const ModelConfig cfg;
  const std::string letters;
  const int64_t max_B, max_T;
  const bool checkpointing;

  // The parameters' layout (host side: names, shapes, offsets, init): the CPU model's
  // parameters in its order, each tensor starting at a multiple of kParamAlign elements
  // (256 bytes of fp32 gradient: cuBLASLt picks slower kernels for operands aligned to
  // less; the 7B GDN's 30-element A_log left every later matrix 4-byte aligned).
  // `relayout` (core/params.h) maps host values between this and the CPU's packed layout.
  static constexpr int64_t kParamAlign = 64;
  ParamStore<float> layout;     // value/grad vectors left empty
  int64_t n_params() const { return n_params_; }        // the parameters alone
  int64_t layout_size() const { return layout_size_; }  // values of the layout (gaps included)
  int64_t padded_params() const { return padded_; }  // shards x shard_size() >= layout_size: the arrays' length
  int64_t shard_size() const { return shard_; }
  bf16* weights() { return weights_; }  // bf16 weights the layers read [padded_params]
  float* grad() { return grad_; }       // fp32 [padded_params]

  // Initial values exactly as the CPU model (ParamStore::init), on the host, in the layout.
  std::vector<float> initial_values(uint64_t seed) const;
  // fp32 values of the layout (layout_size of them): rounded to bf16 into weights()
  // (staged through grad(), which is zeroed after).
  void set_values(const std::vector<float>& values);
  // The bf16 weights of another model of the same layout (length generalisation).
  void copy_weights(const DeviceModel& from);
  void zero_grad();
  // Bytes of the saved activations (with checkpointing: the blocks' inputs + one block's work region).
  size_t activation_bytes() const { return acts_arena_.capacity() + work_arena_.capacity(); }
  void scale_grad(float s);

  // As Model::forward_backward; tokens, targets and loss_mask (may be null) on the HOST.
  // Parameter gradients accumulate into grad(). Synchronizes (the loss is returned).
  StepStats forward_backward(const int32_t* tokens, const int32_t* targets, const float* loss_mask, int64_t B,
                             int64_t Tn, double z_loss, bool compute_grad);

 private:
  Context& ctx_;
  int64_t n_params_ = 0, layout_size_ = 0, padded_ = 0, shard_ = 0;
  DeviceArena params_arena_, acts_arena_, work_arena_, grads_arena_;
  float* grad_ = nullptr;
  bf16* weights_ = nullptr;
  ModelParams<bf16> params_;
  ModelParams<float> grads_;
  std::vector<DeviceBlockActs> blocks_;
  bf16 *x_final_ = nullptr, *normed_ = nullptr;
  float* rstd_ = nullptr;
  int32_t *tokens_ = nullptr, *targets_ = nullptr;
  float* loss_mask_ = nullptr;
  float* rope_table_ = nullptr;           // [max_T, d_head] (RoPE / YaRN of the attention layers)
  bf16 *d_normed_ = nullptr, *dy_ = nullptr, *dx_ = nullptr, *dh_ = nullptr, *dtmp_ = nullptr;

  void forward_blocks(int64_t B, int64_t Tn);
  void forward_block(size_t i, bf16* out, int64_t B, int64_t Tn);  // block i's input is blocks_[i].x
};

}  // namespace hysim::cuda
