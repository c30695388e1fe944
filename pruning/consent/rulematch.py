"""One robots.txt group's rules compiled into a single regular expression, with protego's semantics.

protego (>= 0.7) decides a path by walking the group's rules in its own order (longest quoted
pattern first, Allow before Disallow on ties) and stopping at the first rule that matches; a
pattern matches as a prefix of the quoted path, `*` stands for any run of characters and a
trailing `$` anchors the end. That walk is a Python loop per document. Here the same sorted rules
(protego's own `_RuleSet._rules`, so quoting, `$`/`%24` doubling and the `index.html` reading are
protego's) become the alternatives of one anchored regex, in the same order: Python's `re` tries
alternatives left to right and takes the first that matches at position 0, which is exactly
"the first rule that matches", and `lastindex` names it. One C-level call per (path, group).

Wildcards keep protego's linear cost: each `*part` is an atomic `(?>.*?part)` (the leftmost
occurrence of `part` after the previous one, never revisited: protego's `str.find` chain), so a
hostile `/*a*a*a*a*b` cannot make the regex backtrack over the URL more than once per part.

`quote_path` is protego's path normaliser with one more fast case: a path whose characters quote to
themselves except `?` and `&` (query strings) is rewritten with two replaces instead of urlsplit +
quote. tests/pruning/consent/test_consent_rulematch.py checks both against protego on the real
robots.txt corpus of the referee test.
"""
from __future__ import annotations

import re
from urllib.parse import urlparse

try:  # protego's URL normaliser: both sides of a comparison must be quoted the same way
    from protego._utils import _quote_path
except ImportError:  # pragma: no cover
    _quote_path = None

ALLOWED = (True, "")
# A path protego's quoting leaves alone but for `?` -> %3F and `&` -> %26 (it keeps only `/`, `%`
# and `=` verbatim among the reserved characters); `//...` is read as an authority, so it is left out.
_SIMPLE = re.compile(r"/(?!/)[A-Za-z0-9_.~/=?&-]*").fullmatch


def always_allowed(url: str) -> bool:
    """/robots.txt itself (RFC 9309 2.2.2), read as protego reads it (a query does not change it)."""
    return "/robots.txt" in url and urlparse(url).path == "/robots.txt"


def quote_path(path: str) -> str:
    """A document path (with its query) as protego compares it with the rules."""
    if _SIMPLE(path):
        if "?" in path:
            path = path.replace("?", "%3F")
        if "&" in path:
            path = path.replace("&", "%26")
        return path
    return _quote_path(path) if _quote_path is not None else path


def pattern_regex(pattern: str) -> str:
    """protego's `_URLPattern.match` for one quoted pattern, as a regex anchored at the start."""
    if "*" not in pattern:
        if pattern.endswith("$"):
            return re.escape(pattern[:-1]) + r"\Z"
        return re.escape(pattern)
    dollar = pattern.endswith("$")
    parts = re.sub(r"\*+", "*", pattern[:-1] if dollar else pattern).split("*")
    out = [re.escape(parts[0])]
    for part in parts[1:-1]:
        out.append(f"(?>.*?{re.escape(part)})")
    last = parts[-1]
    if dollar:
        out.append(f".*{re.escape(last)}\\Z")  # `url.endswith(last)` after the committed parts
    elif last:
        out.append(f"(?>.*?{re.escape(last)})")
    return "".join(out)


CHUNK = 32  # rules per capturing regex: `re` saves every group's mark at each alternative, so one
# alternation over n rules with n groups costs O(n^2) per match (3.4 ms at 3,000 rules); chunks of
# 32 keep each match linear, and a group-free regex over all rules rules out a no-match in one call


class CompiledRules:
    """`decide(quoted_path) -> (allowed, evidence)` for one group: the first of protego's sorted
    rules that matches decides; no match allows. `evidence` maps a quoted Disallow pattern to the
    text shown in the audit (`Disallow: /x (line 4)`)."""

    __slots__ = ("_any", "_chunks", "size")

    def __init__(self, rules, evidence: dict[str, str]):
        """`rules`: (field, quoted pattern) in protego's order (`_RuleSet._rules` after finalize)."""
        self.size = len(rules)
        pats = [pattern_regex(pat) for _, pat in rules]
        results = [ALLOWED if fld == "allow" else (False, evidence.get(pat) or f"Disallow: {pat}") for fld, pat in rules]
        # Chunks in protego's order: the first chunk with a match holds the first rule that matches,
        # and inside it the alternation takes the first alternative that matches; `lastindex` names it.
        self._chunks = tuple(
            (re.compile("|".join(f"({p})" for p in pats[i:i + CHUNK]), re.S).match, (ALLOWED, *results[i:i + CHUNK]))
            for i in range(0, len(pats), CHUNK))
        self._any = re.compile("|".join(f"(?:{p})" for p in pats), re.S).match if len(self._chunks) > 1 else None

    def decide(self, quoted: str) -> tuple[bool, str]:
        if self._any is not None and self._any(quoted) is None:
            return ALLOWED
        for match, results in self._chunks:
            m = match(quoted)
            if m is not None:
                return results[m.lastindex]
        return ALLOWED

    @classmethod
    def from_protego(cls, ruleset, evidence: dict[str, str]) -> "CompiledRules":
        """From a protego `_RuleSet` whose rules are finalised (sorted)."""
        return cls([(r.field, r.value._pattern) for r in ruleset._rules], evidence)
