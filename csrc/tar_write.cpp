// Tar members for the shard writer: ustar headers (pax for names over 100 bytes or sizes of
// 8 GiB and more), payload and padding, built in one buffer. Python's tarfile spent most of
// the import's time here (TarInfo objects, header encoding, checksums in Python).
// Fixed mode 0444, owner 0, mtime 0, so a rerun writes byte-identical shards.
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "module.h"

namespace py = pybind11;

namespace glotta {
namespace {

constexpr size_t kBlock = 512;
constexpr uint64_t kOctalMax = 8ULL << 30;  // 11 octal digits hold sizes below 8 GiB

void put_octal(char* dst, size_t width, uint64_t v) {  // width-1 digits + NUL
  std::snprintf(dst, width, "%0*llo", static_cast<int>(width - 1), static_cast<unsigned long long>(v));
}

void header(std::string* out, const std::string& name, uint64_t size, char type) {
  char h[kBlock];
  std::memset(h, 0, kBlock);
  std::memcpy(h, name.data(), std::min(name.size(), size_t{100}));
  put_octal(h + 100, 8, 0444);
  put_octal(h + 108, 8, 0);
  put_octal(h + 116, 8, 0);
  put_octal(h + 124, 12, size < kOctalMax ? size : 0);
  put_octal(h + 136, 12, 0);
  h[156] = type;
  std::memcpy(h + 257, "ustar\0" "00", 8);
  put_octal(h + 329, 8, 0);
  put_octal(h + 337, 8, 0);
  std::memset(h + 148, ' ', 8);
  unsigned sum = 0;
  for (size_t i = 0; i < kBlock; ++i) sum += static_cast<unsigned char>(h[i]);
  std::snprintf(h + 148, 7, "%06o", sum);  // 6 digits + NUL, then the space already there
  out->append(h, kBlock);
}

void pad(std::string* out) { out->append((kBlock - out->size() % kBlock) % kBlock, '\0'); }

std::string pax_record(const std::string& key, const std::string& value) {
  std::string body = " " + key + "=" + value + "\n";
  size_t n = body.size() + 1;
  while (std::to_string(n).size() + body.size() != n) ++n;
  return std::to_string(n) + body;
}

void member(std::string* out, const std::string& name, const char* data, uint64_t size) {
  std::string records;
  if (name.size() > 100) records += pax_record("path", name);
  if (size >= kOctalMax) records += pax_record("size", std::to_string(size));
  if (!records.empty()) {
    header(out, "././@PaxHeader", records.size(), 'x');
    out->append(records);
    pad(out);
  }
  header(out, name, size, '0');
  out->append(data, size);
  pad(out);
}

}  // namespace

void register_tar_write(py::module_& m) {
  m.def(
      "tar_sample",
      [](const std::string& key, const std::vector<std::pair<std::string, py::bytes>>& members) {
        std::vector<std::pair<std::string, std::string_view>> views;
        size_t total = 0;
        for (const auto& [ext, payload] : members) {
          char* p = nullptr;
          Py_ssize_t n = 0;
          PyBytes_AsStringAndSize(payload.ptr(), &p, &n);
          views.emplace_back(key + "." + ext, std::string_view(p, static_cast<size_t>(n)));
          total += static_cast<size_t>(n) + 3 * kBlock;
        }
        std::string out;
        out.reserve(total);
        for (const auto& [name, v] : views) member(&out, name, v.data(), v.size());
        return py::bytes(out);
      },
      py::arg("key"), py::arg("members"),
      "Tar bytes of one sample: KEY.EXT members in the given order ([(ext, payload)]), padded to blocks.");
}

}  // namespace glotta
