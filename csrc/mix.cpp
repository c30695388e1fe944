// Deterministic mixing schedule and permutations for the streaming loader.
//
// BlendSchedule: Megatron-style largest-error interleave over languages: slot i goes to the
// active language whose share is furthest behind its weight. A language reaching its cap (in
// documents) leaves the mix; the remaining weights are renormalised and the error restarts
// from that slot, so the remaining languages keep their relative proportions exactly.
//
// permutation / deal: Fisher-Yates driven by splitmix64 with Lemire's unbiased bounded draw.
// std::shuffle and std::uniform_int_distribution differ between standard libraries; this
// does not, so a seed gives the same order on every machine.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

#include "module.h"

namespace py = pybind11;

namespace glotta {
namespace {

inline uint64_t splitmix64(uint64_t* s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Uniform integer in [0, n) without modulo bias (Lemire 2019).
inline uint64_t bounded(uint64_t* s, uint64_t n) {
  uint64_t x = splitmix64(s);
  __uint128_t m = static_cast<__uint128_t>(x) * n;
  uint64_t lo = static_cast<uint64_t>(m);
  if (lo < n) {
    uint64_t t = (0 - n) % n;
    while (lo < t) {
      x = splitmix64(s);
      m = static_cast<__uint128_t>(x) * n;
      lo = static_cast<uint64_t>(m);
    }
  }
  return static_cast<uint64_t>(m >> 64);
}

void shuffle_into(int64_t* out, int64_t n, uint64_t seed) {
  for (int64_t i = 0; i < n; ++i) out[i] = i;
  uint64_t s = seed;
  for (int64_t i = n - 1; i > 0; --i) {
    int64_t j = static_cast<int64_t>(bounded(&s, static_cast<uint64_t>(i) + 1));
    std::swap(out[i], out[j]);
  }
}

inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// A seeded bijection of [0, n) evaluated one index at a time, so shuffling a language of a
// billion documents needs no billion-entry array: a 4-round balanced Feistel network on the
// smallest even number of bits covering n, with cycle-walking back into [0, n) (the domain is
// under 4n, so fewer than 4 walks are expected).
uint64_t feistel(uint64_t x, uint64_t n, uint64_t seed) {
  if (n <= 1) return 0;
  const int bits = 64 - __builtin_clzll(n - 1);
  const int h = (bits + 1) / 2;
  const uint64_t mask = h >= 64 ? ~0ULL : ((1ULL << h) - 1);
  uint64_t keys[4];
  for (int i = 0; i < 4; ++i) keys[i] = mix64(seed + 0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(i + 1));
  do {
    uint64_t l = (x >> h) & mask, r = x & mask;
    for (int i = 0; i < 4; ++i) {
      uint64_t f = mix64(r ^ keys[i]) & mask;
      uint64_t nl = r;
      r = l ^ f;
      l = nl;
    }
    x = (l << h) | r;
  } while (x >= n);
  return x;
}

class BlendSchedule {
 public:
  BlendSchedule(std::vector<double> weights, std::vector<int64_t> caps) : w_(std::move(weights)), caps_(std::move(caps)) {
    if (w_.empty()) throw std::invalid_argument("blend schedule needs at least one language");
    if (caps_.size() != w_.size()) throw std::invalid_argument("weights and caps differ in length");
    counts_.assign(w_.size(), 0);
    seg_counts_.assign(w_.size(), 0);
    active_.assign(w_.size(), false);
    for (size_t i = 0; i < w_.size(); ++i) {
      if (!(w_[i] >= 0) || !std::isfinite(w_[i])) throw std::invalid_argument("weights must be finite and >= 0");
      active_[i] = w_[i] > 0 && caps_[i] != 0;
    }
    renormalise();
  }

  // Next `n` slots: language index and its occurrence number (0, 1, ... per language).
  // Fewer than n when every language has reached its cap.
  std::pair<std::vector<int32_t>, std::vector<int64_t>> next(int64_t n) {
    std::vector<int32_t> lang;
    std::vector<int64_t> occ;
    lang.reserve(static_cast<size_t>(n));
    occ.reserve(static_cast<size_t>(n));
    const size_t k = w_.size();
    for (int64_t i = 0; i < n && any_active_; ++i) {
      const double t = static_cast<double>(pos_ - seg_pos_ + 1);
      int best = -1;
      double best_err = -std::numeric_limits<double>::infinity();
      for (size_t l = 0; l < k; ++l) {
        if (!active_[l]) continue;
        double err = wn_[l] * t - static_cast<double>(counts_[l] - seg_counts_[l]);
        if (err > best_err) {
          best_err = err;
          best = static_cast<int>(l);
        }
      }
      lang.push_back(best);
      occ.push_back(counts_[best]);
      ++counts_[best];
      ++pos_;
      if (caps_[best] >= 0 && counts_[best] >= caps_[best]) {
        active_[best] = false;
        renormalise();
      }
    }
    return {std::move(lang), std::move(occ)};
  }

  // The full generator state, so a long schedule resumes without replaying from slot 0.
  py::dict state() const {
    py::dict d;
    d["pos"] = pos_;
    d["seg_pos"] = seg_pos_;
    d["counts"] = counts_;
    d["seg_counts"] = seg_counts_;
    d["active"] = std::vector<bool>(active_.begin(), active_.end());
    return d;
  }

  void restore(int64_t pos, int64_t seg_pos, std::vector<int64_t> counts, std::vector<int64_t> seg_counts,
               std::vector<bool> active) {
    const size_t k = w_.size();
    if (counts.size() != k || seg_counts.size() != k || active.size() != k)
      throw std::invalid_argument("schedule state has " + std::to_string(counts.size()) + " languages, expected " +
                                  std::to_string(k));
    if (pos < 0 || seg_pos < 0 || seg_pos > pos) throw std::invalid_argument("schedule state: bad positions");
    for (size_t l = 0; l < k; ++l)
      if (active[l] && !(w_[l] > 0)) throw std::invalid_argument("schedule state: a zero-weight language is active");
    active_ = std::move(active);
    pos_ = pos;
    counts_ = std::move(counts);
    renormalise();
    seg_pos_ = seg_pos;
    seg_counts_ = std::move(seg_counts);
  }

  int64_t position() const { return pos_; }
  std::vector<int64_t> counts() const { return counts_; }
  bool exhausted() const { return !any_active_; }

 private:
  void renormalise() {
    double total = 0;
    for (size_t l = 0; l < w_.size(); ++l)
      if (active_[l]) total += w_[l];
    any_active_ = total > 0;
    wn_.assign(w_.size(), 0.0);
    for (size_t l = 0; l < w_.size(); ++l)
      if (active_[l]) wn_[l] = w_[l] / total;
    seg_pos_ = pos_;
    seg_counts_ = counts_;
  }

  std::vector<double> w_, wn_;
  std::vector<int64_t> caps_, counts_, seg_counts_;
  std::vector<bool> active_;
  int64_t pos_ = 0, seg_pos_ = 0;
  bool any_active_ = false;
};

}  // namespace

void register_mix(py::module_& m) {
  py::class_<BlendSchedule>(m, "BlendSchedule",
                            "Largest-error interleave over languages with per-language caps (-1 = none).")
      .def(py::init<std::vector<double>, std::vector<int64_t>>(), py::arg("weights"), py::arg("caps"))
      .def(
          "next",
          [](BlendSchedule& s, int64_t n) {
            std::pair<std::vector<int32_t>, std::vector<int64_t>> r;
            {
              py::gil_scoped_release release;
              r = s.next(n);
            }
            py::array_t<int32_t> lang(static_cast<py::ssize_t>(r.first.size()));
            py::array_t<int64_t> occ(static_cast<py::ssize_t>(r.second.size()));
            std::copy(r.first.begin(), r.first.end(), lang.mutable_data());
            std::copy(r.second.begin(), r.second.end(), occ.mutable_data());
            return py::make_tuple(lang, occ);
          },
          py::arg("n"), "(lang int32[n'], occurrence int64[n']); n' < n once every language is exhausted.")
      .def("state", &BlendSchedule::state, "Generator state: pos, seg_pos, counts, seg_counts, active.")
      .def("restore", &BlendSchedule::restore, py::arg("pos"), py::arg("seg_pos"), py::arg("counts"),
           py::arg("seg_counts"), py::arg("active"), "Continue from a state() taken earlier (same weights and caps).")
      .def_property_readonly("position", &BlendSchedule::position)
      .def_property_readonly("counts", &BlendSchedule::counts)
      .def_property_readonly("exhausted", &BlendSchedule::exhausted);

  m.def(
      "permutation",
      [](int64_t n, uint64_t seed) {
        if (n < 0) throw std::invalid_argument("permutation size must be >= 0");
        py::array_t<int64_t> out(static_cast<py::ssize_t>(n));
        int64_t* p = out.mutable_data();
        {
          py::gil_scoped_release release;
          shuffle_into(p, n, seed);
        }
        return out;
      },
      py::arg("n"), py::arg("seed"), "A seeded permutation of range(n), identical on every platform.");

  m.def(
      "deal",
      [](int64_t n, py::array_t<uint64_t, py::array::c_style | py::array::forcecast> seeds,
         py::array_t<int64_t, py::array::c_style | py::array::forcecast> lanes) {
        // permutation(n, seeds[b])[lanes] for every block b in one call (the loader's per-task
        // deal of slots to lanes: one Python call per task instead of one per block).
        if (n < 1) throw std::invalid_argument("deal: n must be >= 1");
        const auto nb = seeds.size(), nl = lanes.size();
        const int64_t* pl = lanes.data();
        for (py::ssize_t i = 0; i < nl; ++i)
          if (pl[i] < 0 || pl[i] >= n) throw std::invalid_argument("deal: lane outside [0, n)");
        py::array_t<int64_t> out({nb, nl});
        int64_t* po = out.mutable_data();
        const uint64_t* ps = seeds.data();
        {
          py::gil_scoped_release release;
          std::vector<int64_t> perm(static_cast<size_t>(n));
          for (py::ssize_t b = 0; b < nb; ++b) {
            shuffle_into(perm.data(), n, ps[b]);
            for (py::ssize_t i = 0; i < nl; ++i) po[b * nl + i] = perm[static_cast<size_t>(pl[i])];
          }
        }
        return out;
      },
      py::arg("n"), py::arg("seeds"), py::arg("lanes"),
      "[len(seeds), len(lanes)]: row b is permutation(n, seeds[b]) at the given lanes.");

  m.def(
      "permute",
      [](py::array_t<int64_t, py::array::c_style | py::array::forcecast> idx,
         py::array_t<int64_t, py::array::c_style | py::array::forcecast> n,
         py::array_t<uint64_t, py::array::c_style | py::array::forcecast> seed) {
        const auto k = idx.size();
        if (n.size() != k || seed.size() != k) throw std::invalid_argument("idx, n and seed differ in length");
        py::array_t<int64_t> out(k);
        const int64_t *pi = idx.data(), *pn = n.data();
        const uint64_t* ps = seed.data();
        int64_t* po = out.mutable_data();
        for (py::ssize_t i = 0; i < k; ++i)
          if (pn[i] < 1 || pi[i] < 0 || pi[i] >= pn[i]) throw std::invalid_argument("permute: index outside [0, n)");
        {
          py::gil_scoped_release release;
          for (py::ssize_t i = 0; i < k; ++i)
            po[i] = static_cast<int64_t>(feistel(static_cast<uint64_t>(pi[i]), static_cast<uint64_t>(pn[i]), ps[i]));
        }
        return out;
      },
      py::arg("idx"), py::arg("n"), py::arg("seed"),
      "Element i of a seeded permutation of range(n[i]) at position idx[i], without building it.");
}

}  // namespace glotta
