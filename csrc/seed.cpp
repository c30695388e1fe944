// stable_seeds: glotta.seeding.stable_seed(*parts, v) for a whole array of v in one call.
//
// stable_seed hashes repr(parts) with BLAKE2b (8-byte digest, no key) and keeps 63 bits. The
// loader needs one seed per block of a task (the deal of slots to lanes): 64 blocks cost 67 us in
// Python (a tuple, its repr and a hashlib object each) and 17 us here, on the loader's own thread.
// This is the same function on the same bytes, so every seed, and so every batch, is unchanged;
// tests/data/test_seeding_native.py holds it to hashlib.
//
// BLAKE2b as specified in RFC 7693 (section 3): 128-byte blocks, 12 rounds of the G mixing
// function, parameter block folded into h[0] (digest length 8, key length 0).
#include <pybind11/numpy.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "module.h"

namespace py = pybind11;

namespace glotta {
namespace {

constexpr uint64_t kIV[8] = {0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL,
                             0xa54ff53a5f1d36f1ULL, 0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL,
                             0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL};

constexpr uint8_t kSigma[10][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4}, {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13}, {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11}, {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5}, {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
};

inline uint64_t rotr(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

inline uint64_t load_le(const unsigned char* p) {  // byte order fixed, whatever the host's
  uint64_t x = 0;
  for (int i = 7; i >= 0; --i) x = (x << 8) | p[i];
  return x;
}

inline void mix(uint64_t* v, int a, int b, int c, int d, uint64_t x, uint64_t y) {
  v[a] = v[a] + v[b] + x;
  v[d] = rotr(v[d] ^ v[a], 32);
  v[c] = v[c] + v[d];
  v[b] = rotr(v[b] ^ v[c], 24);
  v[a] = v[a] + v[b] + y;
  v[d] = rotr(v[d] ^ v[a], 16);
  v[c] = v[c] + v[d];
  v[b] = rotr(v[b] ^ v[c], 63);
}

// The compression function F of one 128-byte block; `bytes` counts the message up to and
// including this block (under 2^64 here, so the counter's high word stays 0).
void compress(uint64_t* h, const unsigned char* block, uint64_t bytes, bool last) {
  uint64_t m[16], v[16];
  for (int i = 0; i < 16; ++i) m[i] = load_le(block + 8 * i);
  for (int i = 0; i < 8; ++i) v[i] = h[i], v[i + 8] = kIV[i];
  v[12] ^= bytes;
  if (last) v[14] = ~v[14];
  for (int r = 0; r < 12; ++r) {
    const uint8_t* s = kSigma[r % 10];
    mix(v, 0, 4, 8, 12, m[s[0]], m[s[1]]);
    mix(v, 1, 5, 9, 13, m[s[2]], m[s[3]]);
    mix(v, 2, 6, 10, 14, m[s[4]], m[s[5]]);
    mix(v, 3, 7, 11, 15, m[s[6]], m[s[7]]);
    mix(v, 0, 5, 10, 15, m[s[8]], m[s[9]]);
    mix(v, 1, 6, 11, 12, m[s[10]], m[s[11]]);
    mix(v, 2, 7, 8, 13, m[s[12]], m[s[13]]);
    mix(v, 3, 4, 9, 14, m[s[14]], m[s[15]]);
  }
  for (int i = 0; i < 8; ++i) h[i] ^= v[i] ^ v[i + 8];
}

// BLAKE2b with an 8-byte digest, read as a little-endian integer (int.from_bytes(d, "little")).
uint64_t blake2b_64(const unsigned char* p, size_t n) {
  uint64_t h[8];
  std::memcpy(h, kIV, sizeof h);
  h[0] ^= 0x01010000ULL ^ 8;  // depth 1, fanout 1, no key, digest length 8
  uint64_t done = 0;
  while (n - done > 128) {  // every block but the last (which may be full)
    compress(h, p + done, done + 128, false);
    done += 128;
  }
  unsigned char last[128] = {0};
  std::memcpy(last, p + done, n - done);
  compress(h, last, n, true);
  return h[0];  // the digest's 8 bytes are h[0]'s, little-endian
}

}  // namespace

void register_seed(py::module_& m) {
  m.def(
      "stable_seeds",
      [](const py::bytes& head, py::array_t<int64_t, py::array::c_style | py::array::forcecast> values) {
        // Message i is head + decimal(values[i]) + ")": repr of a tuple whose last part is an int.
        std::string msg(head);
        const size_t keep = msg.size();
        const auto n = values.size();
        const int64_t* v = values.data();
        py::array_t<uint64_t> out(n);
        uint64_t* o = out.mutable_data();
        for (py::ssize_t i = 0; i < n; ++i) {
          msg.resize(keep);
          msg += std::to_string(v[i]);
          msg += ')';
          o[i] = blake2b_64(reinterpret_cast<const unsigned char*>(msg.data()), msg.size()) & ((1ULL << 63) - 1);
        }
        return out;
      },
      py::arg("head"), py::arg("values"),
      "stable_seed(*parts, v) for each v: BLAKE2b-64 of head + str(v) + ')', 63 bits (head = repr of the parts "
      "up to and including the ', ' before the last).");
  m.def(
      "blake2b_64",
      [](const py::bytes& data) {
        const std::string s(data);
        return blake2b_64(reinterpret_cast<const unsigned char*>(s.data()), s.size());
      },
      py::arg("data"), "BLAKE2b with an 8-byte digest, as a little-endian integer (for tests against hashlib).");
}

}  // namespace glotta
