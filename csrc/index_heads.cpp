// Start-up in two calls, whatever the number of shards: every shard's size and mtime (the
// corpus index's cache key), and every index file's JSON header (data/shard_index.py). In
// Python each shard cost a stat, an open, a pread and a close with their objects (~15 us a
// shard, ~15 ms of a loader's start on 938 shards); here the system calls run back to back with
// the GIL released, and the headers come back as bytes for one json.loads of all of them.
//
// Index file framing (data/shard_index.py): 8 bytes magic + version, u64 little-endian header
// length H, then H bytes of JSON.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "module.h"

namespace py = pybind11;

namespace glotta {
namespace {

constexpr char kMagic[8] = {'G', 'L', 'T', 'I', 'D', 'X', '\0', '\1'};
constexpr uint64_t kMaxHeader = uint64_t{1} << 26;  // as ShardIndex.read_header: larger means damaged
constexpr size_t kFirstRead = 4096;                 // a typical header is a few hundred bytes

struct Head {
  enum Kind { kOk, kMissing, kError } kind = kError;
  std::string bytes;  // the JSON (kOk) or the error (kError)
};

bool pread_full(int fd, char* dst, size_t n, uint64_t off, size_t* got) {
  *got = 0;
  while (*got < n) {
    const ssize_t r = ::pread(fd, dst + *got, n - *got, static_cast<off_t>(off + *got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return false;
    if (r == 0) break;
    *got += static_cast<size_t>(r);
  }
  return true;
}

Head read_head(const std::string& path) {
  Head h;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) {
      h.kind = Head::kMissing;
    } else {
      h.bytes = std::string("unreadable shard index: ") + std::strerror(errno);
    }
    return h;
  }
  std::string buf(kFirstRead, '\0');
  size_t got = 0;
  if (!pread_full(fd, buf.data(), buf.size(), 0, &got)) {
    h.bytes = std::string("unreadable shard index: ") + std::strerror(errno);
  } else if (got < 16 || std::memcmp(buf.data(), kMagic, 8) != 0) {
    h.bytes = "not a glotta shard index (bad magic)";
  } else {
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(buf[8 + static_cast<size_t>(i)]);
    if (n > kMaxHeader) {
      h.bytes = "index header of " + std::to_string(n) + " bytes (damaged)";
    } else {
      const size_t want = 16 + static_cast<size_t>(n);
      if (want > got && got == buf.size()) {  // a header over 4 KiB: read the rest
        buf.resize(want);
        size_t more = 0;
        if (!pread_full(fd, buf.data() + got, want - got, got, &more)) {
          h.bytes = std::string("unreadable shard index: ") + std::strerror(errno);
          ::close(fd);
          return h;
        }
        got += more;
      }
      if (want > got) {
        h.bytes = "index header cut short (" + std::to_string(got - 16) + " of " + std::to_string(n) + " bytes)";
      } else {
        h.kind = Head::kOk;
        h.bytes.assign(buf.data() + 16, static_cast<size_t>(n));
      }
    }
  }
  ::close(fd);
  return h;
}

}  // namespace

void register_index_heads(py::module_& m) {
  m.def(
      "stat_sizes",
      [](const std::vector<std::string>& paths) {
        py::array_t<int64_t> out({static_cast<py::ssize_t>(paths.size()), py::ssize_t{2}});
        int64_t* o = out.mutable_data();
        {
          py::gil_scoped_release release;
          for (size_t i = 0; i < paths.size(); ++i) {
            struct stat st{};
            if (::stat(paths[i].c_str(), &st) == 0) {
              o[2 * i] = static_cast<int64_t>(st.st_size);
              o[2 * i + 1] = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
            } else {
              o[2 * i] = o[2 * i + 1] = -1;
            }
          }
        }
        return out;
      },
      py::arg("paths"), "int64 [n, 2]: each file's size and mtime in ns (as os.stat gives them), -1 -1 where stat fails.");
  m.def(
      "index_heads",
      [](const std::vector<std::string>& paths) {
        std::vector<Head> heads(paths.size());
        {
          py::gil_scoped_release release;
          for (size_t i = 0; i < paths.size(); ++i) heads[i] = read_head(paths[i]);
        }
        py::list out(paths.size());
        for (size_t i = 0; i < paths.size(); ++i) {
          if (heads[i].kind == Head::kOk)
            out[i] = py::bytes(heads[i].bytes);
          else if (heads[i].kind == Head::kError)
            out[i] = py::str(heads[i].bytes);
          else
            out[i] = py::none();
        }
        return out;
      },
      py::arg("paths"),
      "Each index file's JSON header: bytes, None when the file does not exist, or a str saying why it cannot be read "
      "(bad magic, a damaged length, cut short, an OS error).");
}

}  // namespace glotta
