"""Parallel text for token premiums: JSONL lines `{"id", "lang", "text"}`, one per translation.

Lines that share an `id` say the same thing in different languages. The machine's gettext
catalogs are parallel by construction (the same msgid translated into many languages, the msgid
itself being English), so `gettext_parallel` builds a real parallel set without downloads.
FLORES-200 converted to this format works the same way.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from pathlib import Path

from pydantic import Field

from glotta.config import StrictModel
from glotta.data.demo_corpus import LOCALE_DIRS, find_catalogs, read_messages
from glotta.data.manifest import atomic_write_text
from glotta.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_LANGS = ["en", "de", "fr", "es", "ru", "el", "ja", "zh", "hi", "ar"]


class ParallelConfig(StrictModel):
    out: Path = Path("parallel.jsonl")
    langs: list[str] = DEFAULT_LANGS
    langs_from: Path | None = None  # a shard set: its manifest's languages replace `langs`
    source: Path | None = None  # your parallel text (JSONL or TSV, see read_parallel) instead of gettext
    max_ids: int = Field(2000, gt=0)
    min_chars: int = Field(20, ge=0)  # shorter messages ("OK", "File") say little about a tokenizer


def read_parallel(path: str | Path, langs: list[str] | None = None) -> dict[str, dict[str, str]]:
    """lang -> {id: text}. A malformed line is an error naming the file and line number.

    JSONL: one `{"id", "lang", "text"}` per line (FLORES-200 converted, or `tokenizer parallel`).
    TSV (.tsv/.tab): a header of language codes (an optional first column `id`), one sentence
    per row in every language, FLORES-style; the row number is the id when there is no id column.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"parallel text not found: {p}")
    if p.suffix.lower() in (".tsv", ".tab"):
        return _read_tsv(p, langs)
    out: dict[str, dict[str, str]] = defaultdict(dict)
    with open(p, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
                lang, text, key = row["lang"], row["text"], str(row["id"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{p}:{n}: expected a JSON object with id, lang, text ({e})") from None
            if langs is None or lang in langs:
                out[lang][key] = text
    if not out:
        raise DataError(f"{p}: no lines" + (f" for languages {langs}" if langs else ""))
    return dict(out)


def _read_tsv(p: Path, langs: list[str] | None) -> dict[str, dict[str, str]]:
    import csv

    from glotta.data.langid import normalize_lang

    out: dict[str, dict[str, str]] = defaultdict(dict)
    with open(p, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, None)
        if not header:
            raise DataError(f"{p}: empty TSV (expected a header of language codes)")
        has_id = header[0].strip().lower() == "id"
        cols = [normalize_lang(h.strip()) for h in header[1 if has_id else 0 :]]
        for n, row in enumerate(rows, 2):
            if not any(c.strip() for c in row):
                continue
            key, cells = (row[0], row[1:]) if has_id else (str(n - 1), row)
            if len(cells) != len(cols):
                raise DataError(f"{p}:{n}: {len(cells)} columns, the header names {len(cols)} languages")
            for lang, text in zip(cols, cells):
                if text.strip() and (langs is None or lang in langs):
                    out[lang][key] = text.strip()
    if not out:
        raise DataError(f"{p}: no lines" + (f" for languages {langs}" if langs else ""))
    return dict(out)


def write_parallel(cfg: ParallelConfig) -> dict[str, int]:
    """The parallel JSONL for `tokenizer eval`: from `source` or from gettext, for `langs` (or the
    languages of the `langs_from` shard set); languages without parallel text are logged and left
    out (the evaluation then measures them on their shards, by bytes per token)."""
    langs = list(cfg.langs)
    if cfg.langs_from is not None:
        from glotta.data.manifest import Manifest

        langs = [x for x in Manifest.load(cfg.langs_from).langs() if x != "und"]
    if cfg.source is not None:
        found = read_parallel(cfg.source, langs)
        missing = sorted(set(langs) - set(found))
        lines = [json.dumps({"id": k, "lang": lang, "text": t}, ensure_ascii=False)
                 for lang in sorted(found) for k, t in sorted(found[lang].items())]  # fmt: skip
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg.out, "\n".join(lines) + "\n")
        counts = {lang: len(v) for lang, v in sorted(found.items())}
    else:
        have = {c.lang for c in find_catalogs(LOCALE_DIRS)} | {"en"}  # English is every msgid
        missing = sorted(set(langs) - have)
        counts = gettext_parallel(cfg.out, [x for x in langs if x in have], cfg.max_ids, cfg.min_chars)
    if missing:
        log.warning("no parallel text for %s: their premium is measured on their shards (bytes per token)", ", ".join(missing))
    return counts


def parallel_texts(path: str | Path) -> set[str]:
    """Every text of a parallel file (to keep evaluation text out of a training sample)."""
    return {t for by_id in read_parallel(path).values() for t in by_id.values()}


def gettext_parallel(
    out: str | Path,
    langs: list[str],
    max_ids: int = 2000,
    min_chars: int = 20,
    locale_dirs=LOCALE_DIRS,
) -> dict[str, int]:
    """Write a parallel JSONL from gettext catalogs; returns lines written per language.

    Only messages translated into every language in `langs` are kept (English is the msgid), so
    every language is measured on exactly the same content. The demo shard set is built from the
    same catalogs: to evaluate on held-out text, drop these lines from the training shards
    (`parallel_texts` gives the set to drop).
    """
    wanted = set(langs)
    # (package, msgid) -> {lang: text}; the first catalog per (package, lang) wins (zh_CN before zh_TW)
    table: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    done: set[tuple[str, str]] = set()
    for cat in find_catalogs(locale_dirs):
        if cat.lang not in wanted or (cat.package, cat.lang) in done:
            continue
        try:
            pairs = read_messages(cat.path)
        except (OSError, UnicodeDecodeError, ValueError, IndexError, KeyError) as e:
            log.warning("%s: unreadable catalog skipped (%s)", cat.path, e)
            continue
        done.add((cat.package, cat.lang))
        for msgid, msgstr in pairs:
            if "\n" in msgid or len(msgid) < min_chars:
                continue
            entry = table[(cat.package, msgid)]
            entry["en"] = msgid
            entry[cat.lang] = msgstr.strip()
    rows = []
    for (package, msgid), texts in sorted(table.items()):
        if not wanted <= texts.keys() or any("\n" in t for t in texts.values()):
            continue
        key = hashlib.blake2b(f"{package}\0{msgid}".encode(), digest_size=6).hexdigest()
        rows.append((key, texts))
    if not rows:
        raise DataError(f"no gettext message is translated into all of {sorted(wanted)}")
    # deterministic spread over packages instead of the first packages alphabetically
    rows.sort(key=lambda r: r[0])
    rows = rows[:max_ids]
    lines = [
        json.dumps({"id": key, "lang": lang, "text": texts[lang]}, ensure_ascii=False)
        for key, texts in rows
        for lang in sorted(wanted)
    ]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "\n".join(lines) + "\n")
    return {lang: len(rows) for lang in sorted(wanted)}
