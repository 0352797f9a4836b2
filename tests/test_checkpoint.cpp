#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>

#include "core/checkpoint.h"
#include "core/hdf5_io.h"
#include "tests/test_util.h"

using namespace hysim;
namespace fs = std::filesystem;
using hysim::test::TempDir;
using hysim::test::error_of;

namespace {

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
void write_bytes(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), std::streamsize(bytes.size()));
}

// Offset of the only occurrence of `needle` in the file; fails the test otherwise.
size_t find_unique(const std::vector<char>& hay, const void* needle, size_t n) {
  const char* p = static_cast<const char*>(needle);
  auto it = std::search(hay.begin(), hay.end(), p, p + n);
  REQUIRE(it != hay.end());
  REQUIRE(std::search(it + 1, hay.end(), p, p + n) == hay.end());
  return size_t(it - hay.begin());
}

NamedTensor tensor(const std::string& name, Shape shape, float base) {
  NamedTensor t{name, shape, std::vector<float>(numel(shape))};
  for (size_t i = 0; i < t.data.size(); ++i) t.data[i] = base + 0.001f * float(i) * (i % 2 ? -1.f : 1.f);
  return t;
}

// A small model's checkpoint: names out of alphabetical order, optimizer names with
// '/', special float values, a scalar and an empty tensor.
Checkpoint sample_checkpoint(float base = 1.0f) {
  Checkpoint c;
  c.step = 12345;
  c.config_text = "[model]\npattern = GGGA\nd_model = 8\n[train]\nlr = 3e-4\n";
  c.params.push_back(tensor("embedding.weight", {16, 8}, base));
  c.params.push_back(tensor("blocks.0.mixer.q_proj", {8, 8}, 1000.0f * base));  // a pattern found in the bytes below
  c.params.push_back(tensor("blocks.1.mlp.w_up", {2, 3, 4}, -base));
  c.params.push_back(tensor("blocks.1.norm.w", {}, 0.5f));
  c.params.push_back(tensor("blocks.1.empty", {0}, 0.0f));
  c.params[0].data[0] = std::numeric_limits<float>::quiet_NaN();
  c.params[0].data[1] = -0.0f;
  c.params[0].data[2] = std::numeric_limits<float>::denorm_min();
  c.params[0].data[3] = -std::numeric_limits<float>::infinity();
  float k = 1;  // distinct values per tensor, so each tensor's bytes are unique in the file
  for (const auto& p : c.params) {
    c.optimizer.push_back(tensor("adam_m/" + p.name, p.shape, 0.01f * base * k++));
    c.optimizer.push_back(tensor("adam_v/" + p.name, p.shape, 0.0001f * base * k++));
  }
  c.rng_state = {0xdeadbeefcafef00dull, 0, std::numeric_limits<uint64_t>::max()};
  c.data_cursor = {7, -1, 1ll << 40};
  c.meta = {{"backend", "cpu"}, {"tokens", "1048576"}, {"note", "μ ünïcode"}};
  return c;
}

bool same_bits(const std::vector<NamedTensor>& a, const std::vector<NamedTensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].name != b[i].name || a[i].shape != b[i].shape || a[i].data.size() != b[i].data.size()) return false;
    if (std::memcmp(a[i].data.data(), b[i].data.data(), a[i].data.size() * sizeof(float)) != 0) return false;
  }
  return true;
}

bool same(const Checkpoint& a, const Checkpoint& b) {
  return a.step == b.step && a.config_text == b.config_text && same_bits(a.params, b.params) &&
         same_bits(a.optimizer, b.optimizer) && a.rng_state == b.rng_state && a.data_cursor == b.data_cursor &&
         a.meta == b.meta;
}

bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

}  // namespace

TEST_CASE("checkpoint: xxhash64 matches published XXH64 values") {
  auto h = [](const std::string& s, uint64_t seed = 0) { return xxhash64(s.data(), s.size(), seed); };
  CHECK(h("") == 0xef46db3751d8e999ull);
  CHECK(h("a") == 0xd24ec4f1a98c6e5bull);
  CHECK(h("abc") == 0x44bc2cf5ad770999ull);
  CHECK(h("foo") == 0x33bf00a859c4ba3full);
  CHECK(h("xxhash") == 0x32dd38952c4bc720ull);
  // >= 32 bytes (the four-lane path) with a seed: DragonFly HAMMER2's directory hash.
  CHECK(h("This code is derived from software contributed to The DragonFly Project", 0x4d617474446c6c6eull) ==
        0x103c241eeddc8d32ull);
  CHECK(h("", 0x4d617474446c6c6eull) == 0x84566ac0f5a0cb84ull);
}

TEST_CASE("checkpoint: round trip is bit-exact, order and names preserved") {
  TempDir tmp;
  const std::string path = tmp.file("run.ckpt.h5");
  const Checkpoint c = sample_checkpoint();
  save_checkpoint(path, c);
  CHECK_FALSE(fs::exists(path + ".tmp"));
  const Checkpoint r = load_checkpoint(path);
  CHECK(same(c, r));
  CHECK(r.params[1].name == "blocks.0.mixer.q_proj");
  CHECK(r.optimizer[0].name == "adam_m/embedding.weight");
  CHECK(std::isnan(r.params[0].data[0]));
  CHECK(std::signbit(r.params[0].data[1]));
  CHECK(r.params[3].shape.empty());
  CHECK(r.params[4].shape == Shape{0});

  // Saving over an existing checkpoint replaces it.
  const Checkpoint c2 = sample_checkpoint(2.0f);
  save_checkpoint(path, c2);
  CHECK(same(c2, load_checkpoint(path)));
  CHECK_FALSE(same(c, load_checkpoint(path)));

  // An empty checkpoint is valid too.
  save_checkpoint(tmp.file("empty.h5"), Checkpoint{});
  CHECK(same(Checkpoint{}, load_checkpoint(tmp.file("empty.h5"))));
}

TEST_CASE("checkpoint: a flipped byte in a tensor's data is refused, naming the dataset") {
  TempDir tmp;
  const std::string path = tmp.file("flip.h5");
  const Checkpoint c = sample_checkpoint();
  save_checkpoint(path, c);
  const auto clean = read_bytes(path);

  struct Case {
    const char* dataset;
    const void* data;
    size_t bytes;
  };
  const Case cases[] = {
      {"params/blocks.0.mixer.q_proj", c.params[1].data.data(), c.params[1].data.size() * 4},
      {"optimizer/adam_v/blocks.1.mlp.w_up", c.optimizer[5].data.data(), c.optimizer[5].data.size() * 4},
      {"rng_state", c.rng_state.data(), c.rng_state.size() * 8},
  };
  for (const auto& k : cases) {
    auto bytes = clean;
    const size_t at = find_unique(bytes, k.data, k.bytes) + k.bytes / 2;
    bytes[at] ^= 0x10;
    write_bytes(path, bytes);
    const std::string e = error_of([&] { load_checkpoint(path); });
    MESSAGE(e);
    CHECK(e == "checkpoint " + path + ": dataset " + k.dataset + " fails its checksum (file corrupt)");
  }
  // The config text lives in an attribute: covered by the header checksum.
  {
    auto bytes = clean;
    const std::string needle = "pattern = GGGA";
    bytes[find_unique(bytes, needle.data(), needle.size()) + 10] = 'M';
    write_bytes(path, bytes);
    const std::string e = error_of([&] { load_checkpoint(path); });
    MESSAGE(e);
    CHECK(contains(e, "checkpoint " + path + ": header"));
    CHECK(contains(e, "fails its checksum (file corrupt)"));
  }
  write_bytes(path, clean);
  CHECK(same(c, load_checkpoint(path)));  // the untouched bytes still load
}

TEST_CASE("checkpoint: truncated, unfinished, incomplete and missing files are refused") {
  TempDir tmp;
  const std::string path = tmp.file("broken.h5");
  const Checkpoint c = sample_checkpoint();

  SUBCASE("missing file") {
    const std::string e = error_of([&] { load_checkpoint(path); });
    CHECK(e == "checkpoint " + path + ": file does not exist");
  }
  SUBCASE("truncated file") {
    save_checkpoint(path, c);
    auto bytes = read_bytes(path);
    for (size_t keep : {bytes.size() - 1, bytes.size() / 2, size_t(100), size_t(0)}) {
      write_bytes(path, std::vector<char>(bytes.begin(), bytes.begin() + keep));
      const std::string e = error_of([&] { load_checkpoint(path); });
      MESSAGE(keep << " bytes: " << e);
      CHECK(contains(e, "checkpoint " + path + ": cannot open as an HDF5 file"));
      if (keep > 100) CHECK(contains(e, "truncated"));
    }
  }
  SUBCASE("no complete marker") {
    save_checkpoint(path, c);
    h5::File::open(path, h5::File::Access::read_write).delete_attr("complete");
    const std::string e = error_of([&] { load_checkpoint(path); });
    CHECK(e == "checkpoint " + path + ": no 'complete' marker: the write did not finish (incomplete checkpoint)");
  }
  SUBCASE("missing dataset") {
    save_checkpoint(path, c);
    h5::File::open(path, h5::File::Access::read_write).remove("params/blocks.1.mlp.w_up");
    const std::string e = error_of([&] { load_checkpoint(path); });
    CHECK(e == "checkpoint " + path + ": dataset params/blocks.1.mlp.w_up is missing");
  }
  SUBCASE("unexpected dataset") {
    save_checkpoint(path, c);
    h5::File::open(path, h5::File::Access::read_write).write("optimizer/adam_m/stray", std::vector<float>{1});
    const std::string e = error_of([&] { load_checkpoint(path); });
    CHECK(e == "checkpoint " + path + ": unexpected dataset optimizer/adam_m/stray (not in the name list)");
  }
  SUBCASE("not a checkpoint") {
    h5::File::create(path).write("x", std::vector<double>{1});
    CHECK(contains(error_of([&] { load_checkpoint(path); }), "not a hysim checkpoint"));
  }
}

TEST_CASE("checkpoint: a failed save leaves the previous checkpoint intact") {
  TempDir tmp;
  const std::string path = tmp.file("keep.h5");
  const Checkpoint good = sample_checkpoint();
  save_checkpoint(path, good);

  SUBCASE("failure in the middle of writing (HDF5 refuses a tensor)") {
    // "blocks.0.mixer.q_proj" is written as a dataset, then "blocks.0.mixer.q_proj/x"
    // needs it to be a group: HDF5 fails after part of the file is written.
    Checkpoint bad = sample_checkpoint(3.0f);
    bad.params.push_back(tensor("blocks.0.mixer.q_proj/x", {2}, 1.0f));
    const std::string e = error_of([&] { save_checkpoint(path, bad); });
    MESSAGE(e);
    CHECK(contains(e, "checkpoint " + path + ": writing " + path + ".tmp: cannot create dataset /params/blocks.0.mixer.q_proj/x"));
    CHECK(contains(e, "the previous checkpoint, if any, is unchanged"));
  }
  SUBCASE("I/O failure at any point (a file size limit, like a full disk)") {
    // Writes past the limit fail with EFBIG (SIGXFSZ ignored): inside H5Dwrite, in the
    // metadata flush of the close, or in HDF5's first writes, depending on the limit.
    std::signal(SIGXFSZ, SIG_IGN);
    rlimit saved{};
    getrlimit(RLIMIT_FSIZE, &saved);
    const Checkpoint next = sample_checkpoint(3.0f);
    const auto full_size = fs::file_size(path);
    int failures = 0;
    for (rlim_t limit = 0; limit < full_size; limit += 512) {
      rlimit small = saved;
      small.rlim_cur = limit;
      REQUIRE(setrlimit(RLIMIT_FSIZE, &small) == 0);
      const std::string e = error_of([&] { save_checkpoint(path, next); });
      setrlimit(RLIMIT_FSIZE, &saved);
      if (limit == 4096) MESSAGE(e);
      CHECK(contains(e, "checkpoint " + path + ": writing " + path + ".tmp: "));
      CHECK(contains(e, "the previous checkpoint, if any, is unchanged"));
      failures += !e.empty();
      REQUIRE(same(good, load_checkpoint(path)));
      REQUIRE_FALSE(fs::exists(path + ".tmp"));
    }
    CHECK(failures == int((full_size + 511) / 512));
    save_checkpoint(path, next);  // and with room again, the save works
    CHECK(same(next, load_checkpoint(path)));
    save_checkpoint(path, good);
  }
  SUBCASE("invalid input is refused before writing") {
    Checkpoint bad = sample_checkpoint(3.0f);
    bad.params[2].data.pop_back();
    CHECK(error_of([&] { save_checkpoint(path, bad); }) ==
          "checkpoint " + path + ": params/blocks.1.mlp.w_up: shape [2, 3, 4] needs 24 values, data has 23");
    bad = sample_checkpoint(3.0f);
    bad.optimizer[1].name = bad.optimizer[0].name;
    CHECK(contains(error_of([&] { save_checkpoint(path, bad); }), "optimizer: duplicate tensor name adam_m/embedding.weight"));
    bad = sample_checkpoint(3.0f);
    bad.params[0].name = "blocks//x";
    CHECK(contains(error_of([&] { save_checkpoint(path, bad); }), "invalid tensor name 'blocks//x'"));
  }
  SUBCASE("the directory does not exist") {
    const std::string nowhere = tmp.file("no/such/dir/c.h5");
    CHECK(contains(error_of([&] { save_checkpoint(nowhere, good); }), "checkpoint " + nowhere + ": writing"));
  }
  CHECK(same(good, load_checkpoint(path)));
  CHECK_FALSE(fs::exists(path + ".tmp"));
}
