// CUDA forward/backward of the layers, mirroring the CPU functions in layers/<name>.h
// (same arguments, same overwrite/accumulate rules) with a Context first. Implemented in
// layers/<name>.cu. Storage type T is bf16 (training) or float (the reference path used
// to check indexing against the CPU to ~1e-6); arithmetic is fp32 throughout; parameter
// gradients are fp32 (they feed fp32 master weights). All calls are asynchronous on
// ctx.stream unless stated.
#pragma once
#include <cstdint>
#include <vector>

#include "core/cuda/convert.h"
#include "layers/attention.h"
#include "layers/embedding.h"
#include "layers/gated_deltanet.h"
#include "layers/lm_head.h"
#include "layers/mamba2.h"
#include "layers/rmsnorm.h"
#include "layers/swiglu_mlp.h"

namespace hysim::cuda {

// ---- RMSNorm (layers/rmsnorm.cu) ---------------------------------------------------
// x, out: [N, C]; rstd: [N] fp32, saved for the backward.
template <class T>
void rmsnorm_forward(Context& ctx, T* out, float* rstd, const T* x, const T* w, int64_t N, int64_t C, double eps);
// dx overwritten (or += with accumulate_dx; skipped if nullptr); dw += (skipped if nullptr).
// dw is reduced deterministically (fixed row chunks, then chunks in order; no atomics).
template <class T>
void rmsnorm_backward(Context& ctx, T* dx, float* dw, const T* dout, const T* x, const T* w, const float* rstd,
                      int64_t N, int64_t C, bool accumulate_dx = false);

// ---- SwiGLU MLP (layers/swiglu_mlp.cu) ---------------------------------------------
// Projections through cuBLASLt (core/cuda/gemm.h); silu(gate) * up and its backward as
// fused elementwise kernels. Backward scratch (dh fp32, dgate, dup: 4 + 2 sizeof(T)
// bytes per hidden unit) comes from ctx.scratch and is released before returning.
template <class T>
void swiglu_forward(Context& ctx, const SwiGLUConfig& c, const SwiGLUParams<T>& p, const SwiGLUActs<T>& a, T* y,
                    const T* x, int64_t B, int64_t Tn);
template <class T>
void swiglu_backward(Context& ctx, const SwiGLUConfig& c, const SwiGLUParams<T>& p, const SwiGLUParams<float>& grad,
                     const SwiGLUActs<T>& a, T* dx, const T* dy, const T* x, int64_t B, int64_t Tn);

// ---- Embedding (layers/embedding.cu) -----------------------------------------------
// out[n, :] = wte[tokens[n], :]; tokens on the device. With validate (default) the call
// synchronizes once and throws std::out_of_range naming the first token outside [0, V)
// and its position, with the CPU's message; rows of bad tokens are zero-filled.
template <class T>
void embedding_forward(Context& ctx, T* out, const int32_t* tokens, const T* wte, int64_t N, int64_t D, int64_t V,
                       bool validate = true);
// dwte[tokens[n], :] += dout[n, :], deterministically: positions are sorted by token
// (stable radix sort) and each token's rows are summed in position order, then added
// once. Scratch from ctx.scratch.
template <class T>
void embedding_backward(Context& ctx, float* dwte, const T* dout, const int32_t* tokens, int64_t N, int64_t D);

// ---- LM head + fused softmax cross-entropy (layers/lm_head.cu) ---------------------
// hysim::lm_head_loss on the device: x [N, D], W [V, D] in T; targets [N] and loss_mask
// [N] (or null) on the device. dx [N, D] OVERWRITTEN, dW [V, D] fp32 ACCUMULATED (either
// may be null). Rows go in chunks of chunk_rows (<= 0: as many as fit in 1 GiB of fp32
// logits + T dlogits, from ctx.scratch), so no N x V buffer exists. Synchronizes twice
// (the mask's sum and target check before any output is written; the stats at the end).
// Throws std::out_of_range with the CPU's message for a target outside [0, V) on a row
// with m != 0, leaving dx and dW untouched.
template <class T>
LmHeadStats lm_head_loss(Context& ctx, T* dx, float* dW, const T* x, const T* W, const int32_t* targets,
                         const float* loss_mask, int64_t N, int64_t D, int64_t V, double z_loss, int64_t chunk_rows,
                         bool compute_grad);

// ---- Attention: RoPE and the flash-style core (layers/attention.cu) -----------------
// RoPE table for positions 0 .. Tn-1: [Tn, dh] fp32, row t = (scale cos(t f_i))_i then
// (scale sin(t f_i))_i for the frequencies f_i (i < dh/2) and output scale of the CPU's
// RoPE (plain RoPE: f_i = theta^(-2i/dh), scale 1). Upload once per sequence length.
std::vector<float> rope_table(const std::vector<double>& freqs, double scale, int64_t Tn);
// In place on x [B, Tn, n_heads, dh] (HF rotate_half pairs (i, i + dh/2)); inverse = true
// applies the transpose (the backward). table: rope_table's values on the device.
template <class T>
void rope_apply(Context& ctx, T* x, const float* table, int64_t B, int64_t Tn, int64_t n_heads, int64_t dh,
                bool inverse);
// Causal / sliding-window attention core, GQA (c.n_heads, c.n_kv_heads, c.d_head in {64,
// 128}, c.window; c.tile is the CPU's and not used). bf16 storage, fp32 accumulation.
// q, o: [B, Tn, H, dh]; k, v: [B, Tn, Hkv, dh]; lse: [B, H, Tn] fp32 (natural log of the
// row sums of exp(q.k / sqrt(dh)), as the CPU's). Nothing T x T is stored.
void attention_core_forward(Context& ctx, const AttentionConfig& c, bf16* o, float* lse, const bf16* q,
                            const bf16* k, const bf16* v, int64_t B, int64_t Tn);
// dq, dk, dv overwritten (shaped like q, k, v); deterministic (no atomics). Scratch:
// B Tn H floats from ctx.scratch.
void attention_core_backward(Context& ctx, const AttentionConfig& c, bf16* dq, bf16* dk, bf16* dv, const bf16* dout,
                             const bf16* q, const bf16* k, const bf16* v, const bf16* o, const float* lse, int64_t B,
                             int64_t Tn);

// Full attention layer (layers/attention.cu), the CPU's attention_forward/backward on the
// device: projections by cuBLASLt, QK-norm by the RMSNorm kernels (over the full q and k
// projections), RoPE, the flash core, the output projection. bf16 tensors, fp32 statistics
// and parameter gradients. RoPE is plain (frequencies theta^(-2i/dh), scale 1): the table
// comes from rope_table(f, 1, Tn) uploaded once per sequence length.
struct AttentionActsCuda {
  bf16* q_raw = nullptr;   // [B, T, H dh]    (qk_norm only)
  bf16* k_raw = nullptr;   // [B, T, Hkv dh]  (qk_norm only)
  float* q_rstd = nullptr;  // [B T]          (qk_norm only)
  float* k_rstd = nullptr;  // [B T]          (qk_norm only)
  bf16* q = nullptr;       // [B, T, H dh]    normed and rotated
  bf16* k = nullptr;       // [B, T, Hkv dh]
  bf16* v = nullptr;       // [B, T, Hkv dh]
  bf16* o = nullptr;       // [B, T, H dh]    core output
  float* lse = nullptr;    // [B, H, T]
};
// Binds every field: v(field, "name", numel) with field a bf16*& or float*& (the model sizes
// its activation arena with this, as the CPU's visit_acts).
template <class V> void visit_acts(const AttentionConfig& c, int64_t B, int64_t Tn, AttentionActsCuda& a, V&& v) {
  const int64_t BT = B * Tn, QD = c.q_dim(), KD = c.kv_dim();
  if (c.qk_norm) {
    v(a.q_raw, "q_raw", BT * QD);
    v(a.k_raw, "k_raw", BT * KD);
    v(a.q_rstd, "q_rstd", BT);
    v(a.k_rstd, "k_rstd", BT);
  }
  v(a.q, "q", BT * QD);
  v(a.k, "k", BT * KD);
  v(a.v, "v", BT * KD);
  v(a.o, "o", BT * QD);
  v(a.lse, "lse", BT * c.n_heads);
}
void attention_forward(Context& ctx, const AttentionConfig& c, const AttentionParams<bf16>& p,
                       const AttentionActsCuda& a, const float* rope_table, bf16* y, const bf16* x, int64_t B,
                       int64_t Tn);
// dx overwritten, grad.* accumulated (fp32). Scratch: 2 (H + Hkv) dh + H dh bf16 per token.
void attention_backward(Context& ctx, const AttentionConfig& c, const AttentionParams<bf16>& p,
                        const AttentionParams<float>& grad, const AttentionActsCuda& a, const float* rope_table,
                        bf16* dx, const bf16* dy, const bf16* x, int64_t B, int64_t Tn);

// ---- Causal depthwise short convolution (layers/short_conv.cu) -----------------------
// hysim::short_conv_forward/backward on the device (GDN's q/k/v and Mamba2's xBC convs).
// x, out, pre: [B, Tn, C] (pre may be null when !silu), w [C, K], bias [C] or null.
template <class T>
void short_conv_forward(Context& ctx, T* out, T* pre, const T* x, const T* w, const T* bias, int64_t B, int64_t Tn,
                        int64_t C, int64_t K, bool silu);
// dx overwritten; dw, dbias (fp32, may be null) accumulated, deterministically (fixed row
// chunks summed in order; scratch (K + 1) C ceil(B Tn / 128) floats). K <= 8.
template <class T>
void short_conv_backward(Context& ctx, T* dx, float* dw, float* dbias, const T* dout, const T* x, const T* pre,
                         const T* w, int64_t B, int64_t Tn, int64_t C, int64_t K, bool silu);

// ---- Gated DeltaNet chunked core (layers/gated_deltanet.cu) -------------------------
// hysim::gdn_chunk_forward on the device, same layouts: q, k [B, Tn, H dk] (L2-normalised),
// v, o [B, Tn, Hv dv], beta, g [B, Tn, Hv]; chunk_states [B, Hv, n_chunks, dv, dk] (the state
// entering each chunk) and t_inv [B, Hv, n_chunks, C, C] (T = (I + A)^-1 of each chunk, L x L
// of a last chunk of L < C tokens) written for the backward, which would otherwise invert
// every chunk again. Storage T (fp32 or bf16), fp32 accumulation (bf16 storage: products on
// the tensor cores with bf16 operands). Three kernels (per chunk: T, W and U; per 32 value
// columns, chunks in order: the state; per chunk: the output), W and U in ctx.scratch
// (gdn_chunk_forward_scratch_bytes). C = chunk_size <= 64; throws naming the need if a
// kernel's shared memory does not fit even at 16 value columns per tile.
size_t gdn_chunk_forward_scratch_bytes(const GdnConfig& c, int64_t B, int64_t Tn, size_t storage_bytes);
template <class T>
void gdn_chunk_forward(Context& ctx, const GdnConfig& c, T* o, T* chunk_states, T* t_inv, const T* q, const T* k,
                       const T* v, const T* beta, const T* g, int64_t B, int64_t Tn);
// hysim::gdn_chunk_backward on the device: dq, dk, dv, dbeta, dg overwritten (shaped like q,
// k, v, beta, g), from the chunk_states and t_inv the forward saved. Three chunk-parallel
// kernels (per chunk: W, Delta and the chunk-local dDelta; per 32 value columns, chunks in
// reverse: dS and the rest of dDelta; per chunk: the gradients), their intermediates in
// ctx.scratch (gdn_chunk_backward_scratch_bytes). Value heads of a q/k head (Hv > H) are
// summed in order from fp32 scratch. Deterministic (no atomics). Throws naming the need if a
// kernel's shared memory does not fit even at 16 value columns per tile.
size_t gdn_chunk_backward_scratch_bytes(const GdnConfig& c, int64_t B, int64_t Tn, size_t storage_bytes);
template <class T>
void gdn_chunk_backward(Context& ctx, const GdnConfig& c, T* dq, T* dk, T* dv, T* dbeta, T* dg, const T* d_o,
                        const T* q, const T* k, const T* v, const T* beta, const T* g, const T* chunk_states,
                        const T* t_inv, int64_t B, int64_t Tn);

// Full GDN layer (layers/gated_deltanet.cu), the CPU's gdn_forward/backward on the device:
// projections by cuBLASLt, the q/k/v convs + SiLU by short_conv_forward/backward, L2 norm of
// q and k per head, beta and g, the chunked core, gated RMSNorm, o_proj. Only chunk_size > 0
// (throws otherwise). bf16 tensors; fp32 for the statistics (rstd) and for a_in, beta and g:
// g is summed over a chunk and exponentiated (a bf16 g, 2^-9 relative, would move the decays
// of a 64-token chunk by up to ~1%), and beta, a_in feed the sigmoid / softplus derivatives.
struct GdnActsCuda {
  bf16* q_in = nullptr;          // [B, T, H dk]   q_proj output (conv input)
  bf16* q_pre = nullptr;         // [B, T, H dk]   conv output before SiLU
  bf16* q = nullptr;             // [B, T, H dk]   L2-normalised q (core input)
  float* q_rstd = nullptr;       // [B, T, H]      1 / sqrt(sum q^2 + l2_eps)
  bf16* k_in = nullptr;          // [B, T, H dk]
  bf16* k_pre = nullptr;         // [B, T, H dk]
  bf16* k = nullptr;             // [B, T, H dk]
  float* k_rstd = nullptr;       // [B, T, H]
  bf16* v_in = nullptr;          // [B, T, Hv dv]
  bf16* v_pre = nullptr;         // [B, T, Hv dv]
  bf16* v = nullptr;             // [B, T, Hv dv]  silu(conv) (core input)
  float* a_in = nullptr;         // [B, T, Hv]     a_proj output
  float* beta = nullptr;         // [B, T, Hv]
  float* g = nullptr;            // [B, T, Hv]     log decay
  bf16* o = nullptr;             // [B, T, Hv dv]  core output
  float* o_rstd = nullptr;       // [B, T, Hv]
  bf16* gate = nullptr;          // [B, T, Hv dv]  g_proj output
  bf16* o_gated = nullptr;       // [B, T, Hv dv]  o_proj input
  bf16* chunk_states = nullptr;  // [B, Hv, n_chunks, dv, dk] state entering each chunk
  bf16* t_inv = nullptr;         // [B, Hv, n_chunks, C, C] T = (I + A)^-1 per chunk (the CPU recomputes it)
};
// Binds every field: v(field, "name", numel) with field a bf16*& or float*& (the model sizes
// its activation arena with this, as the CPU's visit_acts).
template <class V> void visit_acts(const GdnConfig& c, int64_t B, int64_t Tn, GdnActsCuda& a, V&& v) {
  visit_gdn_acts(c, B, Tn, a, v);  // the CPU's field list (layers/gated_deltanet.h)
  v(a.t_inv, "t_inv", B * c.n_v_heads * c.n_chunks(Tn) * c.chunk_size * c.chunk_size);
}
void gdn_forward(Context& ctx, const GdnConfig& c, const GdnParams<bf16>& p, const GdnActsCuda& a, bf16* y,
                 const bf16* x, int64_t B, int64_t Tn);
// Bytes of ctx.scratch gdn_backward uses, the core's included (the memory plan sizes the arena with it).
size_t gdn_backward_scratch_bytes(const GdnConfig& c, int64_t B, int64_t Tn);
// dx overwritten, grad.* (fp32) accumulated. Scratch: 4 Hv dv + 2 H dk + max(H dk, Hv dv) + 2 Hv
// bf16 and 2 Hv floats per token, plus what the core, rmsnorm and short_conv backwards take.
void gdn_backward(Context& ctx, const GdnConfig& c, const GdnParams<bf16>& p, const GdnParams<float>& grad,
                  const GdnActsCuda& a, bf16* dx, const bf16* dy, const bf16* x, int64_t B, int64_t Tn);

// ---- Mamba2 chunked SSD core (layers/mamba2.cu) -------------------------------------
// hysim::mamba2_chunk_forward on the device, same layouts: xbc [B, Tn, conv_dim] = (x [H, P]
// | B [G, N] | C [G, N]), dt [B, Tn, H] (after softplus), A [H] (negative); y [B, Tn,
// d_inner] without the D term; chunk_states [B, H, n_chunks, P, N]. Storage T (fp32 or
// bf16), fp32 arithmetic (bf16 storage: products on the tensor cores in tf32). Shared memory
// per block: (P + 2 Q) LN + Q LP + Q LQ + 3 Q floats (Q = chunk_size; LN, LP, LQ = mma_stride
// of N, P, Q); throws if the device has less.
template <class T>
void mamba2_chunk_forward(Context& ctx, const Mamba2Config& c, T* y, T* chunk_states, const T* xbc, const T* dt,
                          const T* A, int64_t B, int64_t Tn);
// hysim::mamba2_chunk_backward on the device: dxbc [B, Tn, conv_dim], ddt [B, Tn, H]
// overwritten; dA [H] (fp32, a parameter-side gradient) OVERWRITTEN, summed over batches in
// order. Heads of a group sum their dB, dC in head order (per-head rows in fp32 scratch,
// 2 Tn H N floats per sequence; batches go in slices of what the scratch holds). No
// atomics: deterministic. Shared memory per block: 2 P LN + 2 Q LP + 2 Q LN + max(2 Q LQ,
// Q (LN + LP)) + 10 Q + 8 floats (strides as the forward; headdim 64, d_state 128, chunk 64:
// 224 KB); throws naming the need if the device has less.
template <class T>
void mamba2_chunk_backward(Context& ctx, const Mamba2Config& c, T* dxbc, T* ddt, float* dA, const T* dy, const T* xbc,
                           const T* dt, const T* A, const T* chunk_states, int64_t B, int64_t Tn);

// Full Mamba2 layer (layers/mamba2.cu), the CPU's mamba2_forward/backward on the device:
// in_proj by three cuBLASLt GEMMs (its z | xBC | dt row blocks), the conv by
// short_conv_forward/backward, dt = softplus(dt + dt_bias) and A = -exp(A_log) in fp32, the
// chunked SSD core with the D term folded in, y silu(z), group RMSNorm (fp32 rstd), out_proj.
// Only chunk_size > 0 (throws otherwise).
struct Mamba2ActsCuda {
  bf16* z = nullptr;             // [B, T, d_inner]   in_proj rows 0 .. d_inner (the gate)
  bf16* xbc_in = nullptr;        // [B, T, conv_dim]  in_proj rows of xBC (the conv input)
  float* dt_raw = nullptr;       // [B, T, H]         in_proj rows of dt, fp32 output
  bf16* xbc_pre = nullptr;       // [B, T, conv_dim]  conv + bias, before SiLU
  bf16* xbc = nullptr;           // [B, T, conv_dim]  (x | B | C) after SiLU
  float* dt = nullptr;           // [B, T, H]         softplus(dt_raw + dt_bias)
  bf16* y = nullptr;             // [B, T, d_inner]   SSM output + D x (before the gate)
  bf16* y_gated = nullptr;       // [B, T, d_inner]   y silu(z)
  float* rstd = nullptr;         // [B, T, G]
  bf16* y_norm = nullptr;        // [B, T, d_inner]   out_proj input
  bf16* chunk_states = nullptr;  // [B, H, n_chunks, P, N] state entering each chunk
};
// Binds every field: v(field, "name", numel) with field a bf16*& or float*& (the model
// sizes its activation arena with this, as the CPU's visit_acts).
template <class V> void visit_acts(const Mamba2Config& c, int64_t B, int64_t Tn, Mamba2ActsCuda& a, V&& v) {
  const int64_t BT = B * Tn, DI = c.d_inner(), CD = c.conv_dim(), H = c.n_heads();
  v(a.z, "z", BT * DI);
  v(a.xbc_in, "xbc_in", BT * CD);
  v(a.dt_raw, "dt_raw", BT * H);
  v(a.xbc_pre, "xbc_pre", BT * CD);
  v(a.xbc, "xbc", BT * CD);
  v(a.dt, "dt", BT * H);
  v(a.y, "y", BT * DI);
  v(a.y_gated, "y_gated", BT * DI);
  v(a.rstd, "rstd", BT * c.n_groups);
  v(a.y_norm, "y_norm", BT * DI);
  v(a.chunk_states, "chunk_states", B * H * c.n_chunks(Tn) * c.headdim * c.d_state);
}
void mamba2_forward(Context& ctx, const Mamba2Config& c, const Mamba2Params<bf16>& p, const Mamba2ActsCuda& a, bf16* y,
                    const bf16* x, int64_t B, int64_t Tn);
// dx overwritten, grad.* (fp32) accumulated, deterministically. Scratch: (d_in_proj +
// d_inner + 2 conv_dim) bf16 + H fp32 per token around the core; during the core one
// conv_dim less plus the core's dB, dC rows (above; it takes the free scratch, at least one
// sequence). The 1B shape at B 4, T 4096 peaks at 1.52 GiB.
void mamba2_backward(Context& ctx, const Mamba2Config& c, const Mamba2Params<bf16>& p, const Mamba2Params<float>& grad,
                     const Mamba2ActsCuda& a, bf16* dx, const bf16* dy, const bf16* x, int64_t B, int64_t Tn);

}  // namespace hysim::cuda
