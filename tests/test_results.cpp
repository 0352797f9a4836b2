#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "core/hdf5_io.h"
#include "core/results.h"
#include "core/version.h"
#include "tests/test_util.h"

using namespace hysim;
namespace fs = std::filesystem;
using hysim::test::TempDir;

namespace {

MetricsRow row(int64_t step) {
  MetricsRow r;
  r.step = step;
  r.tokens = step * 4096;
  r.flops = 6.0 * 1e6 * double(r.tokens);
  r.train_loss = 10.0 / double(step + 1);
  if (step % 2 == 0) r.val_loss = 11.0 / double(step + 1);  // evals on even steps only
  r.lr = 3e-4 * double(step) / 10.0;
  r.grad_norm = 1.5 + double(step);
  r.tokens_per_s = 1e5 + double(step);
  return r;
}

RunAttributes attrs() {
  RunAttributes a;
  a.config_text = "[model]\npattern = GGGA\n[train]\nsteps = 5\n";
  a.backend = "cpu";
  a.extra = {{"experiment", "unit"}, {"run", "r1"}};
  return a;
}

bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

// Run a shell command, returning its exit status and stdout.
int run(const std::string& cmd, std::string* out) {
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p);
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out->append(buf, n);
  return pclose(p);
}

bool python_has_h5py() { return std::system("/usr/bin/python3 -c 'import h5py' >/dev/null 2>&1") == 0; }

}  // namespace

TEST_CASE("results: the file follows the schema after flush; a second flush appends") {
  TempDir tmp;
  const std::string path = results_path((tmp.dir / "results").string(), "unit", "r1");
  CHECK(path == (tmp.dir / "results" / "unit" / "r1.h5").string());
  RunResults rr(path, attrs());
  CHECK(fs::is_directory(tmp.dir / "results" / "unit"));
  rr.set_model_counts({{"embedding", 1024}, {"attention", 4096}, {"total", 5120}});
  for (int64_t s = 0; s < 3; ++s) rr.append_metrics(row(s));
  rr.set_eval("parity", 256, 0.75, 0.5, 2);
  rr.add_event(1, "NaN loss; update skipped");
  rr.flush();
  CHECK_FALSE(fs::exists(path + ".tmp"));

  {
    h5::File f = h5::File::open(path);
    CHECK(f.attr_string("config") == attrs().config_text);
    CHECK(f.attr_string("version") == version_string());
    CHECK(f.attr_string("git_hash") == git_hash());
    CHECK(f.attr_string("backend") == "cpu");
    CHECK_FALSE(f.attr_string("host").empty());
    CHECK(std::regex_match(f.attr_string("created"), std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")));
    CHECK(f.attr_string("experiment") == "unit");
    CHECK(f.list_datasets(true) ==
          std::vector<std::string>{"eval/parity/256/accuracy", "eval/parity/256/loss", "events/message", "events/step",
                                   "metrics/flops", "metrics/grad_norm", "metrics/lr", "metrics/step", "metrics/tokens",
                                   "metrics/tokens_per_s", "metrics/train_loss", "metrics/val_loss"});
    CHECK(f.read<int64_t>("metrics/step") == std::vector<int64_t>{0, 1, 2});
    CHECK(f.read<int64_t>("metrics/tokens") == std::vector<int64_t>{0, 4096, 8192});
    auto val = f.read<double>("metrics/val_loss");
    REQUIRE(val.size() == 3);
    CHECK(val[0] == 11.0);
    CHECK(std::isnan(val[1]));
    CHECK(f.read<double>("metrics/train_loss")[2] == row(2).train_loss);
    CHECK(f.read<double>("eval/parity/256/accuracy") == std::vector<double>{0.75});
    CHECK(f.open_group("eval/parity/256").attr<int64_t>("step") == 2);
    CHECK(f.open_group("model").attr<int64_t>("attention") == 4096);
    CHECK(f.read<int64_t>("events/step") == std::vector<int64_t>{1});
    CHECK(f.read_strings("events/message") == std::vector<std::string>{"NaN loss; update skipped"});
  }

  // A reader that opened the first version keeps seeing it whole while the run
  // flushes again (the new file replaces it by rename).
  h5::File reader = h5::File::open(path);
  for (int64_t s = 3; s < 5; ++s) rr.append_metrics(row(s));
  rr.set_eval("parity", 256, 0.875);  // replaces
  rr.set_eval("parity", 1024, 0.5);
  rr.add_event(4, "lr warmup done");
  rr.flush();
  CHECK(reader.read<int64_t>("metrics/step").size() == 3);
  reader.close();

  h5::File f = h5::File::open(path);
  CHECK(f.read<int64_t>("metrics/step") == std::vector<int64_t>{0, 1, 2, 3, 4});
  for (const char* col : {"tokens", "flops", "train_loss", "val_loss", "lr", "grad_norm", "tokens_per_s"})
    CHECK(f.open_dataset(std::string("metrics/") + col).size() == 5);
  CHECK(f.read<double>("metrics/grad_norm") == std::vector<double>{1.5, 2.5, 3.5, 4.5, 5.5});
  CHECK(f.read<double>("eval/parity/256/accuracy") == std::vector<double>{0.875});
  CHECK(std::isnan(f.read<double>("eval/parity/256/loss")[0]));
  CHECK(f.open_group("eval/parity").list_groups() == std::vector<std::string>{"1024", "256"});
  CHECK(f.read<int64_t>("events/step") == std::vector<int64_t>{1, 4});
  // Rows appended after the last flush are not in the file (a killed run keeps its last flush).
  rr.append_metrics(row(5));
  CHECK(h5::File::open(path).read<int64_t>("metrics/step").size() == 5);
}

TEST_CASE("results: load reads back everything; truncate_after drops rows of a resumed run") {
  TempDir tmp;
  const std::string path = (tmp.dir / "r.h5").string();
  RunResults rr(path, attrs());
  rr.flush();  // an empty record is a valid file
  CHECK(RunResults::load(path).metrics().empty());
  for (int64_t s = 0; s < 6; ++s) rr.append_metrics(row(s));
  rr.set_eval("mqar", 512, 0.25, 1.25, 5);
  rr.add_event(2, "a");
  rr.add_event(5, "b");
  rr.set_model_counts({{"total", 77}});
  rr.flush();

  RunResults back = RunResults::load(path);
  CHECK(back.attributes().config_text == attrs().config_text);
  CHECK(back.attributes().created == rr.attributes().created);
  CHECK(back.attributes().extra == attrs().extra);
  REQUIRE(back.metrics().size() == 6);
  for (size_t i = 0; i < 6; ++i) {
    const auto &a = back.metrics()[i], &b = rr.metrics()[i];
    CHECK(a.step == b.step);
    CHECK(a.tokens == b.tokens);
    CHECK(a.flops == b.flops);
    CHECK(a.train_loss == b.train_loss);
    CHECK((a.val_loss == b.val_loss || (std::isnan(a.val_loss) && std::isnan(b.val_loss))));
    CHECK(a.lr == b.lr);
    CHECK(a.grad_norm == b.grad_norm);
    CHECK(a.tokens_per_s == b.tokens_per_s);
  }
  CHECK(back.evals().at("mqar").at(512).accuracy == 0.25);
  CHECK(back.evals().at("mqar").at(512).loss == 1.25);
  CHECK(back.evals().at("mqar").at(512).step == 5);
  CHECK(back.events().size() == 2);
  CHECK(back.model_counts() == std::map<std::string, int64_t>{{"total", 77}});

  back.truncate_after(3);
  CHECK(back.metrics().size() == 4);
  CHECK(back.events().size() == 1);
  back.flush();
  CHECK(h5::File::open(path).read<int64_t>("metrics/step") == std::vector<int64_t>{0, 1, 2, 3});

  CHECK_THROWS_AS(rr.set_eval("a/b", 1, 0.0), std::invalid_argument);
  RunAttributes bad = attrs();
  bad.extra["config"] = "x";
  CHECK_THROWS_AS(RunResults((tmp.dir / "x.h5").string(), bad), std::invalid_argument);
}

TEST_CASE("results: scripts/read_results.py and the README example read a run with h5py alone") {
  if (!python_has_h5py()) {
    MESSAGE("skipped: /usr/bin/python3 has no h5py (apt-get install python3-h5py)");
    return;
  }
  TempDir tmp;
  const std::string path = (tmp.dir / "run.h5").string();
  RunResults rr(path, attrs());
  rr.set_model_counts({{"total", 5120}});
  for (int64_t s = 0; s < 4; ++s) rr.append_metrics(row(s));
  rr.set_eval("parity", 256, 0.75, 0.5, 3);
  rr.add_event(1, "NaN loss; update skipped");
  rr.flush();

  std::string out;
  CHECK(run("/usr/bin/python3 " HYSIM_SOURCE_DIR "/scripts/read_results.py " + path + " --config 2>&1", &out) == 0);
  MESSAGE(out);
  CHECK(contains(out, "backend: cpu"));
  CHECK(contains(out, "pattern = GGGA"));
  CHECK(contains(out, "model: total=5120"));
  CHECK(contains(out, "metrics: 4 rows"));
  CHECK(std::regex_search(out, std::regex(R"(\n +3 +12288 +7\.3728e\+10 +2\.5 +nan +9e-05 +4\.5 +100003\n)")));
  CHECK(contains(out, "eval parity length 256: accuracy 0.75 loss 0.5 step 3"));
  CHECK(contains(out, "event at step 1: NaN loss; update skipped"));

  // The h5py example in results/README.md (first ```python block) runs on this file.
  std::ifstream readme(HYSIM_SOURCE_DIR "/results/README.md");
  REQUIRE(readme.good());
  std::stringstream ss;
  ss << readme.rdbuf();
  const std::string md = ss.str();
  const size_t start = md.find("```python\n");
  REQUIRE(start != std::string::npos);
  const size_t end = md.find("```", start + 10);
  REQUIRE(end != std::string::npos);
  const std::string example = (tmp.dir / "example.py").string();
  std::ofstream(example) << md.substr(start + 10, end - start - 10);
  out.clear();
  CHECK(run("/usr/bin/python3 " + example + " " + path + " 2>&1", &out) == 0);
  MESSAGE(out);
  CHECK(contains(out, "steps: [0 1 2 3]"));
  CHECK(contains(out, "parity 256 0.75"));
}
