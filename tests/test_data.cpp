#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/rng.h"
#include "synthetic_tasks/text_data.h"
#include "synthetic_tasks/token_shards.h"
#include "tests/test_util.h"

using namespace hysim;
namespace fs = std::filesystem;
using hysim::test::TempDir;

namespace {

// A scratch directory for the files the tests write, removed at exit.
const TempDir& tmp() {
  static TempDir t;
  return t;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

std::string random_bytes(int64_t n, uint64_t seed) {
  CounterRng r(seed, 1);
  std::string s(n, '\0');
  for (int64_t i = 0; i < n; ++i) s[i] = char(r.below(i, 256));
  return s;
}

std::vector<int64_t> random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  CounterRng r(seed, 2);
  std::vector<int64_t> t(n);
  for (int64_t i = 0; i < n; ++i) t[i] = int64_t(r.below(i, vocab));
  return t;
}

// Little-endian bytes of the tokens as `bytes`-wide integers (the test's own writer,
// independent of the reader).
std::string pack(const std::vector<int64_t>& tok, int bytes) {
  std::string s;
  for (int64_t x : tok)
    for (int b = 0; b < bytes; ++b) s.push_back(char((uint64_t(x) >> (8 * b)) & 0xff));
  return s;
}

// An NPY file as numpy.save writes it: magic, version, header length, the dict padded
// with spaces and a final '\n' to a multiple of 64 bytes, then the data.
std::string npy_file(const std::string& dict, const std::string& data, int major = 1) {
  const size_t prefix = major == 1 ? 10 : 12;
  std::string header = dict;
  while ((prefix + header.size() + 1) % 64 != 0) header.push_back(' ');
  header.push_back('\n');
  std::string s = "\x93NUMPY";
  s.push_back(char(major));
  s.push_back(0);
  const size_t hl = header.size();
  s.push_back(char(hl & 0xff));
  s.push_back(char((hl >> 8) & 0xff));
  if (major != 1) {
    s.push_back(char((hl >> 16) & 0xff));
    s.push_back(char((hl >> 24) & 0xff));
  }
  return s + header + data;
}
std::string npy_dict(const std::string& descr, int64_t n, const std::string& order = "False") {
  return "{'descr': '" + descr + "', 'fortran_order': " + order + ", 'shape': (" + std::to_string(n) + ",), }";
}

// Runs f, expects it to throw an exception of type E whose message contains every one
// of `parts`.
template <class E = std::runtime_error, class F> void check_throws_with(F f, std::vector<std::string> parts) {
  try {
    f();
    FAIL("no exception; expected one mentioning '" << parts[0] << "'");
  } catch (const E& e) {
    const std::string msg = e.what();
    INFO("message: " << msg);
    for (const std::string& p : parts) CHECK(msg.find(p) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("text data: train windows are the documented bytes, targets the next byte") {
  const std::string content = random_bytes(3000, 11), path = tmp().file("random.txt");
  write_bytes(path, content);
  const TextData data(path, 0.1, 5);
  REQUIRE(data.train_size() == 2700);
  REQUIRE(data.val_size() == 300);
  CHECK(data.vocab_size() == 256);
  const int64_t B = 4, T = 16;
  Batch batch;
  std::set<int64_t> starts;
  for (int64_t step = 0; step < 50; ++step) {
    data.train_batch(step, B, T, batch);
    REQUIRE(batch.B == B);
    REQUIRE(batch.T == T);
    REQUIRE(batch.size() == B * T);
    for (int64_t r = 0; r < B; ++r) {
      // Locate the window by content (16 random bytes are unique in 3000).
      std::vector<int64_t> found;
      for (int64_t s = 0; s + T < int64_t(content.size()); ++s) {
        bool same = true;
        for (int64_t t = 0; t < T && same; ++t) same = uint8_t(content[s + t]) == batch.tokens[r * T + t];
        if (same) found.push_back(s);
      }
      REQUIRE(found.size() == 1);
      const int64_t s = found[0];
      CHECK(s == window_start(5, step, r, data.train_size() - T));
      CHECK(s + T < data.train_size());  // window and its last target inside the training split
      for (int64_t t = 0; t < T; ++t) {
        CHECK(batch.targets[r * T + t] == uint8_t(content[s + t + 1]));
        CHECK(batch.loss_mask[r * T + t] == 1.0f);
      }
      starts.insert(s);
    }
  }
  CHECK(starts.size() > 190);  // 200 draws from 2684 starts: few repeats
}

TEST_CASE("text data: batches are a pure function of (seed, step)") {
  const std::string path = tmp().file("random2.txt");
  write_bytes(path, random_bytes(5000, 12));
  const TextData a(path, 0.1, 3), b(path, 0.1, 3), other_seed(path, 0.1, 4);
  Batch x, y, z;
  a.train_batch(7, 3, 20, x);
  b.train_batch(2, 3, 20, y);  // a different history in b
  b.train_batch(7, 3, 20, y);
  CHECK(x.tokens == y.tokens);
  CHECK(x.targets == y.targets);
  a.train_batch(8, 3, 20, z);
  CHECK(x.tokens != z.tokens);
  other_seed.train_batch(7, 3, 20, z);
  CHECK(x.tokens != z.tokens);
  a.val_batch(1, 3, 20, x);
  b.val_batch(1, 3, 20, y);
  other_seed.val_batch(1, 3, 20, z);
  CHECK(x.tokens == y.tokens);
  CHECK(x.tokens == z.tokens);  // validation does not depend on the seed
}

TEST_CASE("text data: validation windows are fixed, consecutive, disjoint from training") {
  std::string content(1000, 'a');
  for (int64_t i = 0; i < 1000; ++i) content[i] = char(i < 900 ? 'a' + i % 26 : '0' + i % 10);
  const std::string path = tmp().file("split.txt");
  write_bytes(path, content);
  const TextData data(path, 0.1);
  REQUIRE(data.train_size() == 900);
  const int64_t B = 2, T = 8, W = (100 - 1) / 8;  // 12 windows
  CHECK(data.val_batch_count(B, T) == W / B);
  Batch batch;
  for (int64_t index = 0; index < 8; ++index) {  // wraps after 6 batches
    data.val_batch(index, B, T, batch);
    for (int64_t r = 0; r < B; ++r) {
      const int64_t start = 900 + ((index * B + r) % W) * T;
      for (int64_t t = 0; t < T; ++t) {
        CHECK(batch.tokens[r * T + t] == uint8_t(content[start + t]));
        CHECK(batch.targets[r * T + t] == uint8_t(content[start + t + 1]));
      }
    }
  }
  // Training windows only ever contain training bytes (letters), validation only digits.
  for (int64_t step = 0; step < 200; ++step) {
    data.train_batch(step, 4, 32, batch);
    for (int64_t i = 0; i < batch.size(); ++i) {
      CHECK(batch.tokens[i] >= 'a');
      CHECK(batch.targets[i] >= 'a');
    }
  }
}

TEST_CASE("text data: clear errors") {
  const std::string missing = tmp().file("no_such_file.txt");
  check_throws_with([&] { TextData d(missing); }, {"no_such_file.txt", "cannot open"});
  const std::string small = tmp().file("small.txt");
  write_bytes(small, std::string(20, 'x'));
  const TextData d(small, 0.5);  // 10 train bytes, 10 validation bytes
  Batch b;
  d.train_batch(0, 1, 9, b);  // T + 1 = 10 bytes: fits
  check_throws_with([&] { d.train_batch(0, 1, 10, b); }, {"small.txt", "shorter than T+1 = 11"});
  check_throws_with([&] { d.val_batch(0, 1, 10, b); }, {"small.txt", "validation", "shorter than T+1"});
  check_throws_with([&] { TextData e(small, 0.0); }, {"small.txt", "empty validation split"});
  check_throws_with([&] { TextData e(small, 0.05); }, {"small.txt", "empty validation split"});  // 1 byte
  check_throws_with([&] { TextData e(small, 1.0); }, {"small.txt", "val_fraction"});
}

TEST_CASE("text data: tinyshakespeare ships with the repository") {
  const TextData d(std::string(HYSIM_SOURCE_DIR) + "/data/tinyshakespeare.txt", 0.1, 0);
  CHECK(d.train_size() + d.val_size() == 1115394);
  CHECK(d.val_size() == 111539);
  const std::string head(d.bytes().begin(), d.bytes().begin() + 14);
  CHECK(head == "First Citizen:");
  Batch b;
  d.train_batch(0, 8, 64, b);
  for (int32_t t : b.tokens) CHECK((t == '\n' || (t >= 32 && t < 127)));
  CHECK(d.val_batch_count(8, 64) == (111539 - 1) / 64 / 8);
}

TEST_CASE("token shards: .bin and .npy round trips (uint16, uint32, int32, int64; NPY v1/v2/v3)") {
  struct Case {
    std::string name, descr, bin_dtype;
    int bytes;
    int64_t vocab;
    bool npy;
    int major;
  };
  const std::vector<Case> cases = {
      {"u16.bin", "", "uint16", 2, 50257, false, 1},  {"u32.bin", "", "uint32", 4, 100352, false, 1},
      {"u16.npy", "<u2", "uint16", 2, 65536, true, 1}, {"u32.npy", "<u4", "uint16", 4, 100352, true, 2},
      {"i32.npy", "<i4", "uint16", 4, 100352, true, 3}, {"i64.npy", "<i8", "uint16", 8, 100352, true, 1},
      {"u8.npy", "|u1", "uint16", 1, 256, true, 1}};
  for (const Case& c : cases) {
    CAPTURE(c.name);
    const int64_t n = 2000;
    const std::vector<int64_t> tok = random_tokens(n, c.vocab, 21);
    const std::string path = tmp().file(c.name);
    write_bytes(path, c.npy ? npy_file(npy_dict(c.descr, n), pack(tok, c.bytes), c.major) : pack(tok, c.bytes));
    TokenShardConfig cfg;
    cfg.path = path;
    cfg.dtype = c.bin_dtype;
    cfg.vocab_size = c.vocab;
    cfg.seed = 9;
    const TokenShards data(cfg);
    REQUIRE(data.train_size() == 1800);
    REQUIRE(data.val_size() == 200);
    CHECK(data.vocab_size() == c.vocab);
    const int64_t B = 3, T = 24;
    Batch batch;
    for (int64_t step = 0; step < 20; ++step) {
      data.train_batch(step, B, T, batch);
      for (int64_t r = 0; r < B; ++r) {
        const int64_t s = window_start(9, step, r, 1800 - T);
        REQUIRE(s + T < 1800);
        for (int64_t t = 0; t < T; ++t) {
          CHECK(batch.tokens[r * T + t] == tok[s + t]);
          CHECK(batch.targets[r * T + t] == tok[s + t + 1]);
          CHECK(batch.loss_mask[r * T + t] == 1.0f);
        }
      }
    }
    const int64_t W = (200 - 1) / T;
    CHECK(data.val_batch_count(B, T) == W / B);
    for (int64_t index = 0; index < 4; ++index) {
      data.val_batch(index, B, T, batch);
      for (int64_t r = 0; r < B; ++r) {
        const int64_t s = 1800 + ((index * B + r) % W) * T;
        for (int64_t t = 0; t < T; ++t) {
          CHECK(batch.tokens[r * T + t] == tok[s + t]);
          CHECK(batch.targets[r * T + t] == tok[s + t + 1]);
        }
      }
    }
  }
}

TEST_CASE("token shards: separate validation file") {
  const std::vector<int64_t> train = random_tokens(500, 1000, 31), val = random_tokens(100, 1000, 32);
  const std::string tp = tmp().file("train.bin"), vp = tmp().file("val.npy");
  write_bytes(tp, pack(train, 2));
  write_bytes(vp, npy_file(npy_dict("<u2", 100), pack(val, 2)));
  TokenShardConfig cfg;
  cfg.path = tp;
  cfg.val_path = vp;
  cfg.vocab_size = 1000;
  const TokenShards data(cfg);
  CHECK(data.train_size() == 500);  // the whole training file
  CHECK(data.val_size() == 100);
  Batch b;
  data.val_batch(1, 2, 10, b);
  for (int64_t r = 0; r < 2; ++r)
    for (int64_t t = 0; t < 10; ++t) CHECK(b.tokens[r * 10 + t] == val[(2 + r) * 10 + t]);
  data.train_batch(3, 2, 10, b);
  const int64_t s = window_start(0, 3, 1, 500 - 10);
  for (int64_t t = 0; t < 10; ++t) CHECK(b.tokens[10 + t] == train[s + t]);
}

TEST_CASE("token shards: bad NPY headers and raw files are rejected, naming the file") {
  const std::string data = pack(random_tokens(100, 500, 41), 2);
  auto open = [](const std::string& path) {
    TokenShardConfig cfg;
    cfg.path = path;
    cfg.vocab_size = 500;
    TokenShards s(cfg);
  };
  struct Bad {
    std::string name, content, message;
  };
  std::string bad_magic = npy_file(npy_dict("<u2", 100), data);
  bad_magic[1] = 'X';
  std::string version4 = npy_file(npy_dict("<u2", 100), data);
  version4[6] = 4;
  std::string long_header = npy_file(npy_dict("<u2", 100), data).substr(0, 40);
  const std::vector<Bad> bad = {
      {"magic.npy", bad_magic, "not an NPY file (bad magic)"},
      {"v4.npy", version4, "unsupported NPY version 4.0"},
      {"bigendian.npy", npy_file(npy_dict(">u2", 100), data), "big-endian"},
      {"float.npy", npy_file(npy_dict("<f4", 50), data), "not an integer type"},
      {"fortran.npy", npy_file(npy_dict("<u2", 100, "True"), data), "Fortran order"},
      {"2d.npy", npy_file("{'descr': '<u2', 'fortran_order': False, 'shape': (10, 10), }", data), "must be 1-D"},
      {"scalar.npy", npy_file("{'descr': '<u2', 'fortran_order': False, 'shape': (), }", data), "must be 1-D"},
      {"truncated.npy", npy_file(npy_dict("<u2", 101), data), "truncated"},
      {"cut_header.npy", long_header, "runs past the end"},
      {"no_shape.npy", npy_file("{'descr': '<u2', 'fortran_order': False, }", data), "malformed NPY header"},
      {"extra_key.npy", npy_file("{'descr': '<u2', 'fortran_order': False, 'shape': (100,), 'x': 1}", data),
       "unknown key 'x'"},
      {"syntax.npy", npy_file("{'descr': '<u2' 'fortran_order': False, 'shape': (100,), }", data),
       "malformed NPY header"},
      {"odd.bin", data + "x", "not a whole number of uint16 tokens"},
  };
  for (const Bad& b : bad) {
    CAPTURE(b.name);
    const std::string path = tmp().file(b.name);
    write_bytes(path, b.content);
    check_throws_with([&] { open(path); }, {b.name, b.message});
  }
  // Sanity: the same writer with a good header is accepted.
  const std::string good = tmp().file("good.npy");
  write_bytes(good, npy_file(npy_dict("<u2", 100), data));
  CHECK_NOTHROW(open(good));
  // A byte-exact header as numpy.save writes it for np.arange(1000, dtype=np.uint16).
  const std::string numpy_header = std::string("\x93NUMPY\x01\x00\x76\x00", 10) +
                                   "{'descr': '<u2', 'fortran_order': False, 'shape': (1000,), }" +
                                   std::string(57, ' ') + "\n";
  REQUIRE(numpy_header.size() == 128);
  const NpyHeader h = parse_npy_header(reinterpret_cast<const uint8_t*>(numpy_header.data()), numpy_header.size(), "x");
  CHECK(h.major == 1);
  CHECK(h.descr == "<u2");
  CHECK(!h.fortran_order);
  CHECK(h.shape == Shape{1000});
  CHECK(h.data_offset == 128);
  // Errors that are not about the file's content.
  check_throws_with([&] { open(tmp().file("absent.bin")); }, {"absent.bin", "cannot open"});
  check_throws_with<std::invalid_argument>(
      [&] {
        TokenShardConfig cfg;
        cfg.path = good;
        cfg.vocab_size = 500;
        cfg.dtype = "int8";
        TokenShards s(cfg);
      },
      {"int8", "uint16 or uint32"});
}

TEST_CASE("token shards: a token >= vocab (or negative) is an error naming file and position") {
  // 40 tokens, validation = last 4; every training window of T = 30 covers position 5.
  std::vector<int64_t> tok = random_tokens(40, 100, 51);
  tok[5] = 100;
  const std::string path = tmp().file("oov.bin");
  write_bytes(path, pack(tok, 4));
  TokenShardConfig cfg;
  cfg.path = path;
  cfg.dtype = "uint32";
  cfg.vocab_size = 100;
  const TokenShards data(cfg);
  Batch b;
  check_throws_with([&] { data.train_batch(0, 1, 30, b); }, {"oov.bin", "token 100 at position 5", ">= vocab_size 100"});
  data.val_batch(0, 1, 3, b);  // the validation split is clean
  // The same file read with a vocab that covers it is fine.
  cfg.vocab_size = 101;
  const TokenShards ok(cfg);
  CHECK_NOTHROW(ok.train_batch(0, 1, 30, b));

  std::vector<int64_t> neg = random_tokens(50, 100, 52);
  neg[45] = -3;  // in the validation split (last 5)
  const std::string np = tmp().file("neg.npy");
  write_bytes(np, npy_file(npy_dict("<i4", 50), pack(neg, 4)));
  cfg.path = np;
  cfg.vocab_size = 100;
  const TokenShards nd(cfg);
  check_throws_with([&] { nd.val_batch(0, 1, 4, b); }, {"neg.npy", "token -3 at position 45", "negative"});
}
