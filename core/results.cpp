#include "core/results.h"

#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <filesystem>
#include <stdexcept>

#include "core/hdf5_io.h"
#include "core/version.h"

namespace hysim {

namespace {

constexpr const char* kFormat = "hysim-results";
constexpr int64_t kFormatVersion = 1;
// Root attributes with a fixed meaning; RunAttributes::extra may not reuse them.
const char* const kReservedAttrs[] = {"format", "format_version", "config", "version", "git_hash", "host", "backend", "created"};

std::string hostname() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

bool is_reserved(const std::string& name) {
  return std::find_if(std::begin(kReservedAttrs), std::end(kReservedAttrs),
                      [&](const char* r) { return name == r; }) != std::end(kReservedAttrs);
}

// The metrics columns, in file order, with their accessors.
struct DoubleColumn {
  const char* name;
  double MetricsRow::*field;
};
constexpr DoubleColumn kDoubleColumns[] = {
    {"flops", &MetricsRow::flops},   {"train_loss", &MetricsRow::train_loss}, {"val_loss", &MetricsRow::val_loss},
    {"lr", &MetricsRow::lr},         {"grad_norm", &MetricsRow::grad_norm},   {"tokens_per_s", &MetricsRow::tokens_per_s},
};

}  // namespace

std::string results_path(const std::string& results_dir, const std::string& experiment, const std::string& run) {
  return (std::filesystem::path(results_dir) / experiment / (run + ".h5")).string();
}

std::string iso_time_now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

RunResults::RunResults(std::string path, RunAttributes attributes) : path_(std::move(path)), attrs_(std::move(attributes)) {
  if (attrs_.version.empty()) attrs_.version = version_string();
  if (attrs_.git_hash.empty()) attrs_.git_hash = git_hash();
  if (attrs_.host.empty()) attrs_.host = hostname();
  if (attrs_.created.empty()) attrs_.created = iso_time_now();
  for (const auto& [k, v] : attrs_.extra)
    if (is_reserved(k)) throw std::invalid_argument("results " + path_ + ": extra attribute '" + k + "' is reserved");
  const auto dir = std::filesystem::path(path_).parent_path();
  std::error_code ec;
  if (!dir.empty() && !std::filesystem::create_directories(dir, ec) && ec)
    throw std::runtime_error("results " + path_ + ": cannot create directory " + dir.string() + " (" + ec.message() + ")");
}

void RunResults::append_metrics(const MetricsRow& row) { metrics_.push_back(row); }

void RunResults::set_eval(const std::string& task, int64_t length, double accuracy, double loss, int64_t step) {
  if (task.empty() || task.find('/') != std::string::npos)
    throw std::invalid_argument("results " + path_ + ": invalid eval task name '" + task + "'");
  evals_[task][length] = EvalResult{accuracy, loss, step};
}

void RunResults::add_event(int64_t step, const std::string& message) { events_.push_back({step, message}); }

void RunResults::set_model_counts(const std::map<std::string, int64_t>& counts) { model_counts_ = counts; }

void RunResults::truncate_after(int64_t step) {
  std::erase_if(metrics_, [&](const MetricsRow& r) { return r.step > step; });
  std::erase_if(events_, [&](const RunEvent& e) { return e.step > step; });
}

void RunResults::flush() {
  h5::write_file_atomically(path_, [&](h5::File& f) {
    f.set_attr("format", kFormat);
    f.set_attr("format_version", kFormatVersion);
    f.set_attr("config", attrs_.config_text);
    f.set_attr("version", attrs_.version);
    f.set_attr("git_hash", attrs_.git_hash);
    f.set_attr("host", attrs_.host);
    f.set_attr("backend", attrs_.backend);
    f.set_attr("created", attrs_.created);
    for (const auto& [k, v] : attrs_.extra) f.set_attr(k, v);

    const size_t n = metrics_.size();
    std::vector<int64_t> ints(n);
    std::vector<double> doubles(n);
    for (size_t i = 0; i < n; ++i) ints[i] = metrics_[i].step;
    f.write("metrics/step", ints);
    for (size_t i = 0; i < n; ++i) ints[i] = metrics_[i].tokens;
    f.write("metrics/tokens", ints);
    for (const auto& col : kDoubleColumns) {
      for (size_t i = 0; i < n; ++i) doubles[i] = metrics_[i].*col.field;
      f.write(std::string("metrics/") + col.name, doubles);
    }

    f.create_group("eval");
    for (const auto& [task, by_length] : evals_)
      for (const auto& [length, e] : by_length) {
        h5::Group g = f.create_group("eval/" + task + "/" + std::to_string(length));
        g.write_scalar("accuracy", e.accuracy);
        g.write_scalar("loss", e.loss);
        g.set_attr("step", e.step);
      }

    {
      h5::Group model = f.create_group("model");
      for (const auto& [kind, count] : model_counts_) model.set_attr(kind, count);
    }

    std::vector<int64_t> event_steps;
    std::vector<std::string> event_messages;
    for (const auto& e : events_) event_steps.push_back(e.step), event_messages.push_back(e.message);
    f.write("events/step", event_steps);
    f.write_strings("events/message", event_messages);
  });
}

RunResults RunResults::load(const std::string& path) {
  h5::File f = h5::File::open(path);
  if (!f.has_attr("format") || f.attr_string("format") != kFormat)
    throw std::runtime_error(path + ": not a hysim results file (no format attribute)");
  RunResults r;
  r.path_ = path;
  r.attrs_.config_text = f.attr_string("config");
  r.attrs_.version = f.attr_string("version");
  r.attrs_.git_hash = f.attr_string("git_hash");
  r.attrs_.host = f.attr_string("host");
  r.attrs_.backend = f.attr_string("backend");
  r.attrs_.created = f.attr_string("created");
  for (const auto& name : f.attr_names())
    if (!is_reserved(name)) r.attrs_.extra[name] = f.attr_string(name);

  const auto steps = f.read<int64_t>("metrics/step");
  const auto tokens = f.read<int64_t>("metrics/tokens");
  const size_t n = steps.size();
  r.metrics_.resize(n);
  auto check_length = [&](size_t len, const std::string& name) {
    if (len != n)
      throw std::runtime_error(path + ": metrics/" + name + " has " + std::to_string(len) + " rows, metrics/step has " +
                               std::to_string(n));
  };
  check_length(tokens.size(), "tokens");
  for (size_t i = 0; i < n; ++i) r.metrics_[i].step = steps[i], r.metrics_[i].tokens = tokens[i];
  for (const auto& col : kDoubleColumns) {
    const auto v = f.read<double>(std::string("metrics/") + col.name);
    check_length(v.size(), col.name);
    for (size_t i = 0; i < n; ++i) r.metrics_[i].*col.field = v[i];
  }

  h5::Group eval = f.open_group("eval");
  for (const auto& task : eval.list_groups()) {
    h5::Group tg = eval.open_group(task);
    for (const auto& length : tg.list_groups()) {
      h5::Group lg = tg.open_group(length);
      EvalResult e;
      e.accuracy = lg.read<double>("accuracy").at(0);
      e.loss = lg.read<double>("loss").at(0);
      e.step = lg.attr<int64_t>("step");
      r.evals_[task][std::stoll(length)] = e;
    }
  }

  h5::Group model = f.open_group("model");
  for (const auto& kind : model.attr_names()) r.model_counts_[kind] = model.attr<int64_t>(kind);

  const auto event_steps = f.read<int64_t>("events/step");
  const auto event_messages = f.read_strings("events/message");
  if (event_steps.size() != event_messages.size())
    throw std::runtime_error(path + ": events/step and events/message differ in length");
  for (size_t i = 0; i < event_steps.size(); ++i) r.events_.push_back({event_steps[i], event_messages[i]});
  return r;
}

}  // namespace hysim
