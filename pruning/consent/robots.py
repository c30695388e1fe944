"""robots.txt: RFC 9309 groups and agents, rule matching through protego, the paper's taxonomy.

Group selection is ours (protego's prefix matching applies `User-agent: Applebot` to
Applebot-Extended); rule matching inside a group (longest match, `*`/`$`, quoting) has protego's
semantics: protego parses and sorts the group's rules, rulematch.py compiles them into one regex:
  * a group is a run of `User-agent` lines followed by rules; only Allow/Disallow lines end a
    run (RFC 9309 2.2, Google's parser): Crawl-delay, Sitemap, Content-Signal or unknown lines
    between two `User-agent` lines do not split it;
  * the product token (the leading `[A-Za-z0-9_-]` run of the value: `GPTBot/1.0` -> GPTBot)
    matches the agent exactly, case-insensitively, never as a prefix; `*` is the whole token only;
  * an agent named by no group takes the `*` group (all `*` groups merge, as do all groups of
    one agent); an agent named by a group without rules is allowed everything;
  * per-agent classification none / some / all with the paper's sub-classes, where
    `Disallow: /` (or `/*`) with only trivial allows (/ads.txt, ...) counts as full restriction;
  * `Content-Signal: ai-train=no` and AIPREF `Content-Usage: train-ai=n` lines per group;
  * HTTP status semantics of RFC 9309 (4xx = no robots.txt = allow all; 5xx or unreachable =
    disallow all);
  * input hygiene: BOM, non-UTF-8 bytes, a 500 KiB cap, HTML served as robots.txt.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from protego import Protego

from glotta.pruning.consent.rulematch import ALLOWED, CompiledRules, always_allowed, quote_path

try:  # protego's URL normaliser: rules and paths are quoted as protego quotes them
    from protego._utils import _quote_path, _quote_pattern
except ImportError:  # pragma: no cover
    _quote_path = _quote_pattern = None

try:  # the same field reader protego uses (synonyms, misspellings), so both see the same lines
    from protego._protego import _extract_directive
except ImportError:  # pragma: no cover - protego moved its internals; fall back to "field: value"
    def _extract_directive(line: str):
        if ":" not in line:
            return None
        f, v = line.split(":", 1)
        return f.strip().lower(), v.strip()

MAX_BYTES = 500 * 1024  # RFC 9309 2.5: parse at least 500 KiB; we parse exactly that much
STAR = "*"
UA_FIELDS = {"user-agent", "useragent", "user agent"}
ALLOW_FIELDS = {"allow"}
DISALLOW_FIELDS = {"disallow", "dissallow", "dissalow", "disalow", "diasllow", "disallaw"}
SIGNAL_FIELD = "content-signal"
SITE_WIDE = {"sitemap", "sitemaps", "site-map", "host"}

# `Disallow` values that block every path, and `Allow` values that leave nothing worth training on.
FULL_DISALLOWS = {"/", "/*", "*", "/*$"}
TRIVIAL_ALLOWS = {"/ads.txt", "/app-ads.txt", "/sellers.json", "/robots.txt", "/humans.txt",
                  "/security.txt", "/favicon.ico", "/ads.txt$", "/app-ads.txt$", "/robots.txt$"}
IMPORTANT_DIRS = ("/admin", "/private", "/confidential")  # the paper's "important directories"

USAGE_FIELD = "content-usage"  # IETF AIPREF (draft-ietf-aipref-attach): `Content-Usage: train-ai=n`
_TOKEN = re.compile(r"[A-Za-z0-9_-]*")
# Matchers and rule walks shared by every robots.txt whose selected group has the same rules
# (with line numbers, so the evidence is the same); bounded, cleared when full.
MAX_SHARED = 4096
_MATCHERS: dict[tuple, Protego] = {}
_RULESETS: dict[tuple, object] = {}


def shared(cache: dict, key, build):
    """The entry of a cache shared by every parsed file (matchers, compiled rules), built on first
    use; the cache is cleared when it holds MAX_SHARED entries (bounded memory)."""
    hit = cache.get(key)
    if hit is None:
        if len(cache) >= MAX_SHARED:
            cache.clear()
        hit = cache[key] = build()
    return hit


def normalise_agent(value: str) -> str:
    """The product token of a `User-agent` value, lowercased, read as Google's reference parser
    reads it: the leading run of `[A-Za-z0-9_-]` (RFC 9309 2.2.1 allows letters, `_` and `-`; we
    also keep digits, so `AI2Bot` and `img2dataset` are names, not `AI` and `img`). It is then
    compared whole, never as a prefix: `GPTBot/1.0` -> `gptbot`, `Sogou web spider` -> `sogou`,
    `Go!Zilla` -> `go` (not Google-Extended), `*OrkashBot*` -> '' (matches nobody), `*` -> `*`."""
    value = value.strip()
    if value == STAR or (value[:1] == STAR and value[1:2].isspace()):  # `* extra`: Google reads `*`
        return STAR
    return _TOKEN.match(value).group(0).lower()


@dataclass
class Group:
    agents: list[str]
    lines: list[int] = field(default_factory=list)  # line of each `User-agent` entry of `agents`
    raw: list[str] = field(default_factory=list)  # the `User-agent` values as written
    rules: list[tuple[str, str, int]] = field(default_factory=list)  # (allow|disallow, value, line)
    crawl_delay: bool = False
    signals: dict[str, tuple[str, int]] = field(default_factory=dict)  # key -> (yes|no, line)


@dataclass(frozen=True)
class AgentStatus:
    agent: str
    group: str  # the group that applies: a normalised agent token, "*" or "" (none)
    status: str  # none | some | all | no_robots | unreachable
    detail: str  # sub-class, e.g. all_trivial_allows, some_pattern_restrictions, none_sitemap
    rule: str = ""  # evidence for `all`: "Disallow: / (line 7)"
    ai_train: str = ""  # Content-Signal ai-train / Content-Usage train-ai value that applies: yes | no | ""
    signal_rule: str = ""
    group_lines: str = ""  # evidence: `User-agent: GPTBot (line 4)`, `User-agent: * (lines 1, 9)`, ""


def decode(data: bytes | str, max_bytes: int = MAX_BYTES) -> tuple[str, list[str]]:
    """Bytes -> text with the stated rules: cap at max_bytes (cut at the last newline), drop a
    BOM, replace invalid UTF-8. Returns (text, warnings)."""
    warnings: list[str] = []
    if isinstance(data, str):
        data = data.encode("utf-8", errors="replace")
    if len(data) > max_bytes:
        cut = data.rfind(b"\n", 0, max_bytes)
        data = data[: cut if cut > 0 else max_bytes]
        warnings.append(f"truncated to {max_bytes} bytes")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        warnings.append("invalid UTF-8 replaced")
    if text.lstrip()[:15].lower().startswith(("<!doctype", "<html")):
        warnings.append("HTML instead of robots.txt (no rules read)")
    return text, warnings


class Robots:
    """One robots.txt (or its absence) for one origin. Build with parse() or from_http()."""

    def __init__(self, kind: str = "parsed", http_status: int = 200):
        self.kind = kind  # parsed | unavailable (4xx, allow all) | unreachable (5xx/network, disallow all)
        self.http_status = http_status
        self.groups: list[Group] = []
        self.by_agent: dict[str, list[Group]] = {}
        self.site_signals: dict[str, tuple[str, int]] = {}
        self.sitemaps = 0
        self.warnings: list[str] = []
        self.invalid_lines = 0
        self.rules_outside_group = 0
        self._matchers: dict[str, Protego] = {}
        self._status: dict[str, AgentStatus] = {}
        self._select: dict[str, str] = {}
        self._rulesets: dict[str, object] = {}
        self.policy_views: dict[str, tuple] = {}  # policy version -> ConsentFilter._policy_view (decide.py)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_http(cls, status: int, body: bytes | str | None, max_bytes: int = MAX_BYTES) -> "Robots":
        """RFC 9309 2.3.1: 2xx parse; 4xx (and 3xx left after redirects) allow all; 5xx / 0 (unreachable) disallow all."""
        if 200 <= status < 300:
            return cls.parse(body or b"", max_bytes)
        if 300 <= status < 500:
            return cls("unavailable", status)
        return cls("unreachable", status)

    @classmethod
    def parse(cls, data: bytes | str, max_bytes: int = MAX_BYTES) -> "Robots":
        self = cls("parsed", 200)
        text, self.warnings = decode(data, max_bytes)
        if any(w.startswith("HTML") for w in self.warnings):
            return self._index()  # a soft-404 page: no rules (its text may look like directives)
        current: Group | None = None
        ended = True  # an Allow/Disallow line was seen since the last `User-agent` line
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            parsed = _extract_directive(line) if line else None
            if parsed is None:
                if line:
                    self.invalid_lines += 1
                continue
            fld, value = parsed
            if fld in UA_FIELDS:
                if ended:
                    current = Group(agents=[])
                    self.groups.append(current)
                    ended = False
                token = normalise_agent(value)
                if token:
                    current.agents.append(token)
                    current.lines.append(lineno)
                    current.raw.append(value.strip())
            elif fld in ALLOW_FIELDS or fld in DISALLOW_FIELDS:
                if current is None:
                    self.rules_outside_group += 1  # RFC 9309: a rule before any User-agent line applies to no one
                    continue
                ended = True
                if value:  # an empty Disallow allows everything: no rule
                    current.rules.append(("allow" if fld in ALLOW_FIELDS else "disallow", value, lineno))
                    slash = value.rfind("/")
                    if fld in ALLOW_FIELDS and slash >= 0 and value.startswith("/index.htm", slash):
                        # Google's reading: allowing /dir/index.html allows the directory URL /dir/ too
                        current.rules.append(("allow", value[: slash + 1] + "$", lineno))
            elif fld == SIGNAL_FIELD or fld == USAGE_FIELD:
                if fld == USAGE_FIELD and value.startswith("/") and value.split(" ", 1)[0] not in ("/", "/*"):
                    self.warnings.append(f"line {lineno}: path-scoped Content-Usage not applied (decided per origin)")
                target = current.signals if current is not None else self.site_signals
                for k, v in _signal_pairs(fld, value):
                    target.setdefault(k, (v, lineno))  # the first statement wins, as in the drafts
            elif fld in ("crawl-delay", "crawl delay"):
                if current is not None:
                    current.crawl_delay = True
            elif fld in ("sitemap", "sitemaps", "site-map"):
                self.sitemaps += 1
            elif fld not in SITE_WIDE and fld not in ("request-rate", "request rate", "visit-time", "visit time"):
                self.invalid_lines += 1  # unknown lines are counted and, as in Google's parser, end no group
        return self._index()

    def _index(self) -> "Robots":
        for g in self.groups:
            for a in g.agents:
                lst = self.by_agent.setdefault(a, [])  # RFC 9309 2.2.1: groups of one agent merge
                if g not in lst:  # `User-agent: GPTBot` + `User-agent: gptbot` in one group
                    lst.append(g)
        return self

    # ---- queries ------------------------------------------------------------------------
    def select(self, agent: str) -> str:
        """The group key that applies to `agent` (RFC 9309 2.2.1): its own token when a group
        names it (exact, case-insensitive), else `*` when there is a `*` group, else ''."""
        key = self._select.get(agent)
        if key is None:
            name = agent.strip().lower()
            key = name if name in self.by_agent else STAR if STAR in self.by_agent else ""
            self._select[agent] = key
        return key

    def group_evidence(self, agent: str) -> str:
        """`User-agent: GPTBot (line 4)`: the User-agent lines of the group(s) that apply."""
        key = self.select(agent) if self.kind == "parsed" else ""
        if not key:
            return ""
        found = [(n, r) for g in self.by_agent[key] for a, n, r in zip(g.agents, g.lines, g.raw) if a == key]
        lines = ", ".join(str(n) for n, _ in found)
        return f"User-agent: {found[0][1]} (line{'s' if len(found) > 1 else ''} {lines})"

    def needs_path_check(self, agent: str) -> bool:
        """Whether any Disallow rule applies to the agent (`?` rules included, which the
        classification ignores): an origin classified `none` is then still matched per path."""
        return any(f == "disallow" for f, _, _ in self.rules_for(agent))

    def _matcher(self, key: str) -> Protego:
        """protego, fed only the merged rules of one group, so its group selection plays no role.
        Shared by every robots.txt with the same rules (CMS defaults differ only in Sitemap lines)."""
        m = self._matchers.get(key)
        if m is None:
            rules = tuple(r for g in self.by_agent.get(key, []) for r in g.rules)
            m = self._matchers[key] = shared(_MATCHERS, rules, lambda: Protego.parse(
                "User-agent: *\n" + "\n".join(f"{'Allow' if f == 'allow' else 'Disallow'}: {v}" for f, v, _ in rules)))
        return m

    def rules_for(self, agent: str) -> list[tuple[str, str, int]]:
        return [r for g in self.by_agent.get(self.select(agent), []) for r in g.rules]

    def can_fetch(self, url: str, agent: str) -> bool:
        """protego's answer (its quoting, rule order and implicit /robots.txt), from the group's
        compiled rules; `url` may be a full URL or a path."""
        if self.kind == "unavailable":
            return True
        if self.kind == "unreachable":
            return False
        if always_allowed(url):  # RFC 9309 2.2.2, as protego
            return True
        rules = self.compiled(agent)
        if rules is None:
            return True
        if isinstance(rules, str):
            return self._matcher(self.select(agent)).can_fetch(url, "x")
        return rules.decide(_quote_path(url))[0]

    quote = staticmethod(quote_path)  # the path as protego compares it (once per document, shared by all agents)

    def path_decision(self, path: str, agent: str, quoted: str | None = None) -> tuple[bool, str]:
        """(allowed, evidence) for a path in one regex call: protego's rule order (longest first,
        allow first on ties; the first match decides), returning the deciding rule too. Falls
        back to protego's can_fetch + matched_rule if its internals are not what 0.7 has."""
        if self.kind != "parsed":
            return self.can_fetch(path, agent), ""
        rules = self.compiled(agent)
        if rules is None or always_allowed(path):
            return ALLOWED
        if isinstance(rules, str):
            ok = self.can_fetch(path, agent)
            return ok, "" if ok else self.matched_rule(path, agent)
        return rules.decide(quoted if quoted is not None else quote_path(path))

    def compiled(self, agent: str):
        """The agent's group compiled (CompiledRules), None without a group, "public" when
        protego's internals are not readable. Shared by every robots.txt whose group has the same
        rules (with line numbers, so the evidence is the same too)."""
        rs = self._rulesets.get(agent, False)
        if rs is False:
            key = self.select(agent)
            if not key:
                rs = None
            else:
                rules = tuple(r for g in self.by_agent.get(key, []) for r in g.rules)
                rs = shared(_RULESETS, rules, lambda: self._compile(agent))
            self._rulesets[agent] = rs
        return rs

    def _compile(self, agent: str):
        key = self.select(agent)
        try:
            rs = self._matcher(key)._get_matching_rule_set("x")
        except AttributeError:  # pragma: no cover - protego's internals moved
            return "public"
        if rs is None:  # a group with no rules (only `Allow:`/empty lines) allows everything
            return CompiledRules([], {})
        if _quote_path is None or not hasattr(rs, "_rules"):  # pragma: no cover - protego moved its internals
            return "public"
        evidence = {}  # protego's quoted pattern -> our raw rule and line
        for f, v, n in self.rules_for(agent):
            if f == "disallow":
                evidence.setdefault(_quote_pattern(v), f"Disallow: {v} (line {n})")
                if "$" in v:
                    evidence.setdefault(_quote_pattern(v.replace("$", "%24")), f"Disallow: {v} (line {n})")
        try:
            return CompiledRules.from_protego(rs, evidence)
        except AttributeError:  # pragma: no cover - protego's internals moved
            return "public"

    def matched_rule(self, path: str, agent: str) -> str:
        """Evidence: the longest rule of the agent's group matching `path` (allow wins ties)."""
        best = None
        for fld, value, line in self.rules_for(agent):
            if _pattern(value).match(path):
                rank = (len(value), fld == "allow")
                if best is None or rank > best[0]:
                    best = (rank, fld, value, line)
        return "" if best is None else f"{best[1].capitalize()}: {best[2]} (line {best[3]})"

    def classify(self, agent: str) -> AgentStatus:
        st = self._status.get(agent)
        if st is None:
            # Agents without their own group share the `*` group's class: classify each group once.
            key = self.select(agent) if self.kind == "parsed" else ""
            same = self._status.get("\0" + key)
            if same is None:
                same = self._status["\0" + key] = self._classify(agent)
            st = self._status[agent] = same if same.agent == agent else AgentStatus(
                agent, same.group, same.status, same.detail, same.rule, same.ai_train, same.signal_rule, same.group_lines)
        return st

    def _classify(self, agent: str) -> AgentStatus:
        if self.kind == "unavailable":
            return AgentStatus(agent, "", "no_robots", f"no_robots_http_{self.http_status}")
        if self.kind == "unreachable":
            return AgentStatus(agent, "", "unreachable", f"unreachable_http_{self.http_status}")
        key = self.select(agent)
        groups = self.by_agent.get(key, [])
        ev = self.group_evidence(agent)
        signal, sig_line = self._signal(groups, "ai-train")
        sig_rule = f"{signal} (line {sig_line})" if signal else ""
        signal = _yes_no(signal.rsplit("=", 1)[-1]) if signal else ""
        # The paper's rule: ignore values with '?' (query-string rules say nothing about content).
        rules = [r for g in groups for r in g.rules if "?" not in r[1]]
        dis = [(v, n) for f, v, n in rules if f == "disallow"]
        allow = [v for f, v, _ in rules if f == "allow"]
        if not dis or {v for v, _ in dis} == set(allow):
            if any(g.crawl_delay for g in groups):
                detail = "none_crawl_delay"
            elif self.sitemaps:
                detail = "none_sitemap"
            else:
                detail = "none"
            return AgentStatus(agent, key, "none", detail, "", signal, sig_rule, ev)
        full = [(v, n) for v, n in dis if v in FULL_DISALLOWS]
        if full and all(_trivial(a) for a in allow):
            detail = "all_trivial_allows" if allow else "all"
            return AgentStatus(agent, key, "all", detail, f"Disallow: {full[0][0]} (line {full[0][1]})", signal, sig_rule, ev)
        if any(v.rstrip("/").lower() in IMPORTANT_DIRS for v, _ in dis):
            detail = "some_disallow_important_dir"
        elif any("*" in v or v.endswith("$") for v, _ in dis):
            detail = "some_pattern_restrictions"
        else:
            detail = "some_other"
        return AgentStatus(agent, key, "some", detail, "", signal, sig_rule, ev)

    def _signal(self, groups: list[Group], key: str) -> tuple[str, int]:
        """A Content-Signal applies from the agent's own group, else from the `*` group, else from
        lines outside any group: a site's `*` signal is a statement to every crawler."""
        for source in (groups, self.by_agent.get(STAR, []), None):
            if source is None:
                if key in self.site_signals:
                    return self.site_signals[key]
                continue
            for g in source:
                if key in g.signals:
                    return g.signals[key]
        return "", 0


class PathRules:
    """What a cached per-origin verdict needs to match document paths, without the parsed file:
    per agent the compiled rules of its group (shared by every robots.txt whose group has the
    same rules) and the group evidence. A few hundred bytes, so verdicts of many origins can stay
    cached. `checks` is the per-document loop's input: (agent, decide) in policy order."""

    __slots__ = ("rules", "evidence", "robots", "checks")

    def __init__(self, robots: "Robots", agents) -> None:
        self.rules = {a: robots.compiled(a) for a in agents}
        self.evidence = {a: robots.group_evidence(a) for a in agents}
        # protego internals not as expected ("public"): fall back to the parsed file (never with 0.7)
        public = any(isinstance(r, str) for r in self.rules.values())
        self.robots = robots if public else None
        self.checks = None if public else tuple((a, r.decide) for a, r in self.rules.items() if r is not None)

    quote = staticmethod(quote_path)

    def group_evidence(self, agent: str) -> str:
        return self.evidence[agent]

    def path_decision(self, path: str, agent: str, quoted: str | None = None) -> tuple[bool, str]:
        """Robots.path_decision for a parsed file, from the shared compiled rules."""
        rs = self.rules[agent]
        if rs is None or always_allowed(path):  # no group; /robots.txt is always allowed (RFC 9309 2.2.2)
            return ALLOWED
        if isinstance(rs, str):
            return self.robots.path_decision(path, agent, quoted)
        return rs.decide(quoted if quoted is not None else quote_path(path))


def _yes_no(value: str) -> str:
    v = value.strip().lower()
    return "no" if v in ("no", "n") else "yes" if v in ("yes", "y") else ""


def _signal_pairs(fld: str, value: str):
    """(key, statement) pairs of a Content-Signal (Cloudflare) or Content-Usage (IETF AIPREF) line;
    both vocabularies' training key is reported as `ai-train`. A Content-Usage line scoped to a path
    other than `/` is not read here (parse() records a warning naming the line)."""
    if fld == USAGE_FIELD:
        if value.startswith("/"):
            path, _, value = value.partition(" ")
            if path not in ("/", "/*"):
                return
        for part in value.split(","):
            k, _, v = part.strip().partition("=")
            if k.strip().lower() == "train-ai" and v.strip():
                yield "ai-train", f"Content-Usage: train-ai={v.strip()}"
        return
    for part in value.split(","):
        k, _, v = part.partition("=")
        if k.strip() and v.strip():
            yield k.strip().lower(), f"Content-Signal: {k.strip().lower()}={v.strip()}"


def _trivial(allow: str) -> bool:
    return allow in TRIVIAL_ALLOWS or allow.startswith("/.well-known/")


_PATTERNS: dict[str, re.Pattern] = {}


def _pattern(value: str) -> re.Pattern:
    """robots.txt pattern -> regex (`*` any run, trailing `$` end); used for evidence only."""
    p = _PATTERNS.get(value)
    if p is None:
        anchored = value.endswith("$")
        body = value[:-1] if anchored else value
        p = re.compile(".*".join(re.escape(s) for s in body.split("*")) + ("$" if anchored else ""))
        _PATTERNS[value] = p
    return p


def sha256_text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()
