"""Shared fixtures and skips. Fixtures build small real multilingual inputs."""
from __future__ import annotations

import os
import shutil

import pytest

try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    HAS_CUDA = False

# An in-process trainer (init_parallel without torchrun, also inside module fixtures) sets
# RANK/WORLD_SIZE/MASTER_PORT in this process's environment and keeps its store listening on that
# port: a later test's subprocess would inherit them and try to listen on the same port
# (EADDRINUSE). After every test the environment goes back to what it was when the session started.
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_PRISTINE = {k: os.environ.get(k) for k in DIST_ENV}


@pytest.fixture(autouse=True)
def _restore_dist_env():
    yield
    for k, v in _PRISTINE.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
requires_torchrun = pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")

# Real text in several scripts, short enough to read in a test failure.
MULTILINGUAL = {
    "en": "The quick brown fox jumps over the lazy dog while the farmer watches from the barn.",
    "de": "Der schnelle braune Fuchs springt über den faulen Hund, während der Bauer aus der Scheune zusieht.",
    "fr": "Le renard brun rapide saute par-dessus le chien paresseux pendant que le fermier regarde depuis la grange.",
    "ru": "Быстрая коричневая лиса прыгает через ленивую собаку, пока фермер смотрит из сарая.",
    "el": "Η γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο ενώ ο αγρότης κοιτάζει από τον αχυρώνα.",
    "hi": "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है जबकि किसान खलिहान से देखता है।",
    "ja": "素早い茶色の狐が怠け者の犬を飛び越え、農夫は納屋から見ている。",
    "ar": "الثعلب البني السريع يقفز فوق الكلب الكسول بينما يراقب المزارع من الحظيرة.",
}


@pytest.fixture
def multilingual_text() -> dict[str, str]:
    return dict(MULTILINGUAL)


# Languages of the small demo shard set used across the suite (several scripts, uneven sizes).
DEMO_LANGS = ["en", "de", "fr", "es", "ru", "el", "ja", "zh", "hi", "ar"]


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory):
    """A small real shard set built once per test session from the machine's gettext catalogs."""
    from glotta.data.demo_corpus import build_demo_corpus

    out = tmp_path_factory.mktemp("demo_shards")
    build_demo_corpus(out, langs=DEMO_LANGS, max_docs_per_lang=80, shard_samples=200)
    return out
