#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/hdf5_io.h"
#include "tests/test_util.h"

using namespace hysim;
namespace fs = std::filesystem;
using hysim::test::TempDir;
using hysim::test::error_of;

namespace {

template <class T> std::vector<T> pattern(size_t n, double scale) {
  std::vector<T> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = T(scale * double(i) + (std::is_floating_point_v<T> ? 0.125 : 3.0));
  return v;
}

}  // namespace

TEST_CASE("hdf5_io: 1-D, N-D, scalar and empty datasets of every type round-trip exactly") {
  TempDir tmp;
  const std::string name = tmp.file("types.h5");
  const Shape nd{2, 3, 4};
  const auto f32 = pattern<float>(24, 1.0 / 3.0);
  const auto f64 = pattern<double>(24, std::acos(-1.0));
  const auto i64 = std::vector<int64_t>{std::numeric_limits<int64_t>::min(), -1, 0, 1, std::numeric_limits<int64_t>::max()};
  const auto u64 = std::vector<uint64_t>{0, 1, std::numeric_limits<uint64_t>::max(), 0x8000000000000000ull};
  const auto u8 = pattern<uint8_t>(24, 7);
  const std::vector<std::string> strs{"alpha", "", "μ-state ünïcode", std::string(300, 'x')};
  {
    h5::File f = h5::File::create(name);
    f.write("f32/nd", f32.data(), nd);
    f.write("f64/nd", f64.data(), nd);
    f.write("i64/flat", i64);
    f.write("u64/flat", u64);
    f.write("u8/nd", u8.data(), Shape{4, 6});
    f.write("f32/flat", f32);
    f.write_scalar("scalars/pi", 3.141592653589793);
    f.write_scalar("scalars/n", int64_t(-42));
    f.write("empty/f32", std::vector<float>{});
    f.write("empty/i64_2d", static_cast<const int64_t*>(nullptr), Shape{0, 5});
    f.write_strings("strings", strs);
    f.close();
  }
  h5::File f = h5::File::open(name);
  Shape s;
  CHECK(f.read<float>("f32/nd", &s) == f32);
  CHECK(s == nd);
  CHECK(f.read<double>("f64/nd", &s) == f64);
  CHECK(s == nd);
  CHECK(f.read<int64_t>("i64/flat", &s) == i64);
  CHECK(s == Shape{5});
  CHECK(f.read<uint64_t>("u64/flat") == u64);
  CHECK(f.read<uint8_t>("u8/nd", &s) == u8);
  CHECK(s == Shape{4, 6});
  CHECK(f.read<float>("f32/flat") == f32);
  CHECK(f.read<double>("scalars/pi", &s) == std::vector<double>{3.141592653589793});
  CHECK(s.empty());
  CHECK(f.read<int64_t>("scalars/n") == std::vector<int64_t>{-42});
  CHECK(f.read<float>("empty/f32", &s).empty());
  CHECK(s == Shape{0});
  CHECK(f.read<int64_t>("empty/i64_2d", &s).empty());
  CHECK(s == Shape{0, 5});
  CHECK(f.read_strings("strings") == strs);
  CHECK(f.open_dataset("f32/nd").type_name() == "float32");
  CHECK(f.open_dataset("u64/flat").type_name() == "uint64");
  CHECK(f.open_dataset("strings").type_name() == "string");
  f.close();
  // NaN and infinities survive bit-exactly.
  {
    h5::File w = h5::File::open(name, h5::File::Access::read_write);
    w.write("special", std::vector<double>{std::nan(""), -INFINITY, INFINITY, -0.0});
  }
  auto sp = h5::File::open(name).read<double>("special");
  CHECK(std::isnan(sp[0]));
  CHECK(sp[1] == -INFINITY);
  CHECK(sp[2] == INFINITY);
  CHECK(std::signbit(sp[3]));
}

TEST_CASE("hdf5_io: attributes on files, groups and datasets") {
  TempDir tmp;
  const std::string name = tmp.file("attrs.h5");
  {
    h5::File f = h5::File::create(name);
    f.set_attr("config", "[model]\nd_model = 64\n");
    f.set_attr("lr", 3e-4);
    f.set_attr("steps", int64_t(-7));
    f.set_attr("seed", uint64_t(0xfedcba9876543210ull));
    f.set_attr("flag", true);
    f.set_attr("small", 5);  // int -> int64
    h5::Group g = f.create_group("eval/parity/256");
    g.set_attr("task", "parity");
    g.set_attr("task", "parity-v2");  // replaces
    h5::Dataset d = g.write("accuracy", std::vector<double>{0.5});
    d.set_attr("checksum", uint64_t(123));
    d.set_attr("checksum", uint64_t(456));
  }
  h5::File f = h5::File::open(name);
  CHECK(f.attr_string("config") == "[model]\nd_model = 64\n");
  CHECK(f.attr<double>("lr") == 3e-4);
  CHECK(f.attr<int64_t>("steps") == -7);
  CHECK(f.attr<uint64_t>("seed") == 0xfedcba9876543210ull);
  CHECK(f.attr<int>("flag") == 1);
  CHECK(f.attr<int>("small") == 5);
  CHECK(f.attr_names() == std::vector<std::string>{"config", "flag", "lr", "seed", "small", "steps"});
  h5::Group g = f.open_group("eval/parity/256");
  CHECK(g.path() == "/eval/parity/256");
  CHECK(g.attr_string("task") == "parity-v2");
  CHECK(g.open_dataset("accuracy").attr<uint64_t>("checksum") == 456);
  CHECK_FALSE(g.has_attr("nope"));

  // Type and range mismatches are errors, not conversions.
  std::string e = error_of([&] { (void)f.attr<double>("steps"); });
  CHECK(e.find(name) != std::string::npos);
  CHECK(e.find("attribute steps of /") != std::string::npos);
  CHECK(e.find("int64, not a float") != std::string::npos);
  CHECK(error_of([&] { (void)f.attr_string("lr"); }).find("float64, not a string") != std::string::npos);
  CHECK(error_of([&] { (void)f.attr<int32_t>("seed"); }).find("does not fit") != std::string::npos);
  CHECK(error_of([&] { (void)f.attr<uint64_t>("steps"); }).find("does not fit") != std::string::npos);
  CHECK(error_of([&] { (void)g.attr_string("missing"); }).find("attribute missing of /eval/parity/256 is missing") !=
        std::string::npos);
}

TEST_CASE("hdf5_io: groups by path and listing") {
  TempDir tmp;
  const std::string name = tmp.file("groups.h5");
  {
    h5::File f = h5::File::create(name);
    f.create_group("eval/parity/256");
    f.create_group("eval/parity/512");
    h5::Group again = f.create_group("eval/parity");  // exists: opened, not an error
    CHECK(again.path() == "/eval/parity");
    f.write("metrics/step", std::vector<int64_t>{1, 2});
    f.write("metrics/loss", std::vector<double>{1, 2});
    f.write("metrics/sub/deep", std::vector<double>{3});
    f.write("top", std::vector<uint8_t>{1});
  }
  h5::File f = h5::File::open(name);
  CHECK(f.exists("eval/parity/256"));
  CHECK(f.is_group("eval/parity/256"));
  CHECK_FALSE(f.is_dataset("eval/parity/256"));
  CHECK(f.is_dataset("metrics/step"));
  CHECK_FALSE(f.exists("eval/nothing/here"));
  CHECK_FALSE(f.exists("metrics/step/below_a_dataset"));
  CHECK(f.list_datasets() == std::vector<std::string>{"top"});
  CHECK(f.open_group("metrics").list_datasets() == std::vector<std::string>{"loss", "step"});
  CHECK(f.open_group("metrics").list_datasets(true) == std::vector<std::string>{"loss", "step", "sub/deep"});
  CHECK(f.list_datasets(true) == std::vector<std::string>{"metrics/loss", "metrics/step", "metrics/sub/deep", "top"});
  CHECK(f.list_groups() == std::vector<std::string>{"eval", "metrics"});
  CHECK(f.open_group("eval/parity").list_groups() == std::vector<std::string>{"256", "512"});
}

TEST_CASE("hdf5_io: errors name the file and the object, and HDF5 prints nothing") {
  TempDir tmp;
  const std::string name = tmp.file("errors.h5");
  {
    h5::File f = h5::File::create(name);
    f.write("metrics/step", std::vector<int64_t>{1, 2, 3});
  }
  // Capture stderr while provoking errors inside HDF5: its default handler would print
  // a stack trace there.
  const std::string err_file = tmp.file("stderr.txt");
  std::fflush(stderr);
  int saved = dup(2);
  int fd = ::open(err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  dup2(fd, 2);
  ::close(fd);

  std::string missing_file = error_of([&] { h5::File::open(tmp.file("nope.h5")); });
  std::string missing_ds, wrong_type, exists_ds, not_hdf5, bad_group, open_objects;
  {
    h5::File f = h5::File::open(name, h5::File::Access::read_write);
    missing_ds = error_of([&] { f.read<double>("metrics/loss"); });
    wrong_type = error_of([&] { f.read<float>("metrics/step"); });
    exists_ds = error_of([&] { f.write("metrics/step", std::vector<int64_t>{1}); });
    bad_group = error_of([&] { f.create_group("metrics/step/sub"); });
    h5::Group held = f.open_group("metrics");
    open_objects = error_of([&] { f.close(); });
  }
  {
    std::ofstream(tmp.file("text.h5")) << "this is not an HDF5 file";
  }
  not_hdf5 = error_of([&] { h5::File::open(tmp.file("text.h5")); });

  std::fflush(stderr);
  dup2(saved, 2);
  ::close(saved);
  std::stringstream printed;
  printed << std::ifstream(err_file).rdbuf();
  CHECK(printed.str().empty());

  MESSAGE("missing dataset: " << missing_ds);
  MESSAGE("not HDF5: " << not_hdf5);
  CHECK(missing_file.find("nope.h5: file does not exist") != std::string::npos);
  CHECK(missing_ds.find(name + ": dataset /metrics/loss is missing") != std::string::npos);
  CHECK(wrong_type.find(name + ": dataset /metrics/step holds int64, not float32") != std::string::npos);
  CHECK(exists_ds.find("dataset /metrics/step already exists") != std::string::npos);
  CHECK(bad_group.find(name + ": cannot create group /metrics/step/sub") != std::string::npos);
  CHECK(open_objects.find("still open") != std::string::npos);
  CHECK(not_hdf5.find("text.h5: cannot open as an HDF5 file") != std::string::npos);
  CHECK(not_hdf5.find("(HDF5 H5Fopen(): unable to open file: file signature not found)") != std::string::npos);
}

TEST_CASE("hdf5_io: write_file_atomically replaces whole files and keeps the old one on failure") {
  TempDir tmp;
  const std::string name = tmp.file("atomic.h5");
  h5::write_file_atomically(name, [](h5::File& f) { f.write("v", std::vector<double>{1, 2, 3}); });
  CHECK(h5::File::open(name).read<double>("v") == std::vector<double>{1, 2, 3});
  h5::write_file_atomically(name, [](h5::File& f) { f.write("v", std::vector<double>{4}); });
  CHECK(h5::File::open(name).read<double>("v") == std::vector<double>{4});

  std::string e = error_of([&] {
    h5::write_file_atomically(name, [](h5::File& f) {
      f.write("v", std::vector<double>{5, 6});
      throw std::runtime_error("simulated failure mid-write");
    });
  });
  CHECK(e == "simulated failure mid-write");
  CHECK(h5::File::open(name).read<double>("v") == std::vector<double>{4});
  CHECK_FALSE(fs::exists(name + ".tmp"));
  // A group left open by fill() would keep HDF5 from writing the file out: refused.
  h5::Group leaked;
  e = error_of([&] { h5::write_file_atomically(name, [&](h5::File& f) { leaked = f.create_group("g"); }); });
  CHECK(e.find("still open") != std::string::npos);
  CHECK(h5::File::open(name).read<double>("v") == std::vector<double>{4});
  CHECK_FALSE(fs::exists(name + ".tmp"));
}
