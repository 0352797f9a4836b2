#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cmath>
#include <stdexcept>

#include "core/schedule.h"

using namespace hysim;

namespace {

ScheduleConfig base(const std::string& kind) {
  ScheduleConfig c;
  c.kind = kind;
  c.lr = 2.0;
  c.min_lr_ratio = 0.1;  // lr_min = 0.2
  c.warmup_steps = 10;
  c.total_steps = 100;
  c.decay_fraction = 0.2;
  c.wsds_decays = {0.4, 0.8, 1.0};
  return c;
}

constexpr double kTol = 1e-12;

// lr(s) over [from, to] is non-increasing (dir = -1) or non-decreasing (dir = +1).
template <class F> bool monotone(F lr, int64_t from, int64_t to, int dir) {
  for (int64_t s = from; s < to; ++s)
    if (dir * (lr(s + 1) - lr(s)) < -kTol) return false;
  return true;
}

}  // namespace

TEST_CASE("schedules: linear warmup endpoints (all kinds)") {
  for (const char* kind : {"cosine", "wsd", "wsds"}) {
    CAPTURE(kind);
    const ScheduleConfig c = base(kind);
    CHECK(lr_at(c, 0) == doctest::Approx(0.2).epsilon(kTol));  // lr / W: the first step is not wasted
    CHECK(lr_at(c, 4) == doctest::Approx(1.0).epsilon(kTol));
    CHECK(lr_at(c, 9) == doctest::Approx(2.0).epsilon(kTol));  // the peak at step W - 1
    CHECK(lr_at(c, 10) <= 2.0);
    CHECK(monotone([&](int64_t s) { return lr_at(c, s); }, 0, 9, +1));
  }
  ScheduleConfig c = base("cosine");
  c.warmup_steps = 0;
  CHECK(lr_cosine(c, 0) == 2.0);  // no warmup: the peak at step 0
}

TEST_CASE("schedules: cosine decays to min_lr_ratio * lr on the last step") {
  const ScheduleConfig c = base("cosine");
  CHECK(lr_cosine(c, 99) == doctest::Approx(0.2).epsilon(kTol));
  CHECK(lr_cosine(c, 98) > 0.2);
  CHECK(lr_cosine(c, 500) == doctest::Approx(0.2).epsilon(kTol));  // beyond the run: stays at the minimum
  // Half way from the peak (step 9) to the end (step 99): the midpoint of lr and lr_min.
  CHECK(lr_cosine(c, 54) == doctest::Approx(1.1).epsilon(kTol));
  // One value against the formula: p = (s - 9) / 90.
  CHECK(lr_cosine(c, 30) == doctest::Approx(0.2 + 1.8 * 0.5 * (1 + std::cos(M_PI * 21.0 / 90.0))).epsilon(kTol));
  CHECK(monotone([&](int64_t s) { return lr_cosine(c, s); }, 9, 200, -1));
  ScheduleConfig z = c;
  z.min_lr_ratio = 0;
  CHECK(lr_cosine(z, 99) == doctest::Approx(0.0).epsilon(kTol).scale(1));
}

TEST_CASE("schedules: WSD stable and decay values (linear and 1-sqrt)") {
  ScheduleConfig c = base("wsd");  // 20 decay steps: 80 .. 99
  for (int64_t s = 9; s <= 79; ++s) CHECK(lr_wsd(c, s) == 2.0);
  CHECK(lr_wsd(c, 80) == doctest::Approx(2.0 - 1.8 / 20).epsilon(kTol));
  CHECK(lr_wsd(c, 89) == doctest::Approx(1.1).epsilon(kTol));  // q = 1/2
  CHECK(lr_wsd(c, 99) == doctest::Approx(0.2).epsilon(kTol));
  CHECK(lr_wsd(c, 300) == doctest::Approx(0.2).epsilon(kTol));
  CHECK(monotone([&](int64_t s) { return lr_wsd(c, s); }, 9, 150, -1));
  c.decay_shape = DecayShape::Sqrt;
  CHECK(lr_wsd(c, 79) == 2.0);
  CHECK(lr_wsd(c, 89) == doctest::Approx(0.2 + 1.8 * (1 - std::sqrt(0.5))).epsilon(kTol));
  CHECK(lr_wsd(c, 99) == doctest::Approx(0.2).epsilon(kTol));
  CHECK(monotone([&](int64_t s) { return lr_wsd(c, s); }, 9, 150, -1));
  // 1 - sqrt decays faster early than linear at every decay step.
  ScheduleConfig lin = c;
  lin.decay_shape = DecayShape::Linear;
  for (int64_t s = 80; s < 99; ++s) CHECK(lr_wsd(c, s) < lr_wsd(lin, s));
}

TEST_CASE("schedules: WSDS branches") {
  const ScheduleConfig c = base("wsds");
  const std::vector<WsdsBranch> br = wsds_branches(c);
  REQUIRE(br.size() == 3);
  // Starts at 40, 80, 100; each decays over its last 20%: ends 50, 100, 125.
  CHECK(br[0].start == 40);
  CHECK(br[0].end == 50);
  CHECK(br[1].start == 80);
  CHECK(br[1].end == 100);
  CHECK(br[2].start == 100);
  CHECK(br[2].end == 125);
  // The main run never decays.
  for (int64_t s : {9, 50, 99, 100, 1000}) CHECK(lr_wsds(c, s, -1) == 2.0);
  for (int64_t k = 0; k < 3; ++k) {
    CAPTURE(k);
    // Before its start a branch is the main run (it resumes from the main run's checkpoint).
    for (int64_t s = 0; s < br[k].start; ++s) CHECK(lr_wsds(c, s, k) == lr_wsds(c, s, -1));
    CHECK(lr_wsds(c, br[k].start, k) < 2.0);
    CHECK(lr_wsds(c, br[k].end - 1, k) == doctest::Approx(0.2).epsilon(kTol));
    CHECK(lr_wsds(c, br[k].end - 2, k) > 0.2);
    CHECK(monotone([&](int64_t s) { return lr_wsds(c, s, k); }, 9, br[k].end + 10, -1));
    // Branch k is the WSD schedule of a run of end_k steps.
    ScheduleConfig w = c;
    w.kind = "wsd";
    w.total_steps = br[k].end;
    for (int64_t s = 0; s < br[k].end + 5; ++s) CHECK(lr_wsds(c, s, k) == doctest::Approx(lr_wsd(w, s)).epsilon(kTol));
  }
  CHECK(lr_at(c, 95, 1) == lr_wsds(c, 95, 1));
  CHECK(lr_at(c, 95) == 2.0);  // default branch: the main run
}

TEST_CASE("schedules: invalid settings are rejected with a reason") {
  ScheduleConfig c = base("cosine");
  c.warmup_steps = 200;
  CHECK_THROWS_WITH_AS(lr_cosine(c, 0), doctest::Contains("warmup_steps 200 > total_steps 100"), std::invalid_argument);
  c = base("linear");
  CHECK_THROWS_WITH_AS(lr_at(c, 0), doctest::Contains("kind 'linear'"), std::invalid_argument);
  c = base("wsd");
  c.decay_fraction = 0.95;  // 95 decay steps overlap the 10 warmup steps
  CHECK_THROWS_WITH_AS(lr_wsd(c, 0), doctest::Contains("overlaps the warmup"), std::invalid_argument);
  c = base("wsds");
  c.wsds_decays.clear();
  CHECK_THROWS_WITH_AS(lr_wsds(c, 0, -1), doctest::Contains("wsds_decays is empty"), std::invalid_argument);
  c = base("wsds");
  c.wsds_decays = {0.05};  // step 5, inside the warmup
  CHECK_THROWS_WITH_AS(lr_wsds(c, 0, 0), doctest::Contains("before the warmup"), std::invalid_argument);
  c = base("wsds");
  CHECK_THROWS_AS(lr_wsds(c, 0, 3), std::invalid_argument);
  CHECK_THROWS_AS(lr_cosine(base("cosine"), -1), std::invalid_argument);
  CHECK(schedule_problems(base("cosine")).empty());
  CHECK(schedule_problems(base("wsd")).empty());
  CHECK(schedule_problems(base("wsds")).empty());
}
