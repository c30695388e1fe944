"""Snapshot store: several robots.txt (and tdmrep.json) captures per origin, each with a date.

One JSON object per line (snapshots.jsonl), appended by `fetch` and `import`, read whole by
`filter` and `report`. Keys are scheme-aware origins (`https://host[:port]`), so an http and an
https capture of one host are separate, as robots.txt is (RFC 9309 2.3).

Which snapshot decides a document (`as_of`):
  crawl      the latest capture at or before the document's crawl_date (the paper's rule); a
             document crawled before the first capture uses the first capture (`asof_fallback`),
             and one without crawl_date uses the latest;
  now        the latest capture;
  strictest  both of the above; the document is dropped if either drops it.
"""
from __future__ import annotations

import bisect
import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from glotta.config import StrictModel

from glotta.errors import ConfigError, DataError
from glotta.pruning.consent.dates import parse_day
from glotta.pruning.consent.robots import MAX_BYTES, Robots, sha256_text
from glotta.pruning.consent.signals import TdmRep
from glotta.pruning.consent.urls import BadURL, split_url



@dataclass(slots=True)  # 10^5-10^6 of them per rank: no per-instance __dict__
class Snapshot:
    origin: str  # https://host[:port]
    date: str  # YYYY-MM-DD of the capture
    status: int  # HTTP status of robots.txt; 0 = unreachable (network error, timeout)
    robots: str | None = None  # body as text (None unless 2xx)
    sha256: str = ""  # of the body bytes as fetched/imported
    source: str = ""  # fetch | file path | wayback ...
    error: str = ""
    tdmrep_status: int = 0  # HTTP status of /.well-known/tdmrep.json (0: not fetched)
    tdmrep: str | None = None
    kind: str = ""  # "" a capture | failed (5xx / no answer after retries) | bot_wall (403 / 429)
    policy: str = ""  # for failed / bot_wall: keep-previous | disallow | allow (fetch --on-failure / --bot-wall)

    @property
    def id(self) -> str:
        return f"{self.origin}@{self.date}"


def parse_date(value: object) -> str | None:
    """'2024-03-01T12:00:00Z', 'Fri, 01 Mar 2024 12:00:00 GMT', '20240301', '20240301120000' ->
    '2024-03-01'; None when absent or unreadable (dates.py lists the formats)."""
    return parse_day(value)


class SnapshotStore:
    def __init__(self, snapshots: list[Snapshot] | None = None):
        self.by_origin: dict[str, list[Snapshot]] = {}
        self._dates: dict[str, list[str]] = {}
        self._robots: dict[object, Robots] = {}
        self._tdm: dict[str, TdmRep | None] = {}
        self.torn_lines = 0
        self.max_cached = 4096  # parsed robots.txt / tdmrep.json kept (4-40 KiB each; keyed by content)
        for s in snapshots or []:
            self.add(s)

    def add(self, snap: Snapshot) -> None:
        lst = self.by_origin.setdefault(snap.origin, [])
        lst.append(snap)
        lst.sort(key=lambda s: s.date)  # stable: for one date, the later line wins below
        self._dates[snap.origin] = [s.date for s in lst]

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_origin.values())

    # ---- io -----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> "SnapshotStore":
        """A .jsonl file, or a directory whose *.jsonl parts (fetch runs, imports, ranks) are read in name order."""
        path = Path(path)
        if path.is_dir():
            files = sorted(path.glob("*.jsonl"))
        elif path.is_file():
            files = [path]
        else:
            raise DataError(f"snapshot store not found: {path} (run `glotta consent fetch` or `import` first)")
        store = cls()
        for file in files:
            with open(file, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    if not line.endswith("\n"):  # the torn last line of a killed fetch: it resumes from here
                        store.torn_lines += 1
                        continue
                    try:
                        store.add(Snapshot(**json.loads(line)))
                    except (json.JSONDecodeError, TypeError) as e:
                        raise DataError(f"{file}:{n}: not a snapshot record: {e}") from None
        return store

    @staticmethod
    def append(path: str | Path, snapshots: list[Snapshot]) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            for s in snapshots:
                f.write(json.dumps(asdict(s), ensure_ascii=False) + "\n")

    # ---- lookups ------------------------------------------------------------------------
    def at(self, origin: str, date: str | None) -> tuple[Snapshot | None, str]:
        """Latest capture at or before `date` (None: the latest). Returns (snapshot, flag): flag is
        `asof_fallback` when the document predates every capture, `previous_capture` when a failed
        or bot-walled capture with policy keep-previous gave way to the last good one (RFC 9309 2.4)."""
        lst = self.by_origin.get(origin)
        if not lst:
            return None, ""
        if date is None:
            i, flag = len(lst), ""
        else:
            i = bisect.bisect_right(self._dates[origin], date)
            flag = ""
            if i == 0:
                i, flag = 1, "asof_fallback"
        snap = lst[i - 1]
        if snap.kind and snap.policy == "keep-previous":
            for j in range(i - 2, -1, -1):
                if not lst[j].kind:
                    return lst[j], "previous_capture"
        return snap, flag

    def capture_dates(self, origin: str) -> tuple[str, ...]:
        """The dates of the origin's captures, ascending (as `at` bisects them); () when none.
        Between two of them (and before the first) `at` gives the same answer for every day."""
        return tuple(self._dates.get(origin, ()))

    def robots(self, snap: Snapshot) -> Robots:
        # Keyed by content: many origins serve byte-identical robots.txt (CMS defaults), which
        # parse identically, so one parse serves them all.
        if not 200 <= snap.status < 300 or snap.kind:  # the body is not read: status and policy decide
            key = (snap.status, snap.kind, snap.policy, "")
        else:
            key = (snap.status, snap.kind, snap.policy, snap.sha256) if snap.sha256 else snap.id
        r = self._robots.get(key)
        if r is None:
            if snap.kind and snap.policy == "allow":
                r = Robots("unavailable", snap.status)  # the user chose: a failed fetch allows all
            elif snap.kind:
                r = Robots("unreachable", snap.status)  # disallow, or keep-previous with nothing before it
            else:
                body = snap.robots.encode("utf-8") if snap.robots is not None else None
                r = Robots.from_http(snap.status, body)
            if len(self._robots) >= self.max_cached:  # bounded: drop the oldest parsed capture
                del self._robots[next(iter(self._robots))]
            self._robots[key] = r
        return r

    def tdmrep(self, snap: Snapshot) -> TdmRep | None:
        key = snap.id
        if key not in self._tdm:
            if len(self._tdm) >= self.max_cached:
                del self._tdm[next(iter(self._tdm))]
            ok = 200 <= snap.tdmrep_status < 300 and snap.tdmrep is not None
            self._tdm[key] = TdmRep.parse(snap.tdmrep) if ok else None
        return self._tdm[key]


def import_files(files: list[Path], date: str | None = None, scheme: str = "https") -> list[Snapshot]:
    """robots.txt files -> snapshots. Layout: `<host>/<YYYY-MM-DD>.txt` (several dates per host), or
    `<host>.txt` with `date` given. The host may carry a scheme prefix: `http___host`."""
    out = []
    for f in files:
        f = Path(f)
        if f.parent.name and parse_date(f.stem):  # <host>/2024-01-15.txt or <host>/20240115093000.txt
            host, day = f.parent.name, parse_date(f.stem)
        else:
            host, day = f.stem, date
        if day is None:
            raise DataError(f"{f}: no capture date: name the file <host>/<YYYY-MM-DD>.txt or pass --date")
        sch = scheme
        for prefix in ("http___", "https___"):
            if host.startswith(prefix):
                sch, host = prefix[:-3], host[len(prefix):]
        try:
            origin, _ = split_url(f"{sch}://{host}/")
        except BadURL as e:
            raise DataError(f"{f}: {host!r} is not a host name ({e.reason})") from None
        data = f.read_bytes()
        text = data[:MAX_BYTES].decode("utf-8", errors="replace")  # parsing reads no more (RFC 9309 2.5)
        out.append(Snapshot(origin, day, 200, text, sha256_text(data), str(f)))
    return out


class ImportConfig(StrictModel):
    files: list[Path] = []  # robots.txt files or directories of them
    store: Path | None = None  # a directory (writes import.jsonl into it) or a .jsonl file
    date: str | None = None  # capture date for files named <host>.txt
    scheme: Literal["http", "https"] = "https"
    strict: bool = False  # a corrupt WARC record, an unreadable date or a missing capture body is an error


def run_import(cfg: ImportConfig) -> dict:
    """`glotta consent import`: robots.txt files, Common Crawl robots.txt WARC files (`*.warc.gz`) and
    Wayback captures (`<host>/cdx.json` + `<host>/<timestamp>.txt`) -> snapshots appended to the store."""
    if cfg.store is None or not cfg.files:
        raise ConfigError("consent import needs files and store (e.g. captures/ --store snapshots/)")
    if cfg.date is not None and parse_date(cfg.date) != cfg.date:
        raise ConfigError(f"date: expected YYYY-MM-DD, got {cfg.date!r}")
    txt, warcs, cdxs = [], [], []
    for p in cfg.files:
        if not p.exists():
            raise DataError(f"not found: {p}")
        if p.is_dir():
            cdxs.extend(sorted(p.rglob("cdx.json")))
            warcs.extend(sorted(f for pat in ("*.warc", "*.warc.gz", "*.arc", "*.arc.gz") for f in p.rglob(pat)))
            txt.extend(f for f in sorted(p.rglob("*.txt")) if not (f.parent / "cdx.json").is_file())
        elif p.name == "cdx.json":
            cdxs.append(p)
        elif p.name.endswith((".warc", ".warc.gz", ".arc", ".arc.gz")):
            warcs.append(p)
        else:
            txt.append(p)
    snaps = import_files(txt, date=cfg.date, scheme=cfg.scheme)
    counters: dict[str, int] = {"robots_txt_files": len(txt)} if txt else {}
    errors: list[str] = []
    if warcs or cdxs:
        from glotta.pruning.consent.warc import import_warcs, import_wayback

        for res in ([import_warcs(warcs, cfg.strict)] if warcs else []) + ([import_wayback(cdxs, cfg.strict)] if cdxs else []):
            snaps.extend(res.snapshots)
            for k, v in res.counters.items():
                counters[k] = counters.get(k, 0) + v
            errors.extend(res.errors)
    target = cfg.store if cfg.store.suffix == ".jsonl" else cfg.store / "import.jsonl"
    SnapshotStore.append(target, snaps)
    return {"store": str(target), "snapshots": len(snaps), "origins": len({s.origin for s in snaps}),
            "counters": counters, "errors": errors[:20]}


def store_fingerprint(path: str | Path) -> str:
    """Changes whenever a part of the store is added or rewritten (for restart checks)."""
    path = Path(path)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    return ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def today() -> str:
    return dt.datetime.now(dt.timezone.utc).date().isoformat()
