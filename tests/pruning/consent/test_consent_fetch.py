"""The fetcher against a real HTTP server on 127.0.0.1, one path per case (RFC 9309 status rules)."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from glotta.pruning.consent.fetch import FetchConfig, fetch_origins
from glotta.pruning.consent.robots import Robots
from glotta.pruning.consent.snapshots import SnapshotStore

ROBOTS = b"User-agent: GPTBot\nDisallow: /\n\nUser-agent: *\nAllow: /\n"
BIG = b"User-agent: CCBot\nDisallow: /\n" + b"# padding line of a huge robots.txt\n" * 300_000  # ~10 MB


class Handler(BaseHTTPRequestHandler):
    """Each case lives under its own path prefix: the test passes `http://127.0.0.1:PORT/<case>` as the
    origin, so the fetcher asks for `/<case>/robots.txt` and `/<case>/.well-known/tdmrep.json`."""

    hits: dict[str, int] = {}
    in_flight: dict[str, int] = {}
    max_in_flight: dict[str, int] = {}

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        case, _, rest = self.path.lstrip("/").partition("/")
        path = "/" + rest
        cls = type(self)
        cls.hits[case] = cls.hits.get(case, 0) + 1
        cls.in_flight[case] = cls.in_flight.get(case, 0) + 1
        cls.max_in_flight[case] = max(cls.max_in_flight.get(case, 0), cls.in_flight[case])
        try:
            if case == "ok":
                time.sleep(0.02)  # long enough for overlapping requests to show up
        finally:
            cls.in_flight[case] -= 1  # before the answer: the client cannot send its next request earlier
        self._route(case, path)

    def _route(self, case, path):
        tdm = path == "/.well-known/tdmrep.json"
        if case == "robots.txt":  # the server's own root robots.txt (used by the CLI test)
            return self._send(200, ROBOTS)
        if case == "ok":
            if tdm:
                return self._send(200, b'[{"location": "/", "tdm-reservation": 1}]', [("Content-Type", "application/json")])
            return self._send(200, ROBOTS, [("Content-Type", "text/plain")])
        if case == "missing":
            return self._send(404, b"not found")
        if case == "forbidden":
            return self._send(403, b"no")
        if case == "down":
            return self._send(503, b"busy")
        if case.startswith("hop"):  # hopN redirects N times, then serves ROBOTS
            n = int(case[3:].split("-")[0])
            step = int(case.split("-")[1]) if "-" in case else 0
            if tdm:
                return self._send(404)
            if step < n:
                return self._send(302, headers=[("Location", f"/hop{n}-{step + 1}{path}")])
            return self._send(200, ROBOTS)
        if case == "ftp":
            return self._send(301, headers=[("Location", "ftp://127.0.0.1/robots.txt")])
        if case == "huge":
            return self._send(200, BIG)
        if case == "slow":
            time.sleep(2.5)
            return self._send(200, ROBOTS)
        if case == "trickle":  # headers at once, then one byte every 0.1 s: only a whole-request timeout ends it
            self.send_response(200)
            self.send_header("Content-Length", "30")
            self.end_headers()
            for _ in range(30):
                self.wfile.write(b"#")
                self.wfile.flush()
                time.sleep(0.1)
            return
        if case == "binary":
            return self._send(200, b"\xff\xfe\x00garbage\x80\x81 User-agent: *\nDisallow: /private\n")
        return self._send(404)


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # the client hanging up on `slow` is expected
        pass


@pytest.fixture(scope="module")
def server():
    httpd = QuietServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _fetch(server, cases, **kw):
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("host_delay_s", 0.0)
    cfg = FetchConfig(timeout_s=kw.pop("timeout_s", 0.5), date="2026-01-01", **kw)
    snaps, counters = fetch_origins([f"{server}/{c}" for c in cases], cfg)
    return {s.origin.rsplit("/", 1)[1]: s for s in snaps}, counters


CASES = [
    # case, expected status, robots kind, GPTBot may fetch /page
    ("ok", 200, "parsed", False),
    ("missing", 404, "unavailable", True),
    ("forbidden", 403, "unreachable", False),  # a bot wall: keep-previous, with nothing before: disallow
    ("down", 503, "unreachable", False),  # after retries
    ("hop5", 200, "parsed", False),  # five redirects are followed
    ("hop6", 302, "unavailable", True),  # the sixth is not: RFC 9309 lets us treat it as unavailable
    ("ftp", 301, "unavailable", True),  # a redirect off http/https is not followed
    ("huge", 200, "parsed", True),  # cut at 500 KiB, CCBot group parsed, GPTBot untouched
    ("slow", 0, "unreachable", False),  # timeout: disallow all
    ("binary", 200, "parsed", True),
]


def test_fetch_status_rules(server):
    # Generous timeout for the normal cases (the CI machine may be loaded), a short one for `slow`.
    snaps, counters = _fetch(server, [c[0] for c in CASES if c[0] != "slow"], timeout_s=20)
    slow, slow_counters = _fetch(server, ["slow", "trickle"], timeout_s=0.5, retries=0)
    snaps.update(slow)
    counters.update(slow_counters)
    for case, status, kind, gpt_ok in CASES:
        s = snaps[case]
        assert s.status == status, (case, s)
        robots = SnapshotStore([s]).robots(s)
        assert robots.kind == kind, case
        assert robots.can_fetch(f"{s.origin}/page", "GPTBot") is gpt_ok, case
        assert s.date == "2026-01-01"
    assert len(snaps["huge"].robots.encode()) == 500 * 1024 and "cut at" in snaps["huge"].error
    assert Robots.from_http(200, snaps["huge"].robots.encode()).classify("CCBot").status == "all"
    assert "timeout" in snaps["slow"].error
    assert snaps["trickle"].status == 0 and "timeout" in snaps["trickle"].error
    assert "redirects" in snaps["hop6"].error and "unsupported" in snaps["ftp"].error
    assert snaps["ok"].tdmrep_status == 200 and '"tdm-reservation": 1' in snaps["ok"].tdmrep
    assert snaps["missing"].tdmrep is None
    assert counters["origins"] == len(CASES) + 1 and counters["robots_unreachable"] == 2 and counters["truncated"] == 1
    assert snaps["forbidden"].kind == "bot_wall" and snaps["down"].kind == "failed"
    assert snaps["down"].policy == "keep-previous" and "4 attempts" in snaps["down"].error
    assert Handler.hits["down"] == 4 and counters["bot_wall"] == 1 and counters["retried"] == 1


def test_one_request_at_a_time_per_host(server):
    # Ten captures of one host with a global concurrency of 8: the server never sees two at once.
    Handler.max_in_flight.clear()
    cfg = FetchConfig(timeout_s=20, date="2026-01-01", concurrency=8, tdmrep=True, host_delay_s=0.0)
    origins = [f"{server}/ok"] * 10
    fetch_origins(origins, cfg)
    assert Handler.max_in_flight["ok"] == 1


def test_unreachable_port_is_disallow_all():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    snaps, counters = fetch_origins([f"http://127.0.0.1:{port}"], FetchConfig(timeout_s=0.5, tdmrep=False, backoff_s=0.01))
    assert snaps[0].status == 0 and snaps[0].error
    assert Robots.from_http(0, None).can_fetch("http://x/a", "GPTBot") is False


def test_cli_import_fetch_filter(server, tmp_path, multilingual_text):
    """`glotta consent import`, `fetch` and `filter` chained through the CLI, on a real shard."""
    import json

    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from glotta.data import Manifest, Sample, ShardWriter
    from glotta.launch.cli import app

    shards = tmp_path / "shards"
    with ShardWriter(shards, prefix="web") as w:
        for i, (lang, text) in enumerate(multilingual_text.items()):
            host = server if i % 2 else "https://imported.example"
            w.write(Sample(f"d{i}", text, {"lang": lang, "url": f"{host}/{lang}/{i}", "crawl_date": "2026-06-01"}))
    Manifest(shards=w.written).save(shards)
    robots_dir = tmp_path / "captures" / "imported.example"
    robots_dir.mkdir(parents=True)
    (robots_dir / "2026-01-01.txt").write_text("User-agent: *\nDisallow: /fr/\n")  # fr is one of the imported host's documents
    store = tmp_path / "store"
    runner = CliRunner()
    r = runner.invoke(app, ["consent", "import", str(tmp_path / "captures"), "--store", str(store), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["snapshots"] == 1
    r = runner.invoke(app, ["consent", "fetch", str(shards), "--store", str(store), "--date", "2026-01-01",
                            "--timeout", "20", "--set", "host_delay_s=0", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    # imported.example already has a capture on that date, so only the local server is fetched.
    assert res["counters"]["skipped_already_captured"] == 1
    assert res["counters"]["origins"] == 1 and res["counters"]["robots_2xx"] == 1
    r = runner.invoke(app, ["consent", "filter", str(shards), "--store", str(store), "--out", str(tmp_path / "out"), "--json"])
    assert r.exit_code == 0, r.output
    audit = pq.read_table(tmp_path / "out" / "audit").to_pandas().set_index("key")
    local = audit[audit.origin == server]
    assert set(local.reason) == {"robots_full"} and set(local.agent) == {"GPTBot"}
    imported = audit[audit.origin == "https://imported.example"]
    assert set(imported.reason) == {"robots_path", "robots_path_allowed"}  # the imported capture decides
