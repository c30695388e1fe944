"""Historical robots.txt captures: Common Crawl robots.txt WARC files and the Wayback Machine's CDX.

Common Crawl (`crawl-data/CC-MAIN-*/segments/*/robotstxt/*.warc.gz`): every `response` record of
a `/robots.txt` URL becomes a capture dated by its `WARC-Date` (UTC day), with its HTTP status and
body (cut at 500 KiB). A 3xx record is resolved across records: its `Location` is looked up among
the captures of the same import (same day or later, at most 5 hops, http/https only), and the
final answer is recorded for the origin that was asked; a target that was never captured, a loop
or a longer chain leaves the 3xx status, i.e. "unavailable" = allow all (RFC 9309 2.3.1.2), with
the reason in `error`. `request`, `metadata`, `warcinfo` records are counted and skipped.

Wayback: a directory per host with `cdx.json` (the CDX API's JSON output: a header row, then
`urlkey, timestamp, original, mimetype, statuscode, digest, length`) and the raw captures
`<timestamp>.txt` (fetched with the `id_` suffix). `statuscode` `-` (a revisit) reuses the body of
the capture with the same digest. A 2xx row whose body file is missing is counted and named.

Bad input never stops the import silently: a corrupt WARC record ends that file (counted as
`warc_corrupt`, naming the file and offset), an unreadable date is `bad_date`; `--strict` turns
each into an error.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from glotta.errors import DataError
from glotta.pruning.consent.dates import parse_day
from glotta.pruning.consent.robots import MAX_BYTES, sha256_text
from glotta.pruning.consent.snapshots import Snapshot
from glotta.pruning.consent.urls import BadURL, split_url

MAX_HOPS = 5


@dataclass
class ImportResult:
    snapshots: list[Snapshot] = field(default_factory=list)
    counters: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # named problems (first 50 kept)

    def error(self, counter: str, message: str, strict: bool) -> None:
        self.counters[counter] += 1
        if strict:
            raise DataError(message + " (strict)")
        if len(self.errors) < 50:
            self.errors.append(message)


@dataclass
class _Capture:
    url: str
    day: str
    status: int
    body: bytes | None
    location: str | None
    source: str


def is_warc(path: Path) -> bool:
    return path.name.endswith((".warc", ".warc.gz", ".arc", ".arc.gz"))


def _robots_url(url: str) -> bool:
    try:
        return urlsplit(url).path == "/robots.txt"
    except ValueError:
        return False


def read_warc(path: Path, res: ImportResult, strict: bool = False) -> list[_Capture]:
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    out: list[_Capture] = []
    with open(path, "rb") as f:
        it = ArchiveIterator(f)
        try:
            for rec in it:
                kind = rec.rec_type
                url = rec.rec_headers.get_header("WARC-Target-URI") or ""
                if kind != "response":
                    res.counters[f"warc_{kind}_skipped"] += 1
                    continue
                if not _robots_url(url):
                    res.counters["warc_not_robots_txt"] += 1
                    continue
                raw_date = rec.rec_headers.get_header("WARC-Date")
                day = parse_day(raw_date)
                if day is None:
                    res.error("bad_date", f"{path}@{it.get_record_offset()}: WARC-Date {raw_date!r} of {url}", strict)
                    continue
                if rec.http_headers is None:
                    res.error("warc_no_http", f"{path}@{it.get_record_offset()}: {url} has no HTTP response", strict)
                    continue
                try:
                    status = int(rec.http_headers.get_statuscode())
                except (TypeError, ValueError):
                    res.error("warc_bad_status", f"{path}@{it.get_record_offset()}: {url} status "
                              f"{rec.http_headers.get_statuscode()!r}", strict)
                    continue
                body = rec.content_stream().read(MAX_BYTES + 1)
                if len(body) > MAX_BYTES:
                    res.counters["truncated"] += 1
                    body = body[:MAX_BYTES]
                out.append(_Capture(url, day, status, body, rec.http_headers.get_header("Location"),
                                    f"{path}@{it.get_record_offset()}"))
                res.counters["warc_robots_records"] += 1
        except DataError:
            raise
        except (ArchiveLoadFailed, Exception) as e:  # noqa: BLE001 - zlib.error, EOFError, parse errors of a damaged file
            res.error("warc_corrupt", f"{path}: corrupt record after offset {it.get_record_offset()}: "
                      f"{type(e).__name__}: {e}"[:300], strict)
    return out


def resolve(captures: list[_Capture], res: ImportResult) -> list[Snapshot]:
    """One snapshot per captured robots.txt record; a 3xx is followed to the captured target."""
    by_url: dict[str, list[_Capture]] = {}
    for c in captures:
        by_url.setdefault(c.url, []).append(c)
    for lst in by_url.values():
        lst.sort(key=lambda c: c.day)
    out = []
    for c in captures:  # a redirect target is also a capture of its own origin, so every record counts
        final, hops, error = c, 0, ""
        seen = {c.url}
        while 300 <= final.status < 400:
            if not final.location:
                error = "redirect without Location"
                break
            nxt = urljoin(final.url, final.location)
            if urlsplit(nxt).scheme not in ("http", "https"):
                error = f"redirect to unsupported URL {nxt[:200]!r}"
                break
            if nxt in seen:
                error = f"redirect loop at {nxt[:200]}"
                res.counters["redirect_loop"] += 1
                break
            if hops == MAX_HOPS:
                error = f"more than {MAX_HOPS} redirects"
                break
            cands = [t for t in by_url.get(nxt, []) if t.day >= final.day]
            if not cands:
                error = f"redirect target not captured: {nxt[:200]}"
                res.counters["redirect_target_missing"] += 1
                break
            seen.add(nxt)
            final, hops = cands[0], hops + 1
        if hops and not error:
            res.counters["redirects_resolved"] += 1
        try:
            origin, _ = split_url(c.url)
        except BadURL as e:
            res.error("bad_url", f"{c.source}: {c.url[:200]!r} ({e.reason})", False)
            continue
        ok = 200 <= final.status < 300
        body = final.body if ok else None
        out.append(Snapshot(origin, c.day, final.status, body.decode("utf-8", errors="replace") if body is not None else None,
                            sha256_text(body) if body is not None else "", c.source + (f" -> {final.url}" if hops else ""),
                            error))
    return out


def import_warcs(paths: list[Path], strict: bool = False) -> ImportResult:
    res = ImportResult()
    captures: list[_Capture] = []
    for p in paths:
        captures.extend(read_warc(p, res, strict))
        res.counters["warc_files"] += 1
    res.snapshots = resolve(captures, res)
    return res


def import_wayback(dirs: list[Path], strict: bool = False) -> ImportResult:
    """`<host>/cdx.json` + `<host>/<timestamp>.txt` raw captures -> snapshots."""
    res = ImportResult()
    for cdx in dirs:
        try:
            rows = json.loads(cdx.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            res.error("cdx_unreadable", f"{cdx}: {e}"[:300], strict)
            continue
        if not rows or not isinstance(rows, list):
            continue
        head, body_rows = rows[0], rows[1:]
        try:
            col = {name: head.index(name) for name in ("timestamp", "original", "statuscode", "digest")}
        except (ValueError, AttributeError):
            res.error("cdx_unreadable", f"{cdx}: header row {head!r} lacks timestamp/original/statuscode/digest", strict)
            continue
        by_digest: dict[str, tuple[str, int]] = {}
        for row in sorted(body_rows, key=lambda r: r[col["timestamp"]]):
            ts, url, status_s, digest = (row[col[k]] for k in ("timestamp", "original", "statuscode", "digest"))
            day = parse_day(ts)
            if day is None:
                res.error("bad_date", f"{cdx}: timestamp {ts!r} of {url}", strict)
                continue
            try:
                origin, _ = split_url(url if "://" in url else f"http://{url}")
            except BadURL as e:
                res.error("bad_url", f"{cdx}: {url[:200]!r} ({e.reason})", strict)
                continue
            if status_s == "-":  # a revisit: same content as an earlier capture with this digest
                if digest not in by_digest:
                    res.error("wayback_revisit_unresolved", f"{cdx}: revisit {ts} of {url} (digest {digest} not seen)", strict)
                    continue
                text, status = by_digest[digest]
                res.counters["wayback_revisits"] += 1
            else:
                try:
                    status = int(status_s)
                except ValueError:
                    res.error("wayback_bad_status", f"{cdx}: status {status_s!r} at {ts}", strict)
                    continue
                text = None
                if 200 <= status < 300:
                    f = cdx.parent / f"{ts}.txt"
                    if not f.is_file():
                        res.error("wayback_body_missing", f"{cdx}: {f.name} (capture {ts} of {url}) not found", strict)
                        continue
                    text = f.read_bytes()[:MAX_BYTES].decode("utf-8", errors="replace")
                by_digest[digest] = (text, status)
            res.snapshots.append(Snapshot(origin, day, status, text, sha256_text(text) if text is not None else "",
                                          f"wayback {ts} {url}"[:300],
                                          "redirect (Wayback; target not resolved)" if 300 <= status < 400 else ""))
            res.counters["wayback_captures"] += 1
    return res
