"""The fetcher at scale, against a real aiohttp server on 127.0.0.1: 20,000 origins (host names
resolved to 127.0.0.1 through `resolve`), kill -9 mid-run, resume; retries with Retry-After;
keep-previous / disallow / allow for failed captures; origin lists split across ranks."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from glotta.pruning.consent.fetch import FetchConfig, fetch_origins, list_origins, owner, run_fetch
from glotta.pruning.consent.snapshots import Snapshot, SnapshotStore


class Server:
    """A minimal HTTP/1.1 server on 127.0.0.1 (asyncio protocol: lean enough for 20k origins on a
    loaded 2-core machine). robots.txt per Host header; counts requests per host. Special hosts:
    flaky (503 + Retry-After: 1 twice, then 200), wall (429), gone (500 always)."""

    def __init__(self):
        self.hits: Counter = Counter()
        self.times: dict[str, list[float]] = {}
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def answer(self, host: str) -> bytes:
        self.hits[host] += 1
        self.times.setdefault(host, []).append(time.monotonic())
        if host.startswith("flaky") and self.hits[host] <= 2:
            return _http(503, b"busy", "Retry-After: 1\r\n")
        if host.startswith("wall"):
            return _http(429, b"slow down", "Retry-After: 0\r\n")
        if host.startswith("gone"):
            return _http(500, b"error")
        return _http(200, f"User-agent: GPTBot\nDisallow: /{host}/\n".encode())

    def _run(self):
        asyncio.set_event_loop(self.loop)
        server = self

        class Proto(asyncio.Protocol):
            def connection_made(self, transport):
                self.t, self.buf = transport, b""

            def data_received(self, data):
                self.buf += data
                while b"\r\n\r\n" in self.buf:
                    head, _, self.buf = self.buf.partition(b"\r\n\r\n")
                    host = ""
                    for line in head.split(b"\r\n")[1:]:
                        k, _, v = line.partition(b":")
                        if k.strip().lower() == b"host":
                            host = v.strip().decode().split(":")[0]
                    self.t.write(server.answer(host))

        self.srv = self.loop.run_until_complete(self.loop.create_server(Proto, "127.0.0.1", 0, backlog=2048))
        self.port = self.srv.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    def close(self):
        self.loop.call_soon_threadsafe(self.srv.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _http(status: int, body: bytes, extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.close()


RESOLVE = {"*.test": "127.0.0.1"}


def _lines(part: Path) -> list[str]:
    return [json.loads(line)["origin"] for line in part.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_20k_origins_kill_resume(server, tmp_path):
    n = 20_000
    origins = [f"http://o{i:05d}.test:{server.port}" for i in range(n)]
    (tmp_path / "origins.txt").write_text("\n".join(origins) + "\n")
    (tmp_path / "cfg.yaml").write_text(json.dumps({"consent_fetch": {
        "resolve": RESOLVE, "host_delay_s": 0, "tdmrep": False, "concurrency": 64, "timeout_s": 30}}))
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "glotta.launch.cli", "consent", "fetch", "--origins", str(tmp_path / "origins.txt"),
           "--store", str(store), "--date", "2026-01-01", "--config", str(tmp_path / "cfg.yaml"), "--json"]
    part = store / "fetch-2026-01-01-rank00000-of00001.jsonl"
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if part.is_file() and part.stat().st_size > 6000 * 60:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()  # still running: we kill it mid-run
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with open(part, "ab") as f:  # and leave a torn line, as a kill during a write would
        f.write(b'{"origin": "http://torn')
    first = set(_lines_complete(part))
    assert 0 < len(first) < n
    hits_before = Counter(server.hits)

    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    assert res["counters"]["skipped_already_captured"] == len(first)
    assert res["counters"]["origins"] == n - len(first)  # nothing fetched twice ...
    final = _lines(part)
    assert len(final) == n and set(final) == set(origins)  # ... and nothing lost
    hosts = {o.split("//")[1].split(":")[0] for o in first}
    assert all(server.hits[h] == hits_before[h] for h in hosts)  # a stored origin is never requested again
    refetched = [h for h, c in server.hits.items() if h.startswith("o") and c > 1]
    assert len(refetched) <= 64  # only those in flight at the kill
    snaps = SnapshotStore.load(store)
    assert len(snaps) == n and snaps.torn_lines == 0
    s = snaps.by_origin[origins[123]][0]
    assert s.status == 200 and "Disallow: /o00123.test/" in s.robots


def _lines_complete(part: Path) -> list[str]:
    out = []
    for line in part.read_bytes().split(b"\n")[:-1]:
        out.append(json.loads(line)["origin"])
    return out


def test_retry_after_bot_wall_and_failure_policies(server, tmp_path):
    port = server.port
    cfg = FetchConfig(resolve=RESOLVE, host_delay_s=0.2, backoff_s=0.01, retries=3, tdmrep=False, date="2026-02-01",
                      timeout_s=20)
    snaps, counters = fetch_origins([f"http://flaky.test:{port}", f"http://wall.test:{port}", f"http://gone.test:{port}"], cfg)
    by = {s.origin.split("//")[1].split(":")[0]: s for s in snaps}
    assert by["flaky.test"].status == 200 and "3 attempts" in by["flaky.test"].error
    t = server.times["flaky.test"]
    assert t[1] - t[0] >= 0.9 and t[2] - t[1] >= 0.9  # Retry-After: 1 honoured (backoff alone is 10 ms)
    assert by["wall.test"].kind == "bot_wall" and by["wall.test"].status == 429 and server.hits["wall.test"] == 4
    assert by["gone.test"].kind == "failed" and by["gone.test"].policy == "keep-previous"
    assert counters["retried"] == 3 and counters["bot_wall"] == 1 and counters["robots_5xx"] == 1
    gap = [b - a for a, b in zip(server.times["gone.test"], server.times["gone.test"][1:])]
    assert min(gap) >= 0.19  # politeness: host_delay_s between two requests to one host

    # keep-previous: the older good capture stays in force (flag previous_capture); allow / disallow
    good = Snapshot(by["gone.test"].origin, "2025-01-01", 200, "User-agent: *\nDisallow: /x\n", "g", "t")
    store = SnapshotStore([good, by["gone.test"]])
    snap, flag = store.at(good.origin, "2026-03-01")
    assert snap is good and flag == "previous_capture"
    alone = SnapshotStore([by["gone.test"]])
    assert alone.robots(alone.at(good.origin, None)[0]).kind == "unreachable"  # nothing before it: disallow
    allow = Snapshot(good.origin, "2026-02-01", 500, None, "", "t", kind="failed", policy="allow")
    assert SnapshotStore([allow]).robots(allow).kind == "unavailable"
    disallow = Snapshot(good.origin, "2026-02-01", 500, None, "", "t", kind="failed", policy="disallow")
    assert SnapshotStore([good, disallow]).at(good.origin, None)[0] is disallow


def test_origins_split_across_ranks_from_shards(tmp_path):
    from glotta.data import Manifest, Sample, ShardWriter

    shards = tmp_path / "shards"
    with ShardWriter(shards, prefix="web", max_samples=50) as w:
        for i in range(400):  # 8 shards; every origin appears in several shards
            w.write(Sample(f"d{i}", "text", {"url": f"https://h{i % 37}.example/p{i}", "lang": "en"}))
    Manifest(shards=w.written).save(shards)
    cfg = FetchConfig(shards=shards, store=tmp_path / "store", list_wait_s=60)
    results, errors = {}, []

    def rank(r):
        try:
            results[r] = list_origins(cfg, r, 2, Counter()).read_text().split()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert not errors
    assert set(results[0]).isdisjoint(results[1])
    assert sorted(results[0] + results[1]) == sorted(f"https://h{i}.example" for i in range(37))
    assert all(owner(o, 2) == r for r in (0, 1) for o in results[r])
    with pytest.raises(Exception, match="shards or origins"):
        run_fetch(FetchConfig(store=tmp_path / "s2"))
