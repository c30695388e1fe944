"""Build the pruning benchmark's corpus: translated man pages from Debian packages, as JSONL.

Real prose in many languages (the same manuals translated by people, not UI strings), from the
Debian `manpages` packages: `manpages`/`manpages-dev` (English originals) and
`manpages-<lang>[-dev]` (translations). The builder downloads the .deb files with
`apt-get download` (no root install, no dpkg database change), unpacks them with `dpkg-deb -x`,
converts roff to plain text, cuts each page into documents at its section headings (`.SH`;
short sections are merged with the next one, so a document is at least `--min-chars`), drops
exact and near duplicates (glotta.pruning.cat.dedup), and writes one JSON line per document:

    {"text": ..., "lang": "de", "id": "de/man1/ls.1#2", "group": "de/man1/ls.1"}

`group` is the man page: bench/prune_eval.py splits pool / validation / test by a hash of the
group, so sections of one page never straddle the split. Every skipped page or section is
counted and printed.

    python bench/prune_corpus.py --out .cache/prune_corpus.jsonl            # 9 languages
    python bench/prune_corpus.py --langs en de fr --out small.jsonl
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

# language -> (packages, man directory under usr/share/man)
SOURCES = {
    "en": (["manpages", "manpages-dev"], ""),
    "de": (["manpages-de", "manpages-de-dev"], "de"),
    "fr": (["manpages-fr", "manpages-fr-dev"], "fr"),
    "es": (["manpages-es", "manpages-es-dev"], "es"),
    "pl": (["manpages-pl", "manpages-pl-dev"], "pl"),
    "ru": (["manpages-ru", "manpages-ru-dev"], "ru"),
    "ja": (["manpages-ja", "manpages-ja-dev"], "ja"),
    "zh": (["manpages-zh"], "zh_CN"),
    "pt": (["manpages-pt-br", "manpages-pt-br-dev"], "pt_BR"),
    "uk": (["manpages-uk", "manpages-uk-dev"], "uk"),
    "nl": (["manpages-nl", "manpages-nl-dev"], "nl"),
}
DEFAULT_LANGS = ["en", "de", "fr", "es", "pl", "ru", "ja", "zh"]

_NAMED = {"em": "—", "en": "–", "hy": "-", "aq": "'", "dq": '"', "lq": "“", "rq": "”", "oq": "‘", "cq": "’",
          "bu": "•", "co": "©", "rg": "®", "tm": "™", "de": "°", "mu": "×", "di": "÷", "+-": "±", "<=": "≤",
          ">=": "≥", "!=": "≠", "->": "→", "<-": "←", "Fo": "«", "Fc": "»", "ga": "`", "ha": "^", "ti": "~",
          "rs": "\\", "ba": "|", "ul": "_", "sl": "/", "ss": "ß", "a\"": "ä", "o\"": "ö", "u\"": "ü"}
_ESCAPES = [
    (re.compile(r"\\f(\[[^\]]*\]|\(..|.)"), ""),  # font changes
    (re.compile(r"\\s[+-]?(\d|\(\d\d|\[\d+\])"), ""),  # size changes
    (re.compile(r"\\\*(\[[^\]]*\]|\(..|.)"), ""),  # string registers (mostly empty or decorative)
    (re.compile(r"\\n(\[[^\]]*\]|\(..|.)"), ""),  # number registers
    (re.compile(r"\\[kh]'[^']*'"), ""),
    (re.compile(r"\\[&%|^,/:)c]"), ""),
    (re.compile(r"\\[ ~0]"), " "),
    (re.compile(r"\\[-e]"), "-"),
]
_NAMED_RE = re.compile(r"\\(?:\(([^\s]{2})|\[([^\]]+)\])")
_TEXT_MACROS = {"B", "I", "BR", "RB", "IR", "RI", "BI", "IB", "SM", "SB", "UR", "MT", "Nm", "Nd", "Ar", "Fl", "Pa"}
_BREAK_MACROS = {"PP", "LP", "P", "TP", "IP", "HP", "sp", "br", "RS", "RE", "nf", "fi", "EX", "EE", "TQ", "Pp"}


def _unescape(s: str) -> str:
    s = s.replace("\\\\", "\x00")
    s = _NAMED_RE.sub(lambda m: _NAMED.get(m.group(1) or m.group(2), ""), s)
    for pat, rep in _ESCAPES:
        s = pat.sub(rep, s)
    s = s.replace("\\e", "\\").replace("\\", "")
    return s.replace("\x00", "\\")


def _macro_args(rest: str) -> str:
    """Arguments of a font macro (`.BR foo (1)`): quoted strings kept whole, joined without spaces
    for alternating-font macros would be exact; a space keeps words apart, which is what we need."""
    return " ".join(a.strip('"') for a in re.findall(r'"[^"]*"|\S+', rest))


def roff_to_sections(src: str, counters: Counter) -> list[tuple[str, str]]:
    """[(heading, text)] of one man page; tables and preprocessor blocks kept as text lines."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    skip_until = None
    for raw in src.splitlines():
        line = raw.rstrip()
        if skip_until:
            if line.startswith(skip_until):
                skip_until = None
            continue
        if line.startswith((".\\\"", "'\\\"", '\\"', ".\\#")) or line in (".", "'"):
            continue
        if line.startswith((".", "'")) and len(line) > 1:
            m = re.match(r"[.']\s*(\S+)\s*(.*)", line)
            if not m:
                continue
            name, rest = m.group(1), m.group(2)
            if name in ("de", "de1", "am", "ig"):
                skip_until = ".."
                continue
            if name in ("SH", "Sh"):
                sections.append((_unescape(_macro_args(rest)), []))
            elif name in ("SS", "Ss"):
                sections[-1][1].extend(["", _unescape(_macro_args(rest))])
            elif name in _TEXT_MACROS:
                sections[-1][1].append(_unescape(_macro_args(rest)))
            elif name in _BREAK_MACROS:
                if name == "IP" and rest:
                    sections[-1][1].extend(["", _unescape(_macro_args(rest).split(" ")[0])])
                else:
                    sections[-1][1].append("")
            elif name in ("TS", "TE", "T{", "T}"):
                continue
            else:
                counters["roff_requests_ignored"] += 1
            continue
        if line.startswith(("T{", "T}")):
            continue
        sections[-1][1].append(_unescape(line).replace("\t", " "))
    out = []
    for head, lines in sections:
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(x.strip() for x in lines)).strip()
        text = re.sub(r"[ ]{2,}", " ", text)
        if text:
            out.append((head, text))
    return out


def page_documents(sections: list[tuple[str, str]], min_chars: int, max_chars: int) -> list[str]:
    """Merge short sections into the next one, so every document has at least min_chars
    (the page's tail goes with the last document); cut at max_chars on a paragraph boundary."""
    docs, cur = [], ""
    for head, text in sections:
        block = f"{head}\n{text}" if head else text
        cur = f"{cur}\n\n{block}" if cur else block
        if len(cur) >= min_chars:
            docs.append(cur)
            cur = ""
    if cur:
        if docs:
            docs[-1] += "\n\n" + cur
        else:
            docs.append(cur)
    out = []
    for d in docs:
        while len(d) > max_chars:
            cut = d.rfind("\n\n", 0, max_chars)
            cut = cut if cut > min_chars else max_chars
            out.append(d[:cut].strip())
            d = d[cut:].strip()
        if d:
            out.append(d)
    return out


def fetch(packages: list[str], cache: Path, counters: Counter) -> list[Path]:
    """Download (apt-get download) and unpack (dpkg-deb -x) each package once; returns unpack roots."""
    debs, roots = cache / "debs", []
    debs.mkdir(parents=True, exist_ok=True)
    for pkg in packages:
        root = cache / "x" / pkg
        if not (root / ".done").is_file():
            found = sorted(debs.glob(f"{pkg}_*.deb"))
            if not found:
                if not shutil.which("apt-get"):
                    sys.exit(f"prune_corpus: {pkg}: no apt-get on this machine; put {pkg}_*.deb into {debs} "
                             "or pass --corpus FILE.jsonl (text, lang) to bench/prune_eval.py")
                r = subprocess.run(["apt-get", "download", "-q", pkg], cwd=debs, capture_output=True, text=True)
                found = sorted(debs.glob(f"{pkg}_*.deb"))
                if r.returncode != 0 or not found:
                    sys.exit(f"prune_corpus: apt-get download {pkg} failed ({r.stderr.strip()[-300:]}); "
                             "run `apt-get update` first, or pass --corpus FILE.jsonl to bench/prune_eval.py")
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(root)], check=True)
            (root / ".done").write_text(found[-1].name)
        counters[f"packages"] += 1
        roots.append(root)
    return roots


def build(langs: list[str], cache: Path, min_chars: int, max_chars: int, near: float, counters: Counter):
    from glotta.pruning.cat.dedup import DedupConfig, find_duplicates

    rows: list[dict] = []
    for lang in langs:
        if lang not in SOURCES:
            sys.exit(f"prune_corpus: no source for language {lang!r} (have {', '.join(SOURCES)})")
        packages, mandir = SOURCES[lang]
        for root in fetch(packages, cache, counters):
            base = root / "usr/share/man" / mandir if mandir else root / "usr/share/man"
            pages = sorted(p for p in base.glob("man*/*") if p.is_file())
            for page in pages:
                if page.is_symlink():
                    counters["pages_symlink_alias"] += 1  # another name of a page read under its own name
                    continue
                try:
                    raw = gzip.decompress(page.read_bytes()) if page.suffix == ".gz" else page.read_bytes()
                    src = raw.decode("utf-8")
                except (OSError, UnicodeDecodeError):
                    counters[f"pages_unreadable.{lang}"] += 1
                    continue
                if re.match(r"\s*\.so\s", src):
                    counters["pages_redirect_so"] += 1  # `.so other.3`: an alias, no text of its own
                    continue
                name = f"{lang}/{page.parent.name}/{page.name.removesuffix('.gz')}"
                docs = page_documents(roff_to_sections(src, counters), min_chars, max_chars)
                short = [d for d in docs if len(d) < min_chars]
                counters[f"docs_too_short"] += len(short)
                for i, d in enumerate(x for x in docs if len(x) >= min_chars):
                    rows.append({"text": d, "lang": lang, "id": f"{name}#{i}", "group": name})
    dup = find_duplicates([r["text"] for r in rows], DedupConfig(mode="near", threshold=near))
    counters["exact_duplicates"] += dup.exact
    counters["near_duplicates"] += dup.near
    return [r for r, keep in zip(rows, dup.keep) if keep]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--langs", nargs="+", default=DEFAULT_LANGS)
    ap.add_argument("--out", type=Path, default=Path(".cache/prune_corpus.jsonl"))
    ap.add_argument("--cache", type=Path, default=Path(".cache"))
    ap.add_argument("--min-chars", type=int, default=400)
    ap.add_argument("--max-chars", type=int, default=1500)
    ap.add_argument("--near", type=float, default=0.8, help="MinHash Jaccard above which two documents are duplicates")
    args = ap.parse_args()
    counters: Counter = Counter()
    rows = build(args.langs, args.cache, args.min_chars, args.max_chars, args.near, counters)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(args.out)
    per_lang = Counter(r["lang"] for r in rows)
    chars = Counter()
    for r in rows:
        chars[r["lang"]] += len(r["text"])
    print(f"{'lang':<6}{'docs':>8}{'chars':>12}{'pages':>8}")
    for lang in args.langs:
        pages = len({r["group"] for r in rows if r["lang"] == lang})
        print(f"{lang:<6}{per_lang[lang]:>8}{chars[lang]:>12,}{pages:>8}")
    print("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    print(f"wrote {len(rows)} documents to {args.out}")


if __name__ == "__main__":
    main()
