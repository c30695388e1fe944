"""A SentencePiece model as a Hugging Face tokenizer: `tokenizer.model` (the model itself) plus a
`tokenizer.json` built with the `tokenizers` library from the model's own pieces, scores and
normalizer spec, kept only if it encodes like SentencePiece.

The tokenizer.json mirrors SentencePiece step by step:
  normalizer      the model's precompiled character map (nmt_nfkc, nfkc, ...; none for identity),
                  then, with remove_extra_whitespaces, runs of spaces collapsed and the ends stripped
                  the dummy "▁" prefix (add_dummy_prefix), " " -> "▁"
  pre-tokenizer   words as SentencePiece's SplitIntoWords cuts them (split_by_whitespace, with
                  allow_whitespace_only_pieces), digits split when split_digits is set
  model           Unigram with the piece scores, or BPE with merges ordered by the merged piece's
                  score; byte fallback as in the model; control and byte pieces can never be
                  matched from text (as in SentencePiece), user-defined pieces are added tokens
  decoder         "▁" -> " ", byte fallback, fuse, strip the dummy prefix
No BOS or EOS is added when encoding (glotta's loader adds none; documents end with EOS = EOD).

Before writing, it encodes a multilingual probe (the texts given, else a built-in sample) with both
and writes tokenizer.json only when every line gives the same ids; otherwise the report says why
and transformers falls back to nothing fast (AutoTokenizer then needs use_fast=False where that
exists). `tokenizer_class` is PreTrainedTokenizerFast, which loads tokenizer.json as it is in
transformers 4 and 5 (v5's LlamaTokenizer rebuilds a BPE model, wrong for unigram).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

# Short real sentences in several scripts (the probe when no texts are given).
PROBE = [
    "The quick brown fox jumps over the lazy dog.", "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le renard brun rapide saute par-dessus le chien paresseux.", "El veloz zorro marrón salta sobre el perro.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.", "Η γρήγορη καφέ αλεπού πηδά πάνω από τον σκύλο.",
    "素早い茶色の狐が怠け者の犬を飛び越える。", "敏捷的棕色狐狸跳过了懒狗。", "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है।",
    "الثعلب البني السريع يقفز فوق الكلب الكسول.", "  spaces   and\ttabs\nnew lines 12345 3.14 ", "emoji 🦊 ok",
]


def _proto(path: Path) -> pb.ModelProto:
    proto = pb.ModelProto()
    proto.ParseFromString(Path(path).read_bytes())
    return proto


def special_ids(path: str | Path) -> dict[str, int | None]:
    sp = spm.SentencePieceProcessor(model_file=str(path))
    ids = {"bos_token_id": sp.bos_id(), "eos_token_id": sp.eos_id(), "pad_token_id": sp.pad_id()}
    return {k: (v if v >= 0 else None) for k, v in ids.items()}


def _merges(proto: pb.ModelProto) -> list[tuple[str, str]]:
    """BPE merges from the vocabulary: every split of a piece into two pieces, applied in the order
    SentencePiece applies them (higher score of the merged piece first)."""
    normal = {p.piece: i for i, p in enumerate(proto.pieces) if p.type == pb.ModelProto.SentencePiece.NORMAL}
    out = []
    for piece, i in normal.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in normal and right in normal:
                out.append((-proto.pieces[i].score, normal[left], normal[right], left, right))
    out.sort()
    return [(left, right) for *_, left, right in out]


def build_tokenizer(path: str | Path):
    """tokenizers.Tokenizer equivalent to the SentencePiece model at `path`."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE, Unigram

    proto = _proto(path)
    T = pb.ModelProto.SentencePiece
    tspec, nspec = proto.trainer_spec, proto.normalizer_spec
    pieces = list(proto.pieces)
    unk = next((i for i, p in enumerate(pieces) if p.type == T.UNKNOWN), 0)
    never = {T.CONTROL, T.BYTE, T.UNUSED}
    if tspec.model_type == pb.TrainerSpec.UNIGRAM:
        vocab = [(p.piece, -1e9 if p.type in never else p.score) for p in pieces]
        model = Unigram(vocab, unk_id=unk, byte_fallback=tspec.byte_fallback)
    elif tspec.model_type == pb.TrainerSpec.BPE:
        model = BPE({p.piece: i for i, p in enumerate(pieces)}, _merges(proto), unk_token=pieces[unk].piece,
                    fuse_unk=True, byte_fallback=tspec.byte_fallback)
    else:
        raise ValueError(f"{path}: SentencePiece model type {tspec.model_type} (only unigram and bpe convert)")
    tok = Tokenizer(model)
    norms = []
    if nspec.precompiled_charsmap:
        norms.append(normalizers.Precompiled(nspec.precompiled_charsmap))
    if nspec.remove_extra_whitespaces:
        norms += [normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip(left=True, right=True)]
    if nspec.add_dummy_prefix:
        norms.append(normalizers.Prepend("▁"))
    norms.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(norms)
    pre = []
    if tspec.split_by_whitespace:
        # SentencePiece's SplitIntoWords: a word starts at "▁" (at a run of them with
        # allow_whitespace_only_pieces) and runs up to the next one
        word = "▁+[^▁]*|[^▁]+" if tspec.allow_whitespace_only_pieces else "▁[^▁]*|[^▁]+"
        pre.append(pre_tokenizers.Split(Regex(word), behavior="isolated"))
    if tspec.split_digits:
        pre.append(pre_tokenizers.Digits(individual_digits=True))
    if pre:
        tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
    dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if nspec.add_dummy_prefix:
        dec.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(dec)
    tok.add_special_tokens([AddedToken(p.piece, special=True, normalized=False) for p in pieces if p.type == T.CONTROL])
    tok.add_tokens([AddedToken(p.piece, special=False, normalized=False) for p in pieces if p.type == T.USER_DEFINED])
    return tok


def compare(sp: spm.SentencePieceProcessor, tok, texts: list[str]) -> tuple[int, str | None]:
    """(lines that encode differently, the first such line with both encodings)."""
    bad, first = 0, None
    for text, enc in zip(texts, tok.encode_batch(texts, add_special_tokens=False)):
        want = sp.encode(text)
        if enc.ids != want:
            bad += 1
            if first is None:
                first = f"{text[:60]!r}: sentencepiece {want[:12]} tokenizers {enc.ids[:12]}"
    return bad, first


def write_hf_tokenizer(path: str | Path, out: Path, max_length: int, texts: list[str] | None = None) -> dict:
    """tokenizer.model, tokenizer_config.json, special_tokens_map.json and (when it encodes exactly
    like SentencePiece on the probe) tokenizer.json into `out`. Returns the report."""
    sp = spm.SentencePieceProcessor(model_file=str(path))
    shutil.copyfile(path, out / "tokenizer.model")

    def piece(i: int) -> str | None:
        return sp.id_to_piece(i) if i >= 0 else None

    special = {"unk_token": piece(sp.unk_id()), "bos_token": piece(sp.bos_id()), "eos_token": piece(sp.eos_id()),
               "pad_token": piece(sp.pad_id())}
    special = {k: v for k, v in special.items() if v is not None}
    probe = texts or PROBE
    report = {"pieces": sp.get_piece_size(), "probe_lines": len(probe), "fast_tokenizer": False,
              "probe_mismatches": None, "fast_reason": None, **special}
    try:
        tok = build_tokenizer(path)
        bad, first = compare(sp, tok, probe)
        report["probe_mismatches"] = bad
        if bad:
            report["fast_reason"] = f"{bad} of {len(probe)} probe lines encode differently, e.g. {first}"
        else:
            tok.save(str(out / "tokenizer.json"))
            report["fast_tokenizer"] = True
    except ValueError as e:
        report["fast_reason"] = str(e)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length, "add_bos_token": False,
              "add_eos_token": False, "clean_up_tokenization_spaces": False, "legacy": True, **special}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2, ensure_ascii=False) + "\n")
    return report
