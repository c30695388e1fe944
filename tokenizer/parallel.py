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
    max_ids: int = Field(2000, gt=0)
    min_chars: int = Field(20, ge=0)  # shorter messages ("OK", "File") say little about a tokenizer


def read_parallel(path: str | Path, langs: list[str] | None = None) -> dict[str, dict[str, str]]:
    """lang -> {id: text}. A malformed line is an error naming the file and line number."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"parallel text not found: {p}")
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
