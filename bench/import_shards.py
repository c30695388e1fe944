"""Import throughput: the shard writer (C++ tar members + index) vs the old tarfile writer, same run.

  writer   ShardWriter.write for every document (headers, padding, json, index, sha256, fsync)
  import   `glotta data import` end to end on a JSONL export of the corpus with `lang` given
           (JSON parsing, key and field mapping, the writer), old writer patched in for the baseline

The baseline is the previous writer: Python's tarfile in pax format (TarInfo per member, mtime 0),
the way glotta wrote shards before. Both outputs are read back with the webdataset library and
must hold the same samples. Figures are documents per CPU-second of this process.

  pre-issue  with --baseline-site DIR (a glotta installed from an older commit, e.g.
             `git archive 624ca72 | tar -x -C /tmp/old && pip install --no-deps --target DIR /tmp/old`):
             the same import run by that glotta with the tarfile writer, against ours, each in its own
             process, interleaved; figures are the CPU seconds of run_import in each process.

    python bench/import_shards.py [SHARD_DIR] [--docs 20000] [--repeat 2] [--baseline-site DIR]
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from unittest import mock

import webdataset as wds

from glotta.data import Sample, ShardWriter, iter_samples, list_shards
from glotta.data.demo_corpus import build_demo_corpus
from glotta.data.manifest import sha256_file


class TarfileShardWriter(ShardWriter):
    """The old writer: the same API, members through tarfile (kept here only as the baseline)."""

    def _open(self) -> None:
        super()._open()
        self._f.close()
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.PAX_FORMAT)

    def _add(self, name: str, payload: bytes) -> None:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode = len(payload), 0, 0o444
        ti.uname = ti.gname = ""
        self._tar.addfile(ti, io.BytesIO(payload))

    def write(self, sample: Sample, utf8: bytes | None = None) -> None:  # utf8 ignored: it encoded again
        if self._info is None:
            self._open()
        text = sample.text.encode("utf-8")
        meta = json.dumps(sample.meta, ensure_ascii=False, sort_keys=True).encode("utf-8")
        self._add(f"{sample.key}.txt", text)
        self._add(f"{sample.key}.json", meta)
        self._info.add(sample.meta.get("lang") or "und", len(text))
        if self._info.samples >= self.max_samples or self._info.bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if self._info is None:
            return
        self._tar.close()
        with open(self._tmp, "rb+") as f:
            os.fsync(f.fileno())
        self._info.file_bytes = self._tmp.stat().st_size
        self._info.sha256 = sha256_file(self._tmp)
        os.replace(self._tmp, self.out_dir / self._info.name)
        self.written.append(self._info)
        if self.on_shard is not None:
            self.on_shard(self._info)
        self._info = None
        self._f = None
        self.index += 1

    def abort(self) -> None:
        self._info = None


def cpu() -> float:
    return time.process_time()


def write_all(cls, samples, out: Path) -> float:
    c0 = cpu()
    with cls(out, max_samples=5000) as w:
        for s in samples:
            w.write(s)
    return cpu() - c0


def read_back(out: Path) -> dict:
    return {s["__key__"]: s["txt"] for s in wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False).decode()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shards", nargs="?", help="shard set to take text from (default: a demo corpus)")
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--baseline-site", help="site dir of an older glotta: its import + tarfile writer is the pre-issue baseline")
    ap.add_argument("--import-once", nargs=3, metavar=("JSONL", "OUT", "WRITER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    if args.import_once:
        import_once(*args.import_once)
        return
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:  # ~0.5 GB of shards: never left behind
        run(args, Path(tmp))


def import_once(jsonl: str, out: str, writer: str) -> None:
    """One import by whichever glotta this process imports; prints its CPU seconds as JSON."""
    import glotta
    from glotta.data.importer import ImportConfig, run_import

    cfg = ImportConfig(inputs=[jsonl], out=out, shard_samples=5000)
    c0 = cpu()
    with mock.patch("glotta.data.importer.ShardWriter", TarfileShardWriter if writer == "tarfile" else ShardWriter):
        result = run_import(cfg, rank=0, world_size=1)
    print(json.dumps({"cpu": cpu() - c0, "written": result.counters.get("written"), "glotta": glotta.__file__}))


def in_process(site: str | None, jsonl: Path, out: Path, writer: str) -> float:
    env = dict(os.environ)
    if site:  # ahead of the installed glotta (an editable install's finder comes after sys.path)
        env["PYTHONPATH"] = site + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, __file__, "--import-once", str(jsonl), str(out), writer],
                          env=env, capture_output=True, text=True, check=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if site and not res["glotta"].startswith(str(Path(site).resolve())) and not res["glotta"].startswith(site):
        raise SystemExit(f"--baseline-site {site}: the subprocess imported {res['glotta']} instead")
    return res["cpu"]


def run(args, tmp: Path) -> None:
    src = Path(args.shards) if args.shards else tmp / "demo"
    if not args.shards:
        build_demo_corpus(src, shard_samples=5000)
    docs = [s for p in list_shards(src) for s in iter_samples(p)]
    samples = [Sample(key=f"d{i:07d}", text=docs[i % len(docs)].text, meta=docs[i % len(docs)].meta) for i in range(args.docs)]
    mb = sum(len(s.text.encode()) for s in samples) / 1e6

    best = {"ours": 1e9, "tarfile": 1e9}
    for r in range(args.repeat):
        for name, cls in (("tarfile", TarfileShardWriter), ("ours", ShardWriter)):
            out = tmp / f"w-{name}-{r}"
            best[name] = min(best[name], write_all(cls, samples, out))
    assert read_back(tmp / "w-ours-0") == read_back(tmp / "w-tarfile-0"), "outputs differ"
    print(f"writer: {args.docs:,} docs, {mb:.1f} MB of text, best of {args.repeat}, docs per CPU-second")
    ours, base = args.docs / best["ours"], args.docs / best["tarfile"]
    print(f"  ours (C++ members + index) {ours:>10,.0f}   tarfile {base:>10,.0f}   ratio {ours / base:.2f}x")

    # End to end: the import command's library function on JSONL with the language given.
    from glotta.data.importer import ImportConfig, run_import

    jsonl = tmp / "in.jsonl"
    with open(jsonl, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps({"id": s.key, "text": s.text, "lang": s.meta.get("lang"), "url": s.meta.get("url")}, ensure_ascii=False) + "\n")
    imp = {"ours": 1e9, "tarfile": 1e9}
    for r in range(args.repeat):
        for name, cls in (("tarfile", TarfileShardWriter), ("ours", ShardWriter)):
            cfg = ImportConfig(inputs=[str(jsonl)], out=str(tmp / f"i-{name}-{r}"), shard_samples=5000)
            c0 = cpu()
            with mock.patch("glotta.data.importer.ShardWriter", cls):
                run_import(cfg, rank=0, world_size=1)
            imp[name] = min(imp[name], cpu() - c0)
    assert read_back(tmp / "i-ours-0") == read_back(tmp / "i-tarfile-0"), "imports differ"
    ours, base = args.docs / imp["ours"], args.docs / imp["tarfile"]
    print("import (JSONL, lang given), docs per CPU-second")
    print(f"  ours {ours:>10,.0f}   old writer {base:>10,.0f}   ratio {ours / base:.2f}x   ({mb * args.docs / imp['ours'] / args.docs:.1f} MB/s)")
    if args.baseline_site:
        sub = {"pre-issue": 1e9, "ours": 1e9}
        for r in range(args.repeat):
            sub["pre-issue"] = min(sub["pre-issue"], in_process(args.baseline_site, jsonl, tmp / f"p-old-{r}", "tarfile"))
            sub["ours"] = min(sub["ours"], in_process(None, jsonl, tmp / f"p-new-{r}", "ours"))
        assert read_back(tmp / "p-new-0") == read_back(tmp / "p-old-0"), "pre-issue and current imports differ"
        ours, base = args.docs / sub["ours"], args.docs / sub["pre-issue"]
        print(f"import vs the pre-issue path ({args.baseline_site} + tarfile writer), separate processes, docs per CPU-second")
        print(f"  ours {ours:>10,.0f}   pre-issue {base:>10,.0f}   ratio {ours / base:.2f}x   (target >= 3x)")


if __name__ == "__main__":
    main()
