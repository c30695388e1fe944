// Packing token streams into seq_len+1 rows.
//
// best_fit_pack: Ding et al. 2024 ("Fewer Truncations Improve Language Modeling"): only
// documents longer than a row are split (into row-sized pieces plus a remainder); the pieces
// are then placed by Best-Fit-Decreasing: longest first, each into the open row whose free
// space is the smallest that still fits (an ordered map keyed by free space, O(N log N)).
//
// assemble_pieces: turns rows described as pieces (tokens of a document, or padding) into the
// Megatron batch arrays: tokens/labels shifted by one, loss_mask, position_ids (optionally
// reset per piece), per-token language ids and cu_seqlens over the flattened B*S token
// stream. Each row starts a new segment; padding is its own segment. The loader's lanes
// (lanes.cpp) call it once per micro-batch.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "module.h"
#include "pack.h"

namespace py = pybind11;

namespace glotta {
namespace {

struct Item {
  int64_t doc, start, len;
};

}  // namespace

Packed best_fit(const int64_t* lengths, int64_t n, int64_t capacity) {
  if (capacity < 1) throw std::invalid_argument("capacity must be >= 1");
  std::vector<Item> items;
  items.reserve(static_cast<size_t>(n));
  for (int64_t d = 0; d < n; ++d) {
    int64_t len = lengths[d];
    if (len < 0) throw std::invalid_argument("negative document length at index " + std::to_string(d));
    for (int64_t s = 0; s < len; s += capacity) items.push_back({d, s, std::min(capacity, len - s)});
  }
  // Longest first; ties in document order so the result does not depend on the sort algorithm.
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.len > b.len; });
  std::map<int64_t, std::vector<int64_t>> open;  // free space -> rows with that much free space
  std::vector<int64_t> free_space;
  Packed out;
  std::vector<int64_t> item_bin(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const int64_t len = items[i].len;
    auto it = open.lower_bound(len);
    int64_t b;
    if (it == open.end()) {
      b = static_cast<int64_t>(free_space.size());
      free_space.push_back(capacity);
    } else {
      b = it->second.back();
      it->second.pop_back();
      if (it->second.empty()) open.erase(it);
    }
    free_space[b] -= len;
    if (free_space[b] > 0) open[free_space[b]].push_back(b);
    item_bin[i] = b;
  }
  // Emit grouped by row (rows in creation order, pieces in placement order).
  std::vector<size_t> order(items.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return item_bin[a] < item_bin[b]; });
  for (size_t i : order) {
    out.doc.push_back(items[i].doc);
    out.start.push_back(items[i].start);
    out.len.push_back(items[i].len);
    out.bin.push_back(item_bin[i]);
  }
  out.n_bins = static_cast<int64_t>(free_space.size());
  return out;
}

namespace {

template <typename V>
py::array_t<int64_t> to_array(const std::vector<V>& v) {
  py::array_t<int64_t> a(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

// Each piece writes its own stretch of every array directly: its tokens at [fill, fill+len) of
// the token region, and, shifted by one, the labels of positions [fill-1, fill+len-1). The loss
// mask of position j is 0 when token j or its label j+1 is padding, so inside a piece it is the
// piece's own flag and only the first label of a piece (position fill-1) also looks at the
// piece before. Plain loops over contiguous ranges: the compiler vectorises them.
template <typename T>
void fill_rows(const std::vector<Piece<T>>& pieces, const AssembleOptions& o, int64_t* tokens, int64_t* labels,
               int64_t* pos_ids, int64_t* lang_ids, float* mask, BatchArrays* out) {
  const int64_t S1 = o.S1, S = S1 - 1;
  out->cu.assign(1, 0);
  size_t s = 0;
  const size_t n = pieces.size();
  for (int64_t b = 0; b < o.B; ++b) {
    int64_t* tk = tokens + b * S;
    int64_t* lb = labels + b * S;
    int64_t* ps = pos_ids + b * S;
    int64_t* lg = lang_ids + b * S;
    float* mk = mask + b * S;
    int64_t fill = 0;
    bool prev_pad = false;
    for (; s < n && pieces[s].row == b; ++s) {
      const Piece<T>& p = pieces[s];
      const int64_t len = p.len;
      if (len <= 0 || fill + len > S1)
        throw std::invalid_argument("segment " + std::to_string(s) + " does not fit row " + std::to_string(b));
      const bool is_pad = p.tokens == nullptr;
      const int64_t lang = is_pad ? -1 : p.lang;
      if (!is_pad && (lang < 0 || lang >= o.n_langs))
        throw std::invalid_argument("segment " + std::to_string(s) + " has language " + std::to_string(lang) +
                                    " outside [0, n_langs)");
      const int64_t e = std::min(fill + len, S);  // the piece as seen in the token region [0, S)
      const T* t = p.tokens - fill;  // t[j]: the piece's token at row position j
      if (is_pad) {
        std::fill(tk + fill, tk + e, o.pad_id);
      } else {
        for (int64_t j = fill; j < e; ++j) tk[j] = static_cast<int64_t>(t[j]);
      }
      for (int64_t j = fill; j < e; ++j) {
        ps[j] = o.reset_pos ? j - fill : j;
        lg[j] = lang;
      }
      // Labels of positions [l0, l1): tokens fill .. fill+len-1 shifted by one.
      const int64_t l0 = std::max<int64_t>(fill - 1, 0), l1 = std::min(fill + len - 1, S);
      if (is_pad) {
        std::fill(lb + l0, lb + l1, o.pad_id);
      } else {
        for (int64_t j = l0; j < l1; ++j) lb[j] = static_cast<int64_t>(t[j + 1]);
      }
      std::fill(mk + l0, mk + l1, is_pad ? 0.f : 1.f);
      if (fill > 0 && prev_pad) mk[fill - 1] = 0.f;  // its token is the padding before
      if (e > fill) {
        if (!is_pad) out->lang_tokens[static_cast<size_t>(lang)] += e - fill;
        out->cu.push_back(static_cast<int32_t>(b * S + e));
        out->kept.push_back(static_cast<int64_t>(s));
        out->max_seqlen = std::max(out->max_seqlen, e - fill);
      }
      prev_pad = is_pad;
      fill += len;
    }
    if (fill != S1)
      throw std::invalid_argument("row " + std::to_string(b) + " holds " + std::to_string(fill) + " tokens, expected " +
                                  std::to_string(S1));
    if (o.eod_mask_loss)  // no loss on the label after an EOD (the next document's first token)
      for (int64_t j = 0; j < S; ++j)
        if (tk[j] == o.eod_id) mk[j] = 0.f;
  }
  if (s != n) throw std::invalid_argument("segment rows must be sorted and < batch size");
}

}  // namespace

template <typename T>
BatchArrays assemble_pieces(const std::vector<Piece<T>>& pieces, const AssembleOptions& o) {
  if (o.S1 < 2) throw std::invalid_argument("rows need at least 2 tokens (seq_len >= 1)");
  if (o.n_langs < 0) throw std::invalid_argument("n_langs must be >= 0");
  const int64_t B = o.B, S = o.S1 - 1;
  BatchArrays a{py::array_t<int64_t>({B, S}), py::array_t<int64_t>({B, S}), py::array_t<int64_t>({B, S}),
                py::array_t<int64_t>({B, S}), py::array_t<float>({B, S})};
  a.lang_tokens.assign(static_cast<size_t>(o.n_langs), 0);
  int64_t *tk = a.tokens.mutable_data(), *lb = a.labels.mutable_data(), *ps = a.pos.mutable_data(),
          *lg = a.lang.mutable_data();
  float* mk = a.mask.mutable_data();
  {
    py::gil_scoped_release release;
    fill_rows<T>(pieces, o, tk, lb, ps, lg, mk, &a);
  }
  return a;
}

template BatchArrays assemble_pieces<uint16_t>(const std::vector<Piece<uint16_t>>&, const AssembleOptions&);
template BatchArrays assemble_pieces<int32_t>(const std::vector<Piece<int32_t>>&, const AssembleOptions&);

py::dict batch_dict(BatchArrays& a) {
  py::array_t<int32_t> cu(static_cast<py::ssize_t>(a.cu.size()));
  std::copy(a.cu.begin(), a.cu.end(), cu.mutable_data());
  py::dict d;
  d["tokens"] = a.tokens;
  d["labels"] = a.labels;
  d["loss_mask"] = a.mask;
  d["position_ids"] = a.pos;
  d["lang_ids"] = a.lang;
  d["cu_seqlens"] = cu;
  d["max_seqlen"] = a.max_seqlen;
  return d;
}

void register_pack(py::module_& m) {
  m.def(
      "best_fit_pack",
      [](py::array_t<int64_t, py::array::c_style | py::array::forcecast> lengths, int64_t capacity) {
        Packed p;
        {
          py::gil_scoped_release release;
          p = best_fit(lengths.data(), lengths.size(), capacity);
        }
        return py::make_tuple(to_array(p.doc), to_array(p.start), to_array(p.len), to_array(p.bin), p.n_bins);
      },
      py::arg("lengths"), py::arg("capacity"),
      "Best-fit-decreasing of documents into rows of `capacity` tokens; only documents longer than a row are split. "
      "Returns (doc, start, len, row, n_rows), pieces grouped by row.");
}

}  // namespace glotta
