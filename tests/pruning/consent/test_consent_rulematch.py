"""The compiled rule matcher (rulematch.py) against protego's own rule walk, on the real robots.txt
corpus of the referee test: every group of every file, paths made from the file's rules and their
variants (longer, with a query, with characters protego must quote). Proof that the one-regex
matcher has protego's semantics (longest match, allow wins ties, `*`, `$`, quoting)."""
from __future__ import annotations

from protego import Protego
from protego._utils import _quote_path

from glotta.pruning.consent.robots import Robots
from glotta.pruning.consent.rulematch import CompiledRules, quote_path

from robots_corpus import corpus, probe_paths

STRIDE = 3  # every 3rd of the 4,231 files (the full corpus agrees too: docs/consent.md)


def _variants(path: str) -> list[str]:
    return [path, path + "x", path + "/", path + "?a=1&b=2", path + "?", path + "/index.html",
            path + "%7e x", path + "/ü?q=é", path.upper(), path + "x.pdf", path + "/print"]


def test_compiled_rules_agree_with_protego_on_real_files():
    files = sorted(p for p in corpus().iterdir() if not p.name.startswith("."))[::STRIDE]
    compared = groups = 0
    for f in files:
        data = f.read_bytes()
        robots = Robots.parse(data)
        if not robots.by_agent:
            continue
        paths = [v for p in probe_paths(data.decode("utf-8", "replace"), limit=8) for v in _variants(p)]
        for key in robots.by_agent:
            rules = robots.compiled(key)
            assert isinstance(rules, CompiledRules), (f.name, key)
            reference = robots._matcher(key)._get_matching_rule_set("x")  # protego's rule walk of this group
            groups += 1
            for path in paths:
                ok, evidence = rules.decide(quote_path(path))
                assert ok is reference.can_fetch(path), (f.name, key, path)
                assert ok or evidence.startswith("Disallow: "), (f.name, key, path, evidence)
                compared += 1
    print(f"\ncompiled vs protego: {len(files)} files, {groups} groups, {compared} (path, group) decisions")
    assert len(files) >= 1000 and compared >= 100_000


def test_quote_path_fast_case_is_protegos_quoting():
    for path in ("/a", "/a?b=c&d=e", "/a?", "/a??b", "/x&y", "/~u/=x", "/a-b_c.d", "//evil", "/a%20b?x",
                 "/a b", "/ü", "/a;b?c", "/a#frag", "/a?b#c&d", "/%7E?%3D"):
        assert quote_path(path) == _quote_path(path), path


def test_hostile_wildcards_match_like_protego():
    """Many `*` in one rule: protego's find chain is linear; the regex uses atomic groups so it is
    too (a plain `.*` chain would backtrack polynomially on a long URL of `a`s)."""
    body = "User-agent: *\nDisallow: /*a*a*a*a*a*a*a*a*b\nAllow: /*a*a*a*a*a*a*c$\nDisallow: /x*y*$\n"
    ref = Protego.parse(body)
    robots = Robots.parse(body)
    for path in ("/" + "a" * 3000, "/" + "a" * 3000 + "b", "/" + "a" * 3000 + "c", "/xay", "/xy", "/x", "/ab"):
        assert robots.can_fetch(path, "GPTBot") is ref.can_fetch(path, "GPTBot"), path[:20]
        assert robots.path_decision(path, "GPTBot")[0] is ref.can_fetch(path, "GPTBot"), path[:20]
    assert robots.can_fetch("/robots.txt?x=1", "GPTBot") and ref.can_fetch("/robots.txt?x=1", "GPTBot")


def test_order_is_protegos_longest_first_allow_on_ties():
    rules = Robots.parse("User-agent: *\nDisallow: /a\nAllow: /a\nDisallow: /a/b*\nAllow: /a/b/c$\n"
                         "Disallow: /*.pdf$\nAllow: /pub/*.pdf$\n").compiled("*")
    assert rules.decide("/a") == (True, "")  # tie: allow wins
    assert rules.decide("/a/bz") == (False, "Disallow: /a/b* (line 4)")
    assert rules.decide("/a/b/c") == (True, "")
    assert rules.decide("/a/b/cd") == (False, "Disallow: /a/b* (line 4)")
    assert rules.decide("/x/y.pdf") == (False, "Disallow: /*.pdf$ (line 6)")
    assert rules.decide("/pub/y.pdf") == (True, "")
    assert rules.decide("/pub/y.pdfx") == (True, "")


def test_large_groups_are_chunked_and_agree_with_protego():
    """Groups larger than one regex chunk (CHUNK rules): the first chunk with a match decides."""
    from glotta.pruning.consent.rulematch import CHUNK

    body = "User-agent: *\n" + "".join(f"Disallow: /p{i}/*x{i}*y$\nAllow: /p{i}/keep\nDisallow: /p{i}/\n" for i in range(60))
    robots, ref = Robots.parse(body), Protego.parse(body)
    rules = robots.compiled("GPTBot")
    assert rules.size > 4 * CHUNK
    for i in (0, 17, 59):
        for path in (f"/p{i}/ax{i}by", f"/p{i}/keep", f"/p{i}/keepx{i}y", f"/p{i}/z", f"/p{i}", "/q", f"/p{i}/x{i}y"):
            ok, evidence = rules.decide(quote_path(path))
            assert ok is ref.can_fetch(path, "GPTBot"), path
            assert ok or evidence == robots.matched_rule(path, "GPTBot"), (path, evidence)
