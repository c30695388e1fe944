// The loader's lanes: the tokenized documents each lane of this rank reads, their packing into
// rows, and the micro-batch of a group of lanes, in one call per batch.
//
// data/loader.py schedules and tokenizes. Per task it hands over the task's flat token buffer
// and, per (block, lane) entry, the language, document id, token count and status; per
// micro-batch it asks for the batch of a group of lanes. A lane's state is three integers
// (docs/loader.md, "Packing"):
//   concat    (rows, p, offset): Megatron's concat-and-chunk. Rows are windows of S+1 tokens that
//             overlap by one token, so every token is a label exactly once.
//   best_fit  (rows, buffer start, rows emitted from the buffer): Ding et al. 2024 over a buffer
//             of `buffer` documents (best_fit in pack.cpp); only documents longer than a row
//             are split, short rows are padded.
// A walk never reads past what its row needs, so tokenization stays lazy: when a lane needs a
// block that no task has delivered yet, `next_batch` returns that block's number and changes
// nothing; the loader collects the task and asks again.
//
// This replaced Python lane objects and one Python object per document on the loader's main
// thread, which cost ~40 us per batch next to two tokenizer threads on two cores.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "module.h"
#include "pack.h"

namespace py = pybind11;

namespace glotta {
namespace {

constexpr int8_t kUtf8Replaced = 1;  // data/tokenize.py UTF8_REPLACED

struct LaneState {
  int64_t rows = 0, a = 0, b = 0;  // concat: (rows, p, offset); best_fit: (rows, start, emitted)
};

struct RowCounts {  // packing counters (the loader's RowStats)
  int64_t docs = 0, split = 0, empty = 0;
};

struct BatchCounts {  // what the batches held, for the loader's stats (kept here: no Python per batch)
  int64_t rows = 0, pad_tokens = 0, pad_rows = 0, utf8_replaced = 0;
};

template <typename T>
class Lanes {
 public:
  struct Doc {
    const T* tokens = nullptr;  // ends with EOD; empty when the document has no text
    int64_t len = 0;
    int64_t id = -1;  // the loader's document id (shard << 32 | document in the shard's index)
    int32_t lang = -1;
    int8_t status = 0;
    bool exists = false;  // false: the lane's stream ends before this block (or not delivered)
  };
  struct Seg {
    const Doc* doc;
    int64_t start, len;
  };

  Lanes(int64_t n_lanes, int64_t row_len, int64_t best_fit_buffer, int64_t pad_id, int64_t eod_id, bool reset_pos,
        bool eod_mask_loss, const std::vector<std::string>& lang_names)
      : n_lanes_(n_lanes),
        S1_(row_len),
        buffer_(best_fit_buffer),
        opt_{0, row_len, pad_id, eod_id, static_cast<int64_t>(lang_names.size()), reset_pos, eod_mask_loss},
        state_(static_cast<size_t>(n_lanes)),
        plans_(static_cast<size_t>(n_lanes)) {
    lang_tokens_.assign(lang_names.size(), 0);
    for (const auto& name : lang_names) names_.push_back(py::str(name));
    names_.push_back(py::str(""));  // padding's language: names_[n_langs]
    if (n_lanes < 1) throw std::invalid_argument("n_lanes must be >= 1");
    if (row_len < 3) throw std::invalid_argument("row_len must be >= 3 (seq_len >= 2)");
    if (best_fit_buffer < 0) throw std::invalid_argument("best_fit_buffer must be >= 0 (0: concat)");
  }

  // One task's documents: entry i is lane lanes[i]'s document of block blocks[i]; ids[i] < 0
  // marks the end of that lane's stream. Entries with ids >= 0 take lengths/status in order
  // and their tokens from `flat` back to back.
  void add(py::array_t<int64_t, py::array::c_style | py::array::forcecast> blocks_a,
           py::array_t<int64_t, py::array::c_style | py::array::forcecast> lanes_a,
           py::array_t<int64_t, py::array::c_style | py::array::forcecast> lang_a,
           py::array_t<int64_t, py::array::c_style | py::array::forcecast> ids_a, py::array_t<T, py::array::c_style> flat,
           py::array_t<int64_t, py::array::c_style | py::array::forcecast> lengths_a,
           py::array_t<int8_t, py::array::c_style | py::array::forcecast> status_a) {
    const int64_t m = blocks_a.size();
    if (lanes_a.size() != m || lang_a.size() != m || ids_a.size() != m)
      throw std::invalid_argument("blocks, lanes, langs and ids differ in length");
    const int64_t k = lengths_a.size();
    if (status_a.size() != k) throw std::invalid_argument("lengths and status differ in length");
    const int64_t *blocks = blocks_a.data(), *lanes = lanes_a.data(), *lang = lang_a.data(), *ids = ids_a.data(),
                  *lengths = lengths_a.data();
    const int8_t* status = status_a.data();
    int64_t total = 0, docs = 0;
    for (int64_t i = 0; i < m; ++i) {
      if (lanes[i] < 0 || lanes[i] >= n_lanes_) throw std::invalid_argument("lane " + std::to_string(lanes[i]) + " out of range");
      if (ids[i] >= 0) {
        if (lang[i] < 0 || lang[i] >= opt_.n_langs) throw std::invalid_argument("language out of range");
        ++docs;
      }
    }
    if (docs != k) throw std::invalid_argument("one length per document entry expected");
    for (int64_t j = 0; j < k; ++j) {
      if (lengths[j] < 0) throw std::invalid_argument("negative document length");
      total += lengths[j];
    }
    if (total != flat.size()) throw std::invalid_argument("lengths do not add up to the token buffer");
    auto keep = std::make_shared<py::object>(flat);  // the blocks of this task share its buffer
    const T* at = flat.data();
    int64_t j = 0;
    for (int64_t i = 0; i < m; ++i) {
      Block& blk = blocks_[blocks[i]];
      if (blk.docs.empty()) blk.docs.resize(static_cast<size_t>(n_lanes_));
      if (blk.buffers.empty() || blk.buffers.back() != keep) blk.buffers.push_back(keep);
      Doc& d = blk.docs[static_cast<size_t>(lanes[i])];
      d = Doc{};
      if (ids[i] < 0) continue;
      d = Doc{lengths[j] ? at : nullptr, lengths[j], ids[i], static_cast<int32_t>(lang[i]), status[j], true};
      at += lengths[j];
      ++j;
    }
  }

  // The batch of lanes `group` (local lane numbers) as a dict, or the first block (int) that a lane
  // needs and no task has delivered; then nothing changed. The batch is added to the counters
  // unless every row is dry and not count_dry (a loader without num_batches drops that batch).
  py::object next_batch(const std::vector<int64_t>& group, bool count_dry) {
    const int64_t B = static_cast<int64_t>(group.size());
    std::vector<LaneState> st(group.size());
    std::vector<std::vector<Seg>> rows(group.size());
    std::vector<char> dry(group.size(), 0);
    RowCounts delta;
    for (size_t g = 0; g < group.size(); ++g) {
      const int64_t lane = group[g];
      if (lane < 0 || lane >= n_lanes_) throw std::invalid_argument("lane out of range");
      st[g] = state_[static_cast<size_t>(lane)];
      bool is_dry = false;
      const int64_t missing = buffer_ ? walk_best_fit(lane, &st[g], &rows[g], &is_dry, &delta)
                                      : walk_concat(lane, &st[g], &rows[g], &is_dry, &delta);
      if (missing >= 0) return py::int_(missing);
      dry[g] = is_dry;
    }
    for (size_t g = 0; g < group.size(); ++g) state_[static_cast<size_t>(group[g])] = st[g];
    counts_.docs += delta.docs;
    counts_.split += delta.split;
    counts_.empty += delta.empty;

    std::vector<Piece<T>> pieces;
    std::vector<int64_t> piece_doc;
    int64_t pad_rows = 0, replaced = 0, all_dry = 1;
    for (int64_t b = 0; b < B; ++b) {
      int64_t fill = 0;
      if (dry[static_cast<size_t>(b)]) {
        ++pad_rows;
      } else {
        all_dry = 0;
        for (const Seg& s : rows[static_cast<size_t>(b)]) {
          pieces.push_back({s.doc->tokens + s.start, s.len, s.doc->lang, static_cast<int32_t>(b)});
          piece_doc.push_back(s.doc->id);
          if (s.start == 0 && s.doc->status == kUtf8Replaced) ++replaced;
          fill += s.len;
        }
      }
      if (fill < S1_) {
        pieces.push_back({nullptr, S1_ - fill, -1, static_cast<int32_t>(b)});
        piece_doc.push_back(-1);
      }
    }
    AssembleOptions o = opt_;
    o.B = B;
    BatchArrays a = assemble_pieces<T>(pieces, o);
    if (!all_dry || count_dry) {
      int64_t tokens = 0;
      for (size_t l = 0; l < lang_tokens_.size(); ++l) lang_tokens_[l] += a.lang_tokens[l], tokens += a.lang_tokens[l];
      totals_.rows += B;
      totals_.pad_tokens += B * (S1_ - 1) - tokens;
      totals_.pad_rows += pad_rows;
      totals_.utf8_replaced += replaced;
    }
    const size_t n_kept = a.kept.size();
    py::list doc_langs(n_kept);
    py::array_t<int64_t> doc_id(static_cast<py::ssize_t>(n_kept));
    for (size_t i = 0; i < n_kept; ++i) {
      const size_t s = static_cast<size_t>(a.kept[i]);
      const int32_t lang = pieces[s].lang;
      doc_langs[i] = names_[lang >= 0 ? static_cast<size_t>(lang) : names_.size() - 1];
      doc_id.mutable_data()[i] = piece_doc[s];
    }
    py::dict d = batch_dict(a);
    d["doc_langs"] = std::move(doc_langs);
    d["doc_id"] = doc_id;
    d["dry"] = static_cast<bool>(all_dry);
    return std::move(d);
  }

  int64_t first_needed() const {
    int64_t low = INT64_MAX;
    for (const auto& s : state_) low = std::min(low, s.a);
    return low;
  }

  void evict(int64_t below) { blocks_.erase(blocks_.begin(), blocks_.lower_bound(below)); }

  void clear() {
    blocks_.clear();
    for (auto& p : plans_) p = Plan{};
  }

  py::tuple state(int64_t lane) const {
    const LaneState& s = state_.at(static_cast<size_t>(lane));
    return py::make_tuple(s.rows, s.a, s.b);
  }

  void set_state(int64_t lane, int64_t rows, int64_t a, int64_t b) {
    if (rows < 0 || a < 0 || b < 0) throw std::invalid_argument("lane state must be >= 0");
    state_.at(static_cast<size_t>(lane)) = {rows, a, b};
    plans_[static_cast<size_t>(lane)] = Plan{};
  }

  RowCounts counts_;
  BatchCounts totals_;
  std::vector<int64_t> lang_tokens_;  // tokens per language in the batches' token regions

  int64_t blocks() const { return static_cast<int64_t>(blocks_.size()); }

 private:
  struct Block {
    std::vector<Doc> docs;  // per local lane
    std::vector<std::shared_ptr<py::object>> buffers;
  };
  struct Plan {  // best_fit rows of one lane's buffer
    int64_t start = -1;
    std::vector<const Doc*> docs;
    std::vector<std::vector<Seg>> rows;
  };

  // The lane's document at block p; nullptr when no task delivered block p yet.
  const Doc* get(int64_t lane, int64_t p) const {
    auto it = blocks_.find(p);
    if (it == blocks_.end()) return nullptr;
    return &it->second.docs[static_cast<size_t>(lane)];
  }

  // One walk over the documents gives both the row and where the next one starts (S tokens on:
  // the last token of this row starts the next one). Returns a missing block or -1.
  int64_t walk_concat(int64_t lane, LaneState* st, std::vector<Seg>* segs, bool* dry, RowCounts* c) const {
    const int64_t S1 = S1_;
    std::vector<int64_t> at, empties;  // lane position of each segment's document; empty ones walked over
    int64_t need = S1, p = st->a, o = st->b;
    while (need > 0) {
      const Doc* d = get(lane, p);
      if (d == nullptr) return p;
      if (!d->exists) break;
      const int64_t n = d->len;
      if (o >= n) {
        if (n == 0) empties.push_back(p);
        ++p;
        o = 0;
        continue;
      }
      const int64_t take = std::min(need, n - o);
      segs->push_back({d, o, take});
      at.push_back(p);
      need -= take;
      o += take;
      if (o == n) {
        ++p;
        o = 0;
      }
    }
    if (S1 - need < 2) {  // a single token has no label: the stream is spent
      c->empty += static_cast<int64_t>(empties.size());
      st->a = p;  // past them: a later call counts nothing twice
      st->b = o;
      segs->clear();
      *dry = true;
      return -1;
    }
    int64_t pos = 0;
    for (const Seg& s : *segs) {
      if (s.start == 0 && pos < S1 - 1) {
        ++c->docs;
        if (s.start + s.len < s.doc->len) ++c->split;
      }
      pos += s.len;
    }
    int64_t np, no;
    if (need == 0) {  // a full row: step back one token from where the walk ended
      const Seg& last = segs->back();
      if (last.len > 1) {
        np = at.back();
        no = last.start + last.len - 1;
      } else {
        np = at[at.size() - 2] + 1;
        no = 0;
      }
    } else if (need == 1) {  // exactly S tokens, then the data ended
      np = at.back() + 1;
      no = 0;
    } else {  // fewer than S: all of it, and the walk stopped where the data ends
      np = p;
      no = o;
    }
    for (int64_t e : empties)  // later ones are walked again by the next row
      if (e < np) ++c->empty;
    st->rows += 1;
    st->a = np;
    st->b = no;
    return -1;
  }

  // The buffer's plan (cached per lane); -1 and plan == nullptr when the stream has ended.
  int64_t plan_for(int64_t lane, int64_t start, const Plan** plan) {
    Plan& pl = plans_[static_cast<size_t>(lane)];
    *plan = nullptr;
    if (pl.start == start) {
      *plan = &pl;
      return -1;
    }
    std::vector<const Doc*> docs;
    for (int64_t p = start; p < start + buffer_; ++p) {
      const Doc* d = get(lane, p);
      if (d == nullptr) return p;
      if (!d->exists) break;
      docs.push_back(d);
    }
    if (docs.empty()) return -1;
    std::vector<int64_t> lengths(docs.size());
    for (size_t i = 0; i < docs.size(); ++i) lengths[i] = docs[i]->len;
    const Packed packed = best_fit(lengths.data(), static_cast<int64_t>(lengths.size()), S1_);
    Plan fresh;
    fresh.start = start;
    fresh.docs = std::move(docs);
    fresh.rows.resize(static_cast<size_t>(packed.n_bins));
    for (size_t i = 0; i < packed.doc.size(); ++i)
      fresh.rows[static_cast<size_t>(packed.bin[i])].push_back(
          {fresh.docs[static_cast<size_t>(packed.doc[i])], packed.start[i], packed.len[i]});
    pl = std::move(fresh);
    *plan = &pl;
    return -1;
  }

  int64_t walk_best_fit(int64_t lane, LaneState* st, std::vector<Seg>* segs, bool* dry, RowCounts* c) {
    const Plan* plan = nullptr;
    while (true) {
      const int64_t missing = plan_for(lane, st->a, &plan);
      if (missing >= 0) return missing;
      if (plan == nullptr) {
        *dry = true;
        return -1;
      }
      if (st->b == 0)  // counted once per buffer, when its first row goes out (or it has none)
        for (const Doc* d : plan->docs)
          if (d->len == 0) ++c->empty;
      if (st->b < static_cast<int64_t>(plan->rows.size())) break;
      st->a += buffer_;
      st->b = 0;
    }
    *segs = plan->rows[static_cast<size_t>(st->b)];
    for (const Seg& s : *segs)
      if (s.start == 0) {
        ++c->docs;
        if (s.doc->len > S1_) ++c->split;
      }
    st->rows += 1;
    st->b += 1;
    return -1;
  }

  const int64_t n_lanes_, S1_, buffer_;
  AssembleOptions opt_;
  std::vector<py::object> names_;  // languages' names, then "" for padding
  std::vector<LaneState> state_;
  std::vector<Plan> plans_;
  std::map<int64_t, Block> blocks_;
};

template <typename T>
void bind_lanes(py::module_& m, const char* name) {
  using L = Lanes<T>;
  py::class_<L>(m, name)
      .def(py::init<int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool, const std::vector<std::string>&>(),
           py::arg("n_lanes"), py::arg("row_len"), py::arg("best_fit_buffer"), py::arg("pad_id"), py::arg("eod_id"),
           py::arg("reset_position_ids"), py::arg("eod_mask_loss"), py::arg("lang_names"))
      .def("add", &L::add, py::arg("blocks"), py::arg("lanes"), py::arg("langs"), py::arg("ids"), py::arg("flat"),
           py::arg("lengths"), py::arg("status"))
      .def("next_batch", &L::next_batch, py::arg("lanes"), py::arg("count_dry") = true)
      .def("first_needed", &L::first_needed)
      .def("evict", &L::evict, py::arg("below"))
      .def("clear", &L::clear)
      .def("state", &L::state, py::arg("lane"))
      .def("set_state", &L::set_state, py::arg("lane"), py::arg("rows"), py::arg("a"), py::arg("b"))
      .def_property_readonly("blocks", &L::blocks)
      .def_property(
          "counts", [](const L& l) { return py::make_tuple(l.counts_.docs, l.counts_.split, l.counts_.empty); },
          [](L& l, std::tuple<int64_t, int64_t, int64_t> v) {
            l.counts_ = {std::get<0>(v), std::get<1>(v), std::get<2>(v)};
          })
      .def_property(
          "totals",
          [](const L& l) {
            return py::make_tuple(l.totals_.rows, l.totals_.pad_tokens, l.totals_.pad_rows, l.totals_.utf8_replaced);
          },
          [](L& l, std::tuple<int64_t, int64_t, int64_t, int64_t> v) {
            l.totals_ = {std::get<0>(v), std::get<1>(v), std::get<2>(v), std::get<3>(v)};
          },
          "(rows, pad_tokens, pad_rows, utf8_replaced) over the batches so far.")
      .def_property(
          "lang_tokens", [](const L& l) { return py::array_t<int64_t>(static_cast<py::ssize_t>(l.lang_tokens_.size()), l.lang_tokens_.data()); },
          [](L& l, const std::vector<int64_t>& v) {
            if (v.size() != l.lang_tokens_.size()) throw std::invalid_argument("one count per language expected");
            l.lang_tokens_ = v;
          },
          "Tokens per language in the batches' token regions so far (a copy).");
}

// A task's token buffer from SentencePiece's per-text id arrays: each kept text's ids then EOD,
// back to back, narrowed to the token type (ids < vocab size fit it). Replaces a Python list of
// 2n arrays, a length per text and a numpy concatenate per task.
template <typename T>
py::tuple join_documents(const py::list& ids, py::array_t<int8_t, py::array::c_style | py::array::forcecast> keep_a,
                         int64_t eod) {
  const size_t n = static_cast<size_t>(py::len(ids));
  if (static_cast<size_t>(keep_a.size()) != n) throw std::invalid_argument("one keep flag per text expected");
  const int8_t* keep = keep_a.data();
  std::vector<py::array_t<int32_t, py::array::c_style | py::array::forcecast>> arrays;
  arrays.reserve(n);
  py::array_t<int64_t> lengths_a(static_cast<py::ssize_t>(n));
  int64_t* lengths = lengths_a.mutable_data();
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    arrays.push_back(py::array_t<int32_t, py::array::c_style | py::array::forcecast>::ensure(ids[i]));
    if (!arrays.back()) throw std::invalid_argument("ids: each item must be an integer array");
    lengths[i] = keep[i] ? static_cast<int64_t>(arrays.back().size()) + 1 : 0;
    total += lengths[i];
  }
  py::array_t<T> flat_a(static_cast<py::ssize_t>(total));
  T* out = flat_a.mutable_data();
  for (size_t i = 0; i < n; ++i) {
    if (!keep[i]) continue;
    const int32_t* src = arrays[i].data();
    const int64_t m = arrays[i].size();
    for (int64_t k = 0; k < m; ++k) out[k] = static_cast<T>(src[k]);
    out[m] = static_cast<T>(eod);
    out += m + 1;
  }
  return py::make_tuple(flat_a, lengths_a);
}

}  // namespace

void register_lanes(py::module_& m) {
  bind_lanes<uint16_t>(m, "Lanes_u16");
  bind_lanes<int32_t>(m, "Lanes_i32");
  m.def("join_documents_u16", &join_documents<uint16_t>, py::arg("ids"), py::arg("keep"), py::arg("eod"),
        "(flat uint16 tokens, length per text): each kept text's ids + EOD; a dropped text has length 0.");
  m.def("join_documents_i32", &join_documents<int32_t>, py::arg("ids"), py::arg("keep"), py::arg("eod"),
        "(flat int32 tokens, length per text): each kept text's ids + EOD; a dropped text has length 0.");
}

}  // namespace glotta
