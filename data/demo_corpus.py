"""The embedded demo corpus: real multilingual text from the gettext catalogs on this machine.

Every Debian-like system ships translations of its programs' messages
(/usr/share/locale/<locale>/LC_MESSAGES/<package>.mo). For each (package, language) we join
the translated messages into documents of at most `doc_chars` characters; English documents
are the catalogs' source strings (msgids). Nothing is downloaded and nothing is synthetic.
"""
from __future__ import annotations

import datetime as dt
import gettext
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from glotta.data.manifest import Manifest
from glotta.data.shards import Sample, ShardWriter
from glotta.errors import DataError

log = logging.getLogger(__name__)

LOCALE_DIRS = ("/usr/share/locale", "/usr/local/share/locale")
# Variants whose text is not a separate language (English with fancy quotes, transliterations).
SKIP_VARIANTS = ("@quot", "@boldquot", "@shaw", "@latin", "@valencia", "@cyrillic")


@dataclass
class Catalog:
    package: str
    locale: str
    lang: str
    path: Path


def locale_to_lang(locale: str) -> str | None:
    """'pt_BR' -> 'pt', 'zh_TW' -> 'zh', 'sr@latin' -> None (a variant), 'C' -> None."""
    if any(locale.endswith(v) for v in SKIP_VARIANTS) or "@" in locale:
        return None
    base = locale.split("_")[0].split(".")[0].lower()
    return base if re.fullmatch(r"[a-z]{2,3}", base) else None


def find_catalogs(locale_dirs=LOCALE_DIRS) -> list[Catalog]:
    found = []
    for root in locale_dirs:
        for mo in sorted(Path(root).glob("*/LC_MESSAGES/*.mo")):
            locale = mo.parent.parent.name
            lang = locale_to_lang(locale)
            if lang and lang != "en":  # en_GB etc. are near-copies of the msgids
                found.append(Catalog(mo.stem, locale, lang, mo))
    return found


def read_messages(path: Path) -> list[tuple[str, str]]:
    """(msgid, msgstr) pairs of a .mo file, header removed, sorted by msgid (stable order)."""
    with open(path, "rb") as f:
        catalog = gettext.GNUTranslations(f)._catalog  # the parsed .mo table; no public accessor
    pairs = []
    for k, v in catalog.items():
        msgid = k[0] if isinstance(k, tuple) else k
        if not msgid or not isinstance(v, str) or not v.strip():
            continue
        pairs.append((msgid, v))
    pairs.sort()
    return pairs


def _chunks(messages: list[str], doc_chars: int) -> list[str]:
    docs, cur, size = [], [], 0
    for m in messages:
        m = m.strip()
        if not m:
            continue
        if cur and size + len(m) > doc_chars:
            docs.append("\n".join(cur))
            cur, size = [], 0
        cur.append(m)
        size += len(m) + 1
    if cur:
        docs.append("\n".join(cur))
    return docs


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", s).strip("_") or "x"


def build_demo_corpus(
    out_dir: str | Path,
    langs: list[str] | None = None,
    doc_chars: int = 2000,
    max_docs_per_lang: int | None = None,
    shard_samples: int = 1000,
    locale_dirs=LOCALE_DIRS,
) -> Manifest:
    """Write the demo shard set to `out_dir` and return its manifest."""
    catalogs = find_catalogs(locale_dirs)
    if not catalogs:
        raise DataError(
            f"no gettext catalogs (*.mo) found under {', '.join(locale_dirs)}; "
            "install translations (e.g. Debian's `locales-all` or any package with translations) "
            "or import your own data with `glotta data import`"
        )
    wanted = set(langs) if langs else None
    docs_by_lang: dict[str, list[Sample]] = defaultdict(list)
    english_seen: set[str] = set()
    skipped: list[str] = []
    for cat in catalogs:
        if wanted is not None and cat.lang not in wanted and "en" not in wanted:
            continue
        try:
            pairs = read_messages(cat.path)
        except (OSError, UnicodeDecodeError, ValueError, IndexError, KeyError) as e:  # e.g. a Latin-1 catalog header
            log.warning("%s: unreadable catalog skipped (%s)", cat.path, e)
            skipped.append(str(cat.path))
            continue
        date = dt.date.fromtimestamp(cat.path.stat().st_mtime).isoformat()
        todo = []
        if wanted is None or cat.lang in wanted:
            todo.append((cat.lang, cat.locale, [v for _, v in pairs]))
        if cat.package not in english_seen and (wanted is None or "en" in wanted):
            english_seen.add(cat.package)
            todo.append(("en", "en", [k for k, _ in pairs]))
        for lang, locale, messages in todo:
            for i, text in enumerate(_chunks(messages, doc_chars)):
                key = f"{_slug(cat.package)}-{_slug(locale)}-{i:04d}"
                meta = {
                    "lang": lang,
                    "locale": locale,
                    "url": f"https://{_slug(cat.package).lower().replace('_', '-')}.l10n.example/{locale}/{i}",
                    "source": f"gettext:{cat.package}",
                    "crawl_date": date,
                }
                docs_by_lang[lang].append(Sample(key=key, text=text, meta=meta))
    if not docs_by_lang:
        raise DataError(f"none of the requested languages {sorted(wanted or [])} has a gettext catalog here")
    out = Path(out_dir)
    with ShardWriter(out, prefix="demo", max_samples=shard_samples) as w:
        # Interleave languages round-robin so every shard holds several languages.
        lists = {lang: docs[:max_docs_per_lang] for lang, docs in sorted(docs_by_lang.items())}
        longest = max(len(v) for v in lists.values())
        for i in range(longest):
            for lang in lists:
                if i < len(lists[lang]):
                    w.write(lists[lang][i])
    meta = {"source": "gettext catalogs", "doc_chars": doc_chars, "skipped_catalogs": len(skipped)}
    manifest = Manifest(shards=w.written, meta=meta)
    manifest.save(out)
    return manifest
