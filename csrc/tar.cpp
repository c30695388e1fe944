// Streaming reader for webdataset tar shards that cannot hang and never loses data silently.
//
// Formats: ustar (with the 155-byte prefix), GNU long names ('L'), GNU base-256 sizes, pax
// extended headers ('x', `path` and `size` records; global 'g' headers are ignored). Key rules
// follow webdataset: key = member path up to the first '.' of the basename, extension = the
// rest, lower-cased; consecutive members with the same key form one sample; `__*__` top-level
// members and non-regular members are skipped.
//
// Damage never ends a shard silently and never loops:
//   * every size is checked against the bytes left in the file before any addition, so no sum
//     can overflow, and the read position strictly increases (asserted on every move);
//   * a header that fails its checksum or holds an unparsable number is skipped by scanning
//     forward block by block to the next valid header (`damaged` +1, `skipped_bytes` +n);
//   * a file that ends without the two zero blocks, or inside a member, counts `truncated`;
//   * a member whose key reappears after other keys (`misplaced_member`), a duplicate
//     extension (`duplicate_member`), a non-UTF-8 name (`bad_name`) or a bad pax record
//     (`bad_pax`) is skipped and counted; the following samples are still read.
// Every counted problem also leaves a warning naming the shard and the byte offset. What a
// damaged region swallowed whole is found by comparing with the manifest (data/shard_index.py).
#include <fcntl.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "module.h"
#include "text.h"

namespace py = pybind11;

namespace glotta {
namespace {

constexpr uint64_t kBlock = 512;
constexpr size_t kMaxWarnings = 100;
// pread sizes of random readers: a sample's header with a typical document behind it (texts),
// and larger reads when a random reader is read through sample by sample (read / scan).
constexpr uint64_t kDocRead = 4096;
constexpr uint64_t kScanRead = 256 << 10;
// Documents a random reader serves with pread before it maps its file (see TarReader).
constexpr uint64_t kMapAfter = 32;

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

// Octal with the usual space/NUL padding; false when a byte is not octal or it overflows.
bool parse_octal(const unsigned char* p, size_t n, uint64_t* out) {
  uint64_t v = 0;
  size_t i = 0;
  while (i < n && (p[i] == ' ' || p[i] == '\0')) ++i;
  for (; i < n && p[i] >= '0' && p[i] <= '7'; ++i) {
    if (v > (UINT64_MAX >> 3)) return false;
    v = (v << 3) | static_cast<uint64_t>(p[i] - '0');
  }
  for (; i < n; ++i)
    if (p[i] != ' ' && p[i] != '\0') return false;
  *out = v;
  return true;
}

// A size field: octal, or GNU base-256 (high bit set). Negative or > 2^64-1 is an error.
bool parse_size(const unsigned char* p, size_t n, uint64_t* out) {
  if (!(p[0] & 0x80)) return parse_octal(p, n, out);
  if (p[0] & 0x40) return false;  // negative (two's complement, 0xff...)
  // The value is 8*n-1 bits; more than 64 significant bits cannot be a real size.
  if ((p[0] & 0x7f) != 0) return false;
  for (size_t i = 1; i + 8 < n; ++i)
    if (p[i]) return false;
  uint64_t v = 0;
  for (size_t i = n - 8; i < n; ++i) v = (v << 8) | p[i];
  *out = v;
  return true;
}

bool checksum_ok(const unsigned char* h) {
  uint64_t stored = 0;
  if (!parse_octal(h + 148, 8, &stored)) return false;
  // Sum of the block with the checksum field read as 8 spaces, unsigned and signed (old tars).
  // Branch-free sums over the whole block (the compiler vectorises them), then the field is
  // taken out: this runs for every header the loader reads.
  uint32_t usum = 0, high = 0;
  for (size_t i = 0; i < kBlock; ++i) {
    usum += h[i];
    high += h[i] >> 7;
  }
  for (size_t i = 148; i < 156; ++i) {
    usum -= h[i];
    high -= h[i] >> 7;
  }
  usum += 8 * ' ';
  const int64_t ssum = static_cast<int64_t>(usum) - 256 * static_cast<int64_t>(high);  // bytes >= 0x80 count 256 less
  return stored == usum || static_cast<int64_t>(stored) == ssum;
}

bool is_zero_block(const unsigned char* h) {
  for (size_t i = 0; i < kBlock; ++i)
    if (h[i]) return false;
  return true;
}

bool utf8_ok(std::string_view s) { return valid_utf8(reinterpret_cast<const unsigned char*>(s.data()), s.size()); }

std::string cstr(const unsigned char* p, size_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  return std::string(c, strnlen(c, n));
}

// Unsafe: absolute paths and any ".." component (a consumer that extracts would escape).
bool unsafe_name(const std::string& name) {
  if (name.empty() || name[0] == '/') return true;
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('/', start);
    if (end == std::string::npos) end = name.size();
    if (end - start == 2 && name.compare(start, 2, "..") == 0) return true;
    start = end + 1;
  }
  return false;
}

// pax records "%d %s=%s\n". Returns an error message, or "" when every record parsed.
std::string parse_pax(const unsigned char* p, uint64_t n, std::string* path, uint64_t* size, bool* has_size) {
  uint64_t i = 0;
  while (i < n) {
    if (p[i] == '\0') break;  // NUL padding after the last record
    uint64_t sp = i, len = 0;
    while (sp < n && p[sp] >= '0' && p[sp] <= '9') {
      if (len > (UINT64_MAX - 9) / 10) return "pax record length overflows";
      len = len * 10 + static_cast<uint64_t>(p[sp] - '0');
      ++sp;
    }
    if (sp == i || sp >= n || p[sp] != ' ') return "pax record without a length";
    if (len <= sp - i + 1 || len > n - i) return "pax record length out of range";
    if (p[i + len - 1] != '\n') return "pax record not ended by a newline";
    std::string rec(reinterpret_cast<const char*>(p) + sp + 1, len - (sp - i) - 2);
    size_t eq = rec.find('=');
    if (eq == std::string::npos) return "pax record without '='";
    std::string k = rec.substr(0, eq), v = rec.substr(eq + 1);
    if (k == "path") {
      if (!utf8_ok(v)) return "pax path is not UTF-8";
      *path = v;
    } else if (k == "size") {
      uint64_t s = 0;
      if (v.empty()) return "pax size is empty";
      for (char c : v) {
        if (c < '0' || c > '9') return "pax size '" + v.substr(0, 32) + "' is not a number";
        if (s > (UINT64_MAX - 9) / 10) return "pax size overflows";
        s = s * 10 + static_cast<uint64_t>(c - '0');
      }
      *size = s;
      *has_size = true;
    }
    i += len;
  }
  return "";
}

// Magic numbers of compressed streams: a `.tar.gz` renamed to `.tar` is not a corrupt tar.
const char* compression(const unsigned char* d, uint64_t n) {
  if (n >= 2 && d[0] == 0x1f && d[1] == 0x8b) return "gzip";
  if (n >= 4 && d[0] == 0x28 && d[1] == 0xb5 && d[2] == 0x2f && d[3] == 0xfd) return "zstd";
  if (n >= 3 && d[0] == 'B' && d[1] == 'Z' && d[2] == 'h') return "bzip2";
  if (n >= 6 && d[0] == 0xfd && d[1] == '7' && d[2] == 'z' && d[3] == 'X' && d[4] == 'Z' && d[5] == 0) return "xz";
  if (n >= 4 && d[0] == 0x04 && d[1] == 0x22 && d[2] == 0x4d && d[3] == 0x18) return "lz4";
  return nullptr;
}

struct Counters {
  uint64_t unsafe = 0, nonregular = 0, noext = 0, meta = 0;
  uint64_t bad_name = 0, bad_pax = 0, misplaced = 0, duplicate = 0;
  uint64_t damaged = 0, skipped_bytes = 0, truncated = 0;
};

// Two ways to reach the bytes, one parser over both (`at`):
//   * mapped: the file is memory-mapped (read-ahead advice for a full scan: the index pass,
//     iter_samples; random advice otherwise);
//   * pread: nothing is mapped. Each call opens the file, `pread`s the header block(s) of a sample
//     and its text straight into the Python bytes object, and closes it again; between calls the
//     reader holds neither a descriptor nor a mapping, and a file that shrank is an error naming
//     it, not a SIGBUS.
// Random readers (the loader's document-by-document reads) start with pread and map their file
// once they have served kMapAfter documents (Mapping::kAdaptive). Measured on the bench corpus
// (bench/read_shards.py): a mapping faults ~64-128 KiB around every document into the process's
// RSS (fault-around) and costs an mmap + munmap per reader, so when a task's documents are spread
// over many shards and readers leave the loader's LRU after a document or two (the corpus-scale
// case: 1,000 shards), pread takes ~2.2x less CPU and maps nothing (bench/loader_scale.py: +11-15
// MB above the small set instead of +68-88 MB); when a shard is read densely (19 shards of 500
// documents) the kernel's copy makes pread ~0.5 us per document dearer than reading the mapping,
// so a reader that keeps being asked maps its file.
enum class Mapping { kAlways, kNever, kAdaptive };

class TarReader {
 public:
  // keep_fd: a pread reader keeps the descriptor it opened here, and every later one, open between
  // calls until release_fd() (ShardFiles bounds how many such readers hold one).
  TarReader(const std::string& path, bool sequential, Mapping mapping, bool keep_fd = false)
      : path_(path), mapping_(mapping), keep_fd_(keep_fd && mapping == Mapping::kNever) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
    struct stat st{};
    if (fstat(fd, &st) != 0) {
      ::close(fd);
      throw std::runtime_error(path + ": cannot stat");
    }
    size_ = static_cast<uint64_t>(st.st_size);
    if (mapping == Mapping::kAlways && !map_file(fd, sequential)) {
      ::close(fd);
      throw std::runtime_error(path + ": mmap failed: " + std::strerror(errno));
    }
    const char* kind = nullptr;
    if (data_) {
      kind = compression(data_, size_);
    } else if (size_ > 0) {
      unsigned char head[8] = {};
      const ssize_t got = ::pread(fd, head, sizeof head, 0);
      kind = got > 0 ? compression(head, static_cast<uint64_t>(got)) : nullptr;
    }
    if (kind) {
      ::close(fd);
      close();
      throw TarError(path + ": unsupported: compressed shard (" + kind +
                     "); glotta reads plain .tar shards (decompress it, e.g. `" +
                     (std::string(kind) == "gzip" ? "gunzip" : kind) + " -d`)");
    }
    if (keep_fd_ && size_ > 0)
      fd_ = fd;
    else
      ::close(fd);  // a mapping stays valid without it; pread reads open the file per call
  }
  ~TarReader() {
    close();
    if (fd_ >= 0) ::close(fd_);
  }

  void close() {
    release_fd();
    if (data_) munmap(const_cast<unsigned char*>(data_), size_);
    data_ = nullptr;
    closed_ = true;
    std::vector<unsigned char>().swap(buf_);
    buf_len_ = 0;
  }

  // Keeps the file open for random reads during one call (RAII; nested calls share it). A
  // keep_fd reader's descriptor stays open after it; a read past the end of a file that shrank
  // is an error naming it.
  class Session {
   public:
    Session(TarReader& r, uint64_t read_ahead) : r_(r), saved_(r.read_ahead_) {
      r.read_ahead_ = read_ahead;
      if (r.in_session_) return;  // nested: the outer session holds the file
      if (!r.data_ && !r.closed_ && r.size_ > 0) {
        // A descriptor kept since an earlier call is not stat-ed again: a file that shrank
        // meanwhile makes the first read past its new end come up short, an error naming it
        // (pread_all), and what lies before the cut is still what was indexed. (An fstat per
        // run was ~7,000 calls an epoch on 938 shards of 10 documents.)
        if (r.fd_ < 0) r.open_for_reads();
      }
      r.in_session_ = outer_ = true;
    }
    ~Session() {
      r_.read_ahead_ = saved_;
      if (!outer_) return;
      r_.in_session_ = false;
      if (r_.fd_ < 0) return;
      if (!r_.keep_fd_) {
        ::close(r_.fd_);
        r_.fd_ = -1;
      }
      r_.buf_len_ = 0;  // the file may change before the next call
      // Its contents are stale from now on, so keep no allocation either: a worker keeps up to
      // 16,384 readers that are between calls (ShardFiles).
      std::vector<unsigned char>().swap(r_.buf_);
    }
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

   private:
    TarReader& r_;
    uint64_t saved_;
    bool outer_ = false;
  };

  bool has_fd() const { return fd_ >= 0; }
  void release_fd() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  // A random reader asked for `docs` more documents (texts): past kMapAfter it maps its file
  // (inside a Session, with its descriptor; if mmap fails it keeps reading with pread).
  void served(size_t docs) {
    served_ += docs;
    if (mapping_ == Mapping::kAdaptive && !data_ && !closed_ && fd_ >= 0 && served_ >= kMapAfter) {
      map_file(fd_, false);
      buf_len_ = 0;
    }
  }

  uint64_t offset() const { return next_sample_start_; }
  uint64_t size() const { return size_; }
  bool mapped() const { return data_ != nullptr; }
  bool done() const { return done_; }
  const std::string& path() const { return path_; }

  void seek(uint64_t off) {
    if (off % kBlock || off > size_) throw std::invalid_argument(path_ + ": bad offset " + std::to_string(off));
    restart(off);
    if (data_ && off < size_) {  // the sample is about to be read: ask for it now
      uint64_t n = std::min<uint64_t>(size_ - off, 16 * 1024);  // header + a typical document
      uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
      uint64_t start = off / page * page;
      madvise(const_cast<unsigned char*>(data_) + start, n + (off - start), MADV_WILLNEED);
    }
  }

  // Up to `max_samples` samples (GIL released by the caller). Damage is counted, never thrown.
  std::vector<RawSample> parse(size_t max_samples) {
    std::vector<RawSample> out;
    if (closed_ || size_ == 0) {
      done_ = true;
      return out;
    }
    while (!done_ && out.size() < max_samples) {
      Member m;
      if (!next_member(&m)) {  // end of archive (or of the file)
        if (!pending_.fields.empty()) out.push_back(std::move(pending_));
        pending_ = RawSample{};
        done_ = true;
        next_sample_start_ = pos_;
        break;
      }
      if (m.skip) continue;
      if (!pending_.fields.empty() && m.key != pending_.key) {
        if (seen_.count(m.key)) {
          problem(&counters_.misplaced, m.header_at,
                  "member '" + m.key + "." + m.ext + "' skipped: its key appeared before other keys (samples must be consecutive members)");
          continue;
        }
        next_sample_start_ = m.header_at;
        out.push_back(std::move(pending_));
        pending_ = RawSample{};
      }
      if (pending_.fields.empty()) {
        if (seen_.count(m.key)) {
          problem(&counters_.misplaced, m.header_at,
                  "member '" + m.key + "." + m.ext + "' skipped: its key appeared before other keys (samples must be consecutive members)");
          continue;
        }
        seen_.insert(m.key);
        pending_.key = m.key;
        pending_.start = m.header_at;
      }
      bool dup = false;
      for (const auto& f : pending_.fields) dup = dup || f.ext == m.ext;
      if (dup) {
        problem(&counters_.duplicate, m.header_at, "duplicate member '" + m.key + "." + m.ext + "' in one sample skipped");
        continue;
      }
      pending_.fields.push_back(Field{m.ext, m.data_offset, m.size});
    }
    return out;
  }

  // Where the text of the sample starting at `off` lies, if that sample's key is `key`: the
  // loader's random read. The same member walk as parse() (checked headers, skipped members),
  // but it stops at the .txt member: no sample object, no look at the members after it.
  struct TextAt {
    int8_t status = 3;  // 0 found, 2 the sample has no .txt, 3 no sample with this key starts at `off`
    uint64_t offset = 0, size = 0;
    std::string found;  // status 3: the key found there ("" when no sample starts there)
  };
  TextAt text_at(uint64_t off, std::string_view key) {
    TextAt t;
    if (closed_ || off % kBlock || off >= size_) return t;
    restart(off);
    Member m;
    while (next_member(&m)) {
      if (m.skip) continue;
      if (t.status == 3) {  // the sample's first member
        if (m.key != key) {
          t.found = m.key;
          return t;
        }
        t.status = 2;
      } else if (m.key != key) {
        break;  // the next sample: this one has no .txt
      }
      if (m.ext == "txt") {  // a later duplicate .txt would be skipped by parse() too
        t.status = 0;
        t.offset = m.data_offset;
        t.size = m.size;
        break;
      }
    }
    return t;
  }

  // bytes [off, off + n) of the file (within its size) as a Python bytes object: copied from
  // the mapping, or read straight into the object (what the read buffer already holds is copied).
  // Bytes [off, off + n) of the file into dst, without Python: from the mapping, or from the read
  // buffer and pread (inside a Session).
  void read_into(uint64_t off, uint64_t n, unsigned char* dst) {
    if (data_) {
      std::memcpy(dst, data_ + off, n);
      return;
    }
    uint64_t have = 0;
    if (off >= buf_off_ && off - buf_off_ < buf_len_) {
      have = std::min(n, buf_len_ - (off - buf_off_));
      std::memcpy(dst, buf_.data() + (off - buf_off_), have);
    }
    if (have < n) pread_all(dst + have, n - have, off + have);
  }

  // The mapping, or nullptr for a pread reader.
  const unsigned char* mapping() const { return data_; }

  py::bytes bytes_at(uint64_t off, uint64_t n) {
    if (data_) return py::bytes(reinterpret_cast<const char*>(data_ + off), n);
    py::bytes out = py::reinterpret_steal<py::bytes>(PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(n)));
    if (!out) throw py::error_already_set();
    auto* dst = reinterpret_cast<unsigned char*>(PyBytes_AS_STRING(out.ptr()));
    uint64_t have = 0;
    if (off >= buf_off_ && off - buf_off_ < buf_len_) {
      have = std::min(n, buf_len_ - (off - buf_off_));
      std::memcpy(dst, buf_.data() + (off - buf_off_), have);
    }
    if (have < n) pread_all(dst + have, n - have, off + have);
    return out;
  }

  // Unmap the pages read so far (they stay in the page cache). The kernel maps up to 64 KiB
  // around each page touched (fault-around), so a worker's LRU of open shards would otherwise
  // hold most of each shard's pages in its RSS long after the texts were copied out.
  void drop_pages() const {  // random readers map nothing: a no-op
    if (data_) madvise(const_cast<unsigned char*>(data_), size_, MADV_DONTNEED);
  }

  py::dict counters() const {
    py::dict d;
    d["skipped_unsafe_name"] = counters_.unsafe;
    d["skipped_non_regular"] = counters_.nonregular;
    d["skipped_no_extension"] = counters_.noext;
    d["skipped_meta"] = counters_.meta;
    d["bad_name"] = counters_.bad_name;
    d["bad_pax"] = counters_.bad_pax;
    d["misplaced_member"] = counters_.misplaced;
    d["duplicate_member"] = counters_.duplicate;
    d["damaged"] = counters_.damaged;
    d["skipped_bytes"] = counters_.skipped_bytes;
    d["truncated"] = counters_.truncated;
    return d;
  }

  std::vector<std::string> warnings() const { return warnings_; }

 private:
  struct Member {
    std::string key, ext;
    uint64_t data_offset = 0, size = 0, header_at = 0;
    bool skip = false;
  };

  bool map_file(int fd, bool sequential) {
    if (size_ == 0) return true;
    void* m = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) return false;
    madvise(m, size_, sequential ? MADV_SEQUENTIAL : MADV_RANDOM);
    data_ = static_cast<const unsigned char*>(m);
    return true;
  }

  // Bytes [off, off + n) of the file (off + n <= size_): a pointer into the mapping, or into the
  // read buffer, refilled from `off` with at least `read_ahead_` bytes when it does not hold them.
  // A buffer pointer is valid until the next call.
  const unsigned char* at(uint64_t off, uint64_t n) {
    if (data_) return data_ + off;
    if (off >= buf_off_ && n <= buf_len_ && off - buf_off_ <= buf_len_ - n) return buf_.data() + (off - buf_off_);
    const uint64_t want = std::min(size_ - off, std::max(n, read_ahead_));
    if (buf_.size() < want) buf_.resize(want);
    buf_len_ = 0;
    pread_all(buf_.data(), want, off);
    buf_off_ = off;
    buf_len_ = want;
    return buf_.data();
  }

  void open_for_reads() {
    fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw TarError(path_ + ": cannot open: " + std::strerror(errno));
    check_size();
  }

  // The open file is not shorter than when the reader was made (else an error, descriptor closed).
  void check_size() {
    struct stat st{};
    if (fstat(fd_, &st) != 0 || static_cast<uint64_t>(st.st_size) < size_) {
      const uint64_t now = static_cast<uint64_t>(st.st_size);
      ::close(fd_);
      fd_ = -1;
      throw TarError(path_ + ": the shard shrank to " + std::to_string(now) + " bytes from " + std::to_string(size_) +
                     " while it was being read (changed after indexing)");
    }
  }

  void pread_all(unsigned char* dst, uint64_t n, uint64_t off) {
    if (fd_ < 0) throw std::logic_error(path_ + ": read outside a session (bug)");
    while (n) {
      const ssize_t got = ::pread(fd_, dst, static_cast<size_t>(std::min<uint64_t>(n, 1u << 30)), static_cast<off_t>(off));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) throw TarError(path_ + ": read failed at byte " + std::to_string(off) + ": " + std::strerror(errno));
      if (got == 0)
        throw TarError(path_ + ": the shard ends at byte " + std::to_string(off) + ", before its size " + std::to_string(size_) +
                       " when opened (it shrank: changed after indexing)");
      dst += got;
      n -= static_cast<uint64_t>(got);
      off += static_cast<uint64_t>(got);
    }
  }

  // Read from `off` (a block boundary within the file) as if the reader had just been opened there.
  void restart(uint64_t off) {
    pos_ = next_sample_start_ = off;
    done_ = false;
    pending_ = RawSample{};
    seen_.clear();
  }

  void problem(uint64_t* counter, uint64_t at, const std::string& msg) {
    ++*counter;
    if (warnings_.size() < kMaxWarnings) warnings_.push_back(path_ + " at byte " + std::to_string(at) + ": " + msg);
  }

  void move_to(uint64_t to) {
    if (to <= pos_ || to > size_) throw std::logic_error(path_ + ": reader position did not advance (bug)");
    pos_ = to;
  }

  // Damage at `at`: skip block by block to the next header that passes its checksum.
  void resync(uint64_t from, const std::string& why) {
    problem(&counters_.damaged, from, why + "; skipping to the next valid header");
    uint64_t p = from + kBlock;
    while (p + kBlock <= size_) {
      const unsigned char* h = at(p, kBlock);
      if (!is_zero_block(h) && std::memcmp(h + 257, "ustar", 5) == 0 && checksum_ok(h)) break;
      p += kBlock;
    }
    if (p + kBlock > size_) p = size_;
    counters_.skipped_bytes += p - from;
    move_to(p);
  }

  // Reads the next regular member (following L/x/g headers). Returns false at end of archive.
  bool next_member(Member* m) {
    std::string long_name;
    uint64_t pax_size = 0;
    bool has_pax_size = false, bad_pax = false;
    uint64_t first_header = pos_;
    for (;;) {
      if (pos_ == size_) {  // no end-of-archive blocks: the file was cut (possibly at a block boundary)
        if (!ended_) problem(&counters_.truncated, pos_, "archive ends without its end-of-archive blocks (truncated?)");
        ended_ = true;
        return false;
      }
      if (size_ - pos_ < kBlock) {
        problem(&counters_.truncated, pos_, "truncated header");
        ended_ = true;
        pos_ = size_;
        return false;
      }
      const unsigned char* h = at(pos_, kBlock);  // valid until the next at()
      if (is_zero_block(h)) {
        ended_ = true;
        return false;
      }
      if (!checksum_ok(h)) {
        resync(pos_, "bad header checksum");
        long_name.clear(), has_pax_size = bad_pax = false;
        first_header = pos_;
        continue;
      }
      uint64_t size = 0;
      if (!parse_size(h + 124, 12, &size)) {
        resync(pos_, "bad size field");
        long_name.clear(), has_pax_size = bad_pax = false;
        first_header = pos_;
        continue;
      }
      const char type = static_cast<char>(h[156]);
      const uint64_t header_at = pos_, data_at = pos_ + kBlock;
      const uint64_t left = size_ - data_at;
      if (type == 'x' || type == 'g' || type == 'L' || type == 'K') {
        if (size > left) {
          problem(&counters_.truncated, header_at, "extended header cut short (truncated?)");
          pos_ = size_;
          ended_ = true;
          return false;
        }
        const unsigned char* p = at(data_at, size);  // h is not used after this
        if (type == 'L') long_name = cstr(p, size);
        if (type == 'x') {
          std::string err = parse_pax(p, size, &long_name, &pax_size, &has_pax_size);
          if (!err.empty()) {
            problem(&counters_.bad_pax, header_at, err + "; the member it describes is skipped");
            bad_pax = true;
          }
        }
        move_to(data_at + round_up(size, left));
        continue;
      }
      if (has_pax_size) size = pax_size;
      if (size > left) {
        problem(&counters_.truncated, header_at, "member data cut short (truncated?)");
        pos_ = size_;
        ended_ = true;
        return false;
      }
      std::string name = long_name;
      if (name.empty()) {
        name = cstr(h, 100);
        if (std::memcmp(h + 257, "ustar", 5) == 0) {
          std::string prefix = cstr(h + 345, 155);
          if (!prefix.empty()) name = prefix + "/" + name;
        }
      }
      move_to(data_at + round_up(size, left));
      m->header_at = first_header;
      m->data_offset = data_at;
      m->size = size;
      m->skip = true;
      if (bad_pax) return true;  // counted above
      if (type != '0' && type != '\0' && type != '7') {
        ++counters_.nonregular;
        return true;
      }
      if (!utf8_ok(name)) {
        std::string shown;
        for (unsigned char c : name.substr(0, 80)) shown += (c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '?';
        problem(&counters_.bad_name, header_at, "member name is not UTF-8 ('" + shown + "'); skipped");
        return true;
      }
      if (unsafe_name(name)) {
        problem(&counters_.unsafe, header_at, "unsafe member name skipped: '" + name + "'");
        return true;
      }
      size_t slash = name.rfind('/');
      std::string base = slash == std::string::npos ? name : name.substr(slash + 1);
      if (slash == std::string::npos && base.size() >= 4 && base.compare(0, 2, "__") == 0 &&
          base.compare(base.size() - 2, 2, "__") == 0) {
        ++counters_.meta;
        return true;
      }
      size_t dot = base.find('.');
      if (dot == std::string::npos || dot == 0 || dot + 1 == base.size()) {
        problem(&counters_.noext, header_at, "member without key.extension skipped: '" + name + "'");
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

  // Padding to the next block; `left` bounds it (a final member may lack its padding).
  static uint64_t round_up(uint64_t n, uint64_t left) {
    uint64_t padded = n + (kBlock - n % kBlock) % kBlock;  // n <= left < 2^64 - 512: cannot overflow
    return padded > left ? left : padded;
  }

  std::string path_;
  const unsigned char* data_ = nullptr;  // the mapping (sequential readers)
  uint64_t size_ = 0, pos_ = 0, next_sample_start_ = 0;
  bool done_ = false, ended_ = false, closed_ = false;
  Mapping mapping_;
  uint64_t served_ = 0;  // documents asked for through texts()
  // Random readers: the descriptor during a call (Session), the read buffer and what it holds.
  int fd_ = -1;
  bool keep_fd_ = false, in_session_ = false;
  std::vector<unsigned char> buf_;
  uint64_t buf_off_ = 0, buf_len_ = 0, read_ahead_ = kScanRead;
  RawSample pending_;
  std::unordered_set<std::string> seen_;
  std::vector<std::string> warnings_;
  Counters counters_;
};

// A whole file mapped read-only and exported through the buffer protocol, holding no file
// descriptor (Python's mmap keeps one per mapping): the per-shard index files, which the loader
// maps and unmaps as its LRU of them turns over. Unmapped when the last view of it goes.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) {
    // Errors are OSError naming the file, as Python's open and mmap raise them (the GIL is held).
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    struct stat st{};
    void* m = nullptr;
    bool ok = fd >= 0 && fstat(fd, &st) == 0;
    if (ok) {
      size_ = static_cast<uint64_t>(st.st_size);
      if (size_) {
        m = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
        ok = m != MAP_FAILED;
      }
    }
    if (!ok) {
      const int err = errno;
      if (fd >= 0) ::close(fd);
      errno = err;
      PyErr_SetFromErrnoWithFilename(PyExc_OSError, path.c_str());
      throw py::error_already_set();
    }
    ::close(fd);
    data_ = static_cast<const unsigned char*>(m);
  }
  ~MappedFile() {
    if (data_) munmap(const_cast<unsigned char*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  py::buffer_info buffer() const {
    static const unsigned char empty = 0;
    return py::buffer_info(const_cast<unsigned char*>(data_ ? data_ : &empty), 1, py::format_descriptor<uint8_t>::format(), 1,
                           {static_cast<py::ssize_t>(size_)}, {1}, /*readonly=*/true);
  }
  uint64_t size() const { return size_; }

 private:
  const unsigned char* data_ = nullptr;
  uint64_t size_ = 0;
};

// The shards of one tokenizer worker (data/tokenize.py Encoder): a pread reader per shard, made on
// its first read, and at most `max_open` of them holding their file open between calls, least
// recently used closed first. On 938 shards of 10 documents a task touches ~170 shards, and a
// worker that opened, stat-ed and closed each per task made ~6,000 such sessions an epoch;
// kept open, a shard costs no syscall beyond its reads (a shard that shrank is still an error
// naming it: the first read past its new end comes up short). The budget is a share of half
// the soft RLIMIT_NOFILE among the workers of every loader in the process (data/tokenize.py
// fd_budget, _share_descriptors), so 10,000 shards with `ulimit -n 1024` still read,
// reopening what was closed. At most `max_readers` readers are kept (~0.4 KiB each), least
// recently used dropped first.
// One per worker thread or process; its mutex lets another thread lower the budget
// (set_max_open: every loader in the process shares one descriptor budget) between calls.
class ShardFiles {
 public:
  ShardFiles(std::vector<std::string> paths, size_t max_open, size_t max_readers)
      : paths_(std::move(paths)),
        max_open_(std::max<size_t>(1, max_open)),
        max_readers_(std::max<size_t>(1, max_readers)),
        slot_(paths_.size()) {}

  size_t size() const { return paths_.size(); }
  size_t open_files() const { return fd_lru_.size(); }
  size_t max_open() const { return max_open_; }
  std::mutex& mutex() { return mu_; }

  // A new budget, applied at once (files over it closed, least recently used first). Waits for a
  // call in progress: hold mutex() (and not the GIL) around it.
  void set_max_open(size_t n) {
    max_open_ = std::max<size_t>(1, n);
    while (fd_lru_.size() > max_open_) close_oldest();
  }
  size_t readers() const { return reader_lru_.size(); }

  // Is the reader of every shard in `shards` made? (With the GIL: no I/O.)
  bool ready(const std::vector<int64_t>& shards) const {
    for (int64_t s : shards)
      if (!slot_[check(s)].reader) return false;
    return true;
  }

  // The readers of `shards`, made where missing (opening files: call without the GIL). A run of
  // reads from one of them goes between before_run and after_run.
  std::vector<TarReader*> prepare(const std::vector<int64_t>& shards) {
    std::vector<TarReader*> out;
    out.reserve(shards.size());
    for (int64_t s : shards) {
      Slot& sl = slot_[check(s)];
      if (!sl.reader) {
        make_room();
        try {
          sl.reader = std::make_unique<TarReader>(paths_[static_cast<size_t>(s)], false, Mapping::kNever, true);
        } catch (const TarError&) {
          throw;
        } catch (const std::runtime_error& e) {  // cannot open or stat: named, as every read error
          throw TarError(e.what());
        }
        reader_lru_.push_back(static_cast<size_t>(s));
        sl.in_readers = std::prev(reader_lru_.end());
        note_fd(static_cast<size_t>(s));
      } else {
        reader_lru_.splice(reader_lru_.end(), reader_lru_, sl.in_readers);
      }
      out.push_back(sl.reader.get());
    }
    return out;
  }

  // Room for one more descriptor, if shard `s`'s reader must open its file for the run.
  void before_run(int64_t s) {
    if (!slot_[static_cast<size_t>(s)].reader->has_fd()) make_room();
  }
  // After the run (also when it threw): count the descriptor the reader holds now, most recent last.
  void after_run(int64_t s) { note_fd(static_cast<size_t>(s)); }

  // After a call: readers beyond max_readers dropped, least recently used first (not during
  // one, whose readers are all in use however many shards its task touches).
  void trim() {
    while (reader_lru_.size() > max_readers_) drop_reader(reader_lru_.front());
  }

  void close() {
    for (Slot& sl : slot_) {
      sl.reader.reset();
      sl.has_fd = false;
    }
    fd_lru_.clear();
    reader_lru_.clear();
  }

 private:
  struct Slot {
    std::unique_ptr<TarReader> reader;
    bool has_fd = false;
    std::list<size_t>::iterator in_fds, in_readers;
  };

  size_t check(int64_t s) const {
    if (s < 0 || static_cast<size_t>(s) >= paths_.size()) throw std::invalid_argument("shard index out of range");
    return static_cast<size_t>(s);
  }

  void make_room() {
    while (fd_lru_.size() >= max_open_) close_oldest();
  }

  void close_oldest() {
    const size_t old = fd_lru_.front();
    fd_lru_.pop_front();
    slot_[old].has_fd = false;
    slot_[old].reader->release_fd();
  }

  void note_fd(size_t s) {
    Slot& sl = slot_[s];
    const bool open = sl.reader && sl.reader->has_fd();
    if (sl.has_fd) {
      if (open)
        fd_lru_.splice(fd_lru_.end(), fd_lru_, sl.in_fds);
      else {
        fd_lru_.erase(sl.in_fds);
        sl.has_fd = false;
      }
    } else if (open) {
      fd_lru_.push_back(s);
      sl.in_fds = std::prev(fd_lru_.end());
      sl.has_fd = true;
    }
  }

  void drop_reader(size_t s) {
    Slot& sl = slot_[s];
    if (sl.has_fd) fd_lru_.erase(sl.in_fds);
    sl.has_fd = false;
    reader_lru_.erase(sl.in_readers);
    sl.reader.reset();
  }

  std::vector<std::string> paths_;
  std::atomic<size_t> max_open_;  // set by set_max_open under mu_; read by max_open() without it
  size_t max_readers_;
  std::mutex mu_;  // held by read_texts, set_max_open and close
  std::vector<Slot> slot_;
  std::list<size_t> fd_lru_, reader_lru_;  // least recently used first
};

// The next samples with the GIL released: read() and scan() parse whole batches of members.
std::vector<RawSample> parse_released(TarReader& r, size_t max_samples) {
  py::gil_scoped_release release;
  return r.parse(max_samples);
}

}  // namespace

// The loader's read: the texts of samples in several readers, checked, in one call. Entry i is
// the sample at offsets[i] of readers[which[i]] with key blob[key_ends[i-1]:key_ends[i]]; it
// becomes item pos[i] of the result. sizes[i] is the text's size as the index recorded it, or -1
// when unknown (sizes may be null: all unknown). Returns (texts, status per item). With `files`,
// readers[k] is the reader of shard shard_of[k] there, and each run of reads goes between its
// before_run and after_run (its bound on open descriptors).
py::tuple read_texts(const std::vector<TarReader*>& readers, const int32_t* which, const int64_t* pos,
                     const uint64_t* offsets, const char* blob_p, int64_t blob_n, const int64_t* key_ends,
                     const int64_t* sizes, size_t n, ShardFiles* files = nullptr, const int64_t* shard_of = nullptr) {
  std::vector<char> placed(n, 0);
  for (size_t i = 0; i < n; ++i) {
    if (pos[i] < 0 || static_cast<size_t>(pos[i]) >= n || placed[static_cast<size_t>(pos[i])]++)
      throw std::invalid_argument("pos must be a permutation of range(n)");
    if (key_ends[i] < (i ? key_ends[i - 1] : 0) || key_ends[i] > blob_n)
      throw std::invalid_argument("key_ends must be non-decreasing and within the key blob");
    if (which[i] < 0 || static_cast<size_t>(which[i]) >= readers.size())
      throw std::invalid_argument("which: reader index out of range");
    if (sizes && (sizes[i] < -1 || sizes[i] > static_cast<int64_t>(PY_SSIZE_T_MAX)))
      throw std::invalid_argument("sizes must be -1 (unknown) or a text size");
  }
  py::array_t<int8_t> status_a(static_cast<py::ssize_t>(n));
  int8_t* status = status_a.mutable_data();
  // Three phases, so that the GIL is held only for what needs Python (the bytes objects):
  //   0. with it: a bytes object of the indexed size for every text whose size is known;
  //   1. without it: per document, the header walk to its .txt member, the key and size checks,
  //      the text read straight into its bytes object (pread, or a copy from the mapping), and
  //      the UTF-8/blank checks; a text of unknown size goes to this call's arena instead;
  //   2. with it: the list, and bytes objects for the arena's texts.
  // Reading into the final objects drops two user-space copies of every text (read buffer ->
  // arena, arena -> bytes) and the arena's regrowth, and lets phase 1 check each text's size
  // against the index. Measured on bench/loader.py, CPU per epoch did not change: the copies left
  // user space (memmove 389 -> 148 perf samples over 10 epochs) but the kernel's copy into the
  // fresh objects grew about as much.
  // A run of one reader's documents is one Session (fetch groups a task by shard: one run each),
  // so a plain pread reader holds a descriptor only while its run is read, and ShardFiles' readers
  // keep theirs within its budget (ulimit -n stays out of reach at 10,000 shards). Holding the GIL through phase 1
  // (~2 us per document, ~0.3 ms per task) stalled the loader's thread and the other tokenizer
  // thread; giving it up once per task costs one hand-off (per shard, it cost more than it saved).
  struct Got {
    TarReader::TextAt t;
    int64_t want = -1;  // the indexed size, -1 unknown
    py::object obj;     // phase 0's bytes object (only its buffer is touched in phase 1)
    int64_t arena_at = -1;
  };
  std::vector<Got> got(n);
  for (size_t i = 0; i < n; ++i) {
    if (!sizes || sizes[i] < 0) continue;
    got[i].want = sizes[i];
    // A size past the end of the file cannot be right (a damaged index): no allocation for it;
    // the size check in phase 1 reports it.
    if (static_cast<uint64_t>(sizes[i]) > readers[static_cast<size_t>(which[i])]->size()) continue;
    PyObject* b = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(sizes[i]));
    if (!b) throw py::error_already_set();
    got[i].obj = py::reinterpret_steal<py::object>(b);
  }
  std::vector<unsigned char> arena;
  {
    py::gil_scoped_release release;
    for (size_t a = 0; a < n;) {
      size_t b = a;
      while (b < n && which[b] == which[a]) ++b;
      TarReader& r = *readers[static_cast<size_t>(which[a])];
      struct Run {  // declared before the session, so after_run sees the descriptor it leaves
        ShardFiles* files;
        int64_t shard;
        ~Run() {
          if (files) files->after_run(shard);
        }
      } run{files, files ? shard_of[which[a]] : 0};
      if (files) files->before_run(run.shard);
      TarReader::Session session(r, kDocRead);
      r.served(b - a);
      for (size_t i = a; i < b; ++i) {
        const int64_t k0 = i ? key_ends[i - 1] : 0;
        Got& g = got[i];
        g.t = r.text_at(offsets[i], std::string_view(blob_p + k0, static_cast<size_t>(key_ends[i] - k0)));
        int8_t& st = status[pos[i]];
        st = g.t.status;
        if (st != 0) continue;
        if (g.want >= 0 && g.t.size != static_cast<uint64_t>(g.want)) {
          st = 5;  // the index recorded another size: the shard changed after indexing
          continue;
        }
        unsigned char* p = nullptr;
        if (g.obj) {
          p = reinterpret_cast<unsigned char*>(PyBytes_AS_STRING(g.obj.ptr()));
        } else {
          g.arena_at = static_cast<int64_t>(arena.size());
          arena.resize(arena.size() + g.t.size);
          p = arena.data() + g.arena_at;
        }
        r.read_into(g.t.offset, g.t.size, p);
        if (!valid_utf8(p, g.t.size))
          st = 1;
        else if (only_space(p, g.t.size))
          st = 4;
      }
      a = b;
    }
  }
  py::list texts(n);
  for (size_t i = 0; i < n; ++i) {
    Got& g = got[i];
    const int8_t st = status[pos[i]];
    py::object item;
    if (st <= 1)
      item = g.obj ? std::move(g.obj)
                   : py::object(py::bytes(reinterpret_cast<const char*>(arena.data() + g.arena_at), static_cast<size_t>(g.t.size)));
    else if (st == 4)
      item = py::bytes();
    else if (st == 5)
      item = py::int_(g.t.size);
    else
      item = py::str(g.t.found);
    texts[static_cast<size_t>(pos[i])] = std::move(item);
  }
  return py::make_tuple(texts, status_a);
}

using I32 = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using I64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using U64 = py::array_t<uint64_t, py::array::c_style | py::array::forcecast>;

// The arrays both read_texts bindings take besides their readers, their lengths checked.
struct TextArgs {
  TextArgs(I32 which_, I64 pos_, U64 offsets_, py::bytes key_blob_, I64 key_ends_, std::optional<I64> sizes_)
      : which(std::move(which_)), pos(std::move(pos_)), offsets(std::move(offsets_)), key_blob(std::move(key_blob_)),
        key_ends(std::move(key_ends_)), sizes(std::move(sizes_)), n(static_cast<size_t>(offsets.size())) {
    if (static_cast<size_t>(key_ends.size()) != n || static_cast<size_t>(which.size()) != n ||
        static_cast<size_t>(pos.size()) != n || (sizes && static_cast<size_t>(sizes->size()) != n))
      throw std::invalid_argument("which, pos, offsets, keys and sizes differ in length");
  }
  py::tuple read(const std::vector<TarReader*>& readers, ShardFiles* files = nullptr, const int64_t* shard_of = nullptr) const {
    char* blob_p = nullptr;
    Py_ssize_t blob_n = 0;
    PyBytes_AsStringAndSize(key_blob.ptr(), &blob_p, &blob_n);
    return read_texts(readers, which.data(), pos.data(), offsets.data(), blob_p, blob_n, key_ends.data(),
                      sizes ? sizes->data() : nullptr, n, files, shard_of);
  }
  I32 which;
  I64 pos;
  U64 offsets;
  py::bytes key_blob;
  I64 key_ends;
  std::optional<I64> sizes;
  size_t n;
};

void register_tar(py::module_& m) {
  py::register_exception<TarError>(m, "TarError", PyExc_ValueError);
  py::class_<MappedFile>(m, "MappedFile", py::buffer_protocol(),
                         "A whole file mapped read-only (a bytes-like buffer for numpy.frombuffer) that holds no file "
                         "descriptor; unmapped when the last view of it goes.")
      .def(py::init<const std::string&>(), py::arg("path"))
      .def_buffer(&MappedFile::buffer)
      .def("__len__", &MappedFile::size);
  py::class_<TarReader>(m, "TarReader",
                        "Reader of one webdataset tar shard (memory-mapped for scans, pread for random reads); damage is "
                        "counted, never thrown.")
      .def(py::init([](const std::string& path, bool sequential, std::optional<bool> mapped) {
             const Mapping how = mapped ? (*mapped ? Mapping::kAlways : Mapping::kNever)
                                        : (sequential ? Mapping::kAlways : Mapping::kAdaptive);
             return new TarReader(path, sequential, how);
           }),
           py::arg("path"), py::arg("sequential") = true, py::arg("mapped") = py::none(),
           "sequential=False for document-by-document access. mapped: True memory-maps the file (read-ahead advice "
           "when sequential, random advice otherwise), False preads what each call needs (nothing mapped); the "
           "default maps sequential readers, and random ones once they have served 32 documents through texts().")
      .def(
          "read",
          [](TarReader& r, size_t max_samples) {
            TarReader::Session session(r, kScanRead);
            const std::vector<RawSample> raw = parse_released(r, max_samples);
            py::list out(raw.size());
            for (size_t i = 0; i < raw.size(); ++i) {
              py::dict fields;
              for (const auto& f : raw[i].fields) fields[py::str(f.ext)] = r.bytes_at(f.offset, f.size);
              out[i] = py::make_tuple(py::str(raw[i].key), fields);
            }
            return out;
          },
          py::arg("max_samples") = 256, "Next samples as [(key, {ext: bytes})]; [] at the end.")
      .def(
          "scan",
          [](TarReader& r, size_t max_samples, const std::string& want) {
            TarReader::Session session(r, kScanRead);
            const std::vector<RawSample> raw = parse_released(r, max_samples);
            py::list out(raw.size());
            for (size_t i = 0; i < raw.size(); ++i) {
              py::dict sizes;
              py::object payload = py::none();
              for (const auto& f : raw[i].fields) {
                sizes[py::str(f.ext)] = f.size;
                if (f.ext == want) payload = r.bytes_at(f.offset, f.size);
              }
              out[i] = py::make_tuple(py::str(raw[i].key), raw[i].start, sizes, payload);
            }
            return out;
          },
          py::arg("max_samples") = 256, py::arg("want") = "json",
          "Index pass: [(key, start offset, {ext: size}, bytes of the `want` member or None)], no text copied.")
      .def(
          "texts",
          [](TarReader& r, py::array_t<uint64_t, py::array::c_style | py::array::forcecast> offsets_a, py::bytes key_blob,
             py::array_t<int64_t, py::array::c_style | py::array::forcecast> key_ends_a) {
            const size_t n = static_cast<size_t>(offsets_a.size());
            if (static_cast<size_t>(key_ends_a.size()) != n) throw std::invalid_argument("offsets and keys differ in length");
            char* blob_p = nullptr;
            Py_ssize_t blob_n = 0;
            PyBytes_AsStringAndSize(key_blob.ptr(), &blob_p, &blob_n);
            const std::vector<int32_t> which(n, 0);
            std::vector<int64_t> pos(n);
            for (size_t i = 0; i < n; ++i) pos[i] = static_cast<int64_t>(i);
            return read_texts({&r}, which.data(), pos.data(), offsets_a.data(), blob_p, blob_n, key_ends_a.data(), nullptr, n);
          },
          py::arg("offsets"), py::arg("key_blob"), py::arg("key_ends"),
          "read_texts of this reader alone: (texts, status) of the samples starting at `offsets`.")
      .def("seek", &TarReader::seek, py::arg("offset"), "Restart at a sample boundary returned by `offset`.")
      .def("drop_pages", &TarReader::drop_pages,
           "Unmap the pages touched so far (they stay in the page cache; the next read maps them again). "
           "A random reader maps nothing: a no-op.")
      .def_property_readonly("offset", &TarReader::offset, "Byte offset of the first sample not yet returned.")
      .def_property_readonly("size", &TarReader::size)
      .def_property_readonly("mapped", &TarReader::mapped, "True for a sequential reader (its file is memory-mapped).")
      .def_property_readonly("done", &TarReader::done)
      .def_property_readonly("path", &TarReader::path)
      .def("counters", &TarReader::counters)
      .def("warnings", &TarReader::warnings)
      .def("close", &TarReader::close);

  py::class_<ShardFiles>(m, "ShardFiles",
                         "The shards of one tokenizer worker: a pread reader per shard made on first use, at most max_open "
                         "of them keeping their file open between calls (least recently used closed first), at most "
                         "max_readers kept. Not thread-safe: one per worker.")
      .def(py::init([](std::vector<std::string> paths, size_t max_open, size_t max_readers) {
             return new ShardFiles(std::move(paths), max_open, max_readers);
           }),
           py::arg("paths"), py::arg("max_open"), py::arg("max_readers") = 16384)
      .def(
          "read_texts",
          [](ShardFiles& f, const std::vector<int64_t>& shards, I32 which, I64 pos, U64 offsets, py::bytes key_blob, I64 key_ends,
             std::optional<I64> sizes) {
            const TextArgs args{which, pos, offsets, key_blob, key_ends, sizes};
            std::unique_lock<std::mutex> lock(f.mutex(), std::try_to_lock);
            if (!lock.owns_lock()) {  // set_max_open from another thread: it needs no GIL, wait without it
              py::gil_scoped_release release;
              lock.lock();
            }
            std::vector<TarReader*> readers;
            if (f.ready(shards)) {
              readers = f.prepare(shards);  // every reader made: no I/O, keep the GIL
            } else {
              py::gil_scoped_release release;  // opening the new shards' files
              readers = f.prepare(shards);
            }
            py::tuple out = args.read(readers, &f, shards.data());
            f.trim();
            return out;
          },
          py::arg("shards"), py::arg("which"), py::arg("pos"), py::arg("offsets"), py::arg("key_blob"), py::arg("key_ends"),
          py::arg("sizes") = py::none(),
          "read_texts (below) from the readers of `shards` (indexes into paths): readers[which[i]] is shard shards[which[i]].")
      .def_property_readonly("open_files", &ShardFiles::open_files, "Descriptors its readers hold now.")
      .def_property_readonly("readers", &ShardFiles::readers)
      .def_property(
          "max_open", &ShardFiles::max_open,
          [](ShardFiles& f, size_t n) {
            py::gil_scoped_release release;  // a read in progress may need the GIL to finish
            std::lock_guard<std::mutex> lock(f.mutex());
            f.set_max_open(n);
          },
          "Files its readers may keep open between calls; lowering it closes the least recently used at once "
          "(after a call in progress).")
      .def("__len__", &ShardFiles::size)
      .def(
          "close",
          [](ShardFiles& f) {
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(f.mutex());
            f.close();
          },
          "Close every file and drop every reader.");

  m.def(
      "read_texts",
      [](py::list readers_l, I32 which, I64 pos, U64 offsets, py::bytes key_blob, I64 key_ends, std::optional<I64> sizes) {
        // One call per loader task, whatever the number of shards it touches (a call per shard
        // and task cost ~15 us of Python each: 1,441 calls per epoch of bench/loader.py).
        const TextArgs args{which, pos, offsets, key_blob, key_ends, sizes};
        std::vector<TarReader*> readers;
        for (py::handle h : readers_l) readers.push_back(h.cast<TarReader*>());
        return args.read(readers);
      },
      py::arg("readers"), py::arg("which"), py::arg("pos"), py::arg("offsets"), py::arg("key_blob"), py::arg("key_ends"),
      py::arg("sizes") = py::none(),
      "Text bytes of the samples starting at `offsets` in readers[which[i]] (keys: "
      "key_blob[key_ends[i-1]:key_ends[i]]; sizes: each text's size as indexed, -1 or None: unknown), as item pos[i] "
      "of the result (pos: a permutation of range(n)), with a status each (int8 array, in the same order): 0 ok, "
      "1 invalid UTF-8, 2 no .txt, 3 another key there (the item is then the key found, or ''), 4 only whitespace "
      "(Python's str.isspace set; the item is b''), 5 the text's size is not the indexed one (the item is the size "
      "found).");
}

}  // namespace glotta
