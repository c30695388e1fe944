"""Rows for new vocabulary entries, computed from the old embedding (or untied output) matrix.

  mean      mean of the old rows of the piece's segmentation by the old tokenizer (Yamaguchi et al.;
            byte-fallback pieces count, so a new script gets the mean of its bytes' rows)
  align     on target text, p(old s | new t) from how often their character spans overlap;
            row = sum_s p(s|t) E_s (Yamaguchi et al. 2024, "Align"); unseen pieces fall back to mean
  script    a draw from N(mu_c, sigma_c^2), mu/sigma over old pieces of the same Unicode script and
            word position (Downey et al. 2023); too few such pieces -> same script -> all rows
  mean-all  the mean of all old rows (what transformers' resize_token_embeddings approximates)
  random    a draw from N(mu, sigma^2), per-dimension statistics of all old rows
  focus     FOCUS-style (Dobler & de Melo 2023): in a small auxiliary embedding space learned from the
            target text (PPMI of token co-occurrence in a +-2 window under the new tokenizer,
            reduced by truncated SVD; fastText in the paper), each new piece's row is the
            sparsemax-weighted sum of the rows of the old pieces most similar to it; pieces the
            text never shows fall back to mean
  mean-below  `mean`, then (in glotta.tokenizer.adapt, which has the model) the new output rows
            moved against the mean base-language hidden state until the new tokens take almost
            no probability on base-language text: the old model's base-language loss is kept
"""
from __future__ import annotations

import unicodedata
from collections import defaultdict
from typing import Literal

import sentencepiece as spm
import torch
from sentencepiece import sentencepiece_model_pb2 as pb

InitMethod = Literal["mean", "align", "script", "mean-all", "random", "focus", "mean-below"]
METHODS: tuple[str, ...] = ("mean", "align", "script", "mean-all", "random", "focus", "mean-below")


def no_prefix_processor(sp: spm.SentencePieceProcessor) -> spm.SentencePieceProcessor:
    """The same model without the dummy "▁" prefix, so a piece's text segments as the piece would."""
    proto = pb.ModelProto()
    proto.ParseFromString(sp.serialized_model_proto())
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


def old_segmentations(old: spm.SentencePieceProcessor, pieces: list[str]) -> list[list[int]]:
    raw = no_prefix_processor(old)
    return [raw.encode(p) or [old.unk_id()] for p in pieces]


def script_of(piece: str) -> tuple[str, bool]:
    """(dominant Unicode script by character name, word-initial?) of a piece."""
    initial = piece.startswith("▁")
    counts: dict[str, int] = defaultdict(int)
    for ch in piece.lstrip("▁"):
        name = unicodedata.name(ch, "")
        if name:
            counts[name.split(" ")[0]] += 1
    return (max(counts, key=counts.get) if counts else "NONE"), initial


def _spans(pieces) -> list[tuple[int, int, int]]:
    """(id, begin, end) with byte-fallback runs (empty spans) given the span of the byte that ends them."""
    out, pending = [], []
    for p in pieces:
        if p.begin == p.end:
            pending.append(p.id)
            continue
        out.extend((i, p.begin, p.end) for i in pending)
        pending = []
        out.append((p.id, p.begin, p.end))
    return out


def alignment(old: spm.SentencePieceProcessor, new: spm.SentencePieceProcessor, texts: list[str],
              first_new: int) -> dict[int, dict[int, float]]:
    """new id (>= first_new) -> {old id: p(old | new)} from character-span overlap on `texts`."""
    counts: dict[int, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for o, n in zip(old.encode(texts, return_type="proto"), new.encode(texts, return_type="proto")):
        olds = _spans(o.pieces)
        j = 0
        for nid, b, e in _spans(n.pieces):
            if nid < first_new:
                continue
            while j < len(olds) and olds[j][2] <= b:
                j += 1
            k = j
            while k < len(olds) and olds[k][1] < e:
                oid, ob, oe = olds[k]
                counts[nid][oid] += max(min(e, oe) - max(b, ob), 0)
                k += 1
    out = {}
    for nid, c in counts.items():
        total = sum(c.values())
        if total > 0:
            out[nid] = {oid: w / total for oid, w in c.items()}
    return out


def sparsemax(z: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of z onto the probability simplex (Martins & Astudillo 2016): sparse weights."""
    zs, _ = torch.sort(z, descending=True)
    k = torch.arange(1, len(z) + 1, dtype=z.dtype)
    cum = torch.cumsum(zs, 0)
    support = 1 + k * zs > cum
    kz = int(support.nonzero().max()) + 1
    tau = (cum[kz - 1] - 1) / kz
    return torch.clamp(z - tau, min=0)


def aux_embeddings(new: spm.SentencePieceProcessor, texts: list[str], dim: int = 64, window: int = 2):
    """(ids seen in `texts`, [n, dim] unit vectors): PPMI of co-occurrence within +-window tokens under
    the new tokenizer, truncated SVD (U * sqrt(S)). Sparse, so the cost follows the text, not V^2."""
    pairs: dict[tuple[int, int], float] = defaultdict(float)
    for ids in new.encode(texts):
        for i, a in enumerate(ids):
            for b in ids[max(0, i - window):i]:
                pairs[(a, b)] += 1.0
                pairs[(b, a)] += 1.0
    if not pairs:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dim, dtype=torch.float64)
    seen = torch.tensor(sorted({a for a, _ in pairs}))
    index = {int(t): i for i, t in enumerate(seen)}
    rows = torch.tensor([index[a] for a, _ in pairs])
    cols = torch.tensor([index[b] for _, b in pairs])
    vals = torch.tensor(list(pairs.values()), dtype=torch.float64)
    n = len(seen)
    row_sum = torch.zeros(n, dtype=torch.float64).index_add_(0, rows, vals)
    total = vals.sum()
    ppmi = torch.clamp(torch.log(vals * total / (row_sum[rows] * row_sum[cols])), min=0)
    m = torch.sparse_coo_tensor(torch.stack([rows, cols]), ppmi, (n, n)).coalesce()
    q = min(dim, n - 1) if n > 1 else 1
    u, sv, _ = torch.svd_lowrank(m, q=q, niter=4)
    vec = u * sv.sqrt()
    return seen, vec / vec.norm(dim=1, keepdim=True).clamp_min(1e-12)


def focus_weights(new: spm.SentencePieceProcessor, texts: list[str], first_new: int) -> dict[int, dict[int, float]]:
    """new id -> {old id: weight}: sparsemax over cosine similarities to the old pieces in the aux space."""
    seen, vec = aux_embeddings(new, texts)
    old_mask = seen < first_new
    if not bool(old_mask.any()):
        return {}
    old_ids, old_vec = seen[old_mask], vec[old_mask]
    out = {}
    for j in (~old_mask).nonzero().flatten().tolist():
        w = sparsemax(old_vec @ vec[j])
        keep = w > 0
        out[int(seen[j])] = {int(o): float(x) for o, x in zip(old_ids[keep], w[keep])}
    return out


def new_rows(
    method: str,
    matrix: torch.Tensor,
    old: spm.SentencePieceProcessor,
    new: spm.SentencePieceProcessor,
    texts: list[str] | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Rows for ids old_size..new_size-1 of `new`, from `matrix` (at least old_size rows)."""
    n_old, n_new = old.get_piece_size(), new.get_piece_size()
    pieces = [new.id_to_piece(i) for i in range(n_old, n_new)]
    E = matrix[:n_old].double()
    gen = torch.Generator().manual_seed(seed)
    mu, sigma = E.mean(0), E.std(0)
    if method == "mean-all":
        rows = mu.expand(len(pieces), -1).clone()
    elif method == "random":
        rows = mu + sigma * torch.randn(len(pieces), E.shape[1], generator=gen, dtype=torch.float64)
    elif method in ("mean", "align", "mean-below", "focus"):
        segs = old_segmentations(old, pieces)
        rows = torch.stack([E[s].mean(0) for s in segs])
        if method == "focus":
            for nid, weights in focus_weights(new, texts or [], n_old).items():
                ids = torch.tensor(list(weights))
                w = torch.tensor(list(weights.values()), dtype=torch.float64)
                rows[nid - n_old] = (w[:, None] * E[ids]).sum(0)
        if method == "align":
            for nid, weights in alignment(old, new, texts or [], n_old).items():
                ids = torch.tensor(list(weights))
                w = torch.tensor(list(weights.values()), dtype=torch.float64)
                rows[nid - n_old] = (w[:, None] * E[ids]).sum(0)
    elif method == "script":
        groups: dict[tuple[str, bool], list[int]] = defaultdict(list)
        by_script: dict[str, list[int]] = defaultdict(list)
        for i in range(n_old):
            if old.is_control(i) or old.is_unknown(i) or old.is_byte(i):
                continue
            key = script_of(old.id_to_piece(i))
            groups[key].append(i)
            by_script[key[0]].append(i)
        rows = torch.empty(len(pieces), E.shape[1], dtype=torch.float64)
        for r, piece in enumerate(pieces):
            key = script_of(piece)
            ids = groups.get(key) if len(groups.get(key, [])) >= 2 else by_script.get(key[0])
            if not ids or len(ids) < 2:
                m, s = mu, sigma
            else:
                sub = E[ids]
                m, s = sub.mean(0), sub.std(0)
            rows[r] = m + s * torch.randn(E.shape[1], generator=gen, dtype=torch.float64)
    else:
        raise ValueError(f"unknown init method {method!r}; choose from {', '.join(METHODS)}")
    return rows.to(matrix.dtype)


def resized(matrix: torch.Tensor, rows: torch.Tensor, n_old: int, padded: int) -> torch.Tensor:
    """[padded, H]: old rows, then the new rows, then padding rows reused from the old padding
    (trained to stay unlikely) or, when the old matrix had none, the mean row."""
    n_new = n_old + rows.shape[0]
    out = torch.empty(padded, matrix.shape[1], dtype=matrix.dtype)
    out[:n_old] = matrix[:n_old]
    out[n_old:n_new] = rows
    old_pad = matrix[n_old:]
    if padded > n_new:
        if old_pad.shape[0]:
            idx = torch.arange(padded - n_new) % old_pad.shape[0]
            out[n_new:] = old_pad[idx]
        else:
            out[n_new:] = matrix[:n_old].mean(0)
    return out
