#include "experiments/expressivity.h"

#include <sched.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fcntl.h>
#include <filesystem>
#include <iterator>
#include <map>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "core/hdf5_io.h"
#include "core/results.h"
#include "scaling/accounting.h"
#include "synthetic_tasks/registry.h"

extern char** environ;

namespace hysim {
namespace fs = std::filesystem;

const std::vector<Architecture>& architecture_presets() {
  static const std::vector<Architecture> presets = {
      {"transformer", "full attention in every layer", {"--model.pattern=A"}},
      // Olmo 2/3 place the norm after attention (h = x + norm(attn(x)), the config default);
      // with N(0, 0.02) embeddings that drowns the token identity in a pure transformer, which
      // then stalls on recall (README, Expressivity). This is the GPT/Llama placement.
      {"transformer_prenorm", "full attention in every layer, pre-norm (h = x + attn(norm(x)))",
       {"--model.pattern=A", "--model.norm_attention=pre"}},
      {"transformer_nope", "full attention in every layer, no positional encoding", {"--model.pattern=A", "--model.pos_encoding=none"}},
      {"transformer_yarn", "full attention, RoPE; YaRN at lengths beyond training",
       {"--model.pattern=A", "--eval.context_extension=yarn"}},
      {"transformer_drope", "full attention trained with RoPE, evaluated without it (DroPE, no recalibration)",
       {"--model.pattern=A", "--eval.context_extension=drop_pe"}},
      {"swa", "sliding-window attention in every layer", {"--model.pattern=W"}},
      {"gdn", "Gated DeltaNet, negative eigenvalues (beta in [0, 2])",
       {"--model.pattern=G", "--model.gdn_allow_neg_eigval=true"}},
      {"gdn_pos", "Gated DeltaNet, positive eigenvalues only (beta in [0, 1])",
       {"--model.pattern=G", "--model.gdn_allow_neg_eigval=false"}},
      {"mamba2", "Mamba2 in every layer", {"--model.pattern=M"}},
      {"hybrid_3to1", "3 GDN : 1 attention (Olmo Hybrid)", {"--model.pattern=GGGA", "--model.gdn_allow_neg_eigval=true"}},
      {"hybrid_1to1", "1 GDN : 1 attention", {"--model.pattern=GA", "--model.gdn_allow_neg_eigval=true"}},
      {"mamba2_hybrid_3to1", "3 Mamba2 : 1 attention", {"--model.pattern=MMMA"}},
  };
  return presets;
}

const Architecture& find_architecture(const std::string& name) {
  for (const Architecture& a : architecture_presets())
    if (a.name == name) return a;
  std::string list;
  for (const Architecture& a : architecture_presets()) list += (list.empty() ? "" : ", ") + a.name;
  throw std::invalid_argument("grid.architectures: unknown architecture '" + name + "' (available: " + list + ")");
}

namespace {

struct Cell {
  std::string arch, task, task_args, name, results;
  int64_t seed = 0;
};

// One grid column: a task with its arguments, and the label that names it in cell files
// and the table: "mqar-n_pairs8-key_vocab32" for "mqar" with "n_pairs=8 key_vocab=32"
// (file-name characters only: '=' dropped, list commas as '.'); the bare name for the
// defaults.
struct GridTask {
  std::string kind, args, label;
  double chance = 0;  // the task's chance accuracy
};

std::vector<GridTask> grid_tasks(const GridConfig& g) {
  std::vector<std::string> args;
  std::string item;
  std::istringstream in(g.task_args);
  while (std::getline(in, item, ';')) args.push_back(item);
  if (args.size() > g.tasks.size())
    throw std::invalid_argument("grid.task_args = " + g.task_args + " gives arguments for " +
                                std::to_string(args.size()) + " tasks but grid.tasks names " +
                                std::to_string(g.tasks.size()));
  std::vector<GridTask> out;
  for (size_t i = 0; i < g.tasks.size(); ++i) {
    GridTask t{g.tasks[i], i < args.size() ? args[i] : "", g.tasks[i]};
    std::istringstream words(t.args);
    std::vector<std::string> kv{std::istream_iterator<std::string>(words), std::istream_iterator<std::string>()};
    if (kv.size() == 1 && kv[0] == "-") kv.clear();  // "-": the task's defaults
    t.args.clear();
    for (const std::string& w : kv) {
      t.args += (t.args.empty() ? "" : " ") + w;
      std::string part = w;
      part.erase(std::remove(part.begin(), part.end(), '='), part.end());
      std::replace(part.begin(), part.end(), ',', '.');
      t.label += "-" + part;
    }
    t.chance = make_task(t.kind, t.args, 0)->chance_accuracy();  // also checks kind and args up front
    for (const GridTask& o : out)
      if (o.label == t.label)
        throw std::invalid_argument("grid.tasks: task '" + t.label + "' appears twice with the same arguments");
    out.push_back(t);
  }
  return out;
}

// The user's overrides less the keys in `drop` ("--section.key=" prefixes) and less those
// the preset sets (the preset defines its column), then the preset's.
std::vector<std::string> preset_overrides(const std::vector<std::string>& user, const Architecture& a,
                                          const std::vector<std::string>& drop = {}) {
  auto key_of = [](const std::string& o) { return o.substr(0, o.find('=') + 1); };
  std::vector<std::string> out;
  for (const std::string& o : user) {
    const std::string k = key_of(o);
    const bool dropped = std::find(drop.begin(), drop.end(), k) != drop.end() ||
                         std::any_of(a.overrides.begin(), a.overrides.end(),
                                     [&](const std::string& p) { return key_of(p) == k; });
    if (!dropped) out.push_back(o);
  }
  out.insert(out.end(), a.overrides.begin(), a.overrides.end());
  return out;
}

// The config of a preset's cells (to count its parameters).
Config with_overrides(const ExpressivityOptions& opt, const Architecture& a) {
  return parse_config(opt.config_path, preset_overrides(opt.overrides, a));
}

bool cell_done(const Cell& c, int64_t longest) {
  if (!fs::exists(c.results)) return false;
  try {
    h5::File f = h5::File::open(c.results);
    return f.exists("eval/" + c.task + "/" + std::to_string(longest) + "/accuracy");
  } catch (const std::exception&) {
    return false;  // unreadable (e.g. killed before its first flush): recompute
  }
}

double read_accuracy(const Cell& c, int64_t L) {
  try {
    h5::File f = h5::File::open(c.results);
    const std::string p = "eval/" + c.task + "/" + std::to_string(L) + "/accuracy";
    if (!f.exists(p)) return std::nan("");
    return f.read<double>(p).at(0);
  } catch (const std::exception&) {
    return std::nan("");
  }
}

}  // namespace

int run_expressivity(const Config& cfg, const ExpressivityOptions& opt) {
  const GridConfig& g = cfg.grid;
  if (g.architectures.empty() || g.tasks.empty())
    throw std::invalid_argument("grid.architectures and grid.tasks must name at least one architecture and task");
  for (const std::string& a : g.architectures) find_architecture(a);
  const std::vector<GridTask> tasks = grid_tasks(g);
  const int64_t T = cfg.train.seq_len;
  std::vector<int64_t> lengths;
  for (int64_t m : g.length_multipliers) lengths.push_back(m * T);
  const int64_t longest = *std::max_element(lengths.begin(), lengths.end());
  std::string lengths_csv;
  for (int64_t L : lengths) lengths_csv += (lengths_csv.empty() ? "" : ",") + std::to_string(L);

  const std::string cell_experiment = cfg.run.experiment + "-cells";
  const fs::path cell_dir = fs::path(cfg.run.out_dir) / cell_experiment;
  fs::create_directories(cell_dir);
  std::vector<Cell> cells;
  for (const std::string& arch : g.architectures)
    for (const GridTask& t : tasks)
      for (int64_t seed = 0; seed < g.seeds; ++seed) {
        Cell c;
        c.arch = arch;
        c.task = t.kind;
        c.task_args = t.args;
        c.seed = seed;
        c.name = arch + "__" + t.label + "__s" + std::to_string(seed);
        c.results = results_path(cfg.run.out_dir, cell_experiment, c.name);
        cells.push_back(c);
      }

  std::vector<size_t> todo;
  for (size_t i = 0; i < cells.size(); ++i)
    if (!cell_done(cells[i], longest)) todo.push_back(i);
  if (!opt.quiet)
    std::printf("expressivity: %zu cells (%zu architectures x %zu tasks x %lld seeds), %zu already done, %lld jobs\n",
                cells.size(), g.architectures.size(), g.tasks.size(), (long long)g.seeds, cells.size() - todo.size(),
                (long long)g.jobs);

  // Launch the missing cells, grid.jobs at a time; the cores this process may use (its
  // affinity mask: `taskset` and cgroup cpusets count) are shared between them.
  cpu_set_t allowed;
  const unsigned hw = sched_getaffinity(0, sizeof allowed, &allowed) == 0
                          ? unsigned(std::max(1, CPU_COUNT(&allowed)))
                          : std::max(1u, std::thread::hardware_concurrency());
  const int threads_per_job = std::max<int>(1, int(hw) / int(std::min<int64_t>(g.jobs, int64_t(todo.size()) + 1)));
  std::map<pid_t, size_t> running;
  size_t next = 0, finished = 0;
  int failures = 0;
  const auto t0 = std::chrono::steady_clock::now();
  while (next < todo.size() || !running.empty()) {
    while (next < todo.size() && int64_t(running.size()) < g.jobs) {
      const Cell& c = cells[todo[next++]];
      std::vector<std::string> args = {opt.hysim_exe, "train"};  // progress lines go to the cell log
      if (!opt.config_path.empty()) args.insert(args.end(), {"-c", opt.config_path});
      // The user's overrides, less the keys that the cell or its preset sets.
      static const std::vector<std::string> cell_keys = {"--data.source=",     "--data.task_args=", "--train.seed=",
                                                         "--eval.lengths=",    "--run.experiment=", "--run.name=",
                                                         "--run.threads=",     "--run.resume="};
      const std::vector<std::string> ov = preset_overrides(opt.overrides, find_architecture(c.arch), cell_keys);
      args.insert(args.end(), ov.begin(), ov.end());
      args.push_back("--data.source=" + c.task);
      args.push_back("--data.task_args=" + c.task_args);
      args.push_back("--train.seed=" + std::to_string(c.seed));
      args.push_back("--eval.lengths=" + lengths_csv);
      args.push_back("--run.experiment=" + cell_experiment);
      args.push_back("--run.name=" + c.name);
      args.push_back("--run.threads=" + std::to_string(threads_per_job));
      args.push_back("--run.resume=");
      std::vector<char*> argv;
      for (std::string& s : args) argv.push_back(s.data());
      argv.push_back(nullptr);
      posix_spawn_file_actions_t fa;
      posix_spawn_file_actions_init(&fa);
      const std::string log = (cell_dir / (c.name + ".log")).string();
      posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      posix_spawn_file_actions_adddup2(&fa, 1, 2);
      pid_t pid;
      const int rc = posix_spawn(&pid, opt.hysim_exe.c_str(), &fa, nullptr, argv.data(), environ);
      posix_spawn_file_actions_destroy(&fa);
      if (rc != 0) throw std::runtime_error("cannot start " + opt.hysim_exe + " for cell " + c.name);
      running[pid] = todo[next - 1];
    }
    int status = 0;
    const pid_t pid = waitpid(-1, &status, 0);
    if (pid < 0) break;
    auto it = running.find(pid);
    if (it == running.end()) continue;
    const Cell& c = cells[it->second];
    running.erase(it);
    ++finished;
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0 && cell_done(c, longest);
    if (!ok) {
      ++failures;
      std::fprintf(stderr, "\nexpressivity: cell %s failed; see %s\n", c.name.c_str(),
                   (cell_dir / (c.name + ".log")).c_str());
    }
    if (!opt.quiet) {
      const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double eta = el / double(finished) * double(todo.size() - finished);
      std::printf("%s cells %zu/%zu | last %s%s | elapsed %.0fs | ETA %.0fs", isatty(1) ? "\r\x1b[K" : "", finished,
                  todo.size(), c.name.c_str(), ok ? "" : " FAILED", el, eta);
      if (!isatty(1)) std::printf("\n");
      std::fflush(stdout);
    }
  }
  if (!opt.quiet && isatty(1)) std::printf("\n");

  // Gather: accuracy[arch][task][seed][length].
  const size_t A = g.architectures.size(), K = g.tasks.size(), S = size_t(g.seeds), NL = lengths.size();
  std::vector<double> acc(A * K * S * NL, std::nan(""));
  std::vector<int64_t> params(A);
  for (size_t i = 0; i < cells.size(); ++i) {
    const size_t ai = i / (K * S), ki = (i / S) % K, si = i % S;
    for (size_t li = 0; li < NL; ++li) acc[((ai * K + ki) * S + si) * NL + li] = read_accuracy(cells[i], lengths[li]);
  }
  for (size_t ai = 0; ai < A; ++ai)
    params[ai] = count_params(with_overrides(opt, find_architecture(g.architectures[ai])).model).total();

  const std::string summary = (fs::path(cfg.run.out_dir) / cfg.run.experiment / "expressivity.h5").string();
  fs::create_directories(fs::path(summary).parent_path());
  h5::write_file_atomically(summary, [&](h5::File& f) {
    f.set_attr("config", to_ini(cfg));
    f.write_strings("architectures", g.architectures);
    std::vector<std::string> labels, kinds, args;
    for (const GridTask& t : tasks) labels.push_back(t.label), kinds.push_back(t.kind), args.push_back(t.args);
    f.write_strings("tasks", labels);
    f.write_strings("task_kinds", kinds);
    f.write_strings("task_args", args);
    std::vector<double> chance;
    for (const GridTask& t : tasks) chance.push_back(t.chance);
    f.write("chance", chance);
    f.write("lengths", lengths);
    f.write("parameters", params);
    f.write("accuracy", acc.data(), Shape{int64_t(A), int64_t(K), int64_t(S), int64_t(NL)});
    f.set_attr("accuracy_dims", "architecture, task, seed, length (NaN: cell missing)");
  });

  // Table: one row per architecture, per task mean +- std over seeds at each length.
  std::printf("\naccuracy (mean +- std over %lld seeds) at lengths", (long long)S);
  for (int64_t L : lengths) std::printf(" %lld", (long long)L);
  std::printf(" (train length %lld)\n\n| architecture | params |", (long long)T);
  for (const GridTask& t : tasks) std::printf(" %s (chance %.2f) |", t.label.c_str(), t.chance);
  std::printf("\n|---|---|");
  for (size_t k = 0; k < K; ++k) std::printf("---|");
  std::printf("\n");
  for (size_t ai = 0; ai < A; ++ai) {
    std::printf("| %s | %lld |", g.architectures[ai].c_str(), (long long)params[ai]);
    for (size_t ki = 0; ki < K; ++ki) {
      std::string cell;
      for (size_t li = 0; li < NL; ++li) {
        double m = 0, m2 = 0;
        int n = 0;
        for (size_t si = 0; si < S; ++si) {
          const double v = acc[((ai * K + ki) * S + si) * NL + li];
          if (std::isfinite(v)) m += v, m2 += v * v, ++n;
        }
        char buf[48];
        if (n == 0) std::snprintf(buf, sizeof buf, "-");
        else {
          m /= n;
          const double sd = std::sqrt(std::max(0.0, m2 / n - m * m));
          std::snprintf(buf, sizeof buf, S > 1 ? "%.2f±%.2f" : "%.2f", m, sd);
        }
        cell += (li ? " / " : " ") + std::string(buf);
      }
      std::printf("%s |", cell.c_str());
    }
    std::printf("\n");
  }
  std::printf("\nwrote %s\n", summary.c_str());
  return failures;
}

}  // namespace hysim
