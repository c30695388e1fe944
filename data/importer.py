"""`glotta data import`: JSONL / Parquet / text files -> webdataset text shards + manifest.json.

Work is split by RANK/WORLD_SIZE (torchrun) or SLURM_PROCID/SLURM_NTASKS: with at least as
many files as ranks each rank takes whole files (balanced by size); with fewer files every
rank reads them all and keeps every WORLD_SIZE-th record. Each rank writes its own shards
`PREFIX-RRRRR-NNNNNN.tar` and its manifest part; after every shard the part records where
the input stands (file, record, counters), so a rerun after a crash verifies the finished
shards (size + sha256) and continues at the next record. The last rank to finish merges
manifest.json.

Hygiene (datatrove-like, each step with a counter in the manifest and the summary): exact
duplicates (same text up to whitespace) are removed and repeated ids renamed `ID_2`, within a
rank while importing and across ranks once all are complete (data/dedup.py); a document longer
than `max_chars` is split at a paragraph/line/sentence boundary into `KEY`, `KEY-p2`, ...
(`long_docs: split`, the default) or dropped (`drop`); one shorter than `min_chars` is dropped.
The import fails (exit non-zero, no manifest) when more than `max_skip_share` of the records were
skipped, or when an explicitly mapped field (--url-field, --lang-field, ...) is missing from more
than `max_missing_share` of them: a wrong field mapping is a mistake, not data to count.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from glotta.config import StrictModel
from glotta.data import dedup
from glotta.data.langid import DEFAULT_BACKEND, UND, Backend, identify, make_langid, normalize_lang
from glotta.data.corpus_index import write_heads
from glotta.data.manifest import MANIFEST, PARTS_DIR, Manifest, ShardInfo, load_part, merge_parts, save_part, sha256_file
from glotta.data.readers import Format, TextSplit, expand_inputs, iter_records
from glotta.data.html_meta import doc_signals
from glotta.data.shards import Sample, ShardWriter, iter_samples
from glotta.errors import ConfigError, DataError
from glotta.progress import progress_bar

log = logging.getLogger(__name__)
MAX_EXAMPLES = 3  # messages kept per problem counter for the summary
MAX_KEY_CHARS = 120


class ImportConfig(StrictModel):
    inputs: list[str] = Field(min_length=1, description="files, directories or globs")
    out: str = Field(description="output shard directory")
    prefix: str = Field("shard", pattern=r"^[A-Za-z0-9_-]+$")
    format: Format | None = None  # None: from the file suffix
    text_field: str = "text"
    url_field: str = "url"
    lang_field: str = "lang"
    id_field: str = "id"
    source_field: str = "source"
    date_field: str = "date"
    license_field: str = "license"
    keep_fields: list[str] = Field(default_factory=list, description="other fields copied into KEY.json ('*' = all)")
    text_split: TextSplit = "file"
    shard_samples: int = Field(10_000, gt=0)
    shard_mb: float = Field(256.0, gt=0)
    utf8: Literal["replace", "skip"] = "replace"
    strict: bool = False
    lid: Literal["auto", "always", "never"] = "auto"
    lid_backend: Backend = DEFAULT_BACKEND
    lid_threshold: float = Field(0.5, ge=0.0, le=1.0)
    lid_chars: int = Field(1000, gt=0)
    max_chars: int = Field(100_000, gt=0)  # longer documents are split (or dropped, see long_docs)
    long_docs: Literal["split", "drop"] = "split"
    min_chars: int = Field(0, ge=0)  # shorter documents are dropped (counted as too_short)
    dedup: bool = True  # remove exact duplicates (same text up to whitespace), within and across ranks
    # near duplicates: MinHash LSH (datasketch) over character 5-grams, within each rank's share
    near_dedup: bool = False
    near_dedup_threshold: float = Field(0.8, gt=0, lt=1)  # estimated Jaccard similarity
    near_dedup_perms: int = Field(128, ge=16)
    max_skip_share: float = Field(0.05, ge=0, le=1)  # more skipped records than this share: error
    max_missing_share: float = Field(0.5, ge=0, le=1)  # an explicitly mapped field missing this often: error

# Records lost to these counters are "skipped" for max_skip_share (duplicates and splits are not).
SKIP_COUNTERS = ("bad_json", "missing_text", "bad_text", "empty_docs", "invalid_utf8_skipped", "too_short", "too_long_dropped")
MAPPED = ("url", "lang", "id", "source", "date", "license")


def rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Explicit values, else RANK/WORLD_SIZE (torchrun), else SLURM_PROCID/SLURM_NTASKS, else 0/1."""
    env = os.environ
    if rank is None:
        rank = env.get("RANK", env.get("SLURM_PROCID", "0"))
    if world_size is None:
        world_size = env.get("WORLD_SIZE", env.get("SLURM_NTASKS", "1"))
    try:
        rank, world_size = int(rank), int(world_size)
    except ValueError:
        raise ConfigError(f"RANK/WORLD_SIZE must be integers (got RANK={rank!r}, WORLD_SIZE={world_size!r})") from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"need 0 <= RANK < WORLD_SIZE (got RANK={rank}, WORLD_SIZE={world_size})")
    return rank, world_size


def assign_files(sizes: list[int], world_size: int) -> list[int]:
    """Rank of each file: largest first to the least loaded rank (ties: lowest rank). Deterministic."""
    load = [0] * world_size
    owner = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += sizes[i]
    return owner


_SAFE_KEY = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,118}[A-Za-z0-9])?")


def sanitize_key(raw: Any) -> str:
    """An input id -> a webdataset-safe key ([A-Za-z0-9_-], no dots, no leading '_'/'-')."""
    if type(raw) is str and _SAFE_KEY.fullmatch(raw):  # already safe (the usual case): unchanged
        return raw
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(raw)).strip("_-")[:MAX_KEY_CHARS]


def _json_value(v: Any) -> Any:
    """Parquet cells (dates, bytes, decimals, nested) -> something json.dumps accepts."""
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    if isinstance(v, (dt.date, dt.datetime, dt.time)):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    return str(v)


@dataclass
class ImportResult:
    rank: int
    world_size: int
    out: str
    status: str  # "imported", "resumed", "nothing to do"
    counters: dict[str, int]
    examples: dict[str, list[str]]
    shards: list[ShardInfo] = field(default_factory=list)
    manifest_written: bool = False

    def langs(self) -> dict[str, dict[str, int]]:
        return Manifest(shards=self.shards).langs()

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank, "world_size": self.world_size, "out": self.out, "status": self.status,
            "shards": len(self.shards), "samples": sum(s.samples for s in self.shards),
            "bytes": sum(s.bytes for s in self.shards), "langs": self.langs(),
            "counters": dict(sorted(self.counters.items())), "examples": self.examples,
            "manifest_written": self.manifest_written,
        }  # fmt: skip


class Importer:
    """One rank's import. `run()` does (or resumes, or skips) the work and returns the summary."""

    def __init__(self, cfg: ImportConfig, rank: int | None = None, world_size: int | None = None):
        self.cfg = cfg
        self.rank, self.world = rank_world(rank, world_size)
        self.out = Path(cfg.out)
        files, ignored = expand_inputs(cfg.inputs, cfg.format)
        self.files = files
        if len(files) >= self.world:
            owner = assign_files([p.stat().st_size for p, _ in files], self.world)
            self.mine = [f for f, r in zip(files, owner) if r == self.rank]
            self.stride = 1
        else:  # fewer files than ranks: split by record index instead
            self.mine, self.stride = list(files), self.world
        self.counters: Counter = Counter(ignored_files=len(ignored)) if ignored else Counter()
        self.examples: dict[str, list[str]] = {}
        for p in ignored[:MAX_EXAMPLES]:
            self.examples.setdefault("ignored_files", []).append(str(p))
        self._lid = None
        self._utf8: tuple[str | None, bytes] = (None, b"")  # the last text _text checked, as UTF-8
        self._fmt: Format = "jsonl"
        self._content: set[int] = set()  # 64-bit content hashes written by this rank
        self._keys: set[int] = set()  # 64-bit key hashes written by this rank
        self._rows: list[tuple[int, int]] = []  # (content, key) hashes of the open shard
        self._lsh, self._lsh_n = None, 0  # MinHashLSH of this rank's documents (near_dedup)
        # Per-record work reads these instead of re-deriving them from the config for every record
        # (the loop runs ~10^5 times a second; pydantic attribute and model_fields lookups add up).
        c = cfg
        defaults = ImportConfig.model_fields
        self._missing = tuple(
            (f"missing_{name}", getattr(c, f"{name}_field")) for name in MAPPED
            # url/lang/id always (consent, language id and keys depend on them), others when mapped
            if name in ("url", "lang", "id") or getattr(c, f"{name}_field") != defaults[f"{name}_field"].default
        )
        self._meta_fields = ((c.url_field, "url"), (c.date_field, "crawl_date"), (c.license_field, "license"), (c.id_field, "id"))
        self._mapped = frozenset((c.text_field, c.url_field, c.lang_field, c.id_field, c.source_field, c.date_field, c.license_field))
        self._keep_all = "*" in c.keep_fields

    # ---- bookkeeping ------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        """What must not change between a crash and its resume (strict only changes error handling)."""
        cfg = self.cfg.model_dump(exclude={"strict", "inputs", "out"})
        return {"config": cfg, "world_size": self.world, "files": [str(p.resolve()) for p, _ in self.mine]}

    def _check_other_worlds(self) -> None:
        parts = self.out / PARTS_DIR
        if not parts.is_dir():
            if (self.out / MANIFEST).is_file():
                raise DataError(
                    f"{self.out} already holds a shard set that was not written by `glotta data import`; "
                    "use a fresh --out"
                )
            return
        for p in parts.glob("rank-*-of-*.json"):
            if not p.name.endswith(f"-of-{self.world:05d}.json"):
                raise DataError(
                    f"{self.out} holds an import with another WORLD_SIZE ({p.name}); "
                    f"resume it with the same number of ranks or use a fresh --out"
                )

    def _problem(self, reason: str, msg: str) -> None:
        """A bad record: an error with --strict, else counted, skipped and (the first few) logged."""
        if self.cfg.strict:
            raise DataError(msg)
        msg += " (skipped)"
        self.counters[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < MAX_EXAMPLES:
            ex.append(msg)
        if self.counters[reason] <= MAX_EXAMPLES:
            log.warning(msg)

    def _save(self, shards: list[dict], cursors: list[dict], complete: bool) -> None:
        part = {
            "complete": complete, "fingerprint": self.fingerprint(), "shards": shards, "cursors": cursors,
            "counters": dict(self.counters), "examples": self.examples,
        }  # fmt: skip
        save_part(self.out, self.rank, self.world, part)

    # ---- decoding one record ----------------------------------------------------------------
    def _text(self, raw: bytes | str, where: str) -> str | None:
        if isinstance(raw, bytes):
            try:
                text = raw.decode("utf-8")
                self._utf8 = (text, raw)
                return text
            except UnicodeDecodeError as e:
                bad = f"{where}: invalid UTF-8 at byte {e.start}"
                return self._bad_utf8(bad, lambda: raw.decode("utf-8", errors="replace"))
        try:
            self._utf8 = (raw, raw.encode("utf-8"))  # kept: the shard writer needs these bytes
            return raw
        except UnicodeEncodeError as e:  # lone surrogates from JSON \ud800 escapes
            bad = f"{where}: text is not valid Unicode (lone surrogate at char {e.start})"
            return self._bad_utf8(bad, lambda: raw.encode("utf-8", errors="replace").decode("utf-8"))

    def _bad_utf8(self, msg: str, replace) -> str | None:
        if self.cfg.utf8 == "skip" or self.cfg.strict:
            self._problem("invalid_utf8_skipped", msg)
            return None
        self.counters["invalid_utf8_replaced"] += 1
        return replace()

    def _record(self, payload: Any, where: str) -> dict[str, Any] | None:
        """The record as a dict, or None (counted) for a malformed line."""
        if isinstance(payload, dict):
            return payload
        if self._fmt == "text":
            return {self.cfg.text_field: payload}
        if not payload.strip():
            self.counters["blank_lines"] += 1
            return None
        line = self._text(payload, where)
        if line is None:
            return None
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            self._problem("bad_json", f"{where}: malformed JSON ({e.msg} at column {e.colno})")
            return None
        if not isinstance(rec, dict):
            self._problem("bad_json", f"{where}: a JSON line must hold an object, got {type(rec).__name__}")
            return None
        return rec

    def _sample(self, rec: dict[str, Any], where: str, path: Path, g: int) -> Sample | None:
        c = self.cfg
        raw = rec.get(c.text_field)
        if raw is None:
            fields = ", ".join(sorted(map(str, rec))[:10])
            self._problem("missing_text", f"{where}: no text field {c.text_field!r} (fields: {fields}); see --text-field")
            return None
        if not isinstance(raw, (str, bytes)):
            self._problem("bad_text", f"{where}: field {c.text_field!r} is a {type(raw).__name__}, not text")
            return None
        text = self._text(raw, where)
        if text is None:
            return None
        if not text.strip():
            self._problem("empty_docs", f"{where}: empty document")
            return None
        if len(text) < c.min_chars:
            self._problem("too_short", f"{where}: {len(text)} characters, under min_chars={c.min_chars}")
            return None
        counters = self.counters
        for counter, name in self._missing:
            if rec.get(name) in (None, ""):
                counters[counter] += 1
        meta: dict[str, Any] = {"source": str(rec.get(c.source_field) or f"file:{path.name}")}
        for name, key in self._meta_fields:
            v = rec.get(name)
            if v not in (None, ""):
                meta[key] = v if type(v) is str else _json_value(v)
        mapped = self._mapped
        keep = [k for k in rec if k not in mapped] if self._keep_all else c.keep_fields
        for k in keep:
            if k in rec and k not in mapped and k not in meta:
                meta[k] = _json_value(rec[k])
        meta.update(doc_signals(rec))  # X-Robots-Tag / TDMRep / meta robots for `consent filter` (data/html_meta.py)
        lang_raw = rec.get(c.lang_field)
        given = normalize_lang(lang_raw) if lang_raw else UND
        if c.lid == "always" or (c.lid == "auto" and given == UND):
            if self._lid is None:
                self._lid = make_langid(c.lid_backend, c.lid_chars)
            meta["lang"], meta["lang_score"] = identify(self._lid, text, c.lid_threshold)
            self.counters["lid_docs"] += 1
            self.counters["lid_und"] += meta["lang"] == UND
            if given != UND:
                meta["lang_input"] = given
        else:
            meta["lang"] = given
        key = sanitize_key(rec[c.id_field]) if rec.get(c.id_field) not in (None, "") else ""
        return Sample(key=key or f"r{self.rank}-{g:09d}", text=text, meta=meta)

    # ---- resume -----------------------------------------------------------------------------
    def _resume_point(self) -> tuple[list[dict], list[dict], bool]:
        """Verified shards and cursors of an earlier run of this rank, and whether it had finished."""
        part = load_part(self.out, self.rank, self.world)
        if part is None:
            return [], [], False
        if part.get("fingerprint") != self.fingerprint():
            old, new = part.get("fingerprint", {}), self.fingerprint()
            diff = [k for k in new["config"] if old.get("config", {}).get(k) != new["config"][k]]
            what = f"config keys {diff}" if diff else "the input files"
            raise DataError(
                f"{self.out} was written by an import with different {what}; "
                "rerun with the same settings to resume, or use a fresh --out"
            )
        shards, cursors = part["shards"], part["cursors"]
        good = 0
        for s in shards:
            p = self.out / s["name"]
            if not p.is_file() or p.stat().st_size != s["file_bytes"] or sha256_file(p) != s["sha256"]:
                log.warning("%s: missing or changed since it was written; redoing from there", p)
                break
            good += 1
        for s in shards[:good]:  # this rank's earlier documents, for duplicate and key checks
            for ch, kh in dedup.load_docs(self.out, s["name"]).tolist():
                self._content.add(ch)
                self._keys.add(kh)
            if self.cfg.near_dedup and not (good == len(shards) and part.get("complete")):
                for sample in iter_samples(self.out / s["name"]):  # rebuild the LSH index after a crash
                    self._near_duplicate(sample.text)
        if good == len(shards) and part.get("complete"):
            self.counters = Counter(part["counters"])
            self.examples = part.get("examples", {})
            return shards, cursors, True
        if good:
            self.counters = Counter(cursors[good - 1]["counters"])
            self.examples = cursors[good - 1].get("examples", {})
        return shards[:good], cursors[:good], False

    def _remove_stale(self, first_index: int) -> None:
        """This rank's shards from `first_index` on, their indexes, and temp files of either, left by
        the interrupted run (a SIGKILL can land between writing the index and renaming the shard)."""
        pat = re.compile(rf"^(\.?){re.escape(self.cfg.prefix)}-{self.rank:05d}-(\d+)\.tar(?:\.idx)?(\.tmp-\d+)?$")
        for p in self.out.glob(f"*{self.cfg.prefix}-{self.rank:05d}-*"):
            m = pat.match(p.name)
            if m and (int(m.group(2)) >= first_index or m.group(3)):
                p.unlink()

    # ---- the loop ---------------------------------------------------------------------------
    def run(self) -> ImportResult:
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_other_worlds()
        shards, cursors, done = self._resume_point()
        if done:
            return self._finish(shards, "nothing to do")
        status = "resumed" if shards else "imported"
        self._remove_stale(len(shards))
        cur = dict(cursors[-1]) if cursors else {"file": 0, "record": 0, "global": 0}
        self._save(shards, cursors, complete=False)
        state = {"cursor": (cur["file"], cur["record"], cur["global"])}

        def on_shard(info: ShardInfo) -> None:
            dedup.save_docs(self.out, info.name, self._rows)
            self._rows = []
            shards.append(info.__dict__.copy())
            f, r, n = state["cursor"]
            snap = {"file": f, "record": r, "global": n, "counters": dict(self.counters),
                    "examples": json.loads(json.dumps(self.examples))}
            cursors.append(snap)
            self._save(shards, cursors, complete=False)

        writer = ShardWriter(
            self.out, self.cfg.prefix, self.rank, max_samples=self.cfg.shard_samples,
            max_bytes=int(self.cfg.shard_mb * (1 << 20)), start_index=len(shards), on_shard=on_shard,
        )  # fmt: skip
        g = cur["global"]
        with writer, progress_bar() as bar:
            task = bar.add_task(f"import rank {self.rank}", total=len(self.mine) - cur["file"])
            for fi in range(cur["file"], len(self.mine)):
                path, self._fmt = self.mine[fi]
                start = cur["record"] if fi == cur["file"] else 0
                for raw in iter_records(path, self._fmt, self.cfg.text_split, start):
                    gi, g = g, g + 1
                    state["cursor"] = (fi, raw.index + 1, g)  # a tuple: this runs per record
                    if self.stride > 1 and gi % self.stride != self.rank:
                        continue
                    self.counters["records"] += 1
                    rec = self._record(raw.payload, raw.where)
                    sample = self._sample(rec, raw.where, path, gi) if rec is not None else None
                    if sample is None:
                        continue
                    for part in self._parts(sample, raw.where):
                        self._write(writer, part)
                    if self.counters["written"] % 1000 == 0:
                        bar.update(task, description=f"import rank {self.rank}: {self.counters['written']:,} docs")
                state["cursor"] = (fi + 1, 0, g)
                bar.advance(task)
        self._save(shards, cursors, complete=True)
        return self._finish(shards, status)

    # ---- hygiene: length limits, exact duplicates, unique keys ----------------------------
    def _parts(self, sample: Sample, where: str) -> list[Sample]:
        """The document, or its parts when longer than max_chars (split), or nothing (drop)."""
        c = self.cfg
        if len(sample.text) <= c.max_chars:
            return [sample]
        if c.long_docs == "drop":
            self._problem("too_long_dropped", f"{where}: {len(sample.text):,} characters, over max_chars={c.max_chars:,}")
            return []
        pieces = split_text(sample.text, c.max_chars)
        self.counters["split_docs"] += 1
        self.counters["split_parts"] += len(pieces)
        return [
            Sample(key=sample.key if i == 1 else f"{sample.key}-p{i}", text=t, meta=dict(sample.meta, part=i, parts=len(pieces)))
            for i, t in enumerate(pieces, 1)
        ]

    def _near_duplicate(self, text: str) -> bool:
        """True when a document this rank already wrote is estimated >= threshold similar (MinHash LSH)."""
        from datasketch import MinHash, MinHashLSH

        if self._lsh is None:
            self._lsh = MinHashLSH(threshold=self.cfg.near_dedup_threshold, num_perm=self.cfg.near_dedup_perms)
        norm = dedup._SPACE.sub(" ", text.lower()).strip()
        m = MinHash(num_perm=self.cfg.near_dedup_perms, seed=1)
        m.update_batch([norm[i : i + 5].encode("utf-8") for i in range(max(len(norm) - 4, 1))])
        if self._lsh.query(m):
            return True
        self._lsh_n += 1
        self._lsh.insert(str(self._lsh_n), m)
        return False

    def _write(self, writer: ShardWriter, sample: Sample) -> None:
        if self.cfg.near_dedup and self._near_duplicate(sample.text):
            self.counters["near_duplicate_docs"] += 1
            return
        # Encoded once, when the text was checked (_text), for the hash and for the shard.
        cached, data = self._utf8
        if cached is not sample.text:
            data = sample.text.encode("utf-8")
        if self.cfg.dedup:
            ch = dedup.content_hash_utf8(data)
            if ch in self._content:
                self.counters["duplicate_docs"] += 1
                return
            self._content.add(ch)
        else:
            ch = 0
        kh = dedup.key_hash(sample.key)
        if kh in self._keys:  # unique over all of this rank's shards (across ranks: data/dedup.py)
            self.counters["duplicate_ids"] += 1
            base, n = sample.key, 2
            while dedup.key_hash(f"{base}_{n}") in self._keys:
                n += 1
            sample.key = f"{base}_{n}"
            kh = dedup.key_hash(sample.key)
        self._keys.add(kh)
        self._rows.append((ch, kh))
        self.counters["written"] += 1
        writer.write(sample, data)

    def _check_losses(self, total: Counter) -> None:
        """Fail loudly when the import lost too much, or a mapped field is absent from most records."""
        c, records = self.cfg, max(total["records"], 1)
        skipped = {k: total[k] for k in SKIP_COUNTERS if total[k]}
        problems = []
        if sum(skipped.values()) > c.max_skip_share * records:
            what = ", ".join(f"{k}={v:,}" for k, v in sorted(skipped.items(), key=lambda kv: -kv[1]))
            hint = f"; is --text-field {c.text_field!r} right?" if total["missing_text"] > records / 2 else ""
            problems.append(f"{sum(skipped.values()):,} of {total['records']:,} records skipped ({what}), over "
                            f"max_skip_share={c.max_skip_share}{hint}")
        defaults = ImportConfig.model_fields
        for name in MAPPED:
            key = f"{name}_field"
            mapped = getattr(c, key) != defaults[key].default
            if mapped and total[f"missing_{name}"] > c.max_missing_share * records:
                problems.append(f"--{name}-field {getattr(c, key)!r} is missing from {total[f'missing_{name}']:,} of "
                                f"{total['records']:,} records (max_missing_share={c.max_missing_share})")
        if problems:
            raise DataError(f"import into {self.out} failed its checks (no manifest written):\n  " + "\n  ".join(problems))

    def _finish(self, shards: list[dict], status: str) -> ImportResult:
        written = False
        parts = [load_part(self.out, r, self.world) for r in range(self.world)]
        if all(p and p.get("complete") for p in parts):
            total: Counter = Counter()
            for p in parts:
                total.update(p["counters"])
            self._check_losses(total)
            total.update(dedup.across_ranks(self.out, self.world) if self.cfg.dedup else {})
            meta = {
                "command": "glotta data import", "world_size": self.world, "inputs": self.cfg.inputs,
                "config": self.cfg.model_dump(exclude={"inputs", "out", "strict"}), "counters": dict(sorted(total.items())),
            }  # fmt: skip
            manifest_path = self.out / MANIFEST
            before = manifest_path.read_bytes() if manifest_path.is_file() else None
            merge_parts(self.out, self.world, meta)
            written = manifest_path.read_bytes() != before
            write_heads(self.out)  # every index header in one file: a loader's start-up reads only it
        return ImportResult(
            rank=self.rank, world_size=self.world, out=str(self.out), status=status,
            counters=dict(self.counters), examples=self.examples,
            shards=[ShardInfo(**s) for s in shards], manifest_written=written,
        )  # fmt: skip


def split_text(text: str, max_chars: int) -> list[str]:
    """Pieces of at most max_chars, cut at the last paragraph, line, sentence or word boundary
    in the second half of the window (else exactly at max_chars)."""
    out = []
    while len(text) > max_chars:
        window = text[:max_chars]
        cut = 0
        for sep in ("\n\n", "\n", ". ", "。", " "):
            at = window.rfind(sep)
            if at >= max_chars // 2:
                cut = at + len(sep)
                break
        cut = cut or max_chars
        piece, text = text[:cut].strip(), text[cut:]
        if piece:
            out.append(piece)
    if text.strip():
        out.append(text.strip())
    return out


def run_import(cfg: ImportConfig, rank: int | None = None, world_size: int | None = None) -> ImportResult:
    """Import this rank's share of `cfg.inputs` into `cfg.out` (see the module docstring)."""
    return Importer(cfg, rank, world_size).run()
