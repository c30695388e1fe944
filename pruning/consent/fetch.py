"""`glotta consent fetch`: capture robots.txt and /.well-known/tdmrep.json for 10^6 origins.

HTTP rules (RFC 9309 2.3.1), recorded in each snapshot as status + error:
  2xx             parse the body (at most max_bytes, 500 KiB; the rest is cut and counted)
  4xx             no robots.txt: allow all; except 403 and 429, a bot wall (`kind=bot_wall`, see below)
  5xx, or no answer (DNS, refused, reset, timeout)  retried `retries` times with exponential
                  backoff, honouring Retry-After (capped); still failing: `kind=failed`
  3xx             followed up to max_redirects (5) times, http/https only; a longer chain or a
                  redirect elsewhere leaves the 3xx status: "unavailable", i.e. allow all
A failed or bot-walled capture carries the policy chosen at fetch time (`on_failure`, `bot_wall`):
keep-previous (default; RFC 9309 2.4: the last good capture stays in force, else disallow all),
disallow, or allow. The store applies it (SnapshotStore.at / robots).

Scale: `concurrency` workers pull origins from a stream (never one task per origin), so memory is
bounded by concurrency (plus the set of origins already done, 8 bytes each, for resuming). At most
one request at a time per host and `host_delay_s` between two requests to one host. Each
capture is appended to the rank's part `fetch-<date>-rankRRRRR.jsonl` as it completes, so a run
killed at any point (kill -9 included) resumes where it stopped: origins with a line are not
fetched again, a torn last line is cut. Timeouts bound whole requests, so a trickling server is
cut off.

Ranks: with shards, `list` splits the work in two steps without any rank reading every shard:
each rank reads only its own shards (i % WORLD_SIZE) and writes their distinct origins into one
file per owner rank (owner = stable hash of the origin); each rank then fetches the origins
addressed to it, waiting (up to `list_wait_s`) for the other ranks' lists.
"""
from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import json
import random
import socket
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver

from glotta.config import StrictModel
from glotta.data.manifest import atomic_write_text
from glotta.data.shards import iter_samples, list_shards
from glotta.errors import ConfigError, DataError
from glotta.progress import progress_bar
from glotta.pruning.consent.dates import parse_day
from glotta.pruning.consent.robots import MAX_BYTES, sha256_text
from glotta.pruning.consent.snapshots import Snapshot, today
from glotta.pruning.consent.urls import BadURL, owner, split_url

REDIRECTS = {301, 302, 303, 307, 308}
RETRY = {500, 502, 503, 504}
BOT_WALL = {403, 429}
ROBOTS_PATH = "/robots.txt"
TDMREP_PATH = "/.well-known/tdmrep.json"
Policy = Literal["keep-previous", "disallow", "allow"]


class FetchConfig(StrictModel):
    shards: Path | None = None
    origins: Path | None = None  # instead of shards: a text file, one origin or URL per line
    store: Path | None = None  # a directory: one JSONL part per date and rank
    concurrency: int = 32  # workers = requests in flight at most
    timeout_s: float = 10.0  # whole request, connect to last byte
    max_redirects: int = 5
    max_bytes: int = MAX_BYTES
    user_agent: str = "glotta-consent/0.1 (robots.txt consent audit)"
    tdmrep: bool = True
    date: str | None = None  # capture date recorded in the store (default: today, UTC)
    refetch: bool = False  # fetch origins that already have a capture on `date`
    retries: int = 3  # extra attempts after a 5xx, 429 or no answer
    backoff_s: float = 1.0  # first retry delay; doubles each time (with jitter)
    max_retry_after_s: float = 120.0  # a longer Retry-After is not waited for: the attempt fails
    host_delay_s: float = 1.0  # politeness: seconds between two requests to one host
    on_failure: Policy = "keep-previous"  # 5xx / unreachable after retries
    bot_wall: Policy = "keep-previous"  # 403 / 429
    resolve: dict[str, str] = {}  # host -> IP, like curl --resolve ("*.test" matches any subdomain)
    list_wait_s: float = 3600.0  # how long a rank waits for the other ranks' origin lists
    max_failed_share: float = 1.0  # fail the run when more origins than this share fail
    strict: bool = False  # a failed origin is an error


@dataclass
class Response:
    url: str  # the last URL requested
    status: int  # 0: no HTTP answer
    body: bytes | None = None
    redirects: int = 0
    error: str = ""
    truncated: bool = False
    retry_after: float | None = None
    attempts: int = 1


class HostLimiter:
    """A global cap on requests in flight, one request at a time per host and `delay` seconds
    between two requests to one host. Idle hosts whose delay has passed leave the table, so its
    size stays near 4 x concurrency, not the number of origins."""

    def __init__(self, concurrency: int, delay: float = 0.0):
        self.sem = asyncio.Semaphore(concurrency)
        self.limit = max(1, concurrency)
        self.delay = delay
        self.hosts: dict[str, list] = {}  # host -> [lock, users, time of the last request]

    @contextlib.asynccontextmanager
    async def slot(self, host: str):
        entry = self.hosts.get(host)
        if entry is None:
            entry = self.hosts[host] = [asyncio.Lock(), 0, 0.0]
        entry[1] += 1
        try:
            async with entry[0]:  # the host lock first: never hold a global slot while queued on a host
                wait = entry[2] + self.delay - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                async with self.sem:
                    try:
                        yield
                    finally:
                        entry[2] = time.monotonic()
        finally:
            entry[1] -= 1
            if len(self.hosts) > 4 * self.limit:  # forget idle hosts whose delay has passed
                now = time.monotonic()
                for h in [h for h, e in self.hosts.items() if e[1] == 0 and e[2] + self.delay <= now]:
                    del self.hosts[h]


class Resolver(AbstractResolver):
    """Host -> IP overrides (tests on 127.0.0.x, split-horizon DNS), else the system resolver."""

    def __init__(self, table: dict[str, str]):
        self.table = table
        self.default = aiohttp.ThreadedResolver()

    def _lookup(self, host: str) -> str | None:
        if host in self.table:
            return self.table[host]
        parts = host.split(".")
        for i in range(1, len(parts)):
            ip = self.table.get("*." + ".".join(parts[i:]))
            if ip is not None:
                return ip
        return None

    async def resolve(self, host, port=0, family=socket.AF_INET):
        ip = self._lookup(host)
        if ip is None:
            return await self.default.resolve(host, port, family)
        return [{"hostname": host, "host": ip, "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]

    async def close(self):
        await self.default.close()


def retry_after(value: str | None, cap: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent/unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        t = email.utils.parsedate_to_datetime(value)
        return max(0.0, t.timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> tuple[bytes, bool]:
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(1 << 16):
        buf += chunk
        if len(buf) > cap:
            return bytes(buf[:cap]), True
    return bytes(buf), False


async def _get_once(session: aiohttp.ClientSession, url: str, cfg: FetchConfig, limiter: HostLimiter) -> Response:
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
                        return Response(url, r.status, body, redirects, "", truncated,
                                        retry_after(r.headers.get("Retry-After"), cfg.max_retry_after_s))
        except asyncio.TimeoutError:
            return Response(url, 0, redirects=redirects, error=f"timeout after {cfg.timeout_s:g} s")
        except (aiohttp.ClientError, OSError, ValueError) as e:
            return Response(url, 0, redirects=redirects, error=f"{type(e).__name__}: {e}"[:300])
        redirects += 1
        if redirects > cfg.max_redirects:
            return Response(url, last_status, redirects=redirects - 1, error=f"more than {cfg.max_redirects} redirects")
        url = nxt


async def get(session: aiohttp.ClientSession, url: str, cfg: FetchConfig, limiter: HostLimiter) -> Response:
    """One URL with retries: 5xx, 429 and no answer are retried after max(backoff, Retry-After)."""
    for attempt in range(cfg.retries + 1):
        r = await _get_once(session, url, cfg, limiter)
        r.attempts = attempt + 1
        if not (r.status in RETRY or r.status == 429 or (r.status == 0 and "redirect" not in r.error)):
            return r
        if attempt == cfg.retries:
            return r
        wait = cfg.backoff_s * 2 ** attempt * (0.75 + random.random() / 2)
        if r.retry_after is not None:
            if r.retry_after > cfg.max_retry_after_s:
                r.error = (r.error + "; " if r.error else "") + f"Retry-After {r.retry_after:g} s exceeds {cfg.max_retry_after_s:g} s"
                return r
            wait = max(wait, r.retry_after)
        await asyncio.sleep(wait)
    return r  # pragma: no cover - the loop always returns


async def _capture(session, origin: str, cfg: FetchConfig, limiter: HostLimiter, date: str) -> tuple[Snapshot, list[str]]:
    notes: list[str] = []
    r = await get(session, origin + ROBOTS_PATH, cfg, limiter)
    ok = 200 <= r.status < 300
    if r.truncated:
        notes.append("truncated")
    if r.redirects:
        notes.append("redirected")
    if r.attempts > 1:
        notes.append("retried")
    kind = policy = ""
    if r.status in BOT_WALL:
        kind, policy = "bot_wall", cfg.bot_wall
    elif r.status >= 500 or (r.status == 0 and "redirect" not in r.error):
        kind, policy = "failed", cfg.on_failure
    error = r.error + ("; body cut at %d bytes" % cfg.max_bytes if r.truncated else "")
    if r.attempts > 1:
        error = (error + "; " if error else "") + f"{r.attempts} attempts"
    snap = Snapshot(origin, date, r.status, r.body.decode("utf-8", errors="replace") if ok else None,
                    sha256_text(r.body) if ok else "", f"fetch {r.url}", error, kind=kind, policy=policy)
    if cfg.tdmrep and not kind:
        t = await get(session, origin + TDMREP_PATH, cfg, limiter)
        snap.tdmrep_status = t.status
        if 200 <= t.status < 300 and t.body is not None:
            snap.tdmrep = t.body.decode("utf-8", errors="replace")
            notes.append("tdmrep")
    return snap, notes


def _count(counters: Counter, snap: Snapshot, notes: list[str]) -> None:
    s = snap.status
    counters["origins"] += 1
    counters["bot_wall" if snap.kind == "bot_wall" else "robots_2xx" if 200 <= s < 300 else
             "robots_4xx" if 400 <= s < 500 else "robots_3xx_unfollowed" if 300 <= s < 400 else
             "robots_5xx" if s >= 500 else "robots_unreachable"] += 1
    for n in notes:
        counters[n] += 1


async def _fetch_stream(origins: Iterable[str], cfg: FetchConfig, date: str, sink, total: int | None) -> Counter:
    """`concurrency` workers pull from a bounded queue; each capture goes to `sink` as it completes."""
    limiter = HostLimiter(cfg.concurrency, cfg.host_delay_s)
    counters: Counter = Counter()
    queue: asyncio.Queue = asyncio.Queue(maxsize=2 * cfg.concurrency)
    connector = aiohttp.TCPConnector(limit=cfg.concurrency, limit_per_host=1, resolver=Resolver(cfg.resolve),
                                     use_dns_cache=True, ttl_dns_cache=60)
    async with aiohttp.ClientSession(connector=connector, headers={"User-Agent": cfg.user_agent}) as session:
        with progress_bar() as bar:
            task = bar.add_task("consent fetch", total=total)

            async def worker():
                while True:
                    origin = await queue.get()
                    if origin is None:
                        return
                    snap, notes = await _capture(session, origin, cfg, limiter, date)
                    sink(snap)
                    _count(counters, snap, notes)
                    bar.advance(task)

            workers = [asyncio.create_task(worker()) for _ in range(max(1, cfg.concurrency))]
            try:
                for o in origins:
                    await queue.put(o)
                for _ in workers:
                    await queue.put(None)
                await asyncio.gather(*workers)
            finally:
                for w in workers:
                    w.cancel()
    return counters


def fetch_origins(origins: list[str], cfg: FetchConfig | None = None) -> tuple[list[Snapshot], Counter]:
    """Capture every origin (`https://host[:port]`) in memory; returns the snapshots and counters."""
    cfg = cfg or FetchConfig()
    snaps: list[Snapshot] = []
    counters = asyncio.run(_fetch_stream(origins, cfg, cfg.date or today(), snaps.append, len(origins)))
    snaps.sort(key=lambda s: s.origin)
    return snaps, counters


# ---- which origins a rank fetches ----------------------------------------------------------
def _origin_of(line: str) -> str | None:
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    try:
        return split_url(line if "://" in line else f"https://{line}/")[0]
    except BadURL:
        return None


def list_origins(cfg: FetchConfig, rank: int, world_size: int, counters: Counter) -> Path:
    """The file of origins this rank fetches (sorted, distinct): built from the rank's own shards
    and the other ranks' lists addressed to it, or taken from `origins`."""
    store = Path(cfg.store)
    lists = store / "origins"
    lists.mkdir(parents=True, exist_ok=True)
    mine = lists / f"rank{rank:05d}-of{world_size:05d}.txt"
    if mine.is_file():
        return mine
    if cfg.origins is not None:
        out, seen = [], set()
        with open(cfg.origins, encoding="utf-8", errors="replace") as f:
            for line in f:
                o = _origin_of(line)
                if o is None:
                    if line.strip() and not line.startswith("#"):
                        counters["origins_bad_line"] += 1
                    continue
                if o not in seen and owner(o, world_size) == rank:
                    seen.add(o)
                    out.append(o)
        atomic_write_text(mine, "".join(o + "\n" for o in sorted(out)))
        return mine
    # step 1: my shards -> one list per owner rank
    buckets: list[set[str]] = [set() for _ in range(world_size)]
    for shard in list_shards(cfg.shards)[rank::world_size]:
        for s in iter_samples(shard, counters=counters):
            try:
                o = split_url(s.meta.get("url"))[0]
            except BadURL as e:
                counters[f"docs_{e.reason}"] += 1
                continue
            buckets[owner(o, world_size)].add(o)
    for r, b in enumerate(buckets):
        atomic_write_text(lists / f"from{rank:05d}-to{r:05d}-of{world_size:05d}.txt", "".join(o + "\n" for o in sorted(b)))
    # step 2: everything addressed to me
    deadline = time.monotonic() + cfg.list_wait_s
    parts = [lists / f"from{r:05d}-to{rank:05d}-of{world_size:05d}.txt" for r in range(world_size)]
    while not all(p.is_file() for p in parts):
        if time.monotonic() > deadline:
            missing = [p.name for p in parts if not p.is_file()]
            raise DataError(f"consent fetch: origin lists of other ranks missing after {cfg.list_wait_s:g} s: {missing[:5]}")
        time.sleep(0.5)
    origins = set()
    for p in parts:
        origins.update(p.read_text(encoding="utf-8").split())
    atomic_write_text(mine, "".join(o + "\n" for o in sorted(origins)))
    return mine


def _done(store: Path, part: Path, date: str, rank: int, world_size: int) -> set[int]:
    """Origins of this rank (as 64-bit digests) that already have a capture on `date` anywhere in the
    store (this rank's part, earlier runs, imports). A torn last line of this rank's part is cut."""
    done: set[int] = set()
    if part.is_file():
        with open(part, "rb+") as f:
            data = f.read()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                f.truncate(end)  # killed mid-line: that origin is fetched again
    needle = f'"date": "{date}"'
    for file in sorted(store.glob("*.jsonl")):
        with open(file, encoding="utf-8", errors="replace") as f:
            for line in f:
                if needle in line and line.endswith("\n"):
                    try:
                        origin = json.loads(line)["origin"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue  # SnapshotStore.load names bad lines; here they only are not "done"
                    if owner(origin, world_size) == rank:
                        done.add(_digest(origin))
    return done


def _digest(origin: str) -> int:
    return int.from_bytes(hashlib.blake2b(origin.encode(), digest_size=8).digest(), "big")


def run_fetch(cfg: FetchConfig, rank: int = 0, world_size: int = 1) -> dict:
    if (cfg.shards is None) == (cfg.origins is None) or cfg.store is None:
        raise ConfigError("consent fetch needs store and one of shards or origins (e.g. shards/ --store snapshots/)")
    store = Path(cfg.store)
    if store.suffix == ".jsonl":
        raise ConfigError(f"store: must be a directory (one part per date and rank), not {store}")
    date = cfg.date or today()
    if parse_day(date) != date:
        raise ConfigError(f"date: expected YYYY-MM-DD, got {date!r}")
    counters: Counter = Counter()
    listed = list_origins(cfg, rank, world_size, counters)
    part = store / f"fetch-{date}-rank{rank:05d}-of{world_size:05d}.jsonl"
    done = set() if cfg.refetch else _done(store, part, date, rank, world_size)
    store.mkdir(parents=True, exist_ok=True)
    total = sum(1 for _ in open(listed, encoding="utf-8"))
    counters["skipped_already_captured"] = len(done)

    def todo() -> Iterator[str]:
        with open(listed, encoding="utf-8") as f:
            for line in f:
                o = line.strip()
                if o and _digest(o) not in done:
                    yield o

    with open(part, "a", encoding="utf-8") as out:
        def sink(snap: Snapshot) -> None:
            out.write(json.dumps(asdict(snap), ensure_ascii=False) + "\n")
            out.flush()  # a killed run loses at most the origins in flight

        counters.update(asyncio.run(_fetch_stream(todo(), cfg, date, sink, total - len(done))))
    counters.pop("samples", None)
    failed = counters.get("robots_5xx", 0) + counters.get("robots_unreachable", 0)
    fetched = counters.get("origins", 0)
    if fetched and (failed / fetched > cfg.max_failed_share or (cfg.strict and failed)):
        raise DataError(f"consent fetch: {failed} of {fetched} origins failed (5xx or no answer after "
                        f"{cfg.retries} retries; max_failed_share={cfg.max_failed_share}); see {part}")
    return {"rank": rank, "world_size": world_size, "store": str(part), "date": date, "origins": total,
            "counters": dict(counters)}
