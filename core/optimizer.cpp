#include "core/optimizer.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <stdexcept>

namespace hysim {

namespace {

// Sum of squares in double. Blocks of fixed size are summed in parallel, then the
// block sums in index order: the same bits for any number of threads.
constexpr int64_t kNormBlock = 1 << 14;

template <class T> double sum_squares(const T* g, int64_t n) {
  const int64_t n_blocks = (n + kNormBlock - 1) / kNormBlock;
  if (n_blocks <= 1) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += double(g[i]) * double(g[i]);
    return s;
  }
  std::vector<double> partial(n_blocks);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t end = std::min(n, (b + 1) * kNormBlock);
    double s = 0;
    for (int64_t i = b * kNormBlock; i < end; ++i) s += double(g[i]) * double(g[i]);
    partial[b] = s;
  }
  double s = 0;
  for (double p : partial) s += p;
  return s;
}

template <class T> void scale(T* g, int64_t n, T factor) {
#pragma omp parallel for schedule(static) if (n > kNormBlock)
  for (int64_t i = 0; i < n; ++i) g[i] *= factor;
}

}  // namespace

template <class T> double grad_norm(const T* grad, int64_t n) { return std::sqrt(sum_squares(grad, n)); }

template <class T> double clip_grad_norm(T* grad, int64_t n, double max_norm) {
  const double norm = grad_norm(grad, n);
  if (std::isfinite(norm) && max_norm > 0 && norm > max_norm) scale(grad, n, T(max_norm / norm));
  return norm;
}

template <class T> AdamW<T>::AdamW(std::vector<ParamGroup> groups, AdamWConfig cfg)
    : groups_(std::move(groups)), cfg_(cfg) {
  if (!(cfg_.beta1 >= 0 && cfg_.beta1 < 1) || !(cfg_.beta2 >= 0 && cfg_.beta2 < 1))
    throw std::invalid_argument("AdamW: betas (" + std::to_string(cfg_.beta1) + ", " + std::to_string(cfg_.beta2) +
                                ") must be in [0, 1)");
  std::set<std::string> names;
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (ParamGroup& g : groups_) {
    if (g.name.empty()) throw std::invalid_argument("AdamW: a parameter group has no name");
    if (!names.insert(g.name).second) throw std::invalid_argument("AdamW: duplicate parameter group '" + g.name + "'");
    if (g.offset < 0 || g.numel < 0)
      throw std::invalid_argument("AdamW: group '" + g.name + "' has negative offset or numel");
    if (g.shape.empty()) g.shape = {g.numel};
    if (numel(g.shape) != g.numel)
      throw std::invalid_argument("AdamW: group '" + g.name + "' shape " + shape_str(g.shape) + " does not hold " +
                                  std::to_string(g.numel) + " elements");
    ranges.push_back({g.offset, g.offset + g.numel});
    size_ = std::max(size_, g.offset + g.numel);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second)
      throw std::invalid_argument("AdamW: parameter groups overlap at element " + std::to_string(ranges[i].first));
  m_.assign(size_, T(0));
  v_.assign(size_, T(0));
}

template <class T> double AdamW<T>::grad_norm(const T* grad) const {
  double s = 0;
  for (const ParamGroup& g : groups_) s += sum_squares(grad + g.offset, g.numel);
  return std::sqrt(s);
}

template <class T> double AdamW<T>::update(T* params, T* grad, double lr, double max_norm) {
  const double norm = grad_norm(grad);
  if (!std::isfinite(norm)) return norm;
  if (max_norm > 0 && norm > max_norm)
    for (const ParamGroup& g : groups_) scale(grad + g.offset, g.numel, T(max_norm / norm));
  step(params, grad, lr);
  return norm;
}

template <class T> void AdamW<T>::step(T* params, const T* grad, double lr) {
  ++step_count_;
  const double t = double(step_count_);
  const T b1 = T(cfg_.beta1), b2 = T(cfg_.beta2), eps = T(cfg_.eps);
  const T step_size = T(lr / (1 - std::pow(cfg_.beta1, t)));
  const T inv_sqrt_bc2 = T(1 / std::sqrt(1 - std::pow(cfg_.beta2, t)));
  for (const ParamGroup& g : groups_) {
    const T decay = g.weight_decay ? T(lr * cfg_.weight_decay) : T(0);
    T* p = params + g.offset;
    const T* gr = grad + g.offset;
    T* m = m_.data() + g.offset;
    T* v = v_.data() + g.offset;
    const int64_t n = g.numel;
#pragma omp parallel for schedule(static) if (n > kNormBlock)
    for (int64_t i = 0; i < n; ++i) {
      m[i] = b1 * m[i] + (T(1) - b1) * gr[i];
      v[i] = b2 * v[i] + (T(1) - b2) * gr[i] * gr[i];
      p[i] -= decay * p[i];
      p[i] -= step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
    }
  }
}

template <class T> std::vector<NamedTensor> AdamW<T>::state_tensors() const {
  std::vector<NamedTensor> out;
  for (int which = 0; which < 2; ++which) {
    const std::vector<T>& s = which == 0 ? m_ : v_;
    for (const ParamGroup& g : groups_)
      out.push_back({(which == 0 ? "adam_m/" : "adam_v/") + g.name, g.shape,
                     std::vector<float>(s.begin() + g.offset, s.begin() + g.offset + g.numel)});
  }
  return out;
}

template <class T> void AdamW<T>::load_state_tensors(const std::vector<NamedTensor>& tensors) {
  std::map<std::string, const NamedTensor*> by_name;
  for (const NamedTensor& t : tensors) by_name[t.name] = &t;
  for (int which = 0; which < 2; ++which) {
    std::vector<T>& s = which == 0 ? m_ : v_;
    for (const ParamGroup& g : groups_) {
      const std::string name = (which == 0 ? "adam_m/" : "adam_v/") + g.name;
      auto it = by_name.find(name);
      if (it == by_name.end()) throw std::runtime_error("AdamW state: tensor '" + name + "' is missing");
      if (int64_t(it->second->data.size()) != g.numel)
        throw std::runtime_error("AdamW state: tensor '" + name + "' has " + std::to_string(it->second->data.size()) +
                                 " elements, the parameter has " + std::to_string(g.numel));
      std::copy(it->second->data.begin(), it->second->data.end(), s.begin() + g.offset);
    }
  }
}

template double grad_norm<float>(const float*, int64_t);
template double grad_norm<double>(const double*, int64_t);
template double clip_grad_norm<float>(float*, int64_t, double);
template double clip_grad_norm<double>(double*, int64_t, double);
template class AdamW<float>;
template class AdamW<double>;

}  // namespace hysim
