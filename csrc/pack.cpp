// Packing token streams into seq_len+1 rows.
//
// best_fit_pack: Ding et al. 2024 ("Fewer Truncations Improve Language Modeling"): only
// documents longer than a row are split (into row-sized pieces plus a remainder); the pieces
// are then placed by Best-Fit-Decreasing: longest first, each into the open row whose free
// space is the smallest that still fits (an ordered map keyed by free space, O(N log N)).
//
// assemble_*: turns rows described as segments (a slice of a flat token buffer, or padding)
// into the Megatron batch arrays: tokens/labels shifted by one, loss_mask, position_ids
// (optionally reset per segment), per-token language ids and cu_seqlens over the flattened
// B*S token stream. Each row starts a new segment; padding is its own segment.
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

namespace py = pybind11;

namespace glotta {
namespace {

struct Item {
  int64_t doc, start, len;
};

struct Packed {
  std::vector<int64_t> doc, start, len, bin;
  int64_t n_bins = 0;
};

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

template <typename V>
py::array_t<int64_t> to_array(const std::vector<V>& v) {
  py::array_t<int64_t> a(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

// Output buffers of one batch, [B, S] each (numpy memory, filled with the GIL released).
struct BatchOut {
  int64_t *tokens, *labels, *pos, *lang;
  float* mask;
  std::vector<int32_t> cu;
  std::vector<int64_t> kept;  // input segment index of each output segment
  int64_t max_seqlen = 0;
  std::vector<int64_t> lang_tokens;  // tokens per language in the token region (stats)
};

// Writes straight into the numpy arrays: one pass over each row's tokens, no staging copies
// of the whole batch (this runs on the loader's main thread, next to the tokenizer threads).
template <typename T>
void assemble_rows(const T* flat, int64_t flat_n, const int32_t* seg_row, const int64_t* seg_start,
                   const int64_t* seg_len, const int32_t* seg_lang, int64_t n_seg, int64_t B, int64_t S1,
                   int64_t pad_id, int64_t eod_id, bool reset_pos, bool eod_mask_loss, BatchOut* out) {
  const int64_t S = S1 - 1;
  out->cu.clear();
  out->cu.push_back(0);
  int64_t s = 0;
  for (int64_t b = 0; b < B; ++b) {
    int64_t* tk = out->tokens + b * S;
    int64_t* lb = out->labels + b * S;
    int64_t* ps = out->pos + b * S;
    int64_t* lg = out->lang + b * S;
    float* mk = out->mask + b * S;
    int64_t fill = 0;
    bool prev_pad = false;  // whether row token fill-1 is padding (for the mask of its label)
    for (; s < n_seg && seg_row[s] == b; ++s) {
      const int64_t len = seg_len[s], start = seg_start[s];
      if (len <= 0 || fill + len > S1)
        throw std::invalid_argument("segment " + std::to_string(s) + " does not fit row " + std::to_string(b));
      const bool pad = start < 0;
      if (!pad && start + len > flat_n) throw std::invalid_argument("segment " + std::to_string(s) + " past buffer");
      const int64_t lang = pad ? -1 : seg_lang[s];
      if (!pad && (lang < 0 || lang >= static_cast<int64_t>(out->lang_tokens.size())))
        throw std::invalid_argument("segment " + std::to_string(s) + " has language " + std::to_string(lang) +
                                    " outside [0, n_langs)");
      if (!pad) out->lang_tokens[lang] += std::max<int64_t>(0, std::min(fill + len, S) - fill);
      for (int64_t i = 0; i < len; ++i) {
        const int64_t j = fill + i;  // position in the row of S+1 tokens
        const int64_t t = pad ? pad_id : static_cast<int64_t>(flat[start + i]);
        if (j < S) {
          tk[j] = t;
          ps[j] = reset_pos ? i : j;
          lg[j] = lang;
        }
        if (j > 0) {  // token j is the label of position j-1
          lb[j - 1] = t;
          bool keep = !pad && !prev_pad;
          if (eod_mask_loss && tk[j - 1] == eod_id) keep = false;
          mk[j - 1] = keep ? 1.f : 0.f;
        }
        prev_pad = pad;
      }
      // The segment as seen in the token region [0, S) of the row.
      const int64_t a = fill, e = std::min(fill + len, S);
      if (e > a) {
        out->cu.push_back(static_cast<int32_t>(b * S + e));
        out->kept.push_back(s);
        out->max_seqlen = std::max(out->max_seqlen, e - a);
      }
      fill += len;
    }
    if (fill != S1)
      throw std::invalid_argument("row " + std::to_string(b) + " holds " + std::to_string(fill) + " tokens, expected " +
                                  std::to_string(S1));
  }
  if (s != n_seg) throw std::invalid_argument("segment rows must be sorted and < batch size");
}

template <typename T>
py::dict assemble(py::array_t<T, py::array::c_style> flat, py::array_t<int32_t, py::array::c_style> seg_row,
                  py::array_t<int64_t, py::array::c_style> seg_start, py::array_t<int64_t, py::array::c_style> seg_len,
                  py::array_t<int32_t, py::array::c_style> seg_lang, int64_t B, int64_t S1, int64_t pad_id,
                  int64_t eod_id, bool reset_pos, bool eod_mask_loss, int64_t n_langs) {
  const int64_t n = seg_row.size();
  if (seg_start.size() != n || seg_len.size() != n || seg_lang.size() != n)
    throw std::invalid_argument("segment arrays differ in length");
  if (S1 < 2) throw std::invalid_argument("rows need at least 2 tokens (seq_len >= 1)");
  const int64_t S = S1 - 1;
  py::array_t<int64_t> tokens({B, S}), labels({B, S}), pos({B, S}), lang({B, S});
  py::array_t<float> mask({B, S});
  if (n_langs < 0) throw std::invalid_argument("n_langs must be >= 0");
  BatchOut out{tokens.mutable_data(), labels.mutable_data(), pos.mutable_data(), lang.mutable_data(),
               mask.mutable_data()};
  out.lang_tokens.assign(static_cast<size_t>(n_langs), 0);
  {
    py::gil_scoped_release release;
    assemble_rows<T>(flat.data(), flat.size(), seg_row.data(), seg_start.data(), seg_len.data(), seg_lang.data(), n, B,
                     S1, pad_id, eod_id, reset_pos, eod_mask_loss, &out);
  }
  py::array_t<int32_t> cu(static_cast<py::ssize_t>(out.cu.size()));
  std::copy(out.cu.begin(), out.cu.end(), cu.mutable_data());
  py::dict d;
  d["tokens"] = tokens;
  d["labels"] = labels;
  d["loss_mask"] = mask;
  d["position_ids"] = pos;
  d["lang_ids"] = lang;
  d["cu_seqlens"] = cu;
  d["max_seqlen"] = out.max_seqlen;
  d["segments"] = to_array(out.kept);
  d["lang_tokens"] = to_array(out.lang_tokens);
  return d;
}

}  // namespace

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
  m.def("assemble_u16", &assemble<uint16_t>, "Batch arrays from segments over a uint16 token buffer.");
  m.def("assemble_i32", &assemble<int32_t>, "Batch arrays from segments over an int32 token buffer.");
}

}  // namespace glotta
