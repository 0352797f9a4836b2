// `hysim expressivity`: trains every (architecture x task x seed) cell of a grid on
// synthetic tasks, evaluates each at the training length and at longer ones, and
// gathers the accuracies into one HDF5 file and a printed table.
//
// Cells are separate `hysim train` processes (grid.jobs at a time, OpenMP threads split
// between them); each writes its own results file. A cell
// (results/<experiment>-cells/<arch>__<task>__s<seed>.h5) whose file already holds its longest evaluation is never recomputed, so re-running an
// interrupted sweep finishes only what is missing.
#pragma once
#include <string>
#include <vector>

#include "core/config.h"

namespace hysim {

// A named architecture: config overrides on top of the grid's base [model] section.
struct Architecture {
  std::string name, description;
  std::vector<std::string> overrides;  // "--model.key=value"
};
const std::vector<Architecture>& architecture_presets();
// Throws std::invalid_argument listing the presets when `name` is not one.
const Architecture& find_architecture(const std::string& name);

struct ExpressivityOptions {
  std::string config_path;             // passed on to every cell
  std::vector<std::string> overrides;  // the user's command-line overrides, passed on too
  std::string hysim_exe;               // the binary that trains a cell
  bool quiet = false;
};

// Runs the missing cells, then writes <out_dir>/<experiment>/expressivity.h5 and prints
// the table. Returns the number of cells that failed.
int run_expressivity(const Config& cfg, const ExpressivityOptions& opt);

}  // namespace hysim
