#include "synthetic_tasks/token_shards.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <vector>

namespace hysim {

static_assert(std::endian::native == std::endian::little, "token files are read as little-endian");

namespace {

[[noreturn]] void fail(const std::string& what, const std::string& msg) {
  throw std::runtime_error("token shard '" + what + "': " + msg);
}

// A tiny parser for the Python dict literal of an NPY header.
struct DictParser {
  const std::string& s;
  const std::string& what;
  size_t i = 0;
  void ws() {
    while (i < s.size() && std::isspace((unsigned char)s[i])) ++i;
  }
  [[noreturn]] void error(const std::string& msg) {
    fail(what, "malformed NPY header (" + msg + " at offset " + std::to_string(i) + " of \"" + s + "\")");
  }
  bool accept(char c) {
    ws();
    if (i < s.size() && s[i] == c) { ++i; return true; }
    return false;
  }
  void expect(char c) {
    if (!accept(c)) error(std::string("expected '") + c + "'");
  }
  std::string string_literal() {
    ws();
    if (i >= s.size() || (s[i] != '\'' && s[i] != '"')) error("expected a string");
    const char q = s[i++];
    const size_t end = s.find(q, i);
    if (end == std::string::npos) error("unterminated string");
    std::string r = s.substr(i, end - i);
    i = end + 1;
    return r;
  }
  bool boolean() {
    ws();
    if (s.compare(i, 4, "True") == 0) { i += 4; return true; }
    if (s.compare(i, 5, "False") == 0) { i += 5; return false; }
    error("expected True or False");
  }
  int64_t integer() {
    ws();
    const size_t start = i;
    while (i < s.size() && std::isdigit((unsigned char)s[i])) ++i;
    if (i == start) error("expected a non-negative integer");
    if (i - start > 18) error("integer too large");
    return std::stoll(s.substr(start, i - start));
  }
  Shape tuple() {
    expect('(');
    Shape r;
    while (!accept(')')) {
      r.push_back(integer());
      if (!accept(',')) { expect(')'); break; }
    }
    return r;
  }
};

// Copies n elements of type I starting at element `begin` into out, range-checked.
template <class I>
void copy_checked(const uint8_t* base, int64_t begin, int64_t n, int64_t vocab, int32_t* out,
                  const std::string& path) {
  for (int64_t k = 0; k < n; ++k) {
    I x;
    std::memcpy(&x, base + (begin + k) * int64_t(sizeof(I)), sizeof(I));  // may be unaligned in .bin files
    bool negative = false;
    if constexpr (std::is_signed_v<I>) negative = x < 0;
    if (negative || uint64_t(x) >= uint64_t(vocab))
      fail(path, "token " + std::to_string(x) + " at position " + std::to_string(begin + k) +
                     (negative ? " is negative" : " is >= vocab_size " + std::to_string(vocab)));
    out[k] = int32_t(x);
  }
}

}  // namespace

NpyHeader parse_npy_header(const uint8_t* data, size_t size, const std::string& what) {
  static const char magic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};
  if (size < 10 || std::memcmp(data, magic, 6) != 0) fail(what, "not an NPY file (bad magic)");
  NpyHeader h;
  h.major = data[6];
  h.minor = data[7];
  size_t header_len, start;
  if (h.major == 1) {
    header_len = size_t(data[8]) | size_t(data[9]) << 8;
    start = 10;
  } else if (h.major == 2 || h.major == 3) {
    if (size < 12) fail(what, "NPY file truncated in its header");
    header_len = size_t(data[8]) | size_t(data[9]) << 8 | size_t(data[10]) << 16 | size_t(data[11]) << 24;
    start = 12;
  } else {
    fail(what, "unsupported NPY version " + std::to_string(h.major) + "." + std::to_string(h.minor) +
                   " (1.x, 2.x and 3.x are supported)");
  }
  if (start + header_len > size)
    fail(what, "NPY header length " + std::to_string(header_len) + " runs past the end of the file (" +
                   std::to_string(size) + " bytes)");
  h.data_offset = int64_t(start + header_len);
  const std::string text(reinterpret_cast<const char*>(data + start), header_len);
  DictParser p{text, what};
  bool has_descr = false, has_order = false, has_shape = false;
  p.expect('{');
  while (!p.accept('}')) {
    const std::string key = p.string_literal();
    p.expect(':');
    if (key == "descr") {
      h.descr = p.string_literal();
      has_descr = true;
    } else if (key == "fortran_order") {
      h.fortran_order = p.boolean();
      has_order = true;
    } else if (key == "shape") {
      h.shape = p.tuple();
      has_shape = true;
    } else {
      p.error("unknown key '" + key + "'");
    }
    if (!p.accept(',')) { p.expect('}'); break; }
  }
  p.ws();
  if (p.i != text.size()) p.error("trailing characters after the dict");
  if (!has_descr || !has_order || !has_shape) p.error("the dict needs the keys 'descr', 'fortran_order' and 'shape'");
  return h;
}

std::string TokenType::name() const {
  return std::string(kind == 'u' ? "uint" : "int") + std::to_string(8 * bytes);
}

TokenType token_type_from_name(const std::string& name) {
  if (name == "uint16") return {'u', 2};
  if (name == "uint32") return {'u', 4};
  throw std::invalid_argument("token dtype '" + name + "' must be uint16 or uint32");
}

TokenFile::TokenFile(const std::string& path, const std::string& bin_dtype) : path_(path) {
  const TokenType bin_type = token_type_from_name(bin_dtype);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    fail(path, std::string("cannot stat: ") + std::strerror(e));
  }
  map_bytes_ = size_t(st.st_size);
  if (map_bytes_ > 0) {
    void* m = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
    const int e = errno;
    ::close(fd);
    if (m == MAP_FAILED) fail(path, std::string("cannot mmap: ") + std::strerror(e));
    map_ = static_cast<const uint8_t*>(m);
  } else {
    ::close(fd);
  }
  // Unmap on any format error below (the destructor does not run for a throwing constructor).
  try {
    static const char magic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};
    is_npy_ = map_bytes_ >= 6 && std::memcmp(map_, magic, 6) == 0;
    if (!is_npy_ && path.size() >= 4 && path.compare(path.size() - 4, 4, ".npy") == 0)
      fail(path, "not an NPY file (bad magic)");
    if (is_npy_) {
      const NpyHeader h = parse_npy_header(map_, map_bytes_, path);
      const std::string& d = h.descr;
      const bool one_byte = d.size() == 3 && d[2] == '1';
      // '<' little-endian; '|' (not applicable) is what numpy writes for 1-byte types;
      // '=' native, which is little-endian here (static_assert above).
      if (d.size() != 3 || !(d[0] == '<' || d[0] == '=' || (d[0] == '|' && one_byte)))
        fail(path, "NPY descr '" + d + "' is not supported (" +
                       (d.size() == 3 && d[0] == '>' ? std::string("big-endian") : "need a little-endian integer") +
                       " type: '<u2', '<u4', '<i4', '<i8', ...)");
      if ((d[1] != 'u' && d[1] != 'i') || (d[2] != '1' && d[2] != '2' && d[2] != '4' && d[2] != '8'))
        fail(path, "NPY descr '" + d + "' is not an integer type ('<u2', '<u4', '<i4', '<i8', ...)");
      type_ = {d[1], d[2] - '0'};
      if (h.fortran_order) fail(path, "NPY array is in Fortran order (fortran_order True); need False");
      if (h.shape.size() != 1)
        fail(path, "NPY array has shape " + shape_str(h.shape) + "; token files must be 1-D");
      n_tokens_ = h.shape[0];
      const int64_t need = n_tokens_ * type_.bytes, have = int64_t(map_bytes_) - h.data_offset;
      if (have < need)
        fail(path, "NPY file truncated: the header says " + std::to_string(n_tokens_) + " x " + type_.name() +
                       " (" + std::to_string(need) + " bytes) but " + std::to_string(have) +
                       " bytes follow the header");
      tokens_ = map_ + h.data_offset;
    } else {
      type_ = bin_type;
      if (map_bytes_ % size_t(type_.bytes) != 0)
        fail(path, "raw token file of " + std::to_string(map_bytes_) + " bytes is not a whole number of " +
                       type_.name() + " tokens (wrong dtype, or a truncated file?)");
      n_tokens_ = int64_t(map_bytes_) / type_.bytes;
      tokens_ = map_;
    }
  } catch (...) {
    if (map_) ::munmap(const_cast<uint8_t*>(map_), map_bytes_);
    throw;
  }
}

TokenFile::~TokenFile() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), map_bytes_);
}

void TokenFile::read(int64_t begin, int64_t n, int64_t vocab_size, int32_t* out) const {
  if (begin < 0 || n < 0 || begin + n > n_tokens_)
    fail(path_, "read of tokens [" + std::to_string(begin) + ", " + std::to_string(begin + n) +
                    ") outside the file's " + std::to_string(n_tokens_) + " tokens");
  const int64_t v = vocab_size;
  switch (type_.kind == 'u' ? type_.bytes : -type_.bytes) {
    case 1: copy_checked<uint8_t>(tokens_, begin, n, v, out, path_); break;
    case 2: copy_checked<uint16_t>(tokens_, begin, n, v, out, path_); break;
    case 4: copy_checked<uint32_t>(tokens_, begin, n, v, out, path_); break;
    case 8: copy_checked<uint64_t>(tokens_, begin, n, v, out, path_); break;
    case -1: copy_checked<int8_t>(tokens_, begin, n, v, out, path_); break;
    case -2: copy_checked<int16_t>(tokens_, begin, n, v, out, path_); break;
    case -4: copy_checked<int32_t>(tokens_, begin, n, v, out, path_); break;
    case -8: copy_checked<int64_t>(tokens_, begin, n, v, out, path_); break;
    default: fail(path_, "unsupported element type " + type_.name());
  }
}

TokenShards::TokenShards(const TokenShardConfig& cfg) : cfg_(cfg) {
  if (cfg.vocab_size < 1 || cfg.vocab_size > INT32_MAX)
    throw std::invalid_argument("token shards: vocab_size " + std::to_string(cfg.vocab_size) +
                                " must be in [1, 2^31 - 1]");
  token_type_from_name(cfg.dtype);  // validates the name even when the files are NPY
  train_file_ = std::make_unique<TokenFile>(cfg.path, cfg.dtype);
  const int64_t n = train_file_->size();
  if (!cfg.val_path.empty()) {
    val_file_ = std::make_unique<TokenFile>(cfg.val_path, cfg.dtype);
    n_train_ = n;
    val_begin_ = 0;
    n_val_ = val_file_->size();
    if (n_val_ < 2) fail(cfg.val_path, "empty validation split (" + std::to_string(n_val_) + " tokens; at least 2 needed)");
  } else {
    if (!(cfg.val_fraction >= 0 && cfg.val_fraction < 1))
      fail(cfg.path, "val_fraction " + std::to_string(cfg.val_fraction) + " must be in [0, 1)");
    n_val_ = int64_t(std::floor(cfg.val_fraction * double(n)));
    n_train_ = n - n_val_;
    val_begin_ = n_train_;
    if (n_val_ < 2)
      fail(cfg.path, "empty validation split (val_fraction " + std::to_string(cfg.val_fraction) + " of " +
                         std::to_string(n) + " tokens = " + std::to_string(n_val_) +
                         " tokens; at least 2 needed, or give a separate val_path)");
  }
  if (n_train_ < 2)
    fail(cfg.path, "empty training split (" + std::to_string(n_train_) + " of " + std::to_string(n) + " tokens)");
}

TokenShards::~TokenShards() = default;

void TokenShards::check_fits(const TokenFile& f, const char* split, int64_t n, int64_t B, int64_t T) const {
  if (B < 1) fail(f.path(), "batch size " + std::to_string(B) + " < 1");
  if (T < 1) fail(f.path(), "sequence length " + std::to_string(T) + " < 1");
  if (n < T + 1)
    fail(f.path(), std::string("the ") + split + " split has " + std::to_string(n) + " tokens (file " +
                       std::to_string(f.size()) + " tokens), shorter than T+1 = " + std::to_string(T + 1) +
                       " tokens needed for one window of T tokens and its targets");
}

void TokenShards::fill_row(const TokenFile& f, int64_t begin, int64_t r, int64_t T, Batch& out) const {
  // Read T+1 tokens once; tokens and targets are the same window shifted by one.
  int32_t* tok = out.tokens.data() + r * T;
  f.read(begin, T, cfg_.vocab_size, tok);
  std::copy(tok + 1, tok + T, out.targets.data() + r * T);
  f.read(begin + T, 1, cfg_.vocab_size, out.targets.data() + r * T + T - 1);
  std::fill(out.loss_mask.begin() + r * T, out.loss_mask.begin() + (r + 1) * T, 1.0f);
}

void TokenShards::train_batch(int64_t step, int64_t B, int64_t T, Batch& out) const {
  check_fits(*train_file_, "training", n_train_, B, T);
  out.resize(B, T);
  for (int64_t r = 0; r < B; ++r) fill_row(*train_file_, window_start(cfg_.seed, step, r, n_train_ - T), r, T, out);
}

void TokenShards::val_batch(int64_t index, int64_t B, int64_t T, Batch& out) const {
  const TokenFile& f = val_file_ ? *val_file_ : *train_file_;
  check_fits(f, "validation", n_val_, B, T);
  if (index < 0) fail(f.path(), "negative validation batch index");
  out.resize(B, T);
  const int64_t n_windows = (n_val_ - 1) / T;
  for (int64_t r = 0; r < B; ++r) fill_row(f, val_begin_ + ((index * B + r) % n_windows) * T, r, T, out);
}

int64_t TokenShards::val_batch_count(int64_t B, int64_t T) const {
  check_fits(val_file_ ? *val_file_ : *train_file_, "validation", n_val_, B, T);
  return std::max<int64_t>(1, (n_val_ - 1) / T / B);
}

}  // namespace hysim
