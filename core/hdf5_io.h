// HDF5 files through the C API: handles that close themselves, groups by path,
// N-D datasets of float/double/int64/uint64/uint8 and strings, attributes, listing.
//
// Every failure throws std::runtime_error naming the file and the object path
// ("results/a/b.h5: cannot open dataset /metrics/step (...)"); HDF5's own error
// printing is switched off and its innermost message appended to ours instead.
// Data is stored little-endian and contiguous (no chunking/filters), so a file is
// readable by h5py as is. Reads are strict about the stored type: reading an int64
// dataset as float is an error, not a silent conversion. The HDF5 library here is
// not thread-safe: call these from one thread at a time.
#pragma once
#include <concepts>
#include <cstdint>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace hysim::h5 {

using hid_t = int64_t;  // HDF5's hid_t (int64_t since 1.10); kept out of this header

// Element types a dataset can hold.
template <class T>
concept Element = std::same_as<T, float> || std::same_as<T, double> || std::same_as<T, int64_t> ||
                  std::same_as<T, uint64_t> || std::same_as<T, uint8_t>;

class Dataset;
class Group;

// An open file, group or dataset: owns one HDF5 id, closes it on destruction, and
// carries the attributes API. Move-only.
class Object {
 public:
  Object() = default;
  Object(const Object&) = delete;
  Object& operator=(const Object&) = delete;
  Object(Object&& o) noexcept { *this = std::move(o); }
  Object& operator=(Object&& o) noexcept;
  ~Object();

  hid_t id() const { return id_; }
  bool valid() const { return id_ >= 0; }
  const std::string& file_name() const { return file_; }
  const std::string& path() const { return path_; }  // "/" for a file's root group

  bool has_attr(const std::string& name) const;
  std::vector<std::string> attr_names() const;  // sorted by name
  void delete_attr(const std::string& name);

  // Strings are stored as variable-length UTF-8 (h5py reads them as str). Numbers
  // are stored as float64, int64 or uint64 (uint8 and bool as uint8).
  void set_attr(const std::string& name, const std::string& value);
  void set_attr(const std::string& name, const char* value) { set_attr(name, std::string(value)); }
  template <class T>
    requires std::is_arithmetic_v<T>
  void set_attr(const std::string& name, T value) {
    if constexpr (std::is_floating_point_v<T>) set_attr_f64(name, double(value));
    else if constexpr (std::is_same_v<T, bool> || std::is_same_v<T, uint8_t>) set_attr_u8(name, uint8_t(value));
    else if constexpr (std::is_signed_v<T>) set_attr_i64(name, int64_t(value));
    else set_attr_u64(name, uint64_t(value));
  }

  std::string attr_string(const std::string& name) const;
  // A numeric attribute as T; floating T needs a stored float, integral T a stored
  // integer whose value fits T.
  template <class T>
    requires std::is_arithmetic_v<T>
  T attr(const std::string& name) const {
    if constexpr (std::is_floating_point_v<T>) {
      return T(attr_f64(name));
    } else {
      auto [is_signed, i, u] = attr_int(name);
      bool fits = is_signed ? std::in_range<T>(i) : std::in_range<T>(u);
      if (!fits) fail("attribute " + name + " does not fit the requested integer type", false);
      return is_signed ? T(i) : T(u);
    }
  }

 protected:
  Object(hid_t id, std::string file, std::string path) : id_(id), file_(std::move(file)), path_(std::move(path)) {}
  [[noreturn]] void fail(const std::string& what, bool with_hdf5_detail = true) const;
  std::string child_path(const std::string& rel) const;

  hid_t id_ = -1;
  std::string file_, path_;

 private:
  void set_attr_f64(const std::string& name, double v);
  void set_attr_i64(const std::string& name, int64_t v);
  void set_attr_u64(const std::string& name, uint64_t v);
  void set_attr_u8(const std::string& name, uint8_t v);
  double attr_f64(const std::string& name) const;
  struct IntValue { bool is_signed; int64_t i; uint64_t u; };
  IntValue attr_int(const std::string& name) const;
  void write_attr(const std::string& name, hid_t file_type, hid_t mem_type, const void* value);
  void release() noexcept;  // close the id (if any) without reporting errors
};

class Dataset : public Object {
 public:
  Dataset() = default;
  Shape shape() const;  // {} for a scalar dataset
  int64_t size() const { return numel(shape()); }
  std::string type_name() const;  // "float32", "float64", "int64", "uint64", "uint8", "string", ...
  template <Element T> std::vector<T> read() const;
  template <Element T> void read_into(T* out, int64_t n) const;  // n must equal size()
  std::vector<std::string> read_strings() const;

 private:
  friend class Group;
  using Object::Object;
};

class Group : public Object {
 public:
  Group() = default;

  // Paths are relative to this group and may have several components ("eval/parity/256").
  bool exists(const std::string& path) const;      // any object (group or dataset)
  bool is_group(const std::string& path) const;
  bool is_dataset(const std::string& path) const;
  Group create_group(const std::string& path);     // creates missing parents; opens it if it exists
  Group open_group(const std::string& path) const;
  Dataset open_dataset(const std::string& path) const;
  void remove(const std::string& path);            // unlink a group or dataset

  // Create a dataset (missing parent groups are created; an existing one is an error).
  // shape {} makes a scalar; a zero extent makes an empty dataset.
  template <Element T> Dataset write(const std::string& path, const T* data, const Shape& shape);
  template <Element T> Dataset write(const std::string& path, const std::vector<T>& data) {
    return write(path, data.data(), Shape{int64_t(data.size())});
  }
  template <Element T> Dataset write_scalar(const std::string& path, T value) { return write(path, &value, Shape{}); }
  Dataset write_strings(const std::string& path, const std::vector<std::string>& values);  // 1-D, UTF-8

  template <Element T> std::vector<T> read(const std::string& path, Shape* shape = nullptr) const {
    Dataset d = open_dataset(path);
    if (shape) *shape = d.shape();
    return d.read<T>();
  }
  std::vector<std::string> read_strings(const std::string& path) const { return open_dataset(path).read_strings(); }

  // Datasets (or groups) below this group, as relative paths sorted by name;
  // recursive lists "a/b/c" for datasets inside subgroups.
  std::vector<std::string> list_datasets(bool recursive = false) const;
  std::vector<std::string> list_groups() const;  // direct subgroups only

 protected:
  friend class File;
  using Object::Object;
};

// A file; as a Group it is the root group ("/"), and attributes set on it are the
// file's root attributes.
class File : public Group {
 public:
  enum class Access { read_only, read_write };
  File() = default;
  static File create(const std::string& file_name);  // truncates an existing file
  static File open(const std::string& file_name, Access access = Access::read_only);
  void flush();
  // Close now and report errors (the destructor closes silently). Fails if groups or
  // datasets of this file are still open, since then HDF5 would keep it open.
  void close();

 private:
  using Group::Group;
};

// Write a file so that `file_name` is always either its previous version or the
// complete new one: `fill` writes into "<file_name>.tmp", which is then closed,
// fsync'd and renamed over file_name (and the directory fsync'd). If anything throws,
// the temporary file is removed, file_name is untouched and the exception propagates.
// `fill` must close every group/dataset it opens (let them go out of scope).
void write_file_atomically(const std::string& file_name, const std::function<void(File&)>& fill);

}  // namespace hysim::h5
