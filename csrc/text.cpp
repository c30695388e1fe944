// Text normalisation for the import's exact-dedup hash (data/dedup.py content_hash), and the
// loader's UTF-8 check (text.h) exposed for tests and tools.
//
// collapse_ws(utf8) == " ".join(text.split()).encode() for the str `text` that `utf8` encodes:
// runs of whitespace become one space, none at either end. "Whitespace" is exactly what
// Python's str.split() splits on (text.h), so stored hashes stay the same.
// The Python version built one str per word (~10 us for a 1.6 KB document: ~20% of the import).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "module.h"
#include "text.h"

namespace py = pybind11;

namespace glotta {
namespace {

// Bytes that may start a whitespace character: ASCII spaces and the lead bytes C2, E1, E2, E3.
struct MaySpace {
  bool t[256] = {};
  MaySpace() {
    for (int b = 0x09; b <= 0x0D; ++b) t[b] = true;
    for (int b = 0x1C; b <= 0x20; ++b) t[b] = true;
    t[0xC2] = t[0xE1] = t[0xE2] = t[0xE3] = true;
  }
};
const MaySpace kMaySpace;

std::string collapse(const unsigned char* p, size_t n) {
  std::string out(n, '\0');
  char* const start = out.data();
  char* w = start;
  bool gap = false;  // whitespace seen since the last kept byte
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j < n && !kMaySpace.t[p[j]]) ++j;  // a run that cannot hold whitespace: copied at once
    if (j == i) {
      const size_t sp = space_len(p + i, n - i);
      if (sp) {
        gap = true;
        i += sp;
        continue;
      }
      j = i + 1;  // C2/E1/E2/E3 starting another character
    }
    if (gap && w != start) *w++ = ' ';
    gap = false;
    std::memcpy(w, p + i, j - i);
    w += j - i;
    i = j;
  }
  out.resize(static_cast<size_t>(w - start));
  return out;
}

}  // namespace

// The window test vectorises with 16-byte SSE2 vectors on any x86-64; AVX2's 32-byte vectors
// take ~0.6x the time, so x86-64 CPUs that have AVX2 (checked once at run time) get a copy of the
// same loop compiled for it.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx2"))) static bool valid_utf8_avx2(const unsigned char* p, size_t n) { return valid_utf8_loop(p, n); }

bool valid_utf8(const unsigned char* p, size_t n) {
  static const bool avx2 = (__builtin_cpu_init(), __builtin_cpu_supports("avx2"));
  return avx2 ? valid_utf8_avx2(p, n) : valid_utf8_loop(p, n);
}
#else
bool valid_utf8(const unsigned char* p, size_t n) { return valid_utf8_loop(p, n); }
#endif

void register_text(py::module_& m) {
  m.def(
      "collapse_ws",
      [](py::bytes data) {
        char* p = nullptr;
        Py_ssize_t n = 0;
        PyBytes_AsStringAndSize(data.ptr(), &p, &n);
        // The GIL stays held: a document takes about a microsecond, less than releasing it.
        return py::bytes(collapse(reinterpret_cast<const unsigned char*>(p), static_cast<size_t>(n)));
      },
      py::arg("utf8"),
      "' '.join(text.split()) on UTF-8 bytes (Python's whitespace set), as UTF-8 bytes.");
  m.def(
      "valid_utf8",
      [](py::bytes data) {
        char* p = nullptr;
        Py_ssize_t n = 0;
        PyBytes_AsStringAndSize(data.ptr(), &p, &n);
        return valid_utf8(reinterpret_cast<const unsigned char*>(p), static_cast<size_t>(n));
      },
      py::arg("data"), "True when `data` is what bytes.decode('utf-8') accepts (the loader's check, csrc/text.h).");
  m.def(
      "valid_utf8",
      [](py::bytes blob, py::array_t<int64_t, py::array::c_style | py::array::forcecast> ends_a) {
        char* p = nullptr;
        Py_ssize_t n = 0;
        PyBytes_AsStringAndSize(blob.ptr(), &p, &n);
        const int64_t* ends = ends_a.data();
        const size_t k = static_cast<size_t>(ends_a.size());
        py::array_t<bool> out(static_cast<py::ssize_t>(k));
        bool* o = out.mutable_data();
        int64_t start = 0;
        for (size_t i = 0; i < k; ++i) {
          if (ends[i] < start || ends[i] > n) throw std::invalid_argument("ends must be non-decreasing and within the blob");
          o[i] = valid_utf8(reinterpret_cast<const unsigned char*>(p) + start, static_cast<size_t>(ends[i] - start));
          start = ends[i];
        }
        return out;
      },
      py::arg("blob"), py::arg("ends"), "valid_utf8 of each blob[ends[i-1]:ends[i]], as a bool array (one call for many strings).");
}

}  // namespace glotta
