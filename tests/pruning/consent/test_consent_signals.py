"""Per-document decisions for the other signals (TDMRep precedence, noai, Content-Signal, ToS),
agent policies and the URL rules, on an in-memory snapshot store."""
from __future__ import annotations

import json

import pytest

from glotta.config import load_config
from glotta.data import Sample
from glotta.errors import ConfigError
from glotta.pruning.consent import ConsentFilter, DecideConfig, Snapshot, SnapshotStore, resolve_policy
from glotta.pruning.consent.signals import TdmRep
from glotta.pruning.consent.urls import BadURL, registrable_domain, split_url

TEXT = "Der schnelle braune Fuchs springt über den faulen Hund."


def _store(*snaps):
    return SnapshotStore([Snapshot(o, d, st, body, "sha-" + o, "test", **kw) for o, d, st, body, kw in snaps])


def _doc(url, **meta):
    return Sample("k", TEXT, {"url": url, "lang": "de", "crawl_date": "2024-06-01", **meta}, "s.tar")


def test_tdmrep_file_rules():
    tdm = TdmRep.parse(json.dumps([
        {"location": "/free/*", "tdm-reservation": 0},
        {"location": "/*.pdf$", "tdm-reservation": 1, "tdm-policy": "https://example.org/policy.json"},
        {"location": "/odd", "tdm-reservation": "yes"},  # not 0/1: unset
        {"location": "/", "tdm-reservation": 1},
    ]))
    assert tdm.reserved("/free/a.pdf")[0] is False  # first match wins
    assert tdm.reserved("/x/a.pdf") == (True, "tdmrep.json location=/*.pdf$ tdm-reservation=1 policy=https://example.org/policy.json")
    assert tdm.reserved("/odd")[0] is False
    assert tdm.reserved("/news/1")[0] is True
    assert TdmRep.parse("{not json").rules == [] and TdmRep.parse("{not json").warning
    assert TdmRep.parse('{"location": "/"}').rules == []


def test_tdmrep_precedence_html_over_header_over_file():
    store = _store(("https://news.example", "2024-01-01", 404, None,
                    {"tdmrep_status": 200, "tdmrep": '[{"location": "/", "tdm-reservation": 1}]'}))
    f = ConsentFilter(store)
    assert f(_doc("https://news.example/a")).reason == "tdmrep"
    d = f(_doc("https://news.example/a", http_headers={"TDM-Reservation": "0"}))
    assert d.keep  # the header overrides the file
    d = f(_doc("https://news.example/a", http_headers={"tdm-reservation": "0"}, html_meta={"tdm-reservation": "1"}))
    assert not d.keep and d.rule == "html_meta tdm-reservation: 1"  # the meta tag overrides the header
    d = f(_doc("https://news.example/a", http_headers={"tdm-reservation": "maybe"}))
    assert d.reason == "tdmrep"  # a missing/invalid value never resets the file's reservation
    assert f.counters["dropped_tdmrep"] == 3 and f.counters["kept"] == 1


def test_noai_headers_and_meta():
    f = ConsentFilter(_store(), DecideConfig(unknown_host="keep"))
    assert f(_doc("https://a.example/x", http_headers={"X-Robots-Tag": "noai, noimageai"})).reason == "noai"
    assert f(_doc("https://a.example/x", html_meta={"robots": "index, NOAI"})).reason == "noai"
    assert f(_doc("https://a.example/x", http_headers={"X-Robots-Tag": ["googlebot: noindex", "GPTBot: noai"]})).reason == "noai"
    assert f(_doc("https://a.example/x", http_headers={"X-Robots-Tag": "otherbot: noai"})).keep  # not our agents
    d = f(_doc("https://a.example/x", html_meta={"robots": "noimageai"}))
    assert d.keep and "noimageai" in d.flags
    assert f.counters["flag_noimageai"] == 1 and f.counters["dropped_noai"] == 3


def test_policies_and_star():
    store = _store(("https://a.example", "2024-01-01", 200, "User-agent: GPTBot\nDisallow: /\n", {}),
                   ("https://b.example", "2024-01-01", 200, "User-agent: *\nDisallow: /\n", {}),
                   ("https://c.example", "2024-01-01", 200, "User-agent: PerplexityBot\nDisallow: /\n", {}))
    training = ConsentFilter(store, DecideConfig(agents="training"))
    star = ConsentFilter(store, DecideConfig(agents="*"))
    all_ai = ConsentFilter(store, DecideConfig(agents="all-ai"))
    custom = ConsentFilter(store, DecideConfig(agents="PerplexityBot, CCBot"))
    a, b, c = _doc("https://a.example/1"), _doc("https://b.example/1"), _doc("https://c.example/1")
    assert [training(x).keep for x in (a, b, c)] == [False, False, True]
    assert [star(x).keep for x in (a, b, c)] == [True, False, True]  # `*` ignores agent-specific groups
    assert [all_ai(x).keep for x in (a, b, c)] == [False, False, False]
    assert [custom(x).keep for x in (a, b, c)] == [True, False, False]
    assert training(a).agent == "GPTBot" and star(b).agent == "*"
    assert len(resolve_policy("all-ai").agents) > 150 and "GPTBot" in resolve_policy("all-ai").agents
    with pytest.raises(ConfigError):
        resolve_policy("GPTBot; rm -rf /")


def test_tos_advisory_and_enforce(tmp_path):
    labels = tmp_path / "tos.csv"
    labels.write_text("domain,label\nexample.org,No AI\nopen.example,Unrestricted Use\n")
    store = _store(("https://www.example.org", "2024-01-01", 200, "User-agent: *\nAllow: /\n", {}),
                   ("https://open.example", "2024-01-01", 404, None, {}))
    adv = ConsentFilter(store, DecideConfig(tos_labels=labels))
    enf = ConsentFilter(store, DecideConfig(tos_labels=labels, tos="enforce"))
    d = adv(_doc("https://www.example.org/a"))
    assert d.keep and d.flags == ("tos_no_ai",)  # matched on the registrable domain
    d = enf(_doc("https://www.example.org/a"))
    assert not d.keep and d.reason == "tos" and d.rule == "ToS: No AI"
    assert enf(_doc("https://open.example/a")).keep
    bad = tmp_path / "bad.csv"
    bad.write_text("example.org,Maybe\n")
    with pytest.raises(Exception, match="unknown ToS label"):
        ConsentFilter(store, DecideConfig(tos_labels=bad))


def test_as_of_fallback_and_http_https_are_separate_origins():
    store = _store(("https://s.example", "2025-01-01", 200, "User-agent: *\nDisallow: /\n", {}),
                   ("http://s.example", "2020-01-01", 200, "User-agent: *\nAllow: /\n", {}))
    f = ConsentFilter(store)
    d = f(_doc("https://s.example/a"))  # crawled 2024-06, first capture 2025: the first capture decides
    assert d.reason == "robots_full" and "asof_fallback" in d.flags
    assert f(_doc("http://s.example/a")).keep
    assert f(_doc("HTTPS://S.EXAMPLE:443/a")).reason == "robots_full"


URLS = [
    ("https://Example.ORG/a?b=1#frag", ("https://example.org", "/a?b=1")),
    ("http://example.org:80", ("http://example.org", "/")),
    ("https://example.org:8443/x", ("https://example.org:8443", "/x")),
    ("https://user:pw@example.org/x", ("https://example.org", "/x")),
    ("https://bücher.example/straße", ("https://xn--bcher-kva.example", "/straße")),
    ("https://例え.jp/", ("https://xn--r8jz45g.jp", "/")),
    ("https://example.org?q", ("https://example.org", "/?q")),
]


@pytest.mark.parametrize("url,expected", URLS)
def test_split_url(url, expected):
    assert split_url(url) == expected


@pytest.mark.parametrize("url,reason", [("", "no_url"), ("javascript:alert(1)", "bad_scheme"), ("data:text/plain,hi", "bad_scheme"),
                                        ("https://", "no_host"), ("https://a..b/", "bad_host"), ("http://x:port/", "bad_host"),
                                        ("https://" + "a" * 70 + "é.example/", "bad_host")])
def test_split_url_rejects(url, reason):
    with pytest.raises(BadURL) as e:
        split_url(url)
    assert e.value.reason == reason


def test_registrable_domain_uses_private_suffixes():
    assert registrable_domain("https://news.bbc.co.uk") == "bbc.co.uk"
    assert registrable_domain("https://alice.github.io") == "alice.github.io"


def test_config_section_and_errors(tmp_path):
    from glotta.pruning.consent import FilterConfig

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("consent_filter:\n  agents: all-ai\n  as_of: strictest\n")
    cfg = load_config(FilterConfig, cfg_file, ["tos=enforce"], section="consent_filter")
    assert (cfg.agents, cfg.as_of, cfg.tos) == ("all-ai", "strictest", "enforce")
    with pytest.raises(ConfigError, match="as_of"):
        load_config(FilterConfig, None, ["as_of=yesterday"])


def test_cli_check_explains_a_url(tmp_path):
    from typer.testing import CliRunner

    from glotta.launch.cli import app

    store = tmp_path / "s.jsonl"
    SnapshotStore.append(store, [Snapshot("https://a.example", "2024-01-01", 200,
                                          "User-agent: *\nDisallow: /private\n\nUser-agent: GPTBot\nDisallow: /\n", "x", "t")])
    r = CliRunner().invoke(app, ["consent", "check", "https://a.example/private/1", "--store", str(store), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert (res["keep"], res["reason"], res["agent"], res["rule"]) == (False, "robots_full", "GPTBot", "Disallow: / (line 5)")
    by_agent = {a["agent"]: a for a in res["agents"]}
    assert by_agent["GPTBot"]["status"] == "all" and by_agent["CCBot"]["detail"] == "some_disallow_important_dir"
    assert by_agent["CCBot"]["may_fetch"] is False
    r = CliRunner().invoke(app, ["consent", "check", "https://a.example/x", "--store", str(store), "--agents", "*"])
    assert r.exit_code == 0 and r.output.startswith("keep: robots_path_allowed")
    r = CliRunner().invoke(app, ["consent", "check", "https://a.example/x", "--store", str(tmp_path / "missing.jsonl")])
    assert r.exit_code == 2 and "snapshot store not found" in r.output
