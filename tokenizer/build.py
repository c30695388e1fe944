"""`glotta tokenizer build`: a language-balanced sample -> SentencePiece model + vocab + card.

Outputs in `out_dir`: `<name>.model`, `<name>.vocab` and `<name>.card.json` (parameters,
what was sampled per language, timings). Files are written under temporary names and renamed,
so an interrupted build never leaves a model that looks finished.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Literal

import sentencepiece as spm
from pydantic import Field

from glotta.config import StrictModel
from glotta.data import list_shards
from glotta.data.manifest import MANIFEST, atomic_write_text, sha256_file
from glotta.errors import ConfigError, DataError
from glotta.tokenizer.sample import SampleConfig, TextSample, draw_sample

log = logging.getLogger(__name__)

Normalization = Literal["identity", "nfkc", "nmt_nfkc", "nfkc_cf", "nmt_nfkc_cf"]


class BuildConfig(StrictModel):
    shards: Path | None = None
    out_dir: Path = Path("tokenizer")
    name: str = "glotta"
    vocab_size: int = Field(32000, gt=0)
    model_type: Literal["unigram", "bpe"] = "unigram"
    byte_fallback: bool = True
    split_digits: bool = True
    character_coverage: float = Field(0.9995, gt=0, le=1)
    # identity keeps decode(encode(x)) == x, which a pretraining tokenizer wants (Llama-2 does the same)
    normalization: Normalization = "identity"
    eod: str | None = "<eod>"  # user-defined symbol for end of document
    pad: bool = True  # reserve <pad> as id 3
    lang_tags: bool = False  # add <lang:xx> for every sampled language
    user_symbols: list[str] = []
    temp_file: bool = False  # train from a temporary text file instead of an in-memory iterator
    threads: int = Field(0, ge=0)  # 0: all cores
    force: bool = False  # rebuild even when a finished build with the same config and input exists
    sample: SampleConfig = SampleConfig()


# BuildConfig keys that SentencePieceTrainer takes under the same name and meaning.
SAME_IN_SENTENCEPIECE = ("vocab_size", "model_type", "byte_fallback", "split_digits", "character_coverage")


def trainer_args(cfg: BuildConfig, langs: list[str]) -> dict:
    """SentencePiece trainer options for `cfg` (shared with the benchmark so both train alike)."""
    symbols = ([cfg.eod] if cfg.eod else []) + [f"<lang:{x}>" for x in langs if cfg.lang_tags] + list(cfg.user_symbols)
    dupes = {s for s in symbols if symbols.count(s) > 1}
    if dupes:
        raise ConfigError(f"user_symbols: {sorted(dupes)} given twice (eod/lang_tags add their own symbols)")
    return dict(
        **{k: getattr(cfg, k) for k in SAME_IN_SENTENCEPIECE},
        normalization_rule_name=cfg.normalization,
        remove_extra_whitespaces=cfg.normalization != "identity",
        allow_whitespace_only_pieces=True,
        user_defined_symbols=symbols,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3 if cfg.pad else -1,
        max_sentence_length=cfg.sample.max_line_bytes,
        input_sentence_size=0,  # the sample is already drawn; use all of it
        shuffle_input_sentence=False,
        num_threads=cfg.threads or os.cpu_count() or 1,
        minloglevel=2,
    )


class VocabTooSmall(ConfigError):
    """The vocabulary cannot even hold the sample's required characters (`needed` says how many)."""

    def __init__(self, msg: str, needed: int):
        super().__init__(msg)
        self.needed = needed


_TOO_HIGH = re.compile(r"Vocabulary size (?:is )?too high \((\d+)\).*<= (\d+)", re.S)
_TOO_LOW = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


def train_spm(lines: list[str], args: dict, prefix: str, temp_file: bool = False) -> None:
    """SentencePieceTrainer.train with its errors turned into messages naming our options."""
    try:
        if temp_file:
            with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", delete=False) as f:
                f.write("\n".join(lines) + "\n")
            try:
                spm.SentencePieceTrainer.train(input=f.name, model_prefix=prefix, **args)
            finally:
                os.unlink(f.name)
        else:
            spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=prefix, **args)
    except RuntimeError as e:
        m = _TOO_HIGH.search(str(e))
        if m:
            raise ConfigError(
                f"--vocab-size {m.group(1)} is larger than the sample supports (at most {m.group(2)} for "
                f"model_type={args['model_type']}): lower --vocab-size or sample more text (--sample-bytes)"
            ) from None
        m = _TOO_LOW.search(str(e))
        if m:
            raise VocabTooSmall(
                f"--vocab-size {m.group(1)} is smaller than the {m.group(2)} characters and symbols the sample needs "
                f"at character_coverage={args['character_coverage']:.6g}: raise --vocab-size or lower character_coverage",
                int(m.group(2)),
            ) from None
        raise DataError(f"SentencePiece training failed: {e}") from None


def input_fingerprint(shards: Path) -> dict:
    """What the build read: the shard set's manifest hash (or the shard names and sizes without one)."""
    manifest = Path(shards) / MANIFEST
    if manifest.is_file():
        return {"shards": str(shards), "manifest_sha256": sha256_file(manifest)}
    return {"shards": str(shards), "files": {p.name: p.stat().st_size for p in list_shards(shards)}}


def finished(cfg: BuildConfig, fingerprint: dict) -> dict | None:
    """The card of an earlier build with the same config and input whose model is in place, else None."""
    out = Path(cfg.out_dir)
    card_path, model = out / f"{cfg.name}.card.json", out / f"{cfg.name}.model"
    if cfg.force or not (card_path.is_file() and model.is_file()):
        return None
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    same_config = {**card.get("config", {}), "force": False} == {**json.loads(cfg.model_dump_json()), "force": False}
    return card if same_config and card.get("input") == fingerprint else None


def build(cfg: BuildConfig, strict: bool = False) -> dict:
    """Draw the sample, train, write model/vocab/card; returns the card. A finished build with the
    same config and input is reused (card["reused"] = True) unless `force`."""
    if cfg.shards is None:
        raise ConfigError("shards: give the shard set to sample from (--shards DIR)")
    fingerprint = input_fingerprint(cfg.shards)
    done = finished(cfg, fingerprint)
    if done is not None:
        log.info("%s: finished build with the same config and input, reused (force=true rebuilds)", done["model"])
        return {**done, "reused": True}
    t0 = time.perf_counter()
    sample: TextSample = draw_sample(cfg.shards, cfg.sample, strict=strict)
    t_sample = time.perf_counter() - t0
    args = trainer_args(cfg, sorted(sample.langs))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp_prefix = out / f".{cfg.name}.tmp-{os.getpid()}"
    t1 = time.perf_counter()
    try:
        train_spm(sample.lines, args, str(tmp_prefix), cfg.temp_file)
        t_train = time.perf_counter() - t1
        for ext in ("model", "vocab"):
            os.replace(f"{tmp_prefix}.{ext}", out / f"{cfg.name}.{ext}")
    finally:
        for ext in ("model", "vocab"):
            Path(f"{tmp_prefix}.{ext}").unlink(missing_ok=True)
    card = {
        "name": cfg.name,
        "model": str(out / f"{cfg.name}.model"),
        "sentencepiece_version": spm.__version__,
        "config": json.loads(cfg.model_dump_json()),
        "input": fingerprint,
        "trainer": {k: v for k, v in args.items() if k not in ("num_threads", "minloglevel")},
        "languages": sample.card(),
        "totals": {
            "lines": len(sample.lines),
            "chars": sum(s.chars for s in sample.langs.values()),
            "bytes": sum(s.bytes for s in sample.langs.values()),
        },
        "counters": {k: v for k, v in sorted(sample.counters.items()) if v},
        "seconds": {
            "sample": round(t_sample, 3),
            "train": round(t_train, 3),
            "total": round(time.perf_counter() - t0, 3),
        },
    }
    atomic_write_text(out / f"{cfg.name}.card.json", json.dumps(card, indent=1, ensure_ascii=False) + "\n")
    return card
