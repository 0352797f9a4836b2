#include "core/hdf5_io.h"

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

namespace hysim::h5 {

static_assert(std::is_same_v<hid_t, ::hid_t>, "hysim::h5::hid_t must match HDF5's hid_t");

namespace {

// HDF5 prints its error stack to stderr by default; we report through exceptions.
// Also: no library shutdown at exit. After a failed H5Fclose (e.g. disk full while
// flushing metadata) HDF5 1.10 keeps the half-closed file and crashes when its exit
// handler retries the close; our handles close everything they open anyway.
void quiet_hdf5_errors() {
  static const bool done = [] {
    H5dont_atexit();
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)done;
}

// HDF5's error stack (then cleared) as " (HDF5 <api>(): <what failed>: <innermost cause>)":
// the API-level entry says what failed, the innermost one why.
std::string hdf5_detail() {
  struct Stack {
    std::string api, outer, inner;
  } st;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_DOWNWARD,
      [](unsigned n, const H5E_error2_t* e, void* out) -> herr_t {
        auto* s = static_cast<Stack*>(out);
        const char* desc = e->desc ? e->desc : "";
        if (n == 0) s->api = e->func_name ? e->func_name : "", s->outer = desc;
        s->inner = desc;
        return 0;
      },
      &st);
  H5Eclear2(H5E_DEFAULT);
  if (st.outer.empty() && st.inner.empty()) return {};
  std::string r = " (HDF5 " + st.api + "(): " + st.outer;
  if (st.inner != st.outer) r += ": " + st.inner;
  std::replace(r.begin(), r.end(), '\n', ' ');  // some messages embed a ctime() newline
  return r + ")";
}

// Failures of closes done by destructors (see Object::release).
uint64_t g_close_failures = 0;
std::string g_last_close_failure;

// Scoped ownership of the short-lived ids (dataspaces, types, property lists, attributes).
struct Id {
  ::hid_t id;
  herr_t (*close)(::hid_t);
  Id(::hid_t i, herr_t (*c)(::hid_t)) : id(i), close(c) {}
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;
  ~Id() {
    if (id >= 0) close(id);
  }
  operator ::hid_t() const { return id; }
  bool ok() const { return id >= 0; }
};

template <class T> struct Traits;
template <> struct Traits<float> {
  static ::hid_t mem() { return H5T_NATIVE_FLOAT; }
  static ::hid_t file() { return H5T_IEEE_F32LE; }
  static constexpr H5T_class_t cls = H5T_FLOAT;
  static constexpr bool is_signed = true;
  static constexpr const char* name = "float32";
};
template <> struct Traits<double> {
  static ::hid_t mem() { return H5T_NATIVE_DOUBLE; }
  static ::hid_t file() { return H5T_IEEE_F64LE; }
  static constexpr H5T_class_t cls = H5T_FLOAT;
  static constexpr bool is_signed = true;
  static constexpr const char* name = "float64";
};
template <> struct Traits<int64_t> {
  static ::hid_t mem() { return H5T_NATIVE_INT64; }
  static ::hid_t file() { return H5T_STD_I64LE; }
  static constexpr H5T_class_t cls = H5T_INTEGER;
  static constexpr bool is_signed = true;
  static constexpr const char* name = "int64";
};
template <> struct Traits<uint64_t> {
  static ::hid_t mem() { return H5T_NATIVE_UINT64; }
  static ::hid_t file() { return H5T_STD_U64LE; }
  static constexpr H5T_class_t cls = H5T_INTEGER;
  static constexpr bool is_signed = false;
  static constexpr const char* name = "uint64";
};
template <> struct Traits<uint8_t> {
  static ::hid_t mem() { return H5T_NATIVE_UINT8; }
  static ::hid_t file() { return H5T_STD_U8LE; }
  static constexpr H5T_class_t cls = H5T_INTEGER;
  static constexpr bool is_signed = false;
  static constexpr const char* name = "uint8";
};

template <class T> bool type_matches(::hid_t type) {
  if (H5Tget_class(type) != Traits<T>::cls || H5Tget_size(type) != sizeof(T)) return false;
  if (Traits<T>::cls == H5T_INTEGER) return (H5Tget_sign(type) == H5T_SGN_2) == Traits<T>::is_signed;
  return true;
}

std::string describe_type(::hid_t type) {
  const size_t bits = H5Tget_size(type) * 8;
  switch (H5Tget_class(type)) {
    case H5T_FLOAT: return "float" + std::to_string(bits);
    case H5T_INTEGER: return (H5Tget_sign(type) == H5T_SGN_2 ? "int" : "uint") + std::to_string(bits);
    case H5T_STRING: return "string";
    default: return "an unsupported type";
  }
}

::hid_t make_vlen_string_type() {
  ::hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, H5T_VARIABLE);
  H5Tset_cset(t, H5T_CSET_UTF8);
  return t;
}

// Read n strings of a string-typed dataset or attribute (variable or fixed length).
// `read` performs H5Dread/H5Aread into a buffer with the given memory type.
std::vector<std::string> read_string_values(::hid_t stored_type, ::hid_t space, int64_t n,
                                            const std::function<herr_t(::hid_t, void*)>& read, bool* ok) {
  std::vector<std::string> out;
  *ok = false;
  if (n == 0) {
    *ok = true;
    return out;
  }
  if (H5Tis_variable_str(stored_type) > 0) {
    Id mem(make_vlen_string_type(), H5Tclose);
    std::vector<char*> ptrs(n, nullptr);
    if (read(mem, ptrs.data()) < 0) return out;
    for (char* p : ptrs) out.emplace_back(p ? p : "");
#if H5_VERSION_GE(1, 12, 0)
    H5Treclaim(mem, space, H5P_DEFAULT, ptrs.data());
#else
    H5Dvlen_reclaim(mem, space, H5P_DEFAULT, ptrs.data());
#endif
  } else {
    const size_t len = H5Tget_size(stored_type);
    Id mem(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(mem, len);
    std::vector<char> buf(len * n);
    if (read(mem, buf.data()) < 0) return out;
    for (int64_t i = 0; i < n; ++i) {
      const char* s = buf.data() + i * len;
      out.emplace_back(s, strnlen(s, len));
    }
  }
  *ok = true;
  return out;
}

// Split "a/b/c" into its components (empty components from "//" or a leading "/" dropped).
std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    if (end > start) parts.push_back(path.substr(start, end - start));
    start = end + 1;
  }
  return parts;
}

::hid_t link_create_plist_with_parents() {
  ::hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  H5Pset_char_encoding(lcpl, H5T_CSET_UTF8);
  return lcpl;
}

void fsync_file(const std::string& name, bool directory) {
  int fd = ::open(name.c_str(), O_RDONLY | (directory ? O_DIRECTORY : 0));
  if (fd < 0) throw std::runtime_error(name + ": cannot open for fsync (" + std::strerror(errno) + ")");
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) throw std::runtime_error(name + ": fsync failed (" + std::strerror(err) + ")");
}

}  // namespace

// ---- Object ------------------------------------------------------------------------

Object& Object::operator=(Object&& o) noexcept {
  if (this != &o) {
    release();
    id_ = std::exchange(o.id_, -1);
    file_ = std::move(o.file_);
    path_ = std::move(o.path_);
  }
  return *this;
}

Object::~Object() { release(); }

void Object::release() noexcept {
  if (id_ < 0) return;
  herr_t r = H5Iget_type(id_) == H5I_FILE ? H5Fclose(id_) : H5Oclose(id_);
  if (r < 0) {
    // A destructor cannot throw: remember the failure for write_file_atomically.
    ++g_close_failures;
    g_last_close_failure = file_ + ": closing " + path_ + " failed" + hdf5_detail();
  }
  H5Eclear2(H5E_DEFAULT);
  id_ = -1;
}

void Object::fail(const std::string& what, bool with_hdf5_detail) const {
  std::string detail = with_hdf5_detail ? hdf5_detail() : std::string();
  throw std::runtime_error(file_ + ": " + what + detail);
}

std::string Object::child_path(const std::string& rel) const {
  if (!rel.empty() && rel[0] == '/') return rel;
  return path_ == "/" ? "/" + rel : path_ + "/" + rel;
}

bool Object::has_attr(const std::string& name) const {
  htri_t r = H5Aexists(id_, name.c_str());
  if (r < 0) fail("cannot look up attribute " + name + " of " + path_);
  return r > 0;
}

std::vector<std::string> Object::attr_names() const {
  std::vector<std::string> names;
  hsize_t idx = 0;
  herr_t r = H5Aiterate2(
      id_, H5_INDEX_NAME, H5_ITER_INC, &idx,
      [](::hid_t, const char* name, const H5A_info_t*, void* out) -> herr_t {
        static_cast<std::vector<std::string>*>(out)->emplace_back(name);
        return 0;
      },
      &names);
  if (r < 0) fail("cannot list the attributes of " + path_);
  return names;
}

void Object::delete_attr(const std::string& name) {
  if (H5Adelete(id_, name.c_str()) < 0) fail("cannot delete attribute " + name + " of " + path_);
}

void Object::write_attr(const std::string& name, hid_t file_type, hid_t mem_type, const void* value) {
  // Replacing keeps set_attr idempotent and lets an attribute change type.
  if (has_attr(name)) delete_attr(name);
  Id space(H5Screate(H5S_SCALAR), H5Sclose);
  Id attr(H5Acreate2(id_, name.c_str(), file_type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!attr.ok() || H5Awrite(attr, mem_type, value) < 0) fail("cannot write attribute " + name + " of " + path_);
}

void Object::set_attr(const std::string& name, const std::string& value) {
  Id type(make_vlen_string_type(), H5Tclose);
  const char* p = value.c_str();
  write_attr(name, type, type, &p);
}
void Object::set_attr_f64(const std::string& name, double v) { write_attr(name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v); }
void Object::set_attr_i64(const std::string& name, int64_t v) { write_attr(name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v); }
void Object::set_attr_u64(const std::string& name, uint64_t v) { write_attr(name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &v); }
void Object::set_attr_u8(const std::string& name, uint8_t v) { write_attr(name, H5T_STD_U8LE, H5T_NATIVE_UINT8, &v); }

std::string Object::attr_string(const std::string& name) const {
  const std::string what = "attribute " + name + " of " + path_;
  if (!has_attr(name)) fail(what + " is missing", false);
  Id attr(H5Aopen(id_, name.c_str(), H5P_DEFAULT), H5Aclose);
  if (!attr.ok()) fail("cannot open " + what);
  Id type(H5Aget_type(attr), H5Tclose);
  Id space(H5Aget_space(attr), H5Sclose);
  if (H5Tget_class(type) != H5T_STRING) fail(what + " holds " + describe_type(type) + ", not a string", false);
  if (H5Sget_simple_extent_npoints(space) != 1) fail(what + " is not a single string", false);
  bool ok = false;
  auto v = read_string_values(type, space, 1, [&](::hid_t mem, void* buf) { return H5Aread(attr, mem, buf); }, &ok);
  if (!ok) fail("cannot read " + what);
  return v[0];
}

double Object::attr_f64(const std::string& name) const {
  const std::string what = "attribute " + name + " of " + path_;
  if (!has_attr(name)) fail(what + " is missing", false);
  Id attr(H5Aopen(id_, name.c_str(), H5P_DEFAULT), H5Aclose);
  if (!attr.ok()) fail("cannot open " + what);
  Id type(H5Aget_type(attr), H5Tclose);
  if (H5Tget_class(type) != H5T_FLOAT) fail(what + " holds " + describe_type(type) + ", not a float", false);
  double v = 0;
  if (H5Aread(attr, H5T_NATIVE_DOUBLE, &v) < 0) fail("cannot read " + what);
  return v;
}

Object::IntValue Object::attr_int(const std::string& name) const {
  const std::string what = "attribute " + name + " of " + path_;
  if (!has_attr(name)) fail(what + " is missing", false);
  Id attr(H5Aopen(id_, name.c_str(), H5P_DEFAULT), H5Aclose);
  if (!attr.ok()) fail("cannot open " + what);
  Id type(H5Aget_type(attr), H5Tclose);
  if (H5Tget_class(type) != H5T_INTEGER) fail(what + " holds " + describe_type(type) + ", not an integer", false);
  IntValue v{H5Tget_sign(type) == H5T_SGN_2, 0, 0};
  herr_t r = v.is_signed ? H5Aread(attr, H5T_NATIVE_INT64, &v.i) : H5Aread(attr, H5T_NATIVE_UINT64, &v.u);
  if (r < 0) fail("cannot read " + what);
  return v;
}

// ---- Dataset -----------------------------------------------------------------------

Shape Dataset::shape() const {
  Id space(H5Dget_space(id_), H5Sclose);
  int rank = space.ok() ? H5Sget_simple_extent_ndims(space) : -1;
  if (rank < 0) fail("cannot read the shape of dataset " + path_);
  std::vector<hsize_t> dims(rank);
  H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  return Shape(dims.begin(), dims.end());
}

std::string Dataset::type_name() const {
  Id type(H5Dget_type(id_), H5Tclose);
  if (!type.ok()) fail("cannot read the type of dataset " + path_);
  return describe_type(type);
}

template <Element T> void Dataset::read_into(T* out, int64_t n) const {
  Id type(H5Dget_type(id_), H5Tclose);
  Id space(H5Dget_space(id_), H5Sclose);
  if (!type.ok() || !space.ok()) fail("cannot open dataset " + path_);
  if (!type_matches<T>(type))
    fail("dataset " + path_ + " holds " + describe_type(type) + ", not " + Traits<T>::name, false);
  const int64_t stored = H5Sget_simple_extent_npoints(space);
  if (stored != n)
    fail("dataset " + path_ + " has " + std::to_string(stored) + " elements, expected " + std::to_string(n), false);
  if (n > 0 && H5Dread(id_, Traits<T>::mem(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0)
    fail("cannot read dataset " + path_);
}

template <Element T> std::vector<T> Dataset::read() const {
  Id space(H5Dget_space(id_), H5Sclose);
  if (!space.ok()) fail("cannot open dataset " + path_);
  std::vector<T> v(H5Sget_simple_extent_npoints(space));
  read_into(v.data(), int64_t(v.size()));
  return v;
}

std::vector<std::string> Dataset::read_strings() const {
  Id type(H5Dget_type(id_), H5Tclose);
  Id space(H5Dget_space(id_), H5Sclose);
  if (!type.ok() || !space.ok()) fail("cannot open dataset " + path_);
  if (H5Tget_class(type) != H5T_STRING) fail("dataset " + path_ + " holds " + describe_type(type) + ", not strings", false);
  bool ok = false;
  auto v = read_string_values(type, space, H5Sget_simple_extent_npoints(space),
                              [&](::hid_t mem, void* buf) { return H5Dread(id_, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf); },
                              &ok);
  if (!ok) fail("cannot read dataset " + path_);
  return v;
}

// ---- Group -------------------------------------------------------------------------

bool Group::exists(const std::string& path) const {
  // H5Lexists fails (rather than answering false) when a parent is missing, so walk
  // the path one component at a time.
  std::string prefix;
  for (const auto& part : split_path(path)) {
    prefix += (prefix.empty() ? "" : "/") + part;
    htri_t r = H5Lexists(id_, prefix.c_str(), H5P_DEFAULT);
    if (r < 0) H5Eclear2(H5E_DEFAULT);
    if (r <= 0) return false;
  }
  return !prefix.empty();
}

namespace {
H5I_type_t object_kind(::hid_t loc, const std::string& path) {
  Id obj(H5Oopen(loc, path.c_str(), H5P_DEFAULT), H5Oclose);
  if (!obj.ok()) {
    H5Eclear2(H5E_DEFAULT);
    return H5I_BADID;
  }
  return H5Iget_type(obj);
}
}  // namespace

bool Group::is_group(const std::string& path) const { return exists(path) && object_kind(id_, path) == H5I_GROUP; }
bool Group::is_dataset(const std::string& path) const { return exists(path) && object_kind(id_, path) == H5I_DATASET; }

Group Group::create_group(const std::string& path) {
  if (exists(path)) {
    if (!is_group(path)) fail(child_path(path) + " exists and is not a group", false);
    return open_group(path);
  }
  Id lcpl(link_create_plist_with_parents(), H5Pclose);
  ::hid_t g = H5Gcreate2(id_, path.c_str(), lcpl, H5P_DEFAULT, H5P_DEFAULT);
  if (g < 0) fail("cannot create group " + child_path(path));
  return Group(g, file_, child_path(path));
}

Group Group::open_group(const std::string& path) const {
  if (!exists(path)) fail("group " + child_path(path) + " is missing", false);
  ::hid_t g = H5Gopen2(id_, path.c_str(), H5P_DEFAULT);
  if (g < 0) fail("cannot open group " + child_path(path));
  return Group(g, file_, child_path(path));
}

Dataset Group::open_dataset(const std::string& path) const {
  if (!exists(path)) fail("dataset " + child_path(path) + " is missing", false);
  ::hid_t d = H5Dopen2(id_, path.c_str(), H5P_DEFAULT);
  if (d < 0) fail("cannot open dataset " + child_path(path));
  return Dataset(d, file_, child_path(path));
}

void Group::remove(const std::string& path) {
  if (H5Ldelete(id_, path.c_str(), H5P_DEFAULT) < 0) fail("cannot remove " + child_path(path));
}

template <Element T> Dataset Group::write(const std::string& path, const T* data, const Shape& shape) {
  const std::string full = child_path(path);
  for (int64_t d : shape)
    if (d < 0) fail("dataset " + full + ": negative extent in shape " + shape_str(shape), false);
  const int64_t n = numel(shape);
  if (n > 0 && !data) fail("dataset " + full + ": no data for shape " + shape_str(shape), false);
  if (exists(path)) fail("dataset " + full + " already exists", false);
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  Id space(shape.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(int(dims.size()), dims.data(), nullptr), H5Sclose);
  Id lcpl(link_create_plist_with_parents(), H5Pclose);
  ::hid_t d = H5Dcreate2(id_, path.c_str(), Traits<T>::file(), space, lcpl, H5P_DEFAULT, H5P_DEFAULT);
  if (d < 0) fail("cannot create dataset " + full);
  Dataset ds(d, file_, full);
  if (n > 0 && H5Dwrite(d, Traits<T>::mem(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) fail("cannot write dataset " + full);
  return ds;
}

Dataset Group::write_strings(const std::string& path, const std::vector<std::string>& values) {
  const std::string full = child_path(path);
  if (exists(path)) fail("dataset " + full + " already exists", false);
  hsize_t dim = values.size();
  Id space(H5Screate_simple(1, &dim, nullptr), H5Sclose);
  Id type(make_vlen_string_type(), H5Tclose);
  Id lcpl(link_create_plist_with_parents(), H5Pclose);
  ::hid_t d = H5Dcreate2(id_, path.c_str(), type, space, lcpl, H5P_DEFAULT, H5P_DEFAULT);
  if (d < 0) fail("cannot create dataset " + full);
  Dataset ds(d, file_, full);
  std::vector<const char*> ptrs;
  for (const auto& s : values) ptrs.push_back(s.c_str());
  if (!values.empty() && H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()) < 0)
    fail("cannot write dataset " + full);
  return ds;
}

namespace {
struct ListState {
  ::hid_t base;
  H5I_type_t want;
  bool recursive;
  std::vector<std::string>* out;
};
herr_t list_visit(::hid_t, const char* name, const H5L_info_t* info, void* data) {
  auto* s = static_cast<ListState*>(data);
  if (info->type != H5L_TYPE_HARD) return 0;  // soft/external links are not ours
  if (!s->recursive && std::strchr(name, '/')) return 0;
  if (object_kind(s->base, name) == s->want) s->out->emplace_back(name);
  return 0;
}
}  // namespace

std::vector<std::string> Group::list_datasets(bool recursive) const {
  std::vector<std::string> out;
  ListState s{id_, H5I_DATASET, recursive, &out};
  herr_t r = recursive ? H5Lvisit(id_, H5_INDEX_NAME, H5_ITER_INC, list_visit, &s)
                       : H5Literate(id_, H5_INDEX_NAME, H5_ITER_INC, nullptr, list_visit, &s);
  if (r < 0) fail("cannot list the datasets of " + path_);
  return out;
}

std::vector<std::string> Group::list_groups() const {
  std::vector<std::string> out;
  ListState s{id_, H5I_GROUP, false, &out};
  if (H5Literate(id_, H5_INDEX_NAME, H5_ITER_INC, nullptr, list_visit, &s) < 0)
    fail("cannot list the groups of " + path_);
  return out;
}

// ---- File --------------------------------------------------------------------------

File File::create(const std::string& file_name) {
  quiet_hdf5_errors();
  // No sieve buffer: dataset writes go to the file inside H5Dwrite, so a write error
  // (disk full) is reported there instead of in a silent close (whose failure also
  // leaves HDF5 1.10 in a state that crashes at exit).
  Id fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  H5Pset_sieve_buf_size(fapl, 0);
  ::hid_t f = H5Fcreate(file_name.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  if (f < 0) throw std::runtime_error(file_name + ": cannot create HDF5 file" + hdf5_detail());
  return File(f, file_name, "/");
}

File File::open(const std::string& file_name, Access access) {
  quiet_hdf5_errors();
  std::error_code ec;
  if (!std::filesystem::exists(file_name, ec)) throw std::runtime_error(file_name + ": file does not exist");
  ::hid_t f = H5Fopen(file_name.c_str(), access == Access::read_write ? H5F_ACC_RDWR : H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0)
    throw std::runtime_error(file_name + ": cannot open as an HDF5 file" + hdf5_detail());
  return File(f, file_name, "/");
}

void File::flush() {
  if (H5Fflush(id_, H5F_SCOPE_GLOBAL) < 0) fail("cannot flush");
}

void File::close() {
  if (id_ < 0) return;
  ssize_t open_objects =
      H5Fget_obj_count(id_, H5F_OBJ_DATASET | H5F_OBJ_GROUP | H5F_OBJ_DATATYPE | H5F_OBJ_ATTR | H5F_OBJ_LOCAL);
  if (open_objects > 0)
    fail("cannot close: " + std::to_string(open_objects) + " groups/datasets/attributes are still open", false);
  herr_t r = H5Fclose(std::exchange(id_, -1));
  if (r < 0) fail("closing the file failed");
}

void write_file_atomically(const std::string& file_name, const std::function<void(File&)>& fill) {
  const std::string tmp = file_name + ".tmp";
  try {
    {
      const uint64_t close_failures = g_close_failures;
      File f = File::create(tmp);
      fill(f);
      f.close();
      if (g_close_failures != close_failures) throw std::runtime_error(g_last_close_failure);
    }
    fsync_file(tmp, false);
    if (std::rename(tmp.c_str(), file_name.c_str()) != 0)
      throw std::runtime_error(file_name + ": cannot rename " + tmp + " over it (" + std::strerror(errno) + ")");
    std::string dir = std::filesystem::path(file_name).parent_path().string();
    fsync_file(dir.empty() ? "." : dir, true);
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
}

#define HYSIM_H5_INSTANTIATE(T)                                                          \
  template std::vector<T> Dataset::read<T>() const;                                      \
  template void Dataset::read_into<T>(T*, int64_t) const;                                \
  template Dataset Group::write<T>(const std::string&, const T*, const Shape&);
HYSIM_H5_INSTANTIATE(float)
HYSIM_H5_INSTANTIATE(double)
HYSIM_H5_INSTANTIATE(int64_t)
HYSIM_H5_INSTANTIATE(uint64_t)
HYSIM_H5_INSTANTIATE(uint8_t)
#undef HYSIM_H5_INSTANTIATE

}  // namespace hysim::h5
