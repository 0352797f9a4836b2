// Where the GPU time of a training step goes: named spans of stream work, each between two
// CUDA events, summed per name. Off unless enabled (bench_gpu_model turns it on for one
// extra step after the timed ones); when off a span costs one branch. Spans may nest (the
// inner one is also counted in the outer one).
#pragma once
#include <cuda_runtime.h>

#include <string>
#include <vector>

namespace hysim::cuda {

struct PhaseTotal {
  std::string name;
  double ms = 0;
  int count = 0;
};

class PhaseTimer {
 public:
  static PhaseTimer& global();  // the process's timer (one per process: spans of every context)
  ~PhaseTimer();
  void enable(bool on) { enabled_ = on; }
  bool enabled() const { return enabled_; }
  void begin(cudaStream_t s, const char* name);
  void end(cudaStream_t s);
  // Totals per name in order of first appearance; waits for the spans' events, then clears.
  std::vector<PhaseTotal> collect();

 private:
  struct Span {
    const char* name;
    cudaEvent_t start, stop;
  };
  bool enabled_ = false;
  std::vector<Span> spans_;
  std::vector<size_t> open_;  // indices of spans begun and not yet ended
};

// RAII span on the global timer: PhaseScope span(ctx.stream, "bwd G");
class PhaseScope {
 public:
  PhaseScope(cudaStream_t s, const char* name) : s_(s), on_(PhaseTimer::global().enabled()) {
    if (on_) PhaseTimer::global().begin(s, name);
  }
  ~PhaseScope() {
    if (on_) PhaseTimer::global().end(s_);
  }
  PhaseScope(const PhaseScope&) = delete;
  PhaseScope& operator=(const PhaseScope&) = delete;

 private:
  cudaStream_t s_;
  bool on_;
};

}  // namespace hysim::cuda
