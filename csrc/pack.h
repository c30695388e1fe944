// Shared by pack.cpp (best_fit_pack, the batch assembly) and lanes.cpp (the loader's lanes):
// best-fit-decreasing and the batch assembly core, one implementation each.
#pragma once
#include <pybind11/numpy.h>

#include <cstdint>
#include <vector>

namespace glotta {

// best_fit(lengths, capacity): pieces grouped by row (rows in creation order).
struct Packed {
  std::vector<int64_t> doc, start, len, bin;
  int64_t n_bins = 0;
};
Packed best_fit(const int64_t* lengths, int64_t n, int64_t capacity);

// One piece of a row: `len` tokens at `tokens` (nullptr: `len` padding tokens) of language `lang`.
template <typename T>
struct Piece {
  const T* tokens;
  int64_t len;
  int32_t lang;  // -1 for padding
  int32_t row;
};

// A batch of B rows of S1 = seq_len + 1 tokens as the Megatron arrays: tokens/labels shifted by
// one, loss_mask, position_ids (reset per piece or not), per-token language ids, cu_seqlens over the
// flattened B*S token stream, plus which input piece each cu_seqlens segment is (`kept`) and the
// tokens per language in the token region.
struct BatchArrays {
  pybind11::array_t<int64_t> tokens, labels, pos, lang;
  pybind11::array_t<float> mask;
  std::vector<int32_t> cu;
  std::vector<int64_t> kept;
  std::vector<int64_t> lang_tokens;
  int64_t max_seqlen = 0;
};

struct AssembleOptions {
  int64_t B, S1, pad_id, eod_id, n_langs;
  bool reset_pos, eod_mask_loss;
};

// Pieces must be grouped by row in row order and fill every row exactly (std::invalid_argument
// naming the piece or row otherwise). Allocates the arrays with the GIL held, fills them without.
template <typename T>
BatchArrays assemble_pieces(const std::vector<Piece<T>>& pieces, const AssembleOptions& o);

// The arrays as a batch dict of numpy arrays (`kept` and `lang_tokens` are left to the caller).
pybind11::dict batch_dict(BatchArrays& a);

}  // namespace glotta
