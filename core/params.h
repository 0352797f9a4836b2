// Parameters and activations as structs of pointers into a few flat arenas.
//
// A layer declares its parameters once, in a visit function:
//
//   template <class T, class V> void visit_params(const RMSNormConfig& c, RMSNormParams<T>& p, V&& v) {
//     v(p.w, ParamSpec{"w", {c.dim}, Init::ones()});
//   }
//
// and the same declaration sizes the arena, binds the value and gradient structs,
// names the checkpoint datasets and drives initialisation. Activations saved for the
// backward pass are declared the same way (visit_acts, v(ptr, name, numel)).
#pragma once
#include <algorithm>
#include <cmath>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"

namespace hysim {

struct Init {
  enum Kind { Normal, Zeros, Ones, Constant, Uniform, LogUniform, InvSoftplusLogUniform } kind = Normal;
  double a = 0.02, b = 0.0, c = 0.0;
  static Init normal(double std) { return {Normal, std}; }
  static Init zeros() { return {Zeros}; }
  static Init ones() { return {Ones}; }
  static Init constant(double v) { return {Constant, v}; }
  static Init uniform(double lo, double hi) { return {Uniform, lo, hi}; }
  // log(U(lo, hi)): Mamba2 / GDN A_log.
  static Init log_uniform(double lo, double hi) { return {LogUniform, lo, hi}; }
  // dt_bias = softplus^-1(dt), dt log-uniform in [lo, hi] and floored at `floor`.
  static Init dt_bias(double lo, double hi, double floor) { return {InvSoftplusLogUniform, lo, hi, floor}; }
};

struct ParamSpec {
  std::string name;
  Shape shape;
  Init init = Init::normal(0.02);
  bool weight_decay = true;  // false for norms, biases, gates' scalars
  int64_t numel() const { return hysim::numel(shape); }
};

// Fill n values of a parameter from its spec; stream = hash of the full name, so init
// is independent of the order parameters are created in.
template <class T> void init_values(T* p, const ParamSpec& s, const std::string& full_name, uint64_t seed) {
  CounterRng rng(seed, hash_name(full_name));
  const int64_t n = s.numel();
  const Init& in = s.init;
  // Each value is a function of (seed, name, i) only, so threads may split the range.
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    double v = 0;
    switch (in.kind) {
      case Init::Normal: v = in.a * rng.normal(i); break;
      case Init::Zeros: v = 0; break;
      case Init::Ones: v = 1; break;
      case Init::Constant: v = in.a; break;
      case Init::Uniform: v = in.a + (in.b - in.a) * rng.uniform(i); break;
      case Init::LogUniform: v = std::log(in.a + (in.b - in.a) * rng.uniform(i)); break;
      case Init::InvSoftplusLogUniform: {
        double dt = std::exp(std::log(in.a) + (std::log(in.b) - std::log(in.a)) * rng.uniform(i));
        dt = std::max(dt, in.c);
        v = dt + std::log(-std::expm1(-dt));  // softplus^-1(dt)
        break;
      }
    }
    p[i] = T(v);
  }
}

// A flat store of parameters + gradients, laid out by a visit function.
template <class T> struct ParamStore {
  std::vector<ParamSpec> specs;  // names are full paths (prefix applied by the visitor)
  std::vector<int64_t> offsets;
  std::vector<T> value, grad;

  // visit(P& p, auto&& v) calls v(T*& ptr, ParamSpec) for every parameter of p. Each
  // tensor starts at a multiple of `align` elements (1: packed, the CPU's layout; the GPU
  // aligns its tensors for the GEMM library, the gaps belong to no parameter and stay 0).
  template <class P, class Visit> void build(P& values, P& grads, Visit visit, int64_t align = 1) {
    specs.clear();
    offsets.clear();
    int64_t n = 0;
    auto count = [&](T*&, const ParamSpec& s) {
      n = (n + align - 1) / align * align;
      offsets.push_back(n);
      n += s.numel();
      specs.push_back(s);
    };
    visit(values, count);
    value.assign(n, T(0));
    grad.assign(n, T(0));
    size_t i = 0;
    auto bind_v = [&](T*& p, const ParamSpec&) { p = value.data() + offsets[i++]; };
    visit(values, bind_v);
    i = 0;
    auto bind_g = [&](T*& p, const ParamSpec&) { p = grad.data() + offsets[i++]; };
    visit(grads, bind_g);
  }
  void init(uint64_t seed) {
    for (size_t i = 0; i < specs.size(); ++i) init_values(value.data() + offsets[i], specs[i], specs[i].name, seed);
  }
  void zero_grad() { std::fill(grad.begin(), grad.end(), T(0)); }
  // The flat arrays' length (gaps included), from the layout itself: also for a layout
  // whose value/grad vectors are left empty (the GPU model's).
  int64_t size() const { return offsets.empty() ? 0 : offsets.back() + specs.back().numel(); }
  int64_t n_params() const {  // the parameters alone
    int64_t n = 0;
    for (const ParamSpec& sp : specs) n += sp.numel();
    return n;
  }
};

// Values laid out as `from` rearranged into the layout of `to` (the same parameters in
// the same order, other offsets: e.g. the CPU's packed layout and the GPU's aligned one).
template <class T, class U>
std::vector<T> relayout(const std::vector<T>& v, const ParamStore<U>& from, const ParamStore<U>& to) {
  std::vector<T> out(static_cast<size_t>(to.size()), T(0));
  for (size_t i = 0; i < from.specs.size(); ++i)
    std::copy_n(v.begin() + from.offsets[i], from.specs[i].numel(), out.begin() + to.offsets[i]);
  return out;
}

// Wrap a visitor so that every parameter name gets a prefix ("blocks.3.mixer.").
template <class V> auto prefixed(const std::string& prefix, V& v) {
  return [prefix, &v](auto*& p, ParamSpec s) {
    s.name = prefix + s.name;
    v(p, s);
  };
}

// A flat store of activations, laid out by visit(A& a, auto&& v) calling v(T*& ptr, name, numel).
template <class T> struct ActStore {
  std::vector<T> data;
  template <class A, class Visit> void build(A& acts, Visit visit) {
    int64_t n = 0;
    auto count = [&](T*&, const char*, int64_t k) { n += k; };
    visit(acts, count);
    data.assign(n, T(0));
    int64_t off = 0;
    auto bind = [&](T*& p, const char*, int64_t k) { p = data.data() + off; off += k; };
    visit(acts, bind);
  }
};

}  // namespace hysim
