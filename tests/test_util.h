// Helpers shared by the CPU test suites.
#pragma once
#include <unistd.h>

#include <exception>
#include <filesystem>
#include <string>

namespace hysim::test {

// A fresh directory under the system temp directory, removed with the object. The name holds
// the process id and a counter: ctest runs suites in parallel and a suite may hold several.
struct TempDir {
  std::filesystem::path dir;
  TempDir() {
    static int counter = 0;
    dir = std::filesystem::temp_directory_path() /
          ("hysim_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
  }
  ~TempDir() { std::filesystem::remove_all(dir); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (dir / name).string(); }
};

// Directory `name` (emptied) inside one TempDir of this process, removed when it exits: for
// tests that hand paths to code which writes several files.
inline std::filesystem::path scratch_dir(const std::string& name) {
  static TempDir root;
  const std::filesystem::path p = root.dir / name;
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}

// The message of the exception fn() throws ("" if none).
template <class Fn> std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace hysim::test
