// Pre-tokenised corpora: one long sequence of token ids in a file, memory-mapped
// read-only (the OS pages in only the windows that are read, so a shard may be far
// larger than RAM).
//
// File formats (chosen by content: a file starting with "\x93NUMPY" is NPY, any other
// file is raw, except that a file named *.npy must be NPY):
//
//   raw .bin   the token ids back to back, little-endian, no header; the element type
//              comes from the config: "uint16" (vocab <= 65536) or "uint32". The file
//              size must be a multiple of the element size.
//              (numpy: arr.astype("<u2").tofile(path))
//   .npy       NumPy format version 1.0, 2.0 or 3.0 (numpy.save(path, arr)):
//                magic "\x93NUMPY", major, minor (1 byte each),
//                header length (uint16 LE for 1.x, uint32 LE for 2.x/3.x),
//                header: a Python dict literal such as
//                  {'descr': '<u2', 'fortran_order': False, 'shape': (1000000,), }
//                padded with spaces and '\n', then the data.
//              Accepted: descr an integer type ('<u2' '<u4' '<u8' '<i2' '<i4' '<i8',
//              '|u1' '|i1'; '<' little-endian or '|' / '=' where unambiguous here),
//              fortran_order False, a 1-D shape (N,). Big-endian, non-integer types,
//              multi-dimensional arrays and truncated files are rejected with an error
//              naming the file.
//
// Every token read is checked against the configured vocab size: a token < 0 or
// >= vocab_size throws std::runtime_error naming the file and the token's position
// (element index in the file).
//
// Windows and splits are those of the text reader (text_data.h): the training split is
// the whole `path` file, or its head when the validation split is its tail
// (val_fraction, used when val_path is empty); training rows start at
// window_start(seed, step, row, n_train - T); validation batches are consecutive
// non-overlapping windows of the validation split, batch `index` row r being window
// (index*B + r) mod W, W = (n_val - 1) / T.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/tensor.h"
#include "synthetic_tasks/task.h"

namespace hysim {

// The header of an NPY file (parse_npy_header).
struct NpyHeader {
  int major = 0, minor = 0;
  std::string descr;  // e.g. "<u2"
  bool fortran_order = false;
  Shape shape;
  int64_t data_offset = 0;  // bytes from the start of the file to the first element
};

// Parses the header at the start of `data` (size bytes of an NPY file) without checking
// what the dict says. Throws std::runtime_error("<what>: ...") on a malformed header
// (bad magic, unknown version, header longer than the file, syntax error in the dict,
// missing or unknown key).
NpyHeader parse_npy_header(const uint8_t* data, size_t size, const std::string& what);

// An integer element type: kind 'u' or 'i', 1, 2, 4 or 8 bytes.
struct TokenType {
  char kind = 'u';
  int bytes = 2;
  std::string name() const;  // "uint16", "int64", ...
};
// "uint16" / "uint32" (the .bin choices). Throws std::invalid_argument otherwise.
TokenType token_type_from_name(const std::string& name);

// One token file, memory-mapped read-only.
class TokenFile {
 public:
  // bin_dtype: element type when the file is a raw .bin ("uint16" | "uint32").
  TokenFile(const std::string& path, const std::string& bin_dtype);
  ~TokenFile();
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;

  const std::string& path() const { return path_; }
  int64_t size() const { return n_tokens_; }  // tokens
  TokenType type() const { return type_; }
  bool is_npy() const { return is_npy_; }
  // Copies tokens [begin, begin + n) into out, checking that each is in [0, vocab_size).
  void read(int64_t begin, int64_t n, int64_t vocab_size, int32_t* out) const;

 private:
  std::string path_;
  const uint8_t* map_ = nullptr;  // whole file
  size_t map_bytes_ = 0;
  const uint8_t* tokens_ = nullptr;  // first element
  int64_t n_tokens_ = 0;
  TokenType type_;
  bool is_npy_ = false;
};

struct TokenShardConfig {
  std::string path;              // training tokens (.bin or .npy)
  std::string val_path;          // validation tokens; empty = hold out the tail of `path`
  double val_fraction = 0.1;     // the tail fraction held out when val_path is empty
  std::string dtype = "uint16";  // element type of raw .bin files (NPY files name their own)
  int64_t vocab_size = 0;        // the model's vocab: every token read must be below it
  uint64_t seed = 0;             // training window order
};

class TokenShards : public DataSource {
 public:
  // Maps the file(s). Throws std::runtime_error naming the file on any problem (cannot
  // open, bad format, empty training or validation split); std::invalid_argument for a
  // vocab_size outside [1, 2^31 - 1] or an unknown dtype.
  explicit TokenShards(const TokenShardConfig& cfg);
  ~TokenShards() override;

  std::string name() const override { return "tokens:" + cfg_.path; }
  int64_t vocab_size() const override { return cfg_.vocab_size; }
  // Both throw std::runtime_error if the split is shorter than T + 1 tokens, or if a
  // token read is out of range.
  void train_batch(int64_t step, int64_t B, int64_t T, Batch& out) const override;
  void val_batch(int64_t index, int64_t B, int64_t T, Batch& out) const override;
  int64_t val_batch_count(int64_t B, int64_t T) const override;  // max(1, W / B)

  int64_t train_size() const { return n_train_; }  // tokens
  int64_t val_size() const { return n_val_; }
  const TokenShardConfig& config() const { return cfg_; }

 private:
  void check_fits(const TokenFile& f, const char* split, int64_t n, int64_t B, int64_t T) const;
  // Row r of `out` from tokens [begin, begin + T] of f.
  void fill_row(const TokenFile& f, int64_t begin, int64_t r, int64_t T, Batch& out) const;
  TokenShardConfig cfg_;
  std::unique_ptr<TokenFile> train_file_, val_file_;  // val_file_ null: tail of train_file_
  int64_t n_train_ = 0, val_begin_ = 0, n_val_ = 0;
};

}  // namespace hysim
