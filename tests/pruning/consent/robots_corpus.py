"""A corpus of real robots.txt files, obtained through PyPI, and Google's reference matcher.

The corpus is protego 0.7.0's own test data (`tests/test_data/`: 4,231 robots.txt files fetched
from the top 10k sites in July 2019, shipped in its source distribution on PyPI). It is built
once, explicitly, into a cache directory (`GLOTTA_CACHE`, default ~/.cache/glotta) with
`pip download` and a sha256 check, so a clean clone needs nothing but PyPI access; a second run
reads the cache. The referee is Google's robots.txt parser (github.com/google/robotstxt, the
reference implementation of RFC 9309) through its Python bindings `jwm.robotstxt`, a dev
dependency.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from urllib.parse import quote

SDIST = "protego==0.7.0"
SDIST_FILE = "protego-0.7.0.tar.gz"
SDIST_SHA256 = "2c032d9736a1f4f0c4318f3558353ae34da5cd038f1a5e064ded7548df315e5a"
MEMBER_PREFIX = "protego-0.7.0/tests/test_data/"

# The agents compared: the `training` policy plus search/archive crawlers that real files name
# (they exercise group selection far more than the AI agents do in 2019 files).
AGENTS = (
    "GPTBot", "ClaudeBot", "anthropic-ai", "CCBot", "Google-Extended", "Applebot-Extended", "Bytespider",
    "Meta-ExternalAgent", "FacebookBot", "cohere-training-data-crawler", "Amazonbot", "PanguBot", "Diffbot",
    "omgili", "omgilibot", "Timpibot", "Webzio-Extended", "Googlebot", "Googlebot-Image", "Googlebot-News",
    "Mediapartners-Google", "AdsBot-Google", "Bingbot", "Slurp", "Baiduspider", "YandexBot", "Applebot",
    "ia_archiver", "Twitterbot", "facebookexternalhit", "AhrefsBot", "SemrushBot", "DuckDuckBot", "Sogou",
)


def cache_dir() -> Path:
    return Path(os.environ.get("GLOTTA_CACHE", Path.home() / ".cache" / "glotta")) / "robots-corpus-protego-0.7.0"


def corpus() -> Path:
    """The directory of real robots.txt files (one per site, named after the host); built on first use."""
    target = cache_dir()
    if (target / ".complete").is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        SDIST, "-d", tmp], check=True, timeout=600)
        sdist = Path(tmp) / SDIST_FILE
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            raise RuntimeError(f"{SDIST_FILE}: sha256 {digest} != {SDIST_SHA256}")
        part = target.with_name(target.name + f".tmp{os.getpid()}")
        part.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as tar:
            for m in tar.getmembers():
                if m.isfile() and m.name.startswith(MEMBER_PREFIX) and "/" not in m.name[len(MEMBER_PREFIX):]:
                    (part / m.name[len(MEMBER_PREFIX):]).write_bytes(tar.extractfile(m).read())
        (part / ".complete").write_text(f"{SDIST} {SDIST_SHA256}\n")
        try:
            part.rename(target)
        except OSError:  # another process finished first
            pass
    return target


def probe_paths(text: str, limit: int = 8) -> list[str]:
    """URL paths to ask about for one site: the homepage, then paths made from the file's own rule
    values (`*` -> `x`, a trailing `$` dropped), which is where readings of a file disagree."""
    out = ["/"]
    seen = {"/"}
    for line in text.splitlines():
        key, _, value = line.split("#", 1)[0].partition(":")
        if key.strip().lower() not in ("allow", "disallow"):
            continue
        value = value.strip().replace("*", "x").rstrip("$")
        if not value.startswith("/") or value in seen:
            continue
        seen.add(value)
        out.append(quote(value, safe="/?=&%:;,@!~+-._"))
        if len(out) >= limit:
            break
    return out
