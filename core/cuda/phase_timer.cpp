#include "core/cuda/phase_timer.h"

#include <stdexcept>

#include "core/cuda/check.h"

namespace hysim::cuda {

PhaseTimer& PhaseTimer::global() {
  static PhaseTimer timer;
  return timer;
}

PhaseTimer::~PhaseTimer() {
  for (const Span& s : spans_) cudaEventDestroy(s.start), cudaEventDestroy(s.stop);
}

void PhaseTimer::begin(cudaStream_t s, const char* name) {
  Span span{name, nullptr, nullptr};
  CUDA_CHECK(cudaEventCreate(&span.start), std::string("phase ") + name);
  CUDA_CHECK(cudaEventCreate(&span.stop), std::string("phase ") + name);
  CUDA_CHECK(cudaEventRecord(span.start, s), std::string("phase ") + name);
  open_.push_back(spans_.size());
  spans_.push_back(span);
}

void PhaseTimer::end(cudaStream_t s) {
  if (open_.empty()) throw std::logic_error("PhaseTimer::end without a matching begin");
  const Span& span = spans_[open_.back()];
  open_.pop_back();
  CUDA_CHECK(cudaEventRecord(span.stop, s), std::string("phase ") + span.name);
}

std::vector<PhaseTotal> PhaseTimer::collect() {
  if (!open_.empty()) throw std::logic_error("PhaseTimer::collect with a span still open");
  std::vector<PhaseTotal> out;
  for (const Span& s : spans_) {
    CUDA_CHECK(cudaEventSynchronize(s.stop), std::string("phase ") + s.name);
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, s.start, s.stop), std::string("phase ") + s.name);
    PhaseTotal* t = nullptr;
    for (PhaseTotal& o : out)
      if (o.name == s.name) t = &o;
    if (!t) t = &out.emplace_back(PhaseTotal{s.name, 0, 0});
    t->ms += ms, ++t->count;
    cudaEventDestroy(s.start), cudaEventDestroy(s.stop);
  }
  spans_.clear();
  return out;
}

}  // namespace hysim::cuda
