// Text normalisation for the import's exact-dedup hash (data/dedup.py content_hash).
//
// collapse_ws(utf8) == " ".join(text.split()).encode() for the str `text` that `utf8` encodes:
// runs of whitespace become one space, none at either end. "Whitespace" is exactly what
// Python's str.split() splits on (Py_UNICODE_ISSPACE): \t \n \v \f \r, \x1c-\x1f, space, U+0085,
// U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000. tests/data checks the
// table against str.isspace over every code point, so stored hashes stay the same.
// The Python version built one str per word (~10 us for a 1.6 KB document: ~20% of the import).
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "module.h"

namespace py = pybind11;

namespace glotta {
namespace {

// Length in bytes of the whitespace character starting at p (0 if none); p[0..n) is valid UTF-8.
inline size_t space_len(const unsigned char* p, size_t n) {
  const unsigned char b = p[0];
  if (b < 0x80) return (b >= 0x09 && b <= 0x0D) || (b >= 0x1C && b <= 0x20) ? 1 : 0;
  if (b == 0xC2) return n >= 2 && (p[1] == 0x85 || p[1] == 0xA0) ? 2 : 0;
  if (n < 3) return 0;
  if (b == 0xE1) return p[1] == 0x9A && p[2] == 0x80 ? 3 : 0;  // U+1680
  if (b == 0xE2) {
    if (p[1] == 0x80) return (p[2] >= 0x80 && p[2] <= 0x8A) || p[2] == 0xA8 || p[2] == 0xA9 || p[2] == 0xAF ? 3 : 0;
    return p[1] == 0x81 && p[2] == 0x9F ? 3 : 0;  // U+205F
  }
  if (b == 0xE3) return p[1] == 0x80 && p[2] == 0x80 ? 3 : 0;  // U+3000
  return 0;
}

std::string collapse(const unsigned char* p, size_t n) {
  std::string out;
  out.reserve(n);
  bool gap = false;  // whitespace seen since the last kept byte
  for (size_t i = 0; i < n;) {
    const size_t w = space_len(p + i, n - i);
    if (w) {
      gap = true;
      i += w;
      continue;
    }
    if (gap && !out.empty()) out.push_back(' ');
    gap = false;
    out.push_back(static_cast<char>(p[i++]));
  }
  return out;
}

}  // namespace

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
}

}  // namespace glotta
