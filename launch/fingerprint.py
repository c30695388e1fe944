"""What a stage's result depends on, as a hash: its commands plus the content of its inputs.

A stage reruns exactly when this changes, so a new exclude list, tokenizer, checkpoint or corpus
file reruns every stage downstream of it (and nothing upstream). Content digests:
- a shard set (folder with manifest.json): sha256 of the manifest, which lists every shard's sha256;
- a file up to HASH_LIMIT bytes: its sha256; a larger file: size + modification time (hashing a
  terabyte corpus on every rerun would cost more than the stages it guards);
- any other folder (checkpoints, captures): the digests of its files, by relative path.
Cost at 10,000 shards: one manifest read per shard set (the manifest is ~2 MB); at 512 ranks
nothing changes (the runner hashes once, on the launching host).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
from pathlib import Path

from glotta.data.manifest import MANIFEST, sha256_file

HASH_LIMIT = 256 << 20


def content_digest(p: Path) -> str:
    if not p.exists():
        return "missing"
    if p.is_dir() and (p / MANIFEST).is_file():
        return "manifest:" + sha256_file(p / MANIFEST)
    if p.is_file():
        st = p.stat()
        return sha256_file(p) if st.st_size <= HASH_LIMIT else f"size:{st.st_size}:mtime:{st.st_mtime_ns}"
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file() and not x.name.startswith(".")):
        h.update(f"{f.relative_to(p)}\0{content_digest(f)}\n".encode())
    return "tree:" + h.hexdigest()


def expand(item: str | Path) -> list[Path]:
    """A recipe input (file, folder or glob) -> the paths it names today."""
    s = str(item)
    if any(c in s for c in "*?["):
        return [Path(x) for x in sorted(glob.glob(s, recursive=True))]
    return [Path(s)]


def input_digests(inputs: list[str | Path], run_dir: Path) -> dict[str, str]:
    """{path (relative to run_dir when inside it): digest} for every input, globs expanded."""
    out = {}
    for item in inputs:
        for p in expand(item):
            out[_rel(p, run_dir)] = content_digest(p)
    return dict(sorted(out.items()))


def fingerprint(commands: list[list[str]], digests: dict[str, str], run_dir: Path) -> str:
    """Independent of where the run directory and the Python interpreter live."""
    text = json.dumps(commands).replace(str(run_dir), "$RUN").replace(sys.executable, "python")
    return hashlib.sha256((text + json.dumps(digests, sort_keys=True)).encode()).hexdigest()[:16]


def _rel(p: Path, run_dir: Path) -> str:
    try:
        return "$RUN/" + str(p.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return os.path.abspath(p)
