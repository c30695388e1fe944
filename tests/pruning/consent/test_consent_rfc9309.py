"""RFC 9309 agent and group semantics: the real-world cases where prefix matching, cut tokens or
run-splitting gave the wrong group (issue 11), and `?` rules enforced at the filter level."""
from __future__ import annotations

import json

import pytest

from glotta.data import Sample
from glotta.pruning.consent import ConsentFilter, DecideConfig, Snapshot, SnapshotStore
from glotta.pruning.consent.robots import Robots, normalise_agent

# (name, robots.txt, [(agent, path, may fetch, group evidence)])
CASES = [
    ("product_token_is_exact", "User-agent: Applebot\nDisallow: /\n",
     [("Applebot-Extended", "/", True, ""), ("Applebot", "/", False, "User-agent: Applebot (line 1)")]),
    ("words_are_not_cut", "User-agent: Web Image Collector\nDisallow: /\n\nUser-agent: *\nDisallow: /tmp\n",
     [("Webzio-Extended", "/", True, "User-agent: * (line 4)"), ("Webzio-Extended", "/tmp/1", False, None)]),
    ("punctuation_is_not_cut", "User-agent: Go!Zilla\nDisallow: /\nUser-agent: Amazon.CloudFront\nDisallow: /\n",
     [("Google-Extended", "/", True, ""), ("Amazonbot", "/", True, ""), ("Go", "/", False, None)]),
    ("star_only_as_whole_token", "User-agent: *OrkashBot*\nDisallow: /\n\nUser-agent: *\nDisallow: /private\n",
     [("GPTBot", "/", True, "User-agent: * (line 4)"), ("GPTBot", "/private/a", False, None)]),
    ("version_dropped", "User-agent: GPTBot/1.0\nDisallow: /\nUser-agent: Brightbot 1.0\nDisallow: /\n",
     [("GPTBot", "/", False, "User-agent: GPTBot/1.0 (line 1)"), ("Brightbot", "/", False, None)]),
    ("crawl_delay_does_not_split_a_run", "User-agent: GPTBot\nCrawl-delay: 5\nUser-agent: CCBot\nDisallow: /\n",
     [("GPTBot", "/", False, "User-agent: GPTBot (line 1)"), ("CCBot", "/", False, "User-agent: CCBot (line 3)")]),
    ("unknown_line_does_not_split_a_run", "User-agent: GPTBot\nX-Foo: bar\nContent-Signal: search=yes\n"
     "User-agent: ClaudeBot\nDisallow: /\n", [("GPTBot", "/", False, None), ("ClaudeBot", "/", False, None)]),
    ("blank_line_does_not_split_a_run", "User-agent: GPTBot\n\nUser-agent: *\nDisallow: /\n",
     [("GPTBot", "/", False, "User-agent: GPTBot (line 1)")]),
    ("own_group_without_rules_no_fallback", "User-agent: GPTBot\nAllow: /\n\nUser-agent: *\nDisallow: /\n",
     [("GPTBot", "/", True, "User-agent: GPTBot (line 1)"), ("CCBot", "/", False, "User-agent: * (line 4)")]),
    ("named_with_empty_disallow", "User-agent: GPTBot\nDisallow:\n\nUser-agent: *\nDisallow: /\n",
     [("GPTBot", "/page", True, "User-agent: GPTBot (line 1)")]),
    ("case_insensitive_and_merged", "user-agent: gptbot\nDisallow: /a\n\nUSER-AGENT: GPTBOT\nDisallow: /b\n",
     [("GPTBot", "/a", False, "User-agent: gptbot (lines 1, 4)"), ("GPTBot", "/b", False, None), ("GPTBot", "/c", True, None)]),
    ("rules_before_any_agent_apply_to_none", "Disallow: /\nUser-agent: *\nDisallow: /x\n",
     [("GPTBot", "/", True, None), ("GPTBot", "/x", False, None)]),
]


@pytest.mark.parametrize("name,text,checks", CASES, ids=[c[0] for c in CASES])
def test_group_selection(name, text, checks):
    robots = Robots.parse(text.encode())
    for agent, path, allowed, group in checks:
        assert robots.can_fetch(path, agent) is allowed, (name, agent, path)
        assert robots.path_decision(path, agent)[0] is allowed, (name, agent, path)
        if group is not None:
            assert robots.group_evidence(agent) == group, (name, agent)


def test_normalise_agent():
    assert normalise_agent(" GPTBot/1.0 ") == "gptbot"
    assert normalise_agent("Mozilla/5.0 (compatible; X)") == "mozilla"
    assert normalise_agent("* # everyone") == "*" and normalise_agent("*") == "*"
    assert normalise_agent("*OrkashBot*") == ""
    assert normalise_agent("Web Image Collector") == "web"
    assert normalise_agent("Brightbot 1.0") == "brightbot"
    assert normalise_agent("AI2Bot") == "ai2bot" and normalise_agent("Mediapartners-Google*") == "mediapartners-google"


def _doc(url):
    return Sample("k", "text", {"url": url, "lang": "en", "crawl_date": "2024-06-01"}, "s.tar")


def test_query_rules_bind_for_none_origins():
    """The paper ignores `?` rules for the class (`none` here), but the document must still be matched."""
    body = "User-agent: *\nDisallow: /*?sort=\nDisallow: /?\n"
    assert Robots.parse(body.encode()).classify("GPTBot").status == "none"
    store = SnapshotStore([Snapshot("https://shop.example", "2024-01-01", 200, body, "sha", "test")])
    f = ConsentFilter(store, DecideConfig(agents="GPTBot"))
    d = f(_doc("https://shop.example/list?sort=price"))
    assert not d.keep and d.reason == "robots_path" and d.rule == "Disallow: /*?sort= (line 2)"
    assert d.group == "User-agent: * (line 1)"
    assert f(_doc("https://shop.example/list?page=2")).keep
    assert not f(_doc("https://shop.example/?q=1")).keep
    assert f(_doc("https://shop.example/")).keep


def test_audit_names_the_group_of_a_full_block():
    body = "User-agent: *\nAllow: /\n\nUser-agent: CCBot\nUser-agent: GPTBot\nDisallow: /\n"
    store = SnapshotStore([Snapshot("https://news.example", "2024-01-01", 200, body, "sha", "test")])
    d = ConsentFilter(store)(_doc("https://news.example/a"))
    assert not d.keep and d.reason == "robots_full" and d.rule == "Disallow: / (line 6)"
    assert d.group in ("User-agent: CCBot (line 4)", "User-agent: GPTBot (line 5)")


@pytest.mark.parametrize("raw,day", [
    ("2024-01-15", "2024-01-15"), ("2024-01-15T23:30:00-02:00", "2024-01-16"), ("2024-01-15 08:00:00", "2024-01-15"),
    ("Mon, 15 Jan 2024 10:00:00 GMT", "2024-01-15"), ("20240115", "2024-01-15"), ("20240115093000", "2024-01-15"),
    ("2024/01/15", None), ("15.01.2024", None), ("2024-02-30", None), ("1705312800", None), (20240115, None),
])
def test_crawl_dates(raw, day):
    from glotta.pruning.consent.dates import parse_day
    assert parse_day(raw) == day


def test_crawl_date_formats_pick_the_capture_and_bad_ones_are_counted():
    store = SnapshotStore([Snapshot("https://a.example", "2023-01-01", 200, "User-agent: *\nAllow: /\n", "s1", "t"),
                           Snapshot("https://a.example", "2024-01-10", 200, "User-agent: GPTBot\nDisallow: /\n", "s2", "t")])
    f = ConsentFilter(store, DecideConfig(agents="GPTBot"))

    def doc(date):
        return Sample("k", "t", {"url": "https://a.example/x", "crawl_date": date}, "s.tar")
    for before in ("2023-06-01", "Thu, 01 Jun 2023 12:00:00 GMT", "20230601", "20230601120000"):
        assert f(doc(before)).keep, before  # the 2023 capture decides
    for after in ("2024-01-15", "Mon, 15 Jan 2024 10:00:00 GMT", "20240115", "20240115093000"):
        assert not f(doc(after)).keep, after  # the 2024 capture decides
    d = f(doc("2023/06/01"))  # not a format we read: the latest capture, flagged and counted
    assert "bad_crawl_date" in d.flags and not d.keep
    assert f.counters["flag_bad_crawl_date"] == 1


def test_document_signals_from_imported_records():
    from glotta.data.html_meta import doc_signals

    html = ('<html><head><META name="robots" content="index, noai"><meta name="tdm-reservation" content="1">'
            '<meta name="description" content="x"></head><body><meta name="robots" content="late"></body></html>')
    rec = {"text": "t", "html": html, "http_headers": [["X-Robots-Tag", "noimageai"], ["Server", "x"],
                                                       ["Content-Usage", "train-ai=n"]]}
    sig = doc_signals(rec)
    assert sig == {"http_headers": {"x-robots-tag": "noimageai", "content-usage": "train-ai=n"},
                   "html_meta": {"robots": "index, noai", "tdm-reservation": "1"}}
    assert doc_signals({"text": "t", "html": "<p>plain</p>"}) == {}
    store = SnapshotStore([Snapshot("https://a.example", "2024-01-01", 404, None, "", "t")])
    f = ConsentFilter(store, DecideConfig(agents="GPTBot", drop_licenses=["NC", "ND"]))

    def doc(**meta):
        return Sample("k", "t", {"url": "https://a.example/x", "crawl_date": "2024-06-01", **meta}, "s.tar")
    assert f(doc(**sig)).reason == "tdmrep"  # the meta tag reserves TDM rights
    assert f(doc(http_headers={"Content-Usage": "train-ai=n"})).reason == "content_usage"
    assert f(doc(license="CC-BY-NC-4.0")).reason == "license"
    assert f(doc(license="CC-BY-4.0")).keep and f(doc()).keep


def test_data_import_keeps_document_signals(tmp_path):
    from glotta.data.importer import ImportConfig, run_import
    from glotta.data.shards import iter_samples, list_shards

    rows = [{"text": "Ein Text.", "lang": "de", "url": "https://a.example/1",
             "html": '<head><meta name="robots" content="noai"></head>', "http_headers": {"X-Robots-Tag": "noai"}},
            {"text": "Un texte.", "lang": "fr", "url": "https://a.example/2"}]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    run_import(ImportConfig(inputs=[str(tmp_path / "in.jsonl")], out=str(tmp_path / "shards"), lid="never"))
    metas = [s.meta for shard in list_shards(tmp_path / "shards") for s in iter_samples(shard)]
    assert metas[0]["html_meta"] == {"robots": "noai"} and metas[0]["http_headers"] == {"x-robots-tag": "noai"}
    assert "html_meta" not in metas[1] and "http_headers" not in metas[1]


def test_filter_names_bad_dates_and_strict_fails(tmp_path):
    from glotta.data import Manifest, ShardWriter
    from glotta.errors import DataError
    from glotta.pruning.consent.filter import FilterConfig, run_filter

    shards = tmp_path / "shards"
    with ShardWriter(shards, prefix="web") as w:
        w.write(Sample("good", "t", {"url": "https://a.example/1", "crawl_date": "20240115", "lang": "en"}))
        w.write(Sample("odd", "t", {"url": "https://a.example/2", "crawl_date": "2024/01/15", "lang": "en"}))
        w.write(Sample("nourl", "t", {"lang": "en"}))
    Manifest(shards=w.written).save(shards)
    store = tmp_path / "store"
    SnapshotStore.append(store / "import.jsonl", [Snapshot("https://a.example", "2024-01-01", 200, "User-agent: *\nAllow: /\n", "s", "t")])
    res = run_filter(FilterConfig(shards=shards, store=store, out=tmp_path / "out"), 0, 1)
    assert res["total"]["flag_bad_crawl_date"] == 1 and res["total"]["dropped_no_url"] == 1
    assert res["examples"]["bad_crawl_date"][0].endswith("/odd '2024/01/15'")
    with pytest.raises(DataError, match="odd.*2024/01/15"):
        run_filter(FilterConfig(shards=shards, store=store, out=tmp_path / "out2", strict=True, no_url="keep"), 0, 1)
