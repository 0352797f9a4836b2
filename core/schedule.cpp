#include "core/schedule.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <stdexcept>

namespace hysim {

namespace {

constexpr double kPi = 3.14159265358979323846;

std::string num(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", x);
  return buf;
}

void check(const ScheduleConfig& c, int64_t step) {
  std::vector<std::string> p = schedule_problems(c);
  if (step < 0) p.push_back("step " + std::to_string(step) + " < 0");
  if (p.empty()) return;
  std::string msg = "learning-rate schedule:";
  for (const std::string& s : p) msg += "\n  " + s;
  throw std::invalid_argument(msg);
}

// Warmup, then lr through step last_stable, then a decay over n_decay steps ending at
// lr_min on step last_stable + n_decay (and after it).
double warmup_stable_decay(const ScheduleConfig& c, int64_t s, int64_t last_stable, int64_t n_decay) {
  const int64_t W = c.warmup_steps;
  if (s < W - 1) return c.lr * double(s + 1) / double(W);
  if (s <= last_stable || n_decay <= 0) return c.lr;
  const double lr_min = c.min_lr_ratio * c.lr;
  const double q = std::min(1.0, double(s - last_stable) / double(n_decay));
  const double f = c.decay_shape == DecayShape::Linear ? 1 - q : 1 - std::sqrt(q);
  return lr_min + (c.lr - lr_min) * f;
}

int64_t wsd_decay_steps(const ScheduleConfig& c) { return std::llround(c.decay_fraction * double(c.total_steps)); }

}  // namespace

std::vector<WsdsBranch> wsds_branches(const ScheduleConfig& c) {
  std::vector<WsdsBranch> b;
  for (double f : c.wsds_decays) {
    const int64_t start = std::llround(f * double(c.total_steps));
    b.push_back({start, std::llround(double(start) / (1 - c.decay_fraction))});
  }
  return b;
}

std::vector<std::string> schedule_problems(const ScheduleConfig& c) {
  std::vector<std::string> p;
  if (c.kind != "cosine" && c.kind != "wsd" && c.kind != "wsds")
    p.push_back("kind '" + c.kind + "' must be cosine, wsd or wsds");
  if (!(std::isfinite(c.lr) && c.lr >= 0)) p.push_back("lr " + num(c.lr) + " must be finite and >= 0");
  if (!(c.min_lr_ratio >= 0 && c.min_lr_ratio <= 1)) p.push_back("min_lr_ratio " + num(c.min_lr_ratio) + " must be in [0, 1]");
  if (c.total_steps < 1) p.push_back("total_steps " + std::to_string(c.total_steps) + " must be >= 1");
  if (c.warmup_steps < 0) p.push_back("warmup_steps " + std::to_string(c.warmup_steps) + " must be >= 0");
  if (c.warmup_steps > c.total_steps)
    p.push_back("warmup_steps " + std::to_string(c.warmup_steps) + " > total_steps " + std::to_string(c.total_steps));
  if (c.kind == "wsd") {
    if (!(c.decay_fraction >= 0 && c.decay_fraction <= 1))
      p.push_back("decay_fraction " + num(c.decay_fraction) + " must be in [0, 1]");
    else if (wsd_decay_steps(c) > c.total_steps - c.warmup_steps)
      p.push_back("the decay (" + std::to_string(wsd_decay_steps(c)) + " steps) overlaps the warmup (" +
                  std::to_string(c.warmup_steps) + " of " + std::to_string(c.total_steps) + " steps)");
  }
  if (c.kind == "wsds") {
    if (!(c.decay_fraction > 0 && c.decay_fraction < 1))
      p.push_back("decay_fraction " + num(c.decay_fraction) + " must be in (0, 1) for wsds");
    if (c.wsds_decays.empty()) p.push_back("wsds_decays is empty: wsds needs at least one decay branch");
    if (p.empty()) {
      const std::vector<WsdsBranch> br = wsds_branches(c);
      for (size_t k = 0; k < br.size(); ++k) {
        const std::string which = "wsds branch " + std::to_string(k) + " (decay at " + num(c.wsds_decays[k]) + ")";
        if (!(c.wsds_decays[k] > 0)) p.push_back(which + ": the decay start must be > 0");
        else if (br[k].start < std::max<int64_t>(c.warmup_steps, 1))
          p.push_back(which + " starts at step " + std::to_string(br[k].start) + ", before the warmup (" +
                      std::to_string(c.warmup_steps) + " steps) ends");
        else if (br[k].end - br[k].start < 1)
          p.push_back(which + " has no decay steps (start " + std::to_string(br[k].start) + ")");
      }
    }
  }
  return p;
}

double lr_cosine(const ScheduleConfig& c, int64_t s) {
  check(c, s);
  const int64_t W = c.warmup_steps, S = c.total_steps;
  if (s < W - 1) return c.lr * double(s + 1) / double(W);
  const int64_t peak = W > 0 ? W - 1 : 0;
  const int64_t len = S - 1 - peak;  // steps from the peak to the last step
  const double lr_min = c.min_lr_ratio * c.lr;
  if (s == peak) return c.lr;
  if (len <= 0) return lr_min;  // s is beyond the run's last step
  const double p = std::min(1.0, double(s - peak) / double(len));
  return lr_min + (c.lr - lr_min) * 0.5 * (1 + std::cos(kPi * p));
}

double lr_wsd(const ScheduleConfig& c, int64_t s) {
  check(c, s);
  const int64_t n_decay = wsd_decay_steps(c);
  return warmup_stable_decay(c, s, c.total_steps - 1 - n_decay, n_decay);
}

double lr_wsds(const ScheduleConfig& c, int64_t s, int64_t branch) {
  check(c, s);
  if (branch < -1 || branch >= int64_t(c.wsds_decays.size()))
    throw std::invalid_argument("learning-rate schedule: wsds branch " + std::to_string(branch) + " not in [-1, " +
                                std::to_string(c.wsds_decays.size()) + ")");
  if (branch == -1) return warmup_stable_decay(c, s, INT64_MAX, 0);
  const WsdsBranch b = wsds_branches(c)[branch];
  return warmup_stable_decay(c, s, b.start - 1, b.end - b.start);
}

double lr_at(const ScheduleConfig& c, int64_t step, int64_t branch) {
  if (c.kind == "wsd") return lr_wsd(c, step);
  if (c.kind == "wsds") return lr_wsds(c, step, branch);
  return lr_cosine(c, step);  // validates c.kind too
}

}  // namespace hysim
