"""Table-driven robots.txt cases: per-agent classification and per-URL decisions.

Each case: HTTP status, body, expected (status, sub-class) per agent, and (path, agent, may fetch).
Several cases are the parser bugs documented for the Consent in Crisis code (shared notes §1).
"""
from __future__ import annotations

import pytest

from glotta.pruning.consent.robots import MAX_BYTES, Robots

HUGE = (
    b"User-agent: *\nDisallow: /private\n"
    + b"# a padded comment line that makes this robots.txt ten megabytes long\n" * 150_000
    + b"User-agent: GPTBot\nDisallow: /\n"  # beyond 500 KiB: never read
)

CASES = [
    ("stacked_agents", 200,
     "User-agent: *\nDisallow: /private\n\nUser-agent: GPTBot\nUser-agent: CCBot\nDisallow: /\n",
     {"GPTBot": ("all", "all"), "CCBot": ("all", "all"), "*": ("some", "some_disallow_important_dir")},
     [("/page", "GPTBot", False), ("/page", "CCBot", False), ("/page", "*", True), ("/private/x", "*", False)]),
    ("case_variants", 200,
     "USER-AGENT: gptBOT\ndisallow: /\nuser-agent: *\nALLOW: /\n",
     {"GPTBot": ("all", "all"), "CCBot": ("none", "none")},
     [("/page", "GPTBot", False), ("/page", "CCBot", True)]),
    ("wildcards", 200,
     "User-agent: *\nDisallow: /*.pdf$\nDisallow: /*/print\n",
     {"GPTBot": ("some", "some_pattern_restrictions")},
     [("/a/b.pdf", "GPTBot", False), ("/a/b.pdf?x=1", "GPTBot", True), ("/de/print/1", "GPTBot", False),
      ("/de/page", "GPTBot", True)]),
    ("allow_only_ads_txt", 200,
     "User-agent: *\nAllow: /ads.txt\nAllow: /app-ads.txt\nDisallow: /\n",
     {"GPTBot": ("all", "all_trivial_allows"), "*": ("all", "all_trivial_allows")},
     [("/ads.txt", "GPTBot", True), ("/page", "GPTBot", False)]),
    ("disallow_slash_star", 200,
     "User-agent: GPTBot\nDisallow: /*\n",
     {"GPTBot": ("all", "all"), "CCBot": ("none", "none")},
     [("/x", "GPTBot", False), ("/x", "CCBot", True)]),
    ("content_signal", 200,
     "User-agent: *\nContent-Signal: search=yes, ai-train=no\nAllow: /\n",
     {"GPTBot": ("none", "none"), "*": ("none", "none")},
     [("/page", "GPTBot", True)]),
    ("empty_file", 200, "", {"GPTBot": ("none", "none"), "*": ("none", "none")}, [("/page", "GPTBot", True)]),
    ("missing_file", 404, None, {"GPTBot": ("no_robots", "no_robots_http_404")}, [("/page", "GPTBot", True)]),
    ("forbidden", 401, None, {"GPTBot": ("no_robots", "no_robots_http_401")}, [("/page", "GPTBot", True)]),
    ("server_error", 503, None, {"GPTBot": ("unreachable", "unreachable_http_503")}, [("/page", "GPTBot", False)]),
    ("unreachable", 0, None, {"*": ("unreachable", "unreachable_http_0")}, [("/page", "*", False)]),
    ("versioned_token", 200, "User-agent: GPTBot/1.0\nDisallow: /\n",
     {"GPTBot": ("all", "all")}, [("/page", "GPTBot", False)]),
    ("bom_crlf", 200, "\ufeffUser-agent: CCBot\r\nDisallow: /\r\n",
     {"CCBot": ("all", "all"), "GPTBot": ("none", "none")}, [("/page", "CCBot", False), ("/page", "GPTBot", True)]),
    ("query_rules_ignored_for_class", 200, "User-agent: *\nDisallow: /?\nDisallow: /*?sort=\n",
     {"GPTBot": ("none", "none")}, [("/page", "GPTBot", True), ("/?q=1", "GPTBot", False)]),
    ("numeric_token_008", 200, "User-agent: 008\nDisallow: /\n\nUser-agent: *\nDisallow: /tmp\n",
     {"GPTBot": ("some", "some_other"), "008": ("all", "all")}, [("/page", "GPTBot", True), ("/tmp/a", "GPTBot", False)]),
    ("token_boundary", 200, "User-agent: bot\nDisallow: /\n",
     {"GPTBot": ("none", "none")}, [("/page", "GPTBot", True)]),
    ("allow_equals_disallow", 200, "User-agent: *\nAllow: /\nDisallow: /\n",
     {"GPTBot": ("none", "none")}, [("/x", "GPTBot", True)]),
    ("real_allow_under_full_block", 200, "User-agent: GPTBot\nAllow: /blog/\nDisallow: /\n",
     {"GPTBot": ("some", "some_other")}, [("/blog/a", "GPTBot", True), ("/shop", "GPTBot", False)]),
    ("merged_groups", 200, "User-agent: GPTBot\nDisallow: /a\n\nUser-agent: gptbot\nDisallow: /\n",
     {"GPTBot": ("all", "all")}, [("/b", "GPTBot", False)]),
    ("crawl_delay_only", 200, "User-agent: *\nCrawl-delay: 10\n",
     {"GPTBot": ("none", "none_crawl_delay")}, [("/x", "GPTBot", True)]),
    ("sitemap_only", 200, "Sitemap: https://example.org/s.xml\nUser-agent: *\nDisallow:\n",
     {"GPTBot": ("none", "none_sitemap")}, [("/x", "GPTBot", True)]),
    ("garbage", 200, b"\x00\x01<<>>{}\n:::\nfoo bar baz\n\xff\xfe",
     {"GPTBot": ("none", "none")}, [("/x", "GPTBot", True)]),
    ("non_utf8", 200, b"User-agent: GPTBot\nDisallow: /caf\xe9\nDisallow: /admin\n",
     {"GPTBot": ("some", "some_disallow_important_dir")}, [("/page", "GPTBot", True), ("/admin/x", "GPTBot", False)]),
    ("html_soft_404", 200, "<!DOCTYPE html>\n<html><body>User-agent: * Disallow: /</body></html>\n",
     {"GPTBot": ("none", "none")}, [("/x", "GPTBot", True)]),
    ("ten_megabytes", 200, HUGE,
     {"GPTBot": ("some", "some_disallow_important_dir")}, [("/page", "GPTBot", True), ("/private", "GPTBot", False)]),
]


@pytest.mark.parametrize("name,status,body,classes,urls", CASES, ids=[c[0] for c in CASES])
def test_robots_case(name, status, body, classes, urls):
    data = body.encode("utf-8") if isinstance(body, str) else body
    robots = Robots.from_http(status, data)
    for agent, (status_, detail) in classes.items():
        st = robots.classify(agent)
        assert (st.status, st.detail) == (status_, detail), f"{name}: {agent} -> {st}"
    for path, agent, allowed in urls:
        assert robots.can_fetch(f"https://example.org{path}", agent) is allowed, f"{name}: {agent} {path}"
        assert robots.can_fetch(path, agent) is allowed, f"{name}: {agent} {path} (path only)"


def test_evidence_names_the_rule_and_line():
    robots = Robots.parse(b"User-agent: *\nDisallow: /private\n\nUser-agent: GPTBot\nUser-agent: CCBot\nDisallow: /\n")
    assert robots.classify("CCBot").rule == "Disallow: / (line 6)"
    assert robots.matched_rule("/private/a", "*") == "Disallow: /private (line 2)"
    wild = Robots.parse(b"User-agent: *\nDisallow: /*.pdf$\nAllow: /public/*.pdf$\n")
    assert wild.matched_rule("/public/a.pdf", "GPTBot") == "Allow: /public/*.pdf$ (line 3)"
    assert wild.can_fetch("/public/a.pdf", "GPTBot") and not wild.can_fetch("/a.pdf", "GPTBot")


def test_content_signal_scoping():
    text = (b"User-agent: *\nContent-Signal: ai-train=no, search=yes\nAllow: /\n\n"
            b"User-agent: GPTBot\nContent-Signal: ai-train=yes\nAllow: /\n")
    robots = Robots.parse(text)
    assert robots.classify("GPTBot").group_lines == "User-agent: GPTBot (line 5)"
    assert robots.classify("GPTBot").ai_train == "yes"  # its own group states one
    assert robots.classify("CCBot").ai_train == "no"  # inherits the `*` signal
    assert robots.classify("CCBot").signal_rule == "Content-Signal: ai-train=no (line 2)"
    assert robots.classify("CCBot").group_lines == "User-agent: * (line 1)"
    # Without a rule in the `*` group, the blank line does not end it: GPTBot joins that group.
    merged = Robots.parse(text.replace(b"Allow: /\n\n", b"\n"))
    assert merged.classify("GPTBot").ai_train == "no"
    # IETF AIPREF vocabulary in robots.txt
    usage = Robots.parse(b"User-agent: *\nContent-Usage: train-ai=n\nAllow: /\n")
    assert usage.classify("GPTBot").ai_train == "no"
    assert usage.classify("GPTBot").signal_rule == "Content-Usage: train-ai=n (line 2)"
    scoped = Robots.parse(b"User-agent: *\nContent-Usage: /blog/ train-ai=n\nAllow: /\n")
    assert scoped.classify("GPTBot").ai_train == "" and "path-scoped" in scoped.warnings[0]
    # A Content-Signal line between two User-agent lines does not end the run (RFC 9309 2.2,
    # Google's parser): both agents share the Disallow that follows, and the signal.
    r2 = Robots.parse(b"User-agent: a\nContent-Signal: ai-train=no\nUser-agent: GPTBot\nDisallow: /\n")
    assert r2.classify("a").status == "all" and not r2.can_fetch("/x", "a")
    assert r2.classify("GPTBot").status == "all" and r2.classify("GPTBot").ai_train == "no"


def test_bad_input_warnings():
    assert "truncated to 512000 bytes" in Robots.parse(HUGE).warnings
    assert "invalid UTF-8 replaced" in Robots.parse(b"User-agent: *\nDisallow: /caf\xe9\n").warnings
    assert any("HTML" in w for w in Robots.parse(b"<html><body>hi</body></html>").warnings)
    assert Robots.parse(b"\x00\x01<<>>{}\n:::\nfoo bar baz\n").invalid_lines >= 2
    assert len(HUGE) > 10_000_000 > MAX_BYTES


@pytest.mark.parametrize("name,status,body,classes,urls", CASES, ids=[c[0] for c in CASES])
def test_one_pass_path_decision_agrees_with_protego(name, status, body, classes, urls):
    data = body.encode("utf-8") if isinstance(body, str) else body
    robots = Robots.from_http(status, data)
    for path, agent, allowed in urls + [("/robots.txt", "GPTBot", status < 500), ("/a%20b/ü?x=1", "GPTBot", None)]:
        ok, rule = robots.path_decision(path, agent)
        assert ok is robots.can_fetch(path, agent), (name, path, agent)
        assert ok or robots.kind != "parsed" or rule.startswith("Disallow: ")


def test_one_pass_agrees_with_protego_on_many_paths():
    """The rule-walk shortcut must never change protego's answer: compare on a grid of paths."""
    robots = Robots.parse(
        "User-agent: *\nCrawl-delay: 10\nDisallow: /admin/\nDisallow: /*?sort=\nDisallow: /*/print$\n"
        "Disallow: /*.pdf$\nAllow: /core/*.css$\nDisallow: /core/\nDisallow: /a*b*c\nAllow: /a*b*c/ok\n"
        "Disallow: /exact$\nDisallow: /%7Euser/\n")
    heads = ["/", "/admin/", "/core/", "/core/x.css", "/a", "/axbyc", "/axbyc/ok", "/exact", "/~user/", "/news/"]
    tails = ["", "1", "/print", "/print/2", ".pdf", ".pdf?x", "?sort=asc", "?q=1&sort=1", "/ok", "c"]
    for h in heads:
        for t in tails:
            path = h + t
            ok, rule = robots.path_decision(path, "GPTBot")
            assert ok is robots.can_fetch(path, "GPTBot"), path
            assert ok or rule.startswith("Disallow:"), path


def test_prefix_memo_agrees_with_protego():
    """Plain-prefix groups remember answers per prefix; repeated and near-miss paths must still agree."""
    robots = Robots.parse("User-agent: GPTBot\nDisallow: /private/\nAllow: /private/open/\nDisallow: /tmp\n")
    paths = ["/private/a", "/private/open/b", "/private/ope", "/privat", "/tmp", "/tmpx/1", "/tm", "/", "/news/1",
             "/private/open/", "/Private/a", "/private/%6Fpen/x"]
    for _ in range(2):  # the second round is answered from the memo
        for path in paths:
            ok, rule = robots.path_decision(path, "GPTBot")
            assert ok is robots.can_fetch(path, "GPTBot"), path
            assert ok or rule in ("Disallow: /private/ (line 2)", "Disallow: /tmp (line 4)"), (path, rule)
