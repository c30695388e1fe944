// UTF-8 on bytes, shared by the dedup hash (text.cpp) and the loader's read path (tar.cpp):
// strict validation (what Python's bytes.decode('utf-8') accepts) and Python's whitespace set
// (str.isspace / str.split).
#pragma once
#include <cstddef>
#include <cstdint>

namespace glotta {

// Strict UTF-8 (Unicode Table 3-7: no overlongs, no surrogates D800-DFFF, nothing past
// U+10FFFF), checked as a property of every 4-byte window instead of by decoding characters:
//   * byte i is a continuation (10xxxxxx) exactly when byte i-1 is a lead of 2+ bytes (>= C2),
//     byte i-2 one of 3+ (>= E0) or byte i-3 one of 4 (>= F0);
//   * no C0, C1 or F5-FF anywhere;
//   * the second byte after E0 is A0-BF (no overlong), after ED 80-9F (no surrogate), after F0
//     90-BF (no overlong), after F4 80-8F (nothing past U+10FFFF);
//   * no lead at the end expects bytes past it.
// Valid UTF-8 meets all four (inside a character the lead predicts each continuation; at a
// character start every earlier lead's character is complete, so none predicts one), and text
// that meets them decodes character by character from the start. Every byte's test is
// independent of the others, so the loop has no branch and no loop-carried state and the
// compiler vectorises it (the loader validates every document it reads, and half of a
// multilingual corpus is multi-byte text). tests/data/test_tar_reader.py checks it against
// Python's strict decoder.
namespace utf8 {
inline uint8_t bad_at(uint8_t b, uint8_t b1, uint8_t b2, uint8_t b3) {
  const uint8_t cont = (b & 0xC0) == 0x80;
  const uint8_t expect = (b1 >= 0xC0) | (b2 >= 0xE0) | (b3 >= 0xF0);
  uint8_t bad = cont ^ expect;
  bad |= (b == 0xC0) | (b == 0xC1) | (b >= 0xF5);
  bad |= ((b1 == 0xE0) & (b < 0xA0)) | ((b1 == 0xED) & (b > 0x9F)) | ((b1 == 0xF0) & (b < 0x90)) | ((b1 == 0xF4) & (b > 0x8F));
  return bad;
}
}  // namespace utf8

// The portable loop; valid_utf8 (text.cpp) runs it compiled for AVX2 where the CPU has it.
inline bool valid_utf8_loop(const unsigned char* p, size_t n) {
  uint8_t bad = 0;
  for (size_t i = 0; i < n && i < 3; ++i)  // bytes before the start count as ASCII
    bad |= utf8::bad_at(p[i], i >= 1 ? p[i - 1] : 0, i >= 2 ? p[i - 2] : 0, 0);
  for (size_t i = 3; i < n; ++i) bad |= utf8::bad_at(p[i], p[i - 1], p[i - 2], p[i - 3]);
  if ((n >= 1 && p[n - 1] >= 0xC0) || (n >= 2 && p[n - 2] >= 0xE0) || (n >= 3 && p[n - 3] >= 0xF0)) bad = 1;
  return !bad;
}

// True when p[0..n) is valid UTF-8 (exactly what Python's strict decoder accepts).
bool valid_utf8(const unsigned char* p, size_t n);

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
