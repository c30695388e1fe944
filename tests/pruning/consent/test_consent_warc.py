"""Historical captures: Common Crawl-style robots.txt WARC files written with warcio, and Wayback
CDX JSON + raw captures, through `glotta consent import` into the store and the filter."""
from __future__ import annotations

import gzip
import io
import json

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from glotta.errors import DataError
from glotta.pruning.consent import ConsentFilter, DecideConfig, SnapshotStore
from glotta.pruning.consent.snapshots import ImportConfig, run_import


def _record(w: WARCWriter, url: str, date: str, status: int, body: bytes = b"", location: str | None = None):
    headers = [("Content-Type", "text/plain")] + ([("Location", location)] if location else [])
    http = StatusAndHeaders(f"{status} X", headers, protocol="HTTP/1.1")
    rec = w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http,
                               warc_headers_dict={"WARC-Date": date})
    w.write_record(rec)


def _warc(path, records, tail: bytes = b""):
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        w.write_record(w.create_warcinfo_record(path.name, {"software": "test"}))
        for r in records:
            _record(w, *r)
        f.write(tail)


def test_common_crawl_warc_import(tmp_path):
    _warc(tmp_path / "a.warc.gz", [
        ("https://a.example/robots.txt", "2023-05-02T10:00:00Z", 200, b"User-agent: GPTBot\nDisallow: /\n"),
        ("http://b.example/robots.txt", "2023-05-02T10:00:01Z", 301, b"", "https://www.b.example/robots.txt"),
        ("https://c.example/robots.txt", "2023-05-02T10:00:02Z", 404, b"nope"),
        ("http://loop1.example/robots.txt", "2023-05-02T10:00:03Z", 302, b"", "http://loop2.example/robots.txt"),
        ("http://loop2.example/robots.txt", "2023-05-02T10:00:03Z", 302, b"", "http://loop1.example/robots.txt"),
        ("http://lost.example/robots.txt", "2023-05-02T10:00:04Z", 301, b"", "https://nowhere.example/robots.txt"),
        ("https://d.example/robots.txt", "2023-05-02T10:00:05Z", 503, b"busy"),
        ("https://e.example/page.html", "2023-05-02T10:00:06Z", 200, b"<html>"),
    ])
    # a second file: the redirect target, captured a little later, and a corrupt tail
    _warc(tmp_path / "b.warc.gz", [
        ("https://www.b.example/robots.txt", "Tue, 02 May 2023 11:00:00 GMT", 200, b"User-agent: *\nDisallow: /x\n"),
    ], tail=gzip.compress(b"WARC/1.0\r\nWARC-Type: response\r\nContent-Length: 999\r\n\r\ntruncated")[:-10])
    store = tmp_path / "store"
    res = run_import(ImportConfig(files=[tmp_path], store=store))
    c = res["counters"]
    assert c["warc_files"] == 2 and c["warc_corrupt"] == 1 and "b.warc.gz" in res["errors"][0]
    assert c["redirects_resolved"] == 1 and c["redirect_loop"] == 2 and c["redirect_target_missing"] == 1
    assert c["warc_not_robots_txt"] == 1 and c["warc_warcinfo_skipped"] == 2
    snaps = SnapshotStore.load(store)
    b = snaps.by_origin["http://b.example"][0]
    assert b.status == 200 and b.robots.startswith("User-agent: *") and "-> https://www.b.example/robots.txt" in b.source
    assert b.date == "2023-05-02"
    loop = snaps.by_origin["http://loop1.example"][0]
    assert loop.status == 302 and "loop" in loop.error
    assert snaps.robots(loop).kind == "unavailable"  # RFC 9309: unresolved redirects = allow all
    assert "not captured" in snaps.by_origin["http://lost.example"][0].error
    assert snaps.robots(snaps.by_origin["https://d.example"][0]).kind == "unreachable"
    f = ConsentFilter(snaps, DecideConfig(agents="GPTBot"))
    from glotta.data import Sample
    doc = Sample("k", "t", {"url": "https://a.example/x", "crawl_date": "2023-06-01"}, "s.tar")
    assert f(doc).reason == "robots_full"
    with pytest.raises(DataError, match="corrupt"):
        run_import(ImportConfig(files=[tmp_path / "b.warc.gz"], store=tmp_path / "s2", strict=True))


def test_wayback_cdx_import(tmp_path):
    host = tmp_path / "wayback" / "news.example"
    host.mkdir(parents=True)
    rows = [["urlkey", "timestamp", "original", "mimetype", "statuscode", "digest", "length"],
            ["example,news)/robots.txt", "20220110093000", "https://news.example/robots.txt", "text/plain", "200", "D1", "10"],
            ["example,news)/robots.txt", "20230110093000", "https://news.example/robots.txt", "text/plain", "-", "D1", "10"],
            ["example,news)/robots.txt", "20240110093000", "https://news.example/robots.txt", "text/plain", "200", "D2", "10"],
            ["example,news)/robots.txt", "20240210093000", "https://news.example/robots.txt", "text/plain", "200", "D3", "10"],
            ["example,news)/robots.txt", "2024-bad", "https://news.example/robots.txt", "text/plain", "200", "D4", "10"]]
    (host / "cdx.json").write_text(json.dumps(rows))
    (host / "20220110093000.txt").write_text("User-agent: *\nAllow: /\n")
    (host / "20240110093000.txt").write_text("User-agent: GPTBot\nDisallow: /\n")
    res = run_import(ImportConfig(files=[tmp_path / "wayback"], store=tmp_path / "store"))
    c = res["counters"]
    assert c["wayback_captures"] == 3 and c["wayback_revisits"] == 1
    assert c["wayback_body_missing"] == 1 and c["bad_date"] == 1 and any("20240210093000.txt" in e for e in res["errors"])
    snaps = SnapshotStore.load(tmp_path / "store").by_origin["https://news.example"]
    assert [s.date for s in snaps] == ["2022-01-10", "2023-01-10", "2024-01-10"]
    assert snaps[1].robots == snaps[0].robots  # the revisit reuses the body with the same digest
