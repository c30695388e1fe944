"""End to end on the demo shard set: snapshots for some of its hosts -> filter (2 ranks) -> audit,
exclude list, counters, rewritten shards, report; then the bad-input rules on a hand-made shard."""
from __future__ import annotations

import datetime as dt
import json
from collections import Counter, defaultdict

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from glotta.data import Manifest, Sample, ShardWriter, iter_samples, list_shards
from glotta.errors import DataError
from glotta.launch.cli import app
from glotta.pruning.consent import FilterConfig, Snapshot, SnapshotStore, run_filter
from glotta.pruning.consent.robots import sha256_text
from glotta.pruning.consent.urls import split_url


def _docs(shards_dir):
    return [s for p in list_shards(shards_dir) for s in iter_samples(p)]


def _snap(origin, date, body, status=200, **kw):
    return Snapshot(origin, date, status, body if 200 <= status < 300 else None,
                    sha256_text(body) if body is not None and 200 <= status < 300 else "", "test", **kw)


@pytest.fixture(scope="module")
def scenario(demo_shards, tmp_path_factory):
    """Five of the demo hosts get robots.txt histories; the rest have none (kept: no_snapshot)."""
    docs = _docs(demo_shards)
    by_origin = defaultdict(list)
    for s in docs:
        by_origin[split_url(s.meta["url"])[0]].append(s)
    # The host with the most locales gets the path rule; the others by size.
    ranked = sorted(by_origin, key=lambda o: (-len({s.meta["locale"] for s in by_origin[o]}), o))
    path_host, full_host, down_host, signal_host, tdm_host = ranked[:5]
    # Capture dates around the demo's crawl dates (catalog mtimes): one before all, one after all.
    dates = sorted(s.meta["crawl_date"] for s in docs)
    early = (dt.date.fromisoformat(dates[0]) - dt.timedelta(days=40)).isoformat()
    late = (dt.date.fromisoformat(dates[-1]) + dt.timedelta(days=40)).isoformat()
    snaps = [
        _snap(path_host, early, "User-agent: *\nDisallow: /de/\n"),
        # Open at crawl time, closed to GPTBot later: only --as-of now/strictest drop it.
        _snap(full_host, early, "User-agent: *\nDisallow:\n"),
        _snap(full_host, late, "User-agent: GPTBot\nUser-Agent: CCBot\nDisallow: /\n"),
        _snap(down_host, early, None, status=503, error="HTTP 503"),
        _snap(signal_host, early, "User-agent: *\nContent-Signal: search=yes, ai-train=no\nAllow: /\n"),
        _snap(tdm_host, early, None, status=404, tdmrep_status=200,
              tdmrep=json.dumps([{"location": "/ja/*", "tdm-reservation": 1}, {"location": "/*", "tdm-reservation": 0}])),
    ]
    store = tmp_path_factory.mktemp("consent_store") / "snapshots.jsonl"
    SnapshotStore.append(store, snaps)
    expected = {}
    for s in docs:
        o, path = split_url(s.meta["url"])
        if o == path_host and path.startswith("/de/"):
            expected[s.id] = "robots_path"
        elif o == down_host:
            expected[s.id] = "robots_unreachable"
        elif o == signal_host:
            expected[s.id] = "content_signal"
        elif o == tdm_host and path.startswith("/ja/"):
            expected[s.id] = "tdmrep"
    return {"early": early, "late": late, "docs": docs, "store": store, "expected": expected,
            "full_host": full_host, "by_origin": by_origin}


def test_filter_two_ranks_audit_exclude_counters(scenario, demo_shards, tmp_path):
    cfg = FilterConfig(shards=demo_shards, store=scenario["store"], out=tmp_path / "out", rewrite=True, shard_samples=100)
    r0 = run_filter(cfg, rank=0, world_size=2)
    assert "merged" not in r0  # rank 1 has not finished yet
    r1 = run_filter(cfg, rank=1, world_size=2)
    assert r1["merged"]
    expected = scenario["expected"]
    assert any(v == "tdmrep" for v in expected.values()) and any(v == "robots_path" for v in expected.values())

    # Exclude list: exactly the expected drops, one `shard.tar/KEY` per line.
    excluded = (tmp_path / "out" / "exclude.txt").read_text().split()
    assert sorted(excluded) == sorted(expected)

    # Counters: total / kept / dropped_<reason>, summed over ranks.
    total = r1["total"]
    n = len(scenario["docs"])
    assert total["total"] == n and total["kept"] == n - len(expected)
    for reason, count in Counter(expected.values()).items():
        assert total[f"dropped_{reason}"] == count

    # Audit: one row per document with the decision and its evidence.
    audit = pq.read_table(tmp_path / "out" / "audit").to_pandas()
    assert len(audit) == n and set(audit["shard"] + "/" + audit["key"]) == {s.id for s in scenario["docs"]}
    drops = audit[audit.decision == "drop"]
    assert dict(zip(drops.shard + "/" + drops.key, drops.reason)) == expected
    path_rows = drops[drops.reason == "robots_path"]
    assert set(path_rows.rule) == {"Disallow: /de/ (line 2)"} and set(path_rows.snapshot_date) == {scenario["early"]}
    assert set(path_rows.snapshot_sha256) == {sha256_text("User-agent: *\nDisallow: /de/\n")}
    assert set(drops[drops.reason == "content_signal"].rule) == {"Content-Signal: ai-train=no (line 2)"}
    assert set(drops[drops.reason == "tdmrep"].rule) == {"tdmrep.json location=/ja/* tdm-reservation=1"}
    full = audit[audit.origin == scenario["full_host"]]
    assert set(full.decision) == {"keep"} and set(full.reason) == {"robots_none"}  # open at crawl time
    assert set(audit[audit.reason == "no_snapshot"].decision) == {"keep"}
    assert set(audit.reg_domain) == {"l10n.example"} and set(audit.policy) == {"training"}

    # Rewritten shards hold exactly the kept documents, with a merged manifest.
    manifest = Manifest.load(tmp_path / "out" / "shards")
    assert manifest.samples == n - len(expected)
    kept_ids = {s.key for s in _docs(tmp_path / "out" / "shards")}
    assert kept_ids == {s.key for s in scenario["docs"] if s.id not in expected}

    # A rerun with the same inputs is a no-op; with other inputs, it never merges another run's rank.
    assert run_filter(cfg, rank=0, world_size=2)["skipped"]
    other = cfg.model_copy(update={"as_of": "now"})
    assert "merged" not in run_filter(other, rank=0, world_size=2)
    assert run_filter(other, rank=1, world_size=2)["merged"]


def test_as_of_now_and_strictest(scenario, demo_shards, tmp_path):
    full_ids = {s.id for s in scenario["by_origin"][scenario["full_host"]]}
    for as_of in ("now", "strictest"):
        cfg = FilterConfig(shards=demo_shards, store=scenario["store"], out=tmp_path / as_of, as_of=as_of)
        res = run_filter(cfg, 0, 1)
        audit = pq.read_table(tmp_path / as_of / "audit").to_pandas()
        rows = audit[(audit.shard + "/" + audit.key).isin(full_ids)]
        assert set(rows.reason) == {"robots_full"} and set(rows.agent) == {"GPTBot"}
        assert set(rows.snapshot_date) == {scenario["late"]} and set(rows.rule) == {"Disallow: / (line 3)"}
        assert res["total"]["dropped_robots_full"] == len(full_ids)


def test_cli_filter_and_report(scenario, demo_shards, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    r = runner.invoke(app, ["consent", "filter", str(demo_shards), "--store", str(scenario["store"]), "--out", str(out),
                            "--agents", "*", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["total"]["dropped_content_signal"] == sum(v == "content_signal" for v in scenario["expected"].values())
    png = tmp_path / "consent.png"
    r = runner.invoke(app, ["consent", "report", str(out), "--store", str(scenario["store"]), "--png", str(png), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["weight"] == "utf8_bytes" and rep["docs"] == len(scenario["docs"])
    dropped_bytes = sum(len(s.text.encode()) for s in scenario["docs"] if s.id in scenario["expected"])
    assert rep["dropped_bytes"] == dropped_bytes
    months = [m for m in rep["months"] if "lang" not in m and m["group"] == "training (combined)"]
    assert months[0]["month"] == scenario["early"][:7] and months[-1]["month"] == scenario["late"][:7]
    full_bytes = sum(len(s.text.encode()) for s in scenario["by_origin"][scenario["full_host"]])
    assert months[-1]["all"] == pytest.approx(full_bytes / rep["bytes"])  # the late GPTBot/CCBot block
    assert months[0]["all"] == 0
    assert {m["lang"] for m in rep["months"] if "lang" in m} >= {"en", "de", "ja"}
    assert png.stat().st_size > 10_000
    r = runner.invoke(app, ["consent", "report", str(out)])
    assert r.exit_code == 0 and "by language" in r.output


BAD_URLS = [
    (None, "no_url"),
    ("mailto:someone@example.org", "bad_scheme"),
    ("ftp://files.example.org/a.txt", "bad_scheme"),
    ("https:///no-host", "no_host"),
    ("https://exa mple.org/x", "bad_host"),
    (12345, "no_url"),
    ("//example.org/relative", "no_host"),
]


def test_bad_input_is_decided_counted_and_strict_fails(tmp_path, multilingual_text):
    texts = list(multilingual_text.items())
    samples = []
    for i, (url, _) in enumerate(BAD_URLS):
        lang, text = texts[i % len(texts)]
        meta = {"lang": lang, "crawl_date": "2024-05-01"}
        if url is not None:
            meta["url"] = url
        samples.append(Sample(f"bad{i:02d}", text, meta))
    # An IDN host: decided on its punycode origin, which has a snapshot that blocks everything.
    samples.append(Sample("idn", multilingual_text["de"], {"lang": "de", "url": "https://Bücher.example/katalog/1",
                                                           "crawl_date": "2024-05-01"}))
    samples.append(Sample("nodate", multilingual_text["el"], {"lang": "el", "url": "https://ok.example/a"}))
    shards = tmp_path / "shards"
    with ShardWriter(shards, prefix="bad") as w:
        for s in samples:
            w.write(s)
    Manifest(shards=w.written).save(shards)
    store = tmp_path / "store"
    SnapshotStore.append(store / "s.jsonl", [_snap("https://xn--bcher-kva.example", "2024-01-01", "User-agent: *\nDisallow: /\n"),
                                             _snap("https://ok.example", "2024-01-01", "User-agent: *\nAllow: /\n")])
    res = run_filter(FilterConfig(shards=shards, store=store, out=tmp_path / "out"), 0, 1)
    c = res["total"]
    assert c["total"] == len(samples)
    for reason, count in Counter(r for _, r in BAD_URLS).items():
        assert c[f"dropped_{reason}"] == count, reason
    assert c["dropped_robots_full"] == 1 and c["kept"] == 1 and c["flag_no_crawl_date"] == 1
    audit = pq.read_table(tmp_path / "out" / "audit").to_pandas().set_index("key")
    assert audit.loc["idn", "origin"] == "https://xn--bcher-kva.example"
    assert audit.loc["bad01", "rule"].startswith("bad_scheme")

    keep = run_filter(FilterConfig(shards=shards, store=store, out=tmp_path / "keep", no_url="keep"), 0, 1)["total"]
    assert keep["kept"] == len(BAD_URLS) + 1
    with pytest.raises(DataError, match="bad-00000-000000.tar/bad00"):
        run_filter(FilterConfig(shards=shards, store=store, out=tmp_path / "strict", strict=True), 0, 1)


def test_audit_origin_columns_match_split_url(tmp_path):
    """The audit computes origin / reg_domain per batch in Arrow (distinct URL heads looked up once);
    every kind of URL gets what split_url + registrable_domain give it one by one."""
    from glotta.pruning.consent.audit import AuditWriter
    from glotta.pruning.consent.base import Decision
    from glotta.pruning.consent.urls import BadURL, registrable_domain

    urls = ["https://a.example/x", "http://B.Example:80/?q", None, "mailto:x@y", "HTTPS://c.example.co.uk/",
            "https://a.example", "https://a.example#f", "https://alice.github.io/p", "https://bücher.example/",
            "https:///nohost", "ftp://f.example/", "https://a.example:8443/x", 7]
    w = AuditWriter(tmp_path / "a.parquet", "training", "v", "crawl", batch_rows=5)
    for i, u in enumerate(urls):
        w.add("s.tar", f"k{i}", u, "en", 1, None, Decision(True, "x"))
    w.close()
    t = pq.read_table(tmp_path / "a.parquet")
    for u, o, r in zip(urls, t.column("origin").to_pylist(), t.column("reg_domain").to_pylist()):
        try:
            want = split_url(u)[0]
        except BadURL:
            want = ""
        assert (o, r) == (want, registrable_domain(want) if want else ""), u
