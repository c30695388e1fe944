// One task's index lookups in one call: for each document, its local id (through the shard's
// by_lang array unless already known), byte offset and key. A shard's index is read through its
// mapping when the caller has one (shards read densely), else by pread (a shard touched for one
// or two documents of a task: on 10,000 shards each task's documents fall in ~250 of them, and
// mapping an index costs ~10 us plus the page faults and the RSS its pages then hold).
//
// Index layout (data/shard_index.py): little-endian arrays at byte offsets given by the header;
// offset and key_end are u64 per document, by_lang and nbytes (the text's size) u32 per document,
// keys the concatenated key bytes (key j is keys[key_end[j-1] : key_end[j]], key_end[-1] taken as 0).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "module.h"

namespace py = pybind11;

namespace glotta {
namespace {

constexpr uint64_t kMaxKey = 4096;  // keys are short names; a larger span means a damaged index

// A shard's index file, read either from memory (a mapping) or by pread.
class IndexSource {
 public:
  IndexSource(const unsigned char* data, uint64_t size) : data_(data), size_(size) {}
  explicit IndexSource(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    struct stat st{};
    if (fd_ < 0 || fstat(fd_, &st) != 0) fail(std::string("cannot open: ") + std::strerror(errno));
    size_ = static_cast<uint64_t>(st.st_size);
  }
  ~IndexSource() {
    if (fd_ >= 0) ::close(fd_);
  }
  IndexSource(const IndexSource&) = delete;
  IndexSource& operator=(const IndexSource&) = delete;

  // n bytes at `at` into out; every read is checked against the file's size.
  void read(uint64_t at, uint64_t n, void* out) const {
    if (at > size_ || n > size_ - at) fail("read past the end of the index (damaged or changed after start-up)");
    if (data_) {
      std::memcpy(out, data_ + at, n);
      return;
    }
    auto* p = static_cast<unsigned char*>(out);
    while (n) {
      ssize_t got = ::pread(fd_, p, n, static_cast<off_t>(at));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) fail(got < 0 ? std::string("read failed: ") + std::strerror(errno) : "file shrank while read");
      p += got, at += static_cast<uint64_t>(got), n -= static_cast<uint64_t>(got);
    }
  }
  template <typename T>
  T at(uint64_t base, uint64_t i) const {
    T v;  // the index is little-endian, as is every platform this builds on
    read(base + i * sizeof(T), sizeof(T), &v);
    return v;
  }
  [[noreturn]] void fail(const std::string& why) const { throw std::runtime_error(path_ + ": " + why); }
  void set_path(const std::string& p) { path_ = p; }

 private:
  const unsigned char* data_ = nullptr;
  uint64_t size_ = 0;
  int fd_ = -1;
  std::string path_;
};

struct Group {
  std::string path;
  const unsigned char* data = nullptr;  // a mapping's bytes, or nullptr: pread
  uint64_t size = 0;
  int64_t by_lang = 0, offset = 0, key_end = 0, keys = 0, docs = 0, nbytes = 0;
};

py::tuple lookup_index(const std::vector<std::string>& paths, const py::list& bufs, py::array_t<int64_t, py::array::c_style> layout,
                       py::array_t<int64_t, py::array::c_style> ends, py::array_t<int64_t, py::array::c_style> pos) {
  const size_t G = paths.size();
  if (bufs.size() != G || ends.size() != static_cast<py::ssize_t>(G) || layout.ndim() != 2 ||
      layout.shape(0) != static_cast<py::ssize_t>(G) || layout.shape(1) != 6)
    throw std::invalid_argument("lookup_index: paths, bufs, layout [G, 6] and ends must describe the same groups");
  std::vector<Group> groups(G);
  std::vector<py::buffer_info> keep;  // the mappings stay referenced by `bufs` for the call
  auto L = layout.unchecked<2>();
  for (size_t g = 0; g < G; ++g) {
    Group& gr = groups[g];
    gr.path = paths[g];
    gr.by_lang = L(g, 0), gr.offset = L(g, 1), gr.key_end = L(g, 2), gr.keys = L(g, 3), gr.docs = L(g, 4), gr.nbytes = L(g, 5);
    py::handle b = bufs[g];
    if (!b.is_none()) {
      keep.push_back(py::reinterpret_borrow<py::buffer>(b).request());
      gr.data = static_cast<const unsigned char*>(keep.back().ptr);
      gr.size = static_cast<uint64_t>(keep.back().size * keep.back().itemsize);
    }
  }
  const int64_t* E = ends.data();
  const int64_t* P = pos.data();
  const size_t n = static_cast<size_t>(pos.size());
  if (G && static_cast<size_t>(E[G - 1]) != n) throw std::invalid_argument("lookup_index: ends[-1] must be len(pos)");
  py::array_t<int64_t> j_out(n), off_out(n), kend_out(n), size_out(n);
  int64_t* J = j_out.mutable_data();
  int64_t* O = off_out.mutable_data();
  int64_t* K = kend_out.mutable_data();
  int64_t* S = size_out.mutable_data();
  std::string blob;
  std::string error;
  {
    py::gil_scoped_release nogil;
    try {
      size_t a = 0;
      for (size_t g = 0; g < G; ++g) {
        const Group& gr = groups[g];
        const size_t b = static_cast<size_t>(E[g]);
        if (b < a || b > n) throw std::invalid_argument("lookup_index: ends must be non-decreasing");
        std::optional<IndexSource> src;
        if (gr.data)
          src.emplace(gr.data, gr.size), src->set_path(gr.path);
        else
          src.emplace(gr.path);
        const auto docs = static_cast<uint64_t>(gr.docs);
        for (size_t i = a; i < b; ++i) {
          // pos >= 0: a position in by_lang; pos < 0: the local id -1 - pos, already known.
          uint64_t j;
          if (P[i] >= 0) {
            if (static_cast<uint64_t>(P[i]) >= docs) src->fail("by_lang position " + std::to_string(P[i]) + " out of range");
            j = src->at<uint32_t>(static_cast<uint64_t>(gr.by_lang), static_cast<uint64_t>(P[i]));
          } else {
            j = static_cast<uint64_t>(-1 - P[i]);
          }
          if (j >= docs) src->fail("document " + std::to_string(j) + " out of range (" + std::to_string(docs) + " documents)");
          const uint64_t off = src->at<uint64_t>(static_cast<uint64_t>(gr.offset), j);
          uint64_t lo = 0, hi;
          if (j) {
            uint64_t pair[2];
            src->read(static_cast<uint64_t>(gr.key_end) + (j - 1) * 8, 16, pair);
            lo = pair[0], hi = pair[1];
          } else {
            hi = src->at<uint64_t>(static_cast<uint64_t>(gr.key_end), 0);
          }
          if (lo > hi || hi - lo > kMaxKey || off > static_cast<uint64_t>(INT64_MAX))
            src->fail("key of document " + std::to_string(j) + " out of range (damaged index)");
          const size_t at = blob.size();
          blob.resize(at + (hi - lo));
          if (hi > lo) src->read(static_cast<uint64_t>(gr.keys) + lo, hi - lo, &blob[at]);
          S[i] = src->at<uint32_t>(static_cast<uint64_t>(gr.nbytes), j);
          J[i] = static_cast<int64_t>(j), O[i] = static_cast<int64_t>(off), K[i] = static_cast<int64_t>(blob.size());
        }
        a = b;
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  if (!error.empty()) throw std::runtime_error(error);
  return py::make_tuple(j_out, off_out, py::bytes(blob), kend_out, size_out);
}

}  // namespace

void register_index_lookup(py::module_& m) {
  m.def("lookup_index", &lookup_index, py::arg("paths"), py::arg("bufs"), py::arg("layout"), py::arg("ends"), py::arg("pos"),
        "A task's index lookups grouped by shard: (local id, byte offset, key blob, key ends, text size) per entry. Group g "
        "covers entries [ends[g-1], ends[g]) of shard paths[g], read from bufs[g] (its mapped bytes) or by pread "
        "when None; layout[g] = (by_lang, offset, key_end, keys array offsets, documents, nbytes array offset). pos[i] >= 0 is a "
        "position in by_lang; pos[i] < 0 means the local id -1 - pos[i]. Errors name the index file.");
}

}  // namespace glotta
