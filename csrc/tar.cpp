// Streaming reader for webdataset tar shards.
//
// Formats: ustar (with the 155-byte prefix), GNU long names ('L'), pax extended headers ('x',
// `path` and `size` records; global 'g' headers are ignored). Key rules follow webdataset:
// key = member path up to the first '.' of the basename, extension = the rest, lower-cased;
// consecutive members with the same key form one sample; `__*__` top-level members and
// non-regular members are skipped. Unlike webdataset we fail on a key that reappears after
// another key (webdataset silently yields two partial samples) and on a duplicate extension.
#include <fcntl.h>
#include <pybind11/stl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "module.h"

namespace py = pybind11;

namespace glotta {
namespace {

constexpr size_t kBlock = 512;

struct Field {
  std::string ext;
  uint64_t offset;
  uint64_t size;
};

struct RawSample {
  std::string key;
  std::vector<Field> fields;
  uint64_t start;  // offset of the sample's first header (for resume)
};

class TarError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

uint64_t parse_octal(const char* p, size_t n, bool* ok) {
  uint64_t v = 0;
  size_t i = 0;
  while (i < n && (p[i] == ' ' || p[i] == '\0')) ++i;
  bool any = false;
  for (; i < n && p[i] >= '0' && p[i] <= '7'; ++i) {
    v = (v << 3) | static_cast<uint64_t>(p[i] - '0');
    any = true;
  }
  for (; i < n; ++i)
    if (p[i] != ' ' && p[i] != '\0') *ok = false;
  if (!any) v = 0;
  return v;
}

uint64_t parse_number(const char* p, size_t n, bool* ok) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  if (u[0] & 0x80) {  // GNU base-256 for sizes >= 8 GiB
    uint64_t v = u[0] & 0x7f;
    for (size_t i = 1; i < n; ++i) v = (v << 8) | u[i];
    return v;
  }
  return parse_octal(p, n, ok);
}

bool checksum_ok(const unsigned char* h) {
  bool ok = true;
  uint64_t stored = parse_octal(reinterpret_cast<const char*>(h) + 148, 8, &ok);
  if (!ok) return false;
  uint64_t usum = 0;
  int64_t ssum = 0;
  for (size_t i = 0; i < kBlock; ++i) {
    unsigned char c = (i >= 148 && i < 156) ? ' ' : h[i];
    usum += c;
    ssum += static_cast<signed char>(c);
  }
  return stored == usum || static_cast<int64_t>(stored) == ssum;
}

std::string cstr(const char* p, size_t n) { return std::string(p, strnlen(p, n)); }

bool is_zero_block(const unsigned char* h) {
  for (size_t i = 0; i < kBlock; ++i)
    if (h[i]) return false;
  return true;
}

// Unsafe: absolute paths and any ".." component (a consumer that extracts would escape).
bool unsafe_name(const std::string& name) {
  if (name.empty() || name[0] == '/') return true;
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('/', start);
    if (end == std::string::npos) end = name.size();
    if (name.compare(start, end - start, "..") == 0 && end - start == 2) return true;
    start = end + 1;
  }
  return false;
}

// pax records: "%d %s=%s\n"
void parse_pax(const char* p, size_t n, std::string* path, uint64_t* size, bool* has_size) {
  size_t i = 0;
  while (i < n) {
    size_t sp = i;
    while (sp < n && p[sp] != ' ') ++sp;
    if (sp >= n) return;
    uint64_t len = 0;
    for (size_t j = i; j < sp; ++j) {
      if (p[j] < '0' || p[j] > '9') throw TarError("bad pax record length");
      len = len * 10 + static_cast<uint64_t>(p[j] - '0');
    }
    if (len == 0 || i + len > n) throw TarError("bad pax record length");
    std::string rec(p + sp + 1, p + i + len - 1);  // without trailing newline
    size_t eq = rec.find('=');
    if (eq != std::string::npos) {
      std::string k = rec.substr(0, eq), v = rec.substr(eq + 1);
      if (k == "path") *path = v;
      if (k == "size") {
        *size = std::stoull(v);
        *has_size = true;
      }
    }
    i += len;
  }
}

class TarReader {
 public:
  explicit TarReader(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY);
    if (fd_ < 0) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
    struct stat st{};
    if (fstat(fd_, &st) != 0) {
      ::close(fd_);
      throw std::runtime_error(path + ": cannot stat");
    }
    size_ = static_cast<uint64_t>(st.st_size);
    if (size_ > 0) {
      void* m = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
      if (m == MAP_FAILED) {
        ::close(fd_);
        throw std::runtime_error(path + ": mmap failed");
      }
      madvise(m, size_, MADV_SEQUENTIAL);
      data_ = static_cast<const unsigned char*>(m);
    }
  }
  ~TarReader() { close(); }

  void close() {
    if (data_) munmap(const_cast<unsigned char*>(data_), size_);
    data_ = nullptr;
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  uint64_t offset() const { return next_sample_start_; }
  bool done() const { return done_; }
  const std::string& path() const { return path_; }

  void seek(uint64_t off) {
    if (off % kBlock || off > size_) throw std::invalid_argument(path_ + ": bad offset " + std::to_string(off));
    pos_ = next_sample_start_ = off;
    done_ = false;
    pending_ = RawSample{};
    seen_.clear();
    error_.clear();
  }

  // Parse up to `max_samples` complete samples (GIL released). Errors raise TarError.
  // Samples completed before a damaged member are returned first; the error is raised on the
  // next call, so callers keep every intact sample.
  std::vector<RawSample> parse(size_t max_samples) {
    if (!error_.empty()) {
      done_ = true;
      throw TarError(error_);
    }
    std::vector<RawSample> out;
    if (!data_) {
      done_ = true;
      return out;
    }
    try {
      parse_into(&out, max_samples);
    } catch (const TarError& e) {
      if (out.empty()) {
        done_ = true;
        throw;
      }
      error_ = e.what();
    }
    return out;
  }

  void parse_into(std::vector<RawSample>* out_ptr, size_t max_samples) {
    auto& out = *out_ptr;
    while (!done_ && out.size() < max_samples) {
      Member m;
      if (!next_member(&m)) {  // end of archive
        if (!pending_.fields.empty()) out.push_back(std::move(pending_));
        pending_ = RawSample{};
        done_ = true;
        next_sample_start_ = pos_;
        break;
      }
      if (m.skip) continue;
      if (!pending_.fields.empty() && m.key != pending_.key) {
        next_sample_start_ = m.header_at;
        out.push_back(std::move(pending_));
        pending_ = RawSample{};
      }
      if (pending_.fields.empty()) {
        if (seen_.count(m.key))
          throw TarError("key '" + m.key + "' appears again after other keys (samples must be consecutive members)");
        seen_.insert(m.key);
        pending_.key = m.key;
        pending_.start = m.header_at;
      }
      for (const auto& f : pending_.fields)
        if (f.ext == m.ext) throw TarError("duplicate member '" + m.key + "." + m.ext + "' in one sample");
      pending_.fields.push_back(Field{m.ext, m.data_offset, m.size});
    }
  }

  py::bytes bytes_at(uint64_t off, uint64_t n) const {
    return py::bytes(reinterpret_cast<const char*>(data_ + off), n);
  }

  py::dict counters() const {
    py::dict d;
    d["skipped_unsafe_name"] = skipped_unsafe_;
    d["skipped_non_regular"] = skipped_nonregular_;
    d["skipped_no_extension"] = skipped_noext_;
    d["skipped_meta"] = skipped_meta_;
    return d;
  }

  std::vector<std::string> warnings() const { return warnings_; }

 private:
  struct Member {
    std::string key, ext;
    uint64_t data_offset = 0, size = 0, header_at = 0;
    bool skip = false;
  };

  // Reads the next regular member (following L/x/g headers). Returns false at end of archive.
  bool next_member(Member* m) {
    std::string long_name;
    uint64_t pax_size = 0;
    bool has_pax_size = false;
    uint64_t first_header = pos_;
    for (;;) {
      if (pos_ == size_) return false;  // tolerate archives without the two zero blocks
      if (pos_ + kBlock > size_) throw TarError("truncated header at offset " + std::to_string(pos_));
      const unsigned char* h = data_ + pos_;
      if (is_zero_block(h)) return false;
      if (!checksum_ok(h)) throw TarError("bad header checksum at offset " + std::to_string(pos_));
      bool ok = true;
      uint64_t size = parse_number(reinterpret_cast<const char*>(h) + 124, 12, &ok);
      if (!ok) throw TarError("bad size field at offset " + std::to_string(pos_));
      char type = static_cast<char>(h[156]);
      uint64_t data_at = pos_ + kBlock;
      if (type == 'x' || type == 'g' || type == 'L' || type == 'K') {
        if (data_at + size > size_) throw TarError("truncated extended header at offset " + std::to_string(pos_));
        const char* p = reinterpret_cast<const char*>(data_ + data_at);
        if (type == 'L') long_name = cstr(p, size);
        if (type == 'x') parse_pax(p, size, &long_name, &pax_size, &has_pax_size);
        pos_ = data_at + round_up(size);
        continue;
      }
      if (has_pax_size) size = pax_size;
      if (data_at + size > size_)
        throw TarError("truncated member data at offset " + std::to_string(pos_) + " (archive cut short?)");
      std::string name = long_name;
      if (name.empty()) {
        name = cstr(reinterpret_cast<const char*>(h), 100);
        if (std::memcmp(h + 257, "ustar", 5) == 0) {
          std::string prefix = cstr(reinterpret_cast<const char*>(h) + 345, 155);
          if (!prefix.empty()) name = prefix + "/" + name;
        }
      }
      pos_ = data_at + round_up(size);
      m->header_at = first_header;
      m->data_offset = data_at;
      m->size = size;
      m->skip = true;
      if (type != '0' && type != '\0' && type != '7') {
        ++skipped_nonregular_;
        return true;
      }
      if (unsafe_name(name)) {
        ++skipped_unsafe_;
        if (warnings_.size() < 100) warnings_.push_back("unsafe member name skipped: '" + name + "'");
        return true;
      }
      size_t slash = name.rfind('/');
      std::string base = slash == std::string::npos ? name : name.substr(slash + 1);
      if (slash == std::string::npos && base.size() >= 4 && base.compare(0, 2, "__") == 0 &&
          base.compare(base.size() - 2, 2, "__") == 0) {
        ++skipped_meta_;
        return true;
      }
      size_t dot = base.find('.');
      if (dot == std::string::npos || dot == 0 || dot + 1 == base.size()) {
        ++skipped_noext_;
        if (warnings_.size() < 100) warnings_.push_back("member without key.extension skipped: '" + name + "'");
        return true;
      }
      size_t cut = (slash == std::string::npos ? 0 : slash + 1) + dot;
      m->key = name.substr(0, cut);
      m->ext = name.substr(cut + 1);
      for (auto& c : m->ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      m->skip = false;
      return true;
    }
  }

  static uint64_t round_up(uint64_t n) { return (n + kBlock - 1) / kBlock * kBlock; }

  std::string path_;
  int fd_ = -1;
  const unsigned char* data_ = nullptr;
  uint64_t size_ = 0, pos_ = 0, next_sample_start_ = 0;
  bool done_ = false;
  RawSample pending_;
  std::unordered_set<std::string> seen_;
  std::vector<std::string> warnings_;
  std::string error_;
  uint64_t skipped_unsafe_ = 0, skipped_nonregular_ = 0, skipped_noext_ = 0, skipped_meta_ = 0;
};

}  // namespace

void register_tar(py::module_& m) {
  py::register_exception<TarError>(m, "TarError", PyExc_ValueError);
  py::class_<TarReader>(m, "TarReader", "Sequential mmap reader of one webdataset tar shard.")
      .def(py::init<const std::string&>(), py::arg("path"))
      .def(
          "read",
          [](TarReader& r, size_t max_samples) {
            std::vector<RawSample> raw;
            {
              py::gil_scoped_release release;
              raw = r.parse(max_samples);
            }
            py::list out(raw.size());
            for (size_t i = 0; i < raw.size(); ++i) {
              py::dict fields;
              for (const auto& f : raw[i].fields) fields[py::str(f.ext)] = r.bytes_at(f.offset, f.size);
              out[i] = py::make_tuple(py::str(raw[i].key), fields);
            }
            return out;
          },
          py::arg("max_samples") = 256,
          "Next complete samples as [(key, {ext: bytes})]; [] at the end. Raises TarError on corruption.")
      .def("seek", &TarReader::seek, py::arg("offset"), "Restart at a sample boundary returned by `offset`.")
      .def_property_readonly("offset", &TarReader::offset, "Byte offset of the first sample not yet returned.")
      .def_property_readonly("done", &TarReader::done)
      .def_property_readonly("path", &TarReader::path)
      .def("counters", &TarReader::counters)
      .def("warnings", &TarReader::warnings)
      .def("close", &TarReader::close);
}

}  // namespace glotta
