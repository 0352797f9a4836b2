#include "core/checkpoint.h"

#include <bit>
#include <cstring>
#include <set>
#include <stdexcept>

#include "core/hdf5_io.h"

namespace hysim {

// Checksums are defined over little-endian bytes; on such hosts that is memory order.
static_assert(std::endian::native == std::endian::little, "checkpoint checksums assume a little-endian host");

namespace {

constexpr uint64_t kP1 = 0x9E3779B185EBCA87ull, kP2 = 0xC2B2AE3D27D4EB4Full, kP3 = 0x165667B19E3779F9ull,
                   kP4 = 0x85EBCA77C2B2AE63ull, kP5 = 0x27D4EB2F165667C5ull;

inline uint64_t read64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline uint32_t read32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t xxh_round(uint64_t acc, uint64_t lane) { return std::rotl(acc + lane * kP2, 31) * kP1; }
inline uint64_t xxh_merge(uint64_t h, uint64_t acc) { return (h ^ xxh_round(0, acc)) * kP1 + kP4; }

constexpr const char* kFormat = "hysim-checkpoint";
constexpr int64_t kFormatVersion = 1;

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error("checkpoint " + path + ": " + what);
}

// Re-throw an hdf5_io error (which starts with the file name) as a checkpoint error.
[[noreturn]] void rethrow_io(const std::string& path, const std::string& file, const std::exception& e) {
  std::string msg = e.what();
  if (msg.rfind(file + ": ", 0) == 0) msg = msg.substr(file.size() + 2);
  fail(path, msg);
}

std::string validate_name(const std::string& name) {
  if (name.empty()) return "empty tensor name";
  if (name.front() == '/' || name.back() == '/' || name.find("//") != std::string::npos ||
      name.find('\n') != std::string::npos)
    return "invalid tensor name '" + name + "'";
  for (size_t start = 0; start <= name.size();) {
    size_t end = name.find('/', start);
    if (end == std::string::npos) end = name.size();
    std::string part = name.substr(start, end - start);
    if (part == "." || part == "..") return "invalid tensor name '" + name + "'";
    start = end + 1;
  }
  return {};
}

std::string join_lines(const std::vector<NamedTensor>& ts) {
  std::string s;
  for (size_t i = 0; i < ts.size(); ++i) s += (i ? "\n" : "") + ts[i].name;
  return s;
}

std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> out;
  if (s.empty()) return out;
  size_t start = 0;
  while (true) {
    size_t end = s.find('\n', start);
    out.push_back(s.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

// Everything stored in attributes, length-prefixed so that field boundaries count.
uint64_t header_checksum(int64_t step, const std::string& config, const std::map<std::string, std::string>& meta,
                         const std::string& param_names, const std::string& optimizer_names) {
  std::string blob;
  auto add = [&](const std::string& s) { blob += std::to_string(s.size()) + ":" + s + ";"; };
  add(std::to_string(kFormatVersion));
  add(std::to_string(step));
  add(config);
  for (const auto& [k, v] : meta) add(k), add(v);
  add(param_names);
  add(optimizer_names);
  return xxhash64(blob.data(), blob.size());
}

template <class T> uint64_t checksum_of(const std::vector<T>& v) { return xxhash64(v.data(), v.size() * sizeof(T)); }

void validate(const std::string& path, const std::vector<NamedTensor>& ts, const char* group) {
  std::set<std::string> seen;
  for (const auto& t : ts) {
    if (auto err = validate_name(t.name); !err.empty()) fail(path, std::string(group) + ": " + err);
    if (!seen.insert(t.name).second) fail(path, std::string(group) + ": duplicate tensor name " + t.name);
    for (int64_t d : t.shape)
      if (d < 0) fail(path, std::string(group) + "/" + t.name + ": negative extent in shape " + shape_str(t.shape));
    if (numel(t.shape) != int64_t(t.data.size()))
      fail(path, std::string(group) + "/" + t.name + ": shape " + shape_str(t.shape) + " needs " +
                     std::to_string(numel(t.shape)) + " values, data has " + std::to_string(t.data.size()));
  }
}

void write_tensors(h5::File& f, const char* group, const std::vector<NamedTensor>& ts) {
  h5::Group g = f.create_group(group);
  g.set_attr("names", join_lines(ts));
  for (const auto& t : ts) g.write(t.name, t.data.data(), t.shape).set_attr("checksum", checksum_of(t.data));
}

// Read one dataset and verify its checksum; `where` is e.g. "params/blocks.0.w".
template <class T>
std::vector<T> read_verified(const std::string& path, const h5::File& f, const std::string& where, Shape* shape) {
  if (!f.is_dataset(where)) fail(path, "dataset " + where + " is missing");
  h5::Dataset d = f.open_dataset(where);
  if (!d.has_attr("checksum")) fail(path, "dataset " + where + " has no checksum attribute");
  const uint64_t expected = d.attr<uint64_t>("checksum");
  if (shape) *shape = d.shape();
  std::vector<T> v = d.read<T>();
  if (checksum_of(v) != expected) fail(path, "dataset " + where + " fails its checksum (file corrupt)");
  return v;
}

std::vector<NamedTensor> read_tensors(const std::string& path, const h5::File& f, const std::string& group) {
  if (!f.is_group(group)) fail(path, "group " + group + " is missing");
  h5::Group g = f.open_group(group);
  std::vector<NamedTensor> ts;
  std::set<std::string> listed;
  for (const auto& name : split_lines(g.attr_string("names"))) {
    NamedTensor t{name, {}, {}};
    t.data = read_verified<float>(path, f, group + "/" + name, &t.shape);
    ts.push_back(std::move(t));
    listed.insert(name);
  }
  for (const auto& name : g.list_datasets(true))
    if (!listed.count(name)) fail(path, "unexpected dataset " + group + "/" + name + " (not in the name list)");
  return ts;
}

}  // namespace

uint64_t xxhash64(const void* data, size_t bytes, uint64_t seed) {
  const auto* p = static_cast<const unsigned char*>(data);
  const unsigned char* end = p + bytes;
  uint64_t h;
  if (bytes >= 32) {
    // Four independent lanes over 32-byte stripes.
    uint64_t v1 = seed + kP1 + kP2, v2 = seed + kP2, v3 = seed, v4 = seed - kP1;
    for (; p + 32 <= end; p += 32) {
      v1 = xxh_round(v1, read64(p));
      v2 = xxh_round(v2, read64(p + 8));
      v3 = xxh_round(v3, read64(p + 16));
      v4 = xxh_round(v4, read64(p + 24));
    }
    h = std::rotl(v1, 1) + std::rotl(v2, 7) + std::rotl(v3, 12) + std::rotl(v4, 18);
    h = xxh_merge(h, v1);
    h = xxh_merge(h, v2);
    h = xxh_merge(h, v3);
    h = xxh_merge(h, v4);
  } else {
    h = seed + kP5;
  }
  h += uint64_t(bytes);
  for (; p + 8 <= end; p += 8) h = std::rotl(h ^ xxh_round(0, read64(p)), 27) * kP1 + kP4;
  if (p + 4 <= end) {
    h = std::rotl(h ^ (uint64_t(read32(p)) * kP1), 23) * kP2 + kP3;
    p += 4;
  }
  for (; p < end; ++p) h = std::rotl(h ^ (uint64_t(*p) * kP5), 11) * kP1;
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  h ^= h >> 32;
  return h;
}

void save_checkpoint(const std::string& path, const Checkpoint& ckpt) {
  validate(path, ckpt.params, "params");
  validate(path, ckpt.optimizer, "optimizer");
  const std::string tmp = path + ".tmp";
  try {
    h5::write_file_atomically(path, [&](h5::File& f) {
      f.set_attr("format", kFormat);
      f.set_attr("format_version", kFormatVersion);
      f.set_attr("step", ckpt.step);
      f.set_attr("config", ckpt.config_text);
      f.set_attr("checksum_algorithm", "xxh64 (seed 0) of each dataset's raw little-endian bytes");
      f.set_attr("header_checksum", header_checksum(ckpt.step, ckpt.config_text, ckpt.meta, join_lines(ckpt.params),
                                                    join_lines(ckpt.optimizer)));
      {
        h5::Group meta = f.create_group("meta");
        for (const auto& [k, v] : ckpt.meta) meta.set_attr(k, v);
      }
      write_tensors(f, "params", ckpt.params);
      write_tensors(f, "optimizer", ckpt.optimizer);
      f.write("rng_state", ckpt.rng_state).set_attr("checksum", checksum_of(ckpt.rng_state));
      f.write("data_cursor", ckpt.data_cursor).set_attr("checksum", checksum_of(ckpt.data_cursor));
      // Last: a file without this marker was not finished and is never loaded.
      f.set_attr("complete", uint8_t(1));
    });
  } catch (const std::exception& e) {
    // Errors from the temporary file name it; say which checkpoint they belong to.
    std::string msg = e.what();
    if (msg.rfind(tmp + ": ", 0) == 0) msg = "writing " + tmp + ": " + msg.substr(tmp.size() + 2);
    else if (msg.rfind(path + ": ", 0) == 0) msg = msg.substr(path.size() + 2);
    fail(path, msg + " (the previous checkpoint, if any, is unchanged)");
  }
}

Checkpoint load_checkpoint(const std::string& path) {
  h5::File f;
  try {
    f = h5::File::open(path);
  } catch (const std::exception& e) {
    rethrow_io(path, path, e);
  }
  try {
    if (!f.has_attr("format") || f.attr_string("format") != kFormat) fail(path, "not a hysim checkpoint (no format attribute)");
    if (f.attr<int64_t>("format_version") != kFormatVersion)
      fail(path, "format version " + std::to_string(f.attr<int64_t>("format_version")) + " is not supported");
    if (!f.has_attr("complete") || f.attr<int64_t>("complete") != 1)
      fail(path, "no 'complete' marker: the write did not finish (incomplete checkpoint)");

    Checkpoint c;
    c.step = f.attr<int64_t>("step");
    c.config_text = f.attr_string("config");
    {
      if (!f.is_group("meta")) fail(path, "group meta is missing");
      h5::Group meta = f.open_group("meta");
      for (const auto& k : meta.attr_names()) c.meta[k] = meta.attr_string(k);
    }
    const std::string param_names = f.is_group("params") ? f.open_group("params").attr_string("names") : "";
    const std::string optimizer_names = f.is_group("optimizer") ? f.open_group("optimizer").attr_string("names") : "";
    if (header_checksum(c.step, c.config_text, c.meta, param_names, optimizer_names) !=
        f.attr<uint64_t>("header_checksum"))
      fail(path, "header (step, config, meta, tensor names) fails its checksum (file corrupt)");

    c.params = read_tensors(path, f, "params");
    c.optimizer = read_tensors(path, f, "optimizer");
    c.rng_state = read_verified<uint64_t>(path, f, "rng_state", nullptr);
    c.data_cursor = read_verified<int64_t>(path, f, "data_cursor", nullptr);
    return c;
  } catch (const std::exception& e) {
    std::string msg = e.what();
    if (msg.rfind("checkpoint " + path + ": ", 0) == 0) throw;
    rethrow_io(path, path, e);
  }
}

}  // namespace hysim
