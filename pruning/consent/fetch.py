"""`glotta consent fetch`: capture robots.txt and /.well-known/tdmrep.json for the origins of a shard set.

HTTP rules (RFC 9309 2.3.1), recorded in each snapshot as status + error:
  2xx             parse the body (at most max_bytes, 500 KiB; the rest is cut and counted)
  4xx             no robots.txt: allow all
  5xx, or no answer (DNS, refused, reset, timeout)   status 0 / 5xx: disallow all
  3xx             followed up to max_redirects (5) times, http/https only; a longer chain or a
                  redirect elsewhere leaves the 3xx status: "unavailable", i.e. allow all
Politeness: at most `concurrency` requests in flight, and one at a time per host (also for
redirect targets). Timeouts bound the whole request, so a server that trickles bytes is cut off.
Origins are split over RANK / WORLD_SIZE; each rank writes its own JSONL part into the store
directory, so ranks never append to one file.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import aiohttp

from glotta.config import StrictModel
from glotta.data.shards import iter_samples, list_shards
from glotta.errors import ConfigError
from glotta.progress import progress_bar
from glotta.pruning.consent.robots import MAX_BYTES, sha256_text
from glotta.pruning.consent.snapshots import Snapshot, SnapshotStore, today
from glotta.pruning.consent.urls import BadURL, split_url

REDIRECTS = {301, 302, 303, 307, 308}
ROBOTS_PATH = "/robots.txt"
TDMREP_PATH = "/.well-known/tdmrep.json"


class FetchConfig(StrictModel):
    shards: Path | None = None
    store: Path | None = None  # a directory (one JSONL part per rank and run) or one .jsonl file (single rank)
    concurrency: int = 32
    timeout_s: float = 10.0  # whole request, connect to last byte
    max_redirects: int = 5
    max_bytes: int = MAX_BYTES
    user_agent: str = "glotta-consent/0.1 (robots.txt consent audit)"
    tdmrep: bool = True
    date: str | None = None  # capture date recorded in the store (default: today, UTC)
    refetch: bool = False  # fetch origins that already have a capture on `date`


@dataclass
class Response:
    url: str  # the last URL requested
    status: int  # 0: no HTTP answer
    body: bytes | None = None
    redirects: int = 0
    error: str = ""
    truncated: bool = False


class HostLimiter:
    """A global cap on requests in flight plus one request at a time per host."""

    def __init__(self, concurrency: int):
        self.sem = asyncio.Semaphore(concurrency)
        self.locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def slot(self, host: str):
        lock = self.locks.setdefault(host, asyncio.Lock())
        async with lock, self.sem:  # the host lock first: never hold a global slot while queued on a host
            yield


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> tuple[bytes, bool]:
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(1 << 16):
        buf += chunk
        if len(buf) > cap:
            return bytes(buf[:cap]), True
    return bytes(buf), False


async def get(session: aiohttp.ClientSession, url: str, cfg: FetchConfig, limiter: HostLimiter) -> Response:
    redirects, last_status = 0, 0
    while True:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return Response(url, last_status, redirects=redirects, error=f"redirect to unsupported URL {url[:200]!r}")
        try:
            async with limiter.slot(parts.hostname):
                async with session.get(url, allow_redirects=False,
                                       timeout=aiohttp.ClientTimeout(total=cfg.timeout_s)) as r:
                    location = r.headers.get("Location")
                    if r.status in REDIRECTS and location:
                        last_status, nxt = r.status, urljoin(url, location)
                    else:
                        body, truncated = await _read_capped(r, cfg.max_bytes)
                        return Response(url, r.status, body, redirects, "", truncated)
        except asyncio.TimeoutError:
            return Response(url, 0, redirects=redirects, error=f"timeout after {cfg.timeout_s:g} s")
        except (aiohttp.ClientError, OSError, ValueError) as e:
            return Response(url, 0, redirects=redirects, error=f"{type(e).__name__}: {e}"[:300])
        redirects += 1
        if redirects > cfg.max_redirects:
            return Response(url, last_status, redirects=redirects - 1, error=f"more than {cfg.max_redirects} redirects")
        url = nxt


async def _capture(session, origin: str, cfg: FetchConfig, limiter: HostLimiter, date: str) -> tuple[Snapshot, list[str]]:
    notes: list[str] = []
    r = await get(session, origin + ROBOTS_PATH, cfg, limiter)
    ok = 200 <= r.status < 300
    if r.truncated:
        notes.append("truncated")
    if r.redirects:
        notes.append("redirected")
    snap = Snapshot(origin, date, r.status, r.body.decode("utf-8", errors="replace") if ok else None,
                    sha256_text(r.body) if ok else "", f"fetch {r.url}",
                    r.error + ("; body cut at %d bytes" % cfg.max_bytes if r.truncated else ""))
    if cfg.tdmrep:
        t = await get(session, origin + TDMREP_PATH, cfg, limiter)
        snap.tdmrep_status = t.status
        if 200 <= t.status < 300 and t.body is not None:
            snap.tdmrep = t.body.decode("utf-8", errors="replace")
            notes.append("tdmrep")
    return snap, notes


async def _fetch_all(origins: list[str], cfg: FetchConfig, date: str) -> tuple[list[Snapshot], Counter]:
    limiter = HostLimiter(cfg.concurrency)
    counters: Counter = Counter()
    connector = aiohttp.TCPConnector(limit=cfg.concurrency, limit_per_host=1)
    snaps: list[Snapshot] = []
    async with aiohttp.ClientSession(connector=connector, headers={"User-Agent": cfg.user_agent}) as session:
        tasks = [asyncio.ensure_future(_capture(session, o, cfg, limiter, date)) for o in origins]
        with progress_bar() as bar:
            task = bar.add_task("consent fetch", total=len(tasks))
            for fut in asyncio.as_completed(tasks):
                snap, notes = await fut
                snaps.append(snap)
                s = snap.status
                counters["origins"] += 1
                counters["robots_2xx" if 200 <= s < 300 else "robots_4xx" if 400 <= s < 500 else
                         "robots_3xx_unfollowed" if 300 <= s < 400 else "robots_5xx" if s >= 500 else "robots_unreachable"] += 1
                for n in notes:
                    counters[n] += 1
                bar.advance(task)
    snaps.sort(key=lambda s: s.origin)
    return snaps, counters


def fetch_origins(origins: list[str], cfg: FetchConfig | None = None) -> tuple[list[Snapshot], Counter]:
    """Capture every origin (`https://host[:port]`); returns the snapshots and counters."""
    cfg = cfg or FetchConfig()
    return asyncio.run(_fetch_all(origins, cfg, cfg.date or today()))


def shard_origins(shards_dir: Path, counters: Counter) -> list[str]:
    """Distinct origins of a shard set; documents without a usable url are counted, not fetched."""
    origins = set()
    for shard in list_shards(shards_dir):
        for s in iter_samples(shard, counters=counters):
            try:
                origins.add(split_url(s.meta.get("url"))[0])
            except BadURL as e:
                counters[f"docs_{e.reason}"] += 1
    return sorted(origins)


def run_fetch(cfg: FetchConfig, rank: int = 0, world_size: int = 1) -> dict:
    if cfg.shards is None or cfg.store is None:
        raise ConfigError("consent fetch needs shards and store (e.g. --store snapshots/)")
    store = Path(cfg.store)
    if store.suffix == ".jsonl" and world_size > 1:
        raise ConfigError(f"store: with WORLD_SIZE={world_size} the store must be a directory, not {store}")
    date = cfg.date or today()
    counters: Counter = Counter()
    origins = shard_origins(cfg.shards, counters)[rank::world_size]
    if not cfg.refetch and (store.is_file() or store.is_dir()):
        have = SnapshotStore.load(store)
        before = len(origins)
        origins = [o for o in origins if not any(s.date == date for s in have.by_origin.get(o, []))]
        counters["skipped_already_captured"] = before - len(origins)
    snaps, fetched = asyncio.run(_fetch_all(origins, cfg, date))
    counters.update(fetched)
    target = store if store.suffix == ".jsonl" else store / f"fetch-{date}-rank{rank:05d}.jsonl"
    SnapshotStore.append(target, snaps)
    counters.pop("samples", None)
    return {"rank": rank, "world_size": world_size, "store": str(target), "date": date, "counters": dict(counters)}
