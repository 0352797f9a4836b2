// Gated DeltaNet on the GPU (layers/gated_deltanet.cu) vs the CPU (layers/gated_deltanet.cpp,
// float): the chunked core forward and backward on the same q, k, v, beta, g, dO, and the
// full layer forward and backward on the same bf16-representable weights, x and dy.
//
// Tolerances (rel_l2 and max_rel, tests/test_cuda_common.h):
//  * core forward, fp32 storage: the same algorithm in fp32 with other summation orders (dot
//    products, the blocked inversion, the state carried over all chunks): differences of a
//    few ulps that grow with the chunk count; measured <= 2.1e-7; 1e-4.
//  * core forward, bf16 storage (CPU reference on the same bf16-rounded inputs): every product
//    takes bf16 operands (T, W, U, diag(Gam) Q, diag(dend) Delta and the state S rounded once
//    each, 2^-9 = 1.95e-3 relative, as flash-linear-attention's kernels do), o and
//    chunk_states are stored in bf16, and the state's rounding error is carried from chunk to
//    chunk: measured rel_l2 <= 3.5e-3, max_rel <= 7.3e-3 (H100); 1e-2.
//  * core backward, fp32 storage: the forward's reordering plus the backward's own (the sums
//    over value tiles, dS carried over the chunks in reverse); dg, a reverse cumulative sum
//    of terms of both signs, is the least accurate: measured <= 8.8e-7 (dg), <= 4.4e-7 the
//    others, on the H100; 1e-5.
//  * core backward, bf16 storage: bf16 operands on every product as the forward, dq, dk, dv,
//    dbeta, dg stored in bf16 (2^-9 = 1.95e-3 relative; max_rel up to about twice that) and S
//    read from the bf16 chunk_states: measured <= 5.1e-3; 8e-3.
//  * full layer, y, dx and the weights' gradients: every saved activation but the fp32 ones
//    is bf16 (q_in, q_pre, q, k_in, k_pre, k, v_in, v_pre, v, o, gate, o_gated,
//    chunk_states) and so are the backward's intermediates (d_o_gated, d_o, d_gate, d_q, d_k,
//    d_v, d_in, d_b, d_a): up to about eight 2^-9 roundings on a gradient's path, partly
//    averaged by the projections: measured <= 1.4e-2; 2e-2.
//  * full layer, A_log and dt_bias: Hv sums over every token of dg g and of
//    dg exp(A_log) sigmoid(.), terms of both signs (cancellation magnifies the relative
//    error of dg, the end of the longest chain of bf16 steps): measured <= 1.7e-2; 3e-2.
#include "tests/test_cuda_common.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "core/cuda/layers.h"

using namespace hysim::cuda;
using namespace hysim::cuda::test;

namespace {

// Reasons and measured values in the header comment.
constexpr double TOL_CORE_BWD_F32 = 1e-5;
constexpr double TOL_CORE_BWD_BF16 = 8e-3;
constexpr double TOL_LAYER = 2e-2;
constexpr double TOL_LAYER_DECAY = 3e-2;  // A_log, dt_bias

// Core inputs as the layer feeds them: q, k L2-normalised per head; beta = 2 sigmoid(.) in
// (0, 2) (negative eigenvalues allowed); g = -softplus(.) / 2, log decays in about (-2, 0);
// v and dO standard normal. Rounded to bf16 for the bf16 runs (the CPU gets the same values).
struct CoreInputs {
  hysim::GdnConfig c;
  int64_t B, Tn, nqk, nv, ng, ncs, nt;
  std::vector<float> q, k, v, beta, g, d_o;
  CoreInputs(int64_t B_, int64_t Tn_, int64_t H, int64_t Hv, int64_t dk, int64_t dv, int64_t chunk, uint64_t seed,
             bool bf)
      : B(B_), Tn(Tn_) {
    c.n_heads = H, c.n_v_heads = Hv, c.d_head_k = dk, c.d_head_v = dv, c.chunk_size = chunk;
    nqk = B * Tn * H * dk, nv = B * Tn * Hv * dv, ng = B * Tn * Hv, ncs = B * Hv * c.n_chunks(Tn) * dv * dk;
    nt = B * Hv * c.n_chunks(Tn) * chunk * chunk;
    auto round = [&](std::vector<float> x) { return bf ? round_to_bf16(x) : x; };
    auto unit_rows = [&](std::vector<float> x) {
      for (int64_t r = 0; r < int64_t(x.size()) / dk; ++r) {
        double s = 0;
        for (int64_t i = 0; i < dk; ++i) s += double(x[r * dk + i]) * x[r * dk + i];
        for (int64_t i = 0; i < dk; ++i) x[r * dk + i] = float(x[r * dk + i] / std::sqrt(s + 1e-6));
      }
      return x;
    };
    q = round(unit_rows(random_floats(nqk, seed))), k = round(unit_rows(random_floats(nqk, seed + 1)));
    v = round(random_floats(nv, seed + 2));
    beta = random_floats(ng, seed + 3), g = random_floats(ng, seed + 4);
    for (auto& x : beta) x = float(2.0 / (1.0 + std::exp(-double(x))));
    for (auto& x : g) x = float(-0.5 * std::log1p(std::exp(double(x))));
    beta = round(beta), g = round(g);
    d_o = round(random_floats(nv, seed + 5));
  }
};

void print_shape(const char* what, bool bf, int64_t B, int64_t Tn, const hysim::GdnConfig& c) {
  std::printf(" %s %s B=%lld T=%lld H=%lld Hv=%lld dk=%lld dv=%lld chunk=%lld\n", what, bf ? "bf16" : "fp32",
              (long long)B, (long long)Tn, (long long)c.n_heads, (long long)c.n_v_heads, (long long)c.d_head_k,
              (long long)c.d_head_v, (long long)c.chunk_size);
}

template <class T>
void check_gdn(int64_t B, int64_t Tn, int64_t H, int64_t Hv, int64_t dk, int64_t dv, int64_t chunk, uint64_t seed) {
  const bool bf = std::is_same_v<T, bf16>;
  const double tol = bf ? 1e-2 : 1e-4;
  const CoreInputs in(B, Tn, H, Hv, dk, dv, chunk, seed, bf);
  print_shape("forward", bf, B, Tn, in.c);
  std::vector<float> o_ref(in.nv), cs_ref(in.ncs);
  hysim::gdn_chunk_forward(in.c, o_ref.data(), cs_ref.data(), in.q.data(), in.k.data(), in.v.data(), in.beta.data(),
                           in.g.data(), B, Tn);

  Context ctx(gdn_chunk_forward_scratch_bytes(in.c, B, Tn, sizeof(T)));  // exactly what it asks for
  DeviceData dd(ctx);
  const T *q_d = dd.upload<T>(in.q), *k_d = dd.upload<T>(in.k), *v_d = dd.upload<T>(in.v),
          *b_d = dd.upload<T>(in.beta), *g_d = dd.upload<T>(in.g);
  T* o = dd.alloc_poisoned<T>(in.nv);
  T* cs = dd.alloc_poisoned<T>(in.ncs);
  T* t_inv = dd.alloc_poisoned<T>(in.nt);
  gdn_chunk_forward(ctx, in.c, o, cs, t_inv, q_d, k_d, v_d, b_d, g_d, B, Tn);
  CHECK(report("o", dd.download(o, in.nv), o_ref, tol) < tol);
  // chunk 0's entering state is 0 (max_rel needs a nonzero reference: compare all chunks).
  CHECK(report("chunk_states", dd.download(cs, in.ncs), cs_ref, tol) < tol);
}

// The backward reads the chunk states of the GPU forward (as in training); the CPU its own.
template <class T>
void check_gdn_backward(int64_t B, int64_t Tn, int64_t H, int64_t Hv, int64_t dk, int64_t dv, int64_t chunk,
                        uint64_t seed) {
  const bool bf = std::is_same_v<T, bf16>;
  const double tol = bf ? TOL_CORE_BWD_BF16 : TOL_CORE_BWD_F32;
  const CoreInputs in(B, Tn, H, Hv, dk, dv, chunk, seed, bf);
  print_shape("backward", bf, B, Tn, in.c);
  std::vector<float> o_ref(in.nv), cs_ref(in.ncs), dq_ref(in.nqk), dk_ref(in.nqk), dv_ref(in.nv), db_ref(in.ng),
      dg_ref(in.ng);
  hysim::gdn_chunk_forward(in.c, o_ref.data(), cs_ref.data(), in.q.data(), in.k.data(), in.v.data(), in.beta.data(),
                           in.g.data(), B, Tn);
  hysim::gdn_chunk_backward(in.c, dq_ref.data(), dk_ref.data(), dv_ref.data(), db_ref.data(), dg_ref.data(),
                            in.d_o.data(), in.q.data(), in.k.data(), in.v.data(), in.beta.data(), in.g.data(),
                            cs_ref.data(), B, Tn);

  Context ctx(std::max(gdn_chunk_forward_scratch_bytes(in.c, B, Tn, sizeof(T)),
                       gdn_chunk_backward_scratch_bytes(in.c, B, Tn, sizeof(T))));  // exactly what they ask for
  DeviceData dd(ctx);
  const T *q_d = dd.upload<T>(in.q), *k_d = dd.upload<T>(in.k), *v_d = dd.upload<T>(in.v),
          *b_d = dd.upload<T>(in.beta), *g_d = dd.upload<T>(in.g), *do_d = dd.upload<T>(in.d_o);
  T* o = dd.alloc_poisoned<T>(in.nv);
  T* cs = dd.alloc_poisoned<T>(in.ncs);
  T* t_inv = dd.alloc_poisoned<T>(in.nt);
  gdn_chunk_forward(ctx, in.c, o, cs, t_inv, q_d, k_d, v_d, b_d, g_d, B, Tn);
  T* dq = dd.alloc_poisoned<T>(in.nqk);
  T* dk_ = dd.alloc_poisoned<T>(in.nqk);
  T* dv_ = dd.alloc_poisoned<T>(in.nv);
  T* db = dd.alloc_poisoned<T>(in.ng);
  T* dg = dd.alloc_poisoned<T>(in.ng);
  gdn_chunk_backward(ctx, in.c, dq, dk_, dv_, db, dg, do_d, q_d, k_d, v_d, b_d, g_d, cs, t_inv, B, Tn);
  const auto dq1 = dd.download(dq, in.nqk), dk1 = dd.download(dk_, in.nqk), dv1 = dd.download(dv_, in.nv),
             db1 = dd.download(db, in.ng), dg1 = dd.download(dg, in.ng);
  CHECK(report("dq", dq1, dq_ref, tol) < tol);
  CHECK(report("dk", dk1, dk_ref, tol) < tol);
  CHECK(report("dv", dv1, dv_ref, tol) < tol);
  CHECK(report("dbeta", db1, db_ref, tol) < tol);
  CHECK(report("dg", dg1, dg_ref, tol) < tol);
  // Deterministic: no atomics, the same bits again.
  dd.poison(dq, in.nqk), dd.poison(dk_, in.nqk), dd.poison(dv_, in.nv), dd.poison(db, in.ng), dd.poison(dg, in.ng);
  gdn_chunk_backward(ctx, in.c, dq, dk_, dv_, db, dg, do_d, q_d, k_d, v_d, b_d, g_d, cs, t_inv, B, Tn);
  CHECK(dd.download(dq, in.nqk) == dq1);
  CHECK(dd.download(dk_, in.nqk) == dk1);
  CHECK(dd.download(dv_, in.nv) == dv1);
  CHECK(dd.download(db, in.ng) == db1);
  CHECK(dd.download(dg, in.ng) == dg1);
  CHECK(ctx.scratch.used() == 0);
}

// The full layer vs the CPU layer in float on the same bf16-rounded x, weights and dy.
void check_gdn_layer(int64_t B, int64_t Tn, int64_t D, int64_t H, int64_t Hv, int64_t dk, int64_t dv, int64_t chunk,
                     bool neg_eig, uint64_t seed) {
  std::printf(" layer B=%lld T=%lld D=%lld H=%lld Hv=%lld dk=%lld dv=%lld chunk=%lld allow_neg_eigval=%d\n",
              (long long)B, (long long)Tn, (long long)D, (long long)H, (long long)Hv, (long long)dk, (long long)dv,
              (long long)chunk, int(neg_eig));
  hysim::GdnConfig c;
  c.d_model = D, c.n_heads = H, c.n_v_heads = Hv, c.d_head_k = dk, c.d_head_v = dv, c.chunk_size = chunk;
  c.conv_size = 4, c.allow_neg_eigval = neg_eig;
  const int64_t BT = B * Tn;
  // Weights with O(1) activations: projections std 1/sqrt(fan_in), convs std 0.5, A = exp(A_log)
  // around 1 and dt_bias around -2 (log decays around -0.13 a token), o_norm around 1.
  std::vector<std::vector<float>> w_host;
  hysim::GdnParams<float> p_c;
  uint64_t s = seed;
  hysim::visit_params(c, p_c, [&](float*& ptr, const hysim::ParamSpec& spec) {
    const int64_t n = spec.numel();
    const std::string name = spec.name;
    std::vector<float> w;
    if (name == "A_log") w = random_floats(n, s++, 0.3);
    else if (name == "dt_bias") {
      w = random_floats(n, s++, 0.5);
      for (auto& x : w) x -= 2.f;
    } else if (name == "o_norm") {
      w = random_floats(n, s++, 0.1);
      for (auto& x : w) x += 1.f;
    } else if (name.find("conv1d") != std::string::npos) w = random_floats(n, s++, 0.5);
    else w = random_floats(n, s++, 1.0 / std::sqrt(double(spec.shape[1])));
    w_host.push_back(round_to_bf16(w));
    ptr = w_host.back().data();
  });
  const auto x = round_to_bf16(random_floats(BT * D, seed + 100)), dy = round_to_bf16(random_floats(BT * D, seed + 101));

  // CPU reference.
  std::vector<std::vector<float>> g_host, a_host;
  hysim::GdnParams<float> g_c;
  hysim::visit_params(c, g_c, [&](float*& ptr, const hysim::ParamSpec& spec) {
    g_host.emplace_back(spec.numel(), 0.f);
    ptr = g_host.back().data();
  });
  hysim::GdnActs<float> a_c;
  hysim::visit_acts(c, B, Tn, a_c, [&](float*& ptr, const char*, int64_t n) {
    a_host.emplace_back(std::max<int64_t>(n, 1));
    ptr = a_host.back().data();
  });
  std::vector<float> y_ref(BT * D), dx_ref(BT * D);
  hysim::gdn_forward(c, p_c, a_c, y_ref.data(), x.data(), B, Tn);
  hysim::gdn_backward(c, p_c, g_c, a_c, dx_ref.data(), dy.data(), x.data(), B, Tn);

  // GPU.
  Context ctx(size_t(64) << 20);
  DeviceData dd(ctx);
  hysim::GdnParams<bf16> p;
  hysim::GdnParams<float> g;
  {
    size_t i = 0;
    hysim::visit_params(c, p, [&](bf16*& ptr, const hysim::ParamSpec&) { ptr = dd.upload<bf16>(w_host[i++]); });
    i = 0;
    hysim::visit_params(c, g, [&](float*& ptr, const hysim::ParamSpec&) {
      ptr = dd.upload<float>(std::vector<float>(g_host[i++].size(), 0.f));
    });
  }
  GdnActsCuda a;
  visit_acts(c, B, Tn, a, [&](auto*& ptr, const char*, int64_t n) {
    using P = std::remove_pointer_t<std::remove_reference_t<decltype(ptr)>>;
    ptr = dd.alloc_poisoned<P>(std::max<int64_t>(n, 1));
  });
  const bf16 *x_d = dd.upload<bf16>(x), *dy_d = dd.upload<bf16>(dy);
  bf16* y = dd.alloc_poisoned<bf16>(BT * D);
  bf16* dx = dd.alloc_poisoned<bf16>(BT * D);
  gdn_forward(ctx, c, p, a, y, x_d, B, Tn);
  gdn_backward(ctx, c, p, g, a, dx, dy_d, x_d, B, Tn);
  const double tol = TOL_LAYER;
  CHECK(report("layer y", dd.download(y, BT * D), y_ref, tol) < tol);
  CHECK(report("layer dx", dd.download(dx, BT * D), dx_ref, tol) < tol);
  size_t i = 0;
  hysim::visit_params(c, g, [&](float*& ptr, const hysim::ParamSpec& spec) {
    const std::string what = "grad " + std::string(spec.name);
    const auto& ref = g_host[i++];
    const double t = what == "grad A_log" || what == "grad dt_bias" ? TOL_LAYER_DECAY : TOL_LAYER;
    CHECK_MESSAGE(report(what.c_str(), dd.download(ptr, int64_t(ref.size())), ref, t) < t, what);
  });
  CHECK(ctx.scratch.used() == 0);
}

}  // namespace

TEST_CASE("gdn chunked forward CUDA fp32 storage matches the CPU") {
  check_gdn<float>(2, 150, 2, 4, 32, 48, 64, 1);   // GQA-like value heads, last chunk short
  check_gdn<float>(1, 256, 1, 2, 96, 192, 64, 2);  // Olmo Hybrid head dims
  check_gdn<float>(1, 40, 2, 2, 16, 16, 16, 3);    // small chunks
}

TEST_CASE("gdn chunked forward CUDA bf16 storage matches the CPU") {
  check_gdn<bf16>(2, 130, 2, 2, 64, 64, 64, 4);
  check_gdn<bf16>(1, 200, 1, 1, 128, 128, 64, 5);
  // bf16 storage runs the products on the tensor cores (16 x 16 warp tiles): ragged tiles in
  // every dimension (dk 32, dv 48, a 22-token last chunk; chunk 16 with dk 16).
  check_gdn<bf16>(2, 150, 2, 4, 32, 48, 64, 6);
  check_gdn<bf16>(1, 40, 2, 2, 16, 16, 16, 7);
  // The state pass keeps S in registers for bf16 (16 value columns per warp, 4 warps per
  // block): Olmo Hybrid head dims over 5 chunks, and dv 50 (a block's last warp holds 2
  // columns, the others past dv hold none).
  check_gdn<bf16>(1, 300, 2, 2, 96, 192, 64, 8);
  check_gdn<bf16>(2, 100, 1, 2, 96, 50, 64, 9);
  // Odd dk (the saved state's last column is written alone) and dv 100 (the second block's
  // value tile of 36 columns: the scalar load path, a warp with 4 columns, one past dv).
  check_gdn<bf16>(1, 150, 1, 1, 35, 100, 64, 10);
}

// The value dimension is tiled twice (layers/gated_deltanet.cu): the dS pass takes slices of 32
// columns for fp32 storage (dv 48, 50: a full slice and a ragged one; dv 192: six) and 16 per
// warp, 3 or 4 warps per block, for bf16; the per-chunk kernels tiles of 64 (bf16) or, where
// 64 would not fit shared memory, 32 (fp32 storage at dk 96: six tiles of dv 192 summed in
// order); dv 50 is one ragged tile padded to 64.
TEST_CASE("gdn chunked backward CUDA fp32 storage matches the CPU (small)") {
  check_gdn_backward<float>(2, 150, 2, 4, 32, 48, 64, 11);  // Hv > H, last chunk short
  check_gdn_backward<float>(1, 40, 2, 4, 16, 32, 16, 12);   // small chunks, ragged last chunk
  check_gdn_backward<float>(1, 100, 1, 2, 16, 50, 64, 13);  // ragged value slices
}

TEST_CASE("gdn chunked backward CUDA fp32 storage matches the CPU (Olmo Hybrid head dims)") {
  check_gdn_backward<float>(1, 256, 2, 2, 96, 192, 64, 14);
  check_gdn_backward<float>(3, 128, 12, 12, 96, 192, 64, 15);
}

TEST_CASE("gdn chunked backward CUDA bf16 storage matches the CPU") {
  check_gdn_backward<bf16>(2, 130, 2, 4, 16, 32, 64, 16);
  check_gdn_backward<bf16>(1, 256, 4, 4, 96, 192, 64, 17);
  check_gdn_backward<bf16>(3, 128, 12, 12, 96, 192, 64, 18);
  check_gdn_backward<bf16>(1, 100, 1, 2, 16, 50, 64, 19);  // ragged value slices and mma tiles
  check_gdn_backward<bf16>(1, 40, 2, 4, 16, 32, 16, 20);   // small chunks
  check_gdn_backward<bf16>(1, 192, 2, 2, 128, 64, 64, 21);  // dk 128: the grads kernel's 12-slot variant
  // The dS pass keeps dS in registers for bf16: 3 warps per block at dk 96 (two blocks per
  // SM), dv 50 (one block of 48 columns, one of 2); 4 warps at odd dk 35, dv 100 (a block of
  // 36 columns: the scalar load path, a warp with 4 columns, one past dv).
  check_gdn_backward<bf16>(2, 100, 1, 2, 96, 50, 64, 22);
  check_gdn_backward<bf16>(1, 150, 1, 2, 35, 100, 64, 23);
}

TEST_CASE("gdn layer CUDA (projections, conv, L2 norm, beta/g, core, gated RMSNorm) matches the CPU layer") {
  check_gdn_layer(2, 100, 64, 2, 4, 16, 32, 16, true, 21);
  check_gdn_layer(2, 100, 64, 2, 4, 16, 32, 64, false, 22);
  check_gdn_layer(1, 130, 128, 2, 2, 96, 192, 64, true, 23);
  check_gdn_layer(1, 130, 128, 2, 2, 96, 192, 64, false, 24);
  check_gdn_layer(2, 50, 64, 2, 2, 16, 20, 16, true, 25);  // dv 20: the gated norm's one-value path
}
