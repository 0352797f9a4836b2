// Training checkpoints as HDF5 files, verified on load.
//
// Layout (readable with h5py; see results/README.md):
//   /                 attrs: format = "hysim-checkpoint", format_version, step, config,
//                     checksum_algorithm, header_checksum, complete (written last)
//   /meta             attrs: one string per Checkpoint::meta entry
//   /params/<name>    float32, the tensor's shape; attr checksum (uint64)
//   /optimizer/<name> float32 (names may contain '/', e.g. "adam_m/blocks.3.mixer.q_proj")
//   /rng_state        uint64[], attr checksum
//   /data_cursor      int64[],  attr checksum
// The params and optimizer groups carry attr "names": the tensor names in order, one
// per line, so a missing dataset is detected by name and the order survives a round trip.
// Checksums are XXH64 (seed 0) of each dataset's raw little-endian bytes;
// header_checksum covers step, config, meta and the name lists.
//
// save_checkpoint writes "<path>.tmp", fsyncs it and renames it over <path>: a crash
// or error leaves either the previous checkpoint or the new one, never half a file.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace hysim {

struct NamedTensor {
  std::string name;  // parameter path, e.g. "blocks.3.mixer.q_proj"
  Shape shape;
  std::vector<float> data;  // numel(shape) values, row-major
};

struct Checkpoint {
  int64_t step = 0;
  std::string config_text;             // the full resolved config
  std::vector<NamedTensor> params;     // fp32 master weights
  std::vector<NamedTensor> optimizer;  // e.g. "adam_m/<param>", "adam_v/<param>"
  std::vector<uint64_t> rng_state;
  std::vector<int64_t> data_cursor;
  std::map<std::string, std::string> meta;
};

// XXH64 of `bytes` bytes (the published xxHash64 algorithm, so files can be checked
// with any xxhash implementation).
uint64_t xxhash64(const void* data, size_t bytes, uint64_t seed = 0);

// Throws std::runtime_error ("checkpoint <path>: ...") on invalid input (empty or
// duplicate names, shape/data size mismatch) or any I/O error; <path> is then untouched.
void save_checkpoint(const std::string& path, const Checkpoint& ckpt);

// Verifies the format, the "complete" marker, the header checksum and every dataset's
// checksum; any problem throws std::runtime_error naming the path and the problem,
// e.g. "checkpoint run.ckpt: dataset params/blocks.0.mixer.q_proj fails its checksum
// (file corrupt)".
Checkpoint load_checkpoint(const std::string& path);

}  // namespace hysim
