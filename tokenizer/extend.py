"""`glotta tokenizer extend`: append target-language pieces to a base SentencePiece model.

Pieces are only appended to the ModelProto (sentencepiece_model_pb2), so every old id keeps
its piece, and `<name>.id_map.json` records the new ones. Candidates come from a SentencePiece model
trained on target-language text with the base model's own trainer settings, taken in the
target model's order (merge order for BPE, probability for unigram), each preceded by any of
its characters the base lacks.

Scores decide whether base-language text is affected:
- below-min: new pieces score below every base piece. For BPE all base merges run first, so
  base text can only merge further (fewer tokens, never more); for unigram Viterbi never
  prefers a new piece over a base segmentation, so base text is unchanged.
- target: the target model's scores (unigram log-probabilities): best for target text, base
  segmentation may move (measured in the drift report).
- zero: score 0 (Chinese-LLaMA's merge script); for BPE this pre-empts base merges.
`auto` is below-min for BPE. For unigram below-min leaves most of the target gain on the table,
so auto tries the target scores and keeps them only if the base-language text does not get
more tokens in total; otherwise it falls back to below-min. The drift report measures what
happened, whatever the mode.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import sentencepiece as spm
from pydantic import Field
from sentencepiece import sentencepiece_model_pb2 as pb

from glotta.config import StrictModel
from glotta.data.manifest import atomic_write_text
from glotta.errors import ConfigError, DataError
from glotta.tokenizer.build import VocabTooSmall, train_spm
from glotta.tokenizer.drift import drift_report, premiums
from glotta.tokenizer.evaluate import load_model, shard_texts
from glotta.tokenizer.parallel import read_parallel
from glotta.tokenizer.sample import SampleConfig, draw_sample

log = logging.getLogger(__name__)

NORMAL = pb.ModelProto.SentencePiece.NORMAL
ScoreMode = Literal["auto", "below-min", "target", "zero"]


class ExtendConfig(StrictModel):
    base: Path | None = None  # base .model
    shards: Path | None = None  # target-language text (and base-language text for the drift report)
    langs: list[str] = []  # target languages
    out_dir: Path = Path("tokenizer-extended")
    name: str = "extended"
    add: int = Field(1000, gt=0)  # most pieces to append
    target_vocab_size: int | None = None  # candidate model size (default: 2 x add + the base's special/byte pieces)
    score_mode: ScoreMode = "auto"
    allocate: Literal["joint", "worst-premium"] = "joint"
    chunk: int = Field(0, ge=0)  # worst-premium: pieces per step (0: add / 20)
    parallel: Path | None = None  # JSONL {id, lang, text}: premiums and the target side of the report
    reference: str = "en"
    base_langs: list[str] | None = None  # drift report languages (default: the others in the shard set)
    report_lines: int = Field(2000, gt=0)  # per language
    sample: SampleConfig = SampleConfig(sample_bytes=5_000_000, alpha=0.3)


def load_proto(path: Path) -> pb.ModelProto:
    load_model(path)  # a clear error when the file is not a SentencePiece model
    proto = pb.ModelProto()
    proto.ParseFromString(Path(path).read_bytes())
    return proto


def candidate_args(base: pb.ModelProto, vocab_size: int) -> dict:
    """Trainer options of the base model, so candidate pieces look like base pieces."""
    t, n = base.trainer_spec, base.normalizer_spec
    return dict(
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # candidates only: a smaller model on little text is fine
        model_type="bpe" if t.model_type == pb.TrainerSpec.BPE else "unigram",
        byte_fallback=t.byte_fallback,
        split_digits=t.split_digits,
        character_coverage=t.character_coverage,
        normalization_rule_name=n.name or "nmt_nfkc",
        remove_extra_whitespaces=n.remove_extra_whitespaces,
        add_dummy_prefix=n.add_dummy_prefix,
        allow_whitespace_only_pieces=t.allow_whitespace_only_pieces,
        max_sentencepiece_length=t.max_sentencepiece_length,
        max_sentence_length=t.max_sentence_length,
        user_defined_symbols=list(t.user_defined_symbols),
        unk_id=t.unk_id, bos_id=t.bos_id, eos_id=t.eos_id, pad_id=t.pad_id,
        input_sentence_size=0,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )


def train_candidates(lines: list[str], args: dict) -> pb.ModelProto:
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "cand")
        try:
            train_spm(lines, args, prefix)
        except VocabTooSmall as e:  # many new characters (a new script): make room for them and the pieces
            train_spm(lines, {**args, "vocab_size": e.needed + args["vocab_size"]}, prefix)
        proto = pb.ModelProto()
        proto.ParseFromString(Path(prefix + ".model").read_bytes())
    return proto


def candidates(target: pb.ModelProto, have: set[str]) -> list[tuple[str, float]]:
    """New (piece, target score) in target order; missing characters go just before the first piece needing them."""
    out: list[tuple[str, float]] = []
    seen = set(have)
    char_score = {p.piece: p.score for p in target.pieces if p.type == NORMAL and len(p.piece) == 1}
    for p in sorted((p for p in target.pieces if p.type == NORMAL), key=lambda p: -p.score):
        for ch in p.piece:
            if ch not in seen:
                seen.add(ch)
                out.append((ch, char_score.get(ch, p.score)))
        if p.piece not in seen:
            seen.add(p.piece)
            out.append((p.piece, p.score))
    return out


def append_pieces(base: pb.ModelProto, new: Iterable[tuple[str, float]], mode: ScoreMode) -> pb.ModelProto:
    proto = pb.ModelProto()
    proto.CopyFrom(base)
    floor = min((p.score for p in base.pieces if p.type == NORMAL), default=0.0)
    for rank, (piece, target_score) in enumerate(new):
        entry = proto.pieces.add()
        entry.piece, entry.type = piece, NORMAL
        if mode in ("auto", "below-min"):
            entry.score = floor - 1.0 - rank  # keeps the candidates' own order below every base piece
        elif mode == "target":
            entry.score = target_score
        else:
            entry.score = 0.0
    proto.trainer_spec.vocab_size = len(proto.pieces)
    return proto


def processor(proto: pb.ModelProto) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


def target_lines(cfg: ExtendConfig, lang: str | None = None) -> list[str]:
    langs = [lang] if lang else cfg.langs
    sample = draw_sample(cfg.shards, cfg.sample.model_copy(update={"langs": langs}))
    return sample.lines


def allocate_worst_first(cfg: ExtendConfig, base: pb.ModelProto, per_lang: dict[str, list[tuple[str, float]]],
                         parallel: dict, shards: dict, mode: ScoreMode) -> tuple[list[tuple[str, float, str]], list]:
    """Greedy parity: repeatedly give the next chunk of pieces to the target language with the worst premium."""
    chunk = cfg.chunk or max(1, cfg.add // 20)
    chosen: list[tuple[str, float, str]] = []
    have = {p.piece for p in base.pieces}
    cursor = {lang: 0 for lang in per_lang}
    steps = []
    current = premiums(processor(base), parallel, shards, cfg.reference, cfg.langs)
    while len(chosen) < cfg.add:
        open_langs = [x for x in cfg.langs if cursor[x] < len(per_lang[x])]
        if not open_langs:
            break
        worst = max(open_langs, key=lambda x: current[x] if current[x] is not None else -1.0)
        taken = 0
        while taken < chunk and len(chosen) < cfg.add and cursor[worst] < len(per_lang[worst]):
            piece, score = per_lang[worst][cursor[worst]]
            cursor[worst] += 1
            if piece in have:
                continue
            have.add(piece)
            chosen.append((piece, score, worst))
            taken += 1
        steps.append({"lang": worst, "premium_before": current[worst], "pieces": taken})
        proto = append_pieces(base, [(p, s) for p, s, _ in chosen], mode)
        current = premiums(processor(proto), parallel, shards, cfg.reference, cfg.langs)
    return chosen, steps


def extend(cfg: ExtendConfig) -> dict:
    if cfg.base is None:
        raise ConfigError("base: give the base SentencePiece model (--base FILE.model)")
    if cfg.shards is None:
        raise ConfigError("shards: give the shard set with target-language text (--shards DIR)")
    if not cfg.langs:
        raise ConfigError("langs: name the target language(s) (--lang xx)")
    t0 = time.perf_counter()
    base = load_proto(cfg.base)
    unigram = base.trainer_spec.model_type != pb.TrainerSpec.BPE
    mode: ScoreMode = ("target" if unigram else "below-min") if cfg.score_mode == "auto" else cfg.score_mode
    have = {p.piece for p in base.pieces}
    meta = sum(p.type != NORMAL for p in base.pieces)
    args = candidate_args(base, cfg.target_vocab_size or 2 * cfg.add + meta)
    parallel = read_parallel(cfg.parallel) if cfg.parallel else {}
    all_shards = shard_texts(cfg.shards, None, cfg.report_lines)
    steps: list = []
    if cfg.allocate == "joint":
        cand = candidates(train_candidates(target_lines(cfg), args), have)[: cfg.add]
        chosen = [(p, s, ",".join(cfg.langs)) for p, s in cand]
    else:
        if cfg.reference in cfg.langs:
            raise ConfigError(f"allocate=worst-premium: the reference language {cfg.reference!r} cannot be a target")
        per_lang = {x: candidates(train_candidates(target_lines(cfg, x), args), have) for x in cfg.langs}
        target_texts = {x: v for x, v in all_shards.items() if x in cfg.langs or x == cfg.reference}
        chosen, steps = allocate_worst_first(cfg, base, per_lang, parallel, target_texts, mode)
    if not chosen:
        raise DataError(f"no new pieces: the target model for {cfg.langs} learned nothing the base lacks")
    if len(chosen) < cfg.add:
        log.warning("only %d new pieces found for %s (asked for %d): raise target_vocab_size or sample.sample_bytes",
                    len(chosen), cfg.langs, cfg.add)
    base_langs = cfg.base_langs or [x for x in all_shards if x not in cfg.langs]
    base_texts = {x: all_shards[x] for x in base_langs if x in all_shards}
    proto = append_pieces(base, [(p, s) for p, s, _ in chosen], mode)
    new_sp, base_sp = processor(proto), processor(base)
    auto_note = None
    if cfg.score_mode == "auto" and mode == "target":
        lines = [line for v in base_texts.values() for line in v]
        grew = sum(map(len, new_sp.encode(lines))) - sum(map(len, base_sp.encode(lines)))
        if grew > 0:
            mode, auto_note = "below-min", f"target scores added {grew} tokens on base text: fell back to below-min"
            proto = append_pieces(base, [(p, s) for p, s, _ in chosen], mode)
            new_sp = processor(proto)
        else:
            auto_note = f"target scores kept: base text token count changed by {grew}"
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / f"{cfg.name}.model"
    tmp = out / f".{cfg.name}.model.tmp-{os.getpid()}"
    tmp.write_bytes(proto.SerializeToString())
    os.replace(tmp, model_path)
    atomic_write_text(out / f"{cfg.name}.vocab", "".join(f"{p.piece}\t{p.score:g}\n" for p in proto.pieces))
    n_base = len(base.pieces)
    id_map = {
        "base_model": str(cfg.base),
        "base_vocab_size": n_base,
        "vocab_size": len(proto.pieces),
        "old_ids": f"unchanged: ids 0..{n_base - 1} keep their pieces",
        "score_mode": mode,
        "added": [{"id": n_base + i, "piece": p, "score": proto.pieces[n_base + i].score, "lang": lang}
                  for i, (p, _, lang) in enumerate(chosen)],
    }
    atomic_write_text(out / f"{cfg.name}.id_map.json", json.dumps(id_map, indent=1, ensure_ascii=False) + "\n")
    report = drift_report(base_sp, new_sp, base_texts, parallel, {x: all_shards.get(x, []) for x in cfg.langs}, cfg.reference, cfg.langs)
    report.update({
        "model": str(model_path),
        "base_vocab_size": n_base,
        "vocab_size": len(proto.pieces),
        "added": len(chosen),
        "requested": cfg.add,
        "score_mode": mode,
        "score_mode_note": auto_note,
        "allocate": cfg.allocate,
        "allocation_steps": steps,
        "seconds": round(time.perf_counter() - t0, 3),
    })
    atomic_write_text(out / f"{cfg.name}.extend.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return report
