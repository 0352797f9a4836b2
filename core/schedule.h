// Learning-rate schedules as pure functions of the step (0-based optimizer step; a
// resumed run gets the same lr at the same step).
//
// Notation: lr = peak, lr_min = min_lr_ratio * lr, W = warmup_steps, S = total_steps.
//
// Warmup (all schedules): lr(s) = lr * (s + 1) / W for s < W: it starts at lr / W (not 0,
// so the first step is not wasted) and reaches the peak at step W - 1.
//
// cosine: after the warmup, a half cosine from lr at step W - 1 to lr_min at the last
//   step S - 1:  lr(s) = lr_min + (lr - lr_min) (1 + cos(pi p)) / 2,
//   p = (s - (W-1)) / (S - W)   (p = s / (S-1) without warmup); lr_min from S - 1 on.
//
// wsd (warmup-stable-decay): constant lr until the decay phase, which takes the last
//   n_d = round(decay_fraction * S) steps and ends at lr_min on the last step:
//   q = (s - (S-1-n_d)) / n_d in (0, 1] for s > S-1-n_d,
//   linear: lr(s) = lr - (lr - lr_min) q;  sqrt ("1-sqrt"): lr_min + (lr - lr_min)(1 - sqrt(q)).
//
// wsds (WSD with decay branches): one finished model per token budget from one run.
//   The main run (branch -1) warms up and then stays at the peak lr for as long as it runs;
//   it never decays, and it saves a checkpoint at the start of every branch.
//   Branch k starts from the main run's checkpoint at step start_k = round(wsds_decays[k] * S)
//   (the state after steps 0 .. start_k - 1) and decays over its own last decay_fraction of
//   steps: it ends at end_k = round(start_k / (1 - decay_fraction)) (so n_k = end_k - start_k
//   decay steps, e.g. 20% of the branch's end_k steps), reaching lr_min at step end_k - 1.
//   Branch k thus equals a WSD run of end_k total steps, and costs only n_k extra steps:
//   a model finished for each budget end_k (tokens = end_k * tokens per step) at the price
//   of one run of max(start_k) steps plus the short decays, instead of one run per budget.
//   lr_wsds(c, s, k) is the lr at step s of branch k (the main run's lr for s < start_k).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace hysim {

enum class DecayShape { Linear, Sqrt };  // WSD decay: linear, or 1 - sqrt (Hägele et al. 2024)

struct ScheduleConfig {
  std::string kind = "cosine";  // cosine | wsd | wsds
  double lr = 3e-3;             // peak
  double min_lr_ratio = 0.1;    // the decay ends at min_lr_ratio * lr
  int64_t warmup_steps = 0;
  int64_t total_steps = 1000;   // S: optimizer steps of the run (wsds: the unit of wsds_decays)
  double decay_fraction = 0.2;  // wsd: of S; wsds: of each branch's length
  DecayShape decay_shape = DecayShape::Linear;  // wsd and wsds
  std::vector<double> wsds_decays;              // wsds: branch starts as fractions of S
};

// Every violated rule, one message each ("warmup_steps 300 > total_steps 200"); empty when valid.
std::vector<std::string> schedule_problems(const ScheduleConfig& c);

// Each throws std::invalid_argument with schedule_problems(c) if c is invalid.
double lr_cosine(const ScheduleConfig& c, int64_t step);
double lr_wsd(const ScheduleConfig& c, int64_t step);
// branch -1: the main (never-decaying) run; 0 .. wsds_decays.size()-1: a decay branch.
double lr_wsds(const ScheduleConfig& c, int64_t step, int64_t branch);

struct WsdsBranch {
  int64_t start;  // first decaying step = the main-run checkpoint (step count) it resumes from
  int64_t end;    // steps of the finished branch: its last step is end - 1
};
std::vector<WsdsBranch> wsds_branches(const ScheduleConfig& c);

// Dispatch on c.kind (branch is used by wsds only).
double lr_at(const ScheduleConfig& c, int64_t step, int64_t branch = -1);

}  // namespace hysim
