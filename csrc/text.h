// Python's whitespace set (str.isspace / str.split) on UTF-8 bytes, shared by the dedup hash
// (text.cpp) and the loader's empty-document check (tar.cpp).
#pragma once
#include <cstddef>

namespace glotta {

// Length in bytes of the whitespace character starting at p (0 if none); p[0..n) is valid UTF-8.
// \t \n \v \f \r, \x1c-\x1f, space, U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029,
// U+202F, U+205F, U+3000 (tests/data/test_dedup_hash.py checks every code point).
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

// True when every character is whitespace (also for n == 0): Python's `not text.strip()`.
inline bool only_space(const unsigned char* p, size_t n) {
  for (size_t i = 0; i < n;) {
    const size_t w = space_len(p + i, n - i);
    if (!w) return false;
    i += w;
  }
  return true;
}

}  // namespace glotta
