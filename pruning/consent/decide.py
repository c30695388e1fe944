"""Per-document consent decisions, fast: most work is done once per (origin, snapshot).

For each origin and snapshot a `Verdict` is compiled once: either the whole origin is decided
(every agent of the policy has `none`, or one has `all`, or the server failed, or a
Content-Signal says ai-train=no), or a short list of agents whose robots.txt groups must be
matched against the document path (one agent per distinct group). A document then costs a URL
split, two dict lookups and, only for `some` origins, one protego match per distinct group.

Order of checks (the first drop wins, its reason code is recorded):
  robots_unreachable  robots.txt answered 5xx or was unreachable (RFC 9309: disallow all)
  robots_full         an agent's group disallows everything (the paper's `all`, incl. trivial allows)
  content_signal      Content-Signal ai-train=no applies to an agent of the policy
  robots_path         an agent may not fetch this URL (protego)
  tdmrep              TDM rights reserved (HTML meta > header > /.well-known/tdmrep.json)
  noai                `noai` in X-Robots-Tag or the robots meta tag
  content_usage       IETF AIPREF `Content-Usage: train-ai=n` response header
  license             the document's `license` has a token of drop_licenses (checked first)
  tos                 ToS label forbids scraping/AI (only with tos=enforce; advisory: a flag)
  no_snapshot         no capture for the origin (only with unknown_host=drop)
  no_url / bad_scheme / no_host / bad_host   the URL rules of urls.py (only with no_url=drop)
"""
from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from glotta.config import StrictModel
from glotta.pruning.consent.agents import AgentPolicy, resolve_policy
from glotta.pruning.consent.base import Decision, DocFilter
from glotta.pruning.consent.dates import parse_day
from glotta.pruning.consent.robots import PathRules, Robots, shared
from glotta.pruning.consent.rulematch import always_allowed, quote_path
from glotta.pruning.consent.signals import (TOS_RESTRICTING, TdmRep, TosLabels, doc_content_usage, doc_noai,
                                            doc_tdm_reservation, license_match)
from glotta.pruning.consent.snapshots import Snapshot, SnapshotStore
from glotta.pruning.consent.urls import BadURL, host_of, path_of, registrable_domain, split_url

SIGNAL_KEYS = ("html_meta", "http_headers", "headers")
PATH_DROPS = 1 << 14  # path-drop Decisions kept for reuse (~0.2 KiB each)


class DecideConfig(StrictModel):
    agents: str = "training"  # training | all-ai | * | comma-separated agent names
    as_of: Literal["crawl", "now", "strictest"] = "crawl"
    tos: Literal["off", "advisory", "enforce"] = "advisory"
    tos_labels: Path | None = None  # CSV domain,label or JSON {domain: label}
    unknown_host: Literal["keep", "drop"] = "keep"  # an origin with no snapshot at all
    no_url: Literal["keep", "drop"] = "drop"  # documents whose url is missing or not http(s)
    drop_licenses: list[str] = []  # license tokens that drop a document, e.g. [NC, ND] (CC-BY-NC-4.0 -> nc)
    cache_origins: int = 200_000  # origins (URL heads) and captures with a cached verdict; all caches are cleared past it
    cache_robots: int = 32_768  # verdicts holding path rules (~0.5 KiB + their rule set, shared when identical); those are dropped past it


@dataclass(frozen=True, slots=True)
class Verdict:
    fixed: Decision | None  # decides every document of the origin before path checks
    path_agents: tuple[str, ...]
    robots: PathRules | None  # only when path_agents: the rule walks of their groups
    tdm: TdmRep | None
    keep: Decision
    tos: Decision | None  # drop (enforce) for a restricting label
    snap_date: str
    sha256: str
    fast: Decision | None = None  # the decision for every path when the document carries no signals of its own


def _verdict(fixed, path_agents, robots, tdm, keep, tos, snap_date, sha256) -> Verdict:
    if not path_agents:  # only path checks read the parsed robots.txt: do not keep it alive (memory)
        robots = None
    if fixed is not None and not fixed.keep:
        fast = fixed
    elif not path_agents and tdm is None:
        fast = tos if tos is not None else keep
    else:
        fast = None
    return Verdict(fixed, path_agents, robots, tdm, keep, tos, snap_date, sha256, fast)


_END = re.compile(r"[/?#]")


def _head(url: str) -> str | None:
    """'https://Host.example:443/a' -> 'https://Host.example:443' (the raw text split_url keys on)."""
    i = 8 if url.startswith("https://") else 7 if url.startswith("http://") else 0
    if not i:
        return None
    m = _END.search(url, i)
    return url[: m.start()] if m else url


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


class ConsentFilter(DocFilter):
    name = "consent"

    def __init__(self, store: SnapshotStore, cfg: DecideConfig | None = None, policy: AgentPolicy | None = None):
        super().__init__()
        self.cfg = cfg or DecideConfig()
        self.store = store
        self.policy = policy or resolve_policy(self.cfg.agents)
        self.agents_lower = frozenset(a.lower() for a in self.policy.agents)
        self.tos = TosLabels.load(self.cfg.tos_labels) if self.cfg.tos_labels and self.cfg.tos != "off" else None
        self._by_date: dict[tuple[str, str | None], Verdict] = {}
        self._by_snap: dict[tuple[str, str], Verdict] = {}
        self._crawl = self.cfg.as_of == "crawl"
        # As of crawl: "https://Host:443" (the raw URL head) -> (the origin's capture dates, one slot
        # per interval between them). A document's day finds its slot by bisection; the slot holds
        # the capture's Verdict (None: not compiled yet). One entry per origin and one verdict per
        # capture, not per (origin, day): memory follows the origins and their captures only.
        self._plans: dict[str, tuple[tuple[str, ...], list]] = {}
        # (id(verdict), agent, rule) -> the one Decision reused for those drops; every verdict is held
        # by a cache until this is cleared too, so an id is never reused while its entry exists
        self._path_drops: dict[tuple[int, str, str], Decision] = {}
        self._days: dict[str, str] = {}  # raw crawl_date -> YYYY-MM-DD or '' (unreadable)
        self._holding = 0  # cached verdicts that hold path rules (bounded by cache_robots)
        self._shared_rules: dict[tuple, PathRules] = {}  # see _path_rules
        self._licenses = frozenset(t.lower() for t in self.cfg.drop_licenses)
        self._unknown = self._verdict_without_snapshot()

    # ---- per origin ---------------------------------------------------------------------
    def verdict(self, origin: str, date: str | None) -> Verdict:
        key = (origin, date)
        v = self._by_date.get(key)
        if v is None:
            v = self._by_date[key] = self._capture_verdict(origin, date)
        return v

    def _capture_verdict(self, origin: str, date: str | None, share: bool = True) -> Verdict:
        """The verdict of the capture that applies, compiled once per capture: cached by capture
        (share=True), or only in the caller's plan (as of crawl: a plan slot is one capture, and
        not holding the verdict twice keeps memory per capture small)."""
        if len(self._by_date) >= self.cfg.cache_origins or len(self._plans) >= self.cfg.cache_origins:
            self.clear_caches()  # bounded memory: start over (cheap, rare)
        elif self._holding >= self.cfg.cache_robots:
            self._forget_path_rules()
        snap, fallback = self.store.at(origin, date)
        if snap is None:
            return self._unknown
        if not share:
            v = self._compile(snap, fallback)
            self._holding += v.robots is not None
            return v
        key = (snap.origin, snap.date, fallback)
        v = self._by_snap.get(key)
        if v is None:
            v = self._by_snap[key] = self._compile(snap, fallback)
            self._holding += v.robots is not None
        return v

    def clear_caches(self) -> None:
        """Forget every cached verdict. What the caches hold is bounded by cache_origins entries and
        cache_robots parsed robots.txt, never by the number of documents seen."""
        self._by_date.clear()
        self._by_snap.clear()
        self._plans.clear()
        self._path_drops.clear()
        self._holding = 0

    def _forget_path_rules(self) -> None:
        """Drop the cached verdicts that hold path rules (their rule sets may be held by nothing
        else); the origin-level verdicts stay. One scan per cache_robots new such verdicts."""
        for cache in (self._by_date, self._by_snap):
            for k in [k for k, v in cache.items() if getattr(v, "robots", None) is not None]:
                del cache[k]
        for _, slots in self._plans.values():
            for i, v in enumerate(slots):
                if getattr(v, "robots", None) is not None:
                    slots[i] = None
        self._path_drops.clear()
        self._holding = 0

    def cache_sizes(self) -> dict[str, int]:
        """Entries held per cache (a test checks that they stop growing with the documents)."""
        return {"by_date": len(self._by_date), "by_snap": len(self._by_snap), "plans": len(self._plans),
                "path_drops": len(self._path_drops), "days": len(self._days), "holding_robots": self._holding}

    def _verdict_without_snapshot(self) -> Verdict:
        if self.cfg.unknown_host == "drop":
            d = Decision(False, "no_snapshot")
        else:
            d = Decision(True, "no_snapshot")
        return _verdict(d, (), None, None, d, None, "", "")

    def _compile(self, snap: Snapshot, fallback: str) -> Verdict:
        robots = self.store.robots(snap)
        ev = {"snapshot": snap.date, "sha256": snap.sha256, "flags": (fallback,) if fallback else ()}
        tdm = self.store.tdmrep(snap)
        tos = None
        flags = ev["flags"]
        if self.tos is not None:
            label = self.tos.label(host_of(snap.origin), registrable_domain(snap.origin))
            if label and self.cfg.tos == "enforce" and label in TOS_RESTRICTING:
                tos = Decision(False, "tos", rule=f"ToS: {label}", snapshot=snap.date, sha256=snap.sha256, flags=flags)
            elif label:
                flags = flags + ("tos_" + _slug(label),)
        if robots.kind == "unreachable":
            rule = f"HTTP {snap.status}" + (f" ({snap.error})" if snap.error else "")
            if snap.kind:
                rule = f"{snap.kind} ({snap.policy}): {rule}"
            d = Decision(False, "robots_bot_wall" if snap.kind == "bot_wall" else "robots_unreachable", agent="*", rule=rule, **ev)
            return _verdict(d, (), robots, tdm, d, tos, snap.date, snap.sha256)
        if robots.kind == "unavailable":
            keep = Decision(True, "no_robots", rule=f"{snap.kind} (allow): HTTP {snap.status}" if snap.kind else f"HTTP {snap.status}", snapshot=snap.date, sha256=snap.sha256, flags=flags)
            return _verdict(None, (), robots, tdm, keep, tos, snap.date, snap.sha256)
        full, signal, path_agents, rules = self._policy_view(robots)
        if full is not None:
            d = Decision(False, "robots_full", agent=full.agent, rule=full.rule, group=full.group_lines, **ev)
            return _verdict(d, (), None, tdm, d, tos, snap.date, snap.sha256)
        if signal is not None:
            d = Decision(False, "content_signal", agent=signal.agent, rule=signal.signal_rule, group=signal.group_lines, **ev)
            return _verdict(d, (), None, tdm, d, tos, snap.date, snap.sha256)
        reason = "robots_path_allowed" if path_agents else "robots_none"
        keep = Decision(True, reason, snapshot=snap.date, sha256=snap.sha256, flags=flags)
        return _verdict(None, path_agents, rules, tdm, keep, tos, snap.date, snap.sha256)

    def _policy_view(self, robots: Robots) -> tuple:
        """What the policy's agents make of one parsed robots.txt, whatever the capture: (the first
        agent status that blocks all, the first ai-train=no status, the agents whose paths must be
        matched, their PathRules). Computed once per parsed file and held on it, so the many
        origins (and captures) sharing byte-identical files share it; verdicts add the evidence."""
        view = robots.policy_views.get(self.policy.version)
        if view is not None:
            return view
        path_agents, groups, signal, full = [], set(), None, None
        for agent in self.policy.agents:
            key = robots.select(agent)
            if key in groups:  # an earlier agent of the policy had this group: same class, same answer
                continue
            groups.add(key)
            st = robots.classify(agent)
            if st.status == "all":
                full = st
                break
            if st.ai_train == "no" and signal is None:
                signal = st
            # `?` rules do not count for the class but still bind: a `none` origin with
            # `Disallow: /*?sort=` is matched per path like a `some` origin.
            if st.status == "some" or robots.needs_path_check(agent):
                path_agents.append(agent)
        decided = full is not None or signal is not None
        rules = self._path_rules(robots, path_agents) if path_agents and not decided else None
        view = robots.policy_views[self.policy.version] = (full, signal, () if decided else tuple(path_agents), rules)
        return view

    def _path_rules(self, robots: Robots, agents: list[str]) -> PathRules:
        """PathRules (not the parsed file: memory), one object for every robots.txt whose groups
        have the same compiled rules and evidence (CMS files differing only in a Sitemap line)."""
        key = tuple((a, id(robots.compiled(a)), robots.group_evidence(a)) for a in agents)  # ids stay valid: held below
        return shared(self._shared_rules, key, lambda: PathRules(robots, agents))

    # ---- per document -------------------------------------------------------------------
    def _day(self, raw) -> str:
        """crawl_date -> `YYYY-MM-DD`, '' when unreadable (see dates.py); memoised, bounded."""
        day = parse_day(raw) or ""
        if isinstance(raw, str):
            if len(self._days) >= 1 << 16:  # distinct raw timestamps can be one per document
                self._days.clear()
            self._days[raw] = day
        return day

    def decide(self, doc) -> Decision:
        return self.decide_meta(doc.meta)

    def __call__(self, doc) -> Decision:  # DocFilter.__call__ without the decide -> decide_meta hop (hot)
        return self.count(self.decide_meta(doc.meta))

    def decide_meta(self, meta: dict) -> Decision:
        """The decision for a document given its metadata (url, crawl_date, signals, license)."""
        if self._licenses and "license" in meta:
            lic = license_match(meta["license"], self._licenses)
            if lic:
                return Decision(False, "license", rule=f"license: {lic}")
        raw = meta.get("crawl_date")
        if raw is None:
            day = None
        else:
            day = self._days.get(raw) if raw.__class__ is str else None
            if day is None:
                day = self._day(raw)
        if self._crawl and day:  # fast path: "scheme://netloc" + crawl day -> a verdict valid for every path
            url = meta.get("url")
            if url.__class__ is str:
                i = 8 if url.startswith("https://") else 7 if url.startswith("http://") else 0
                if i:
                    # The head ends at the first `/`, `?` or `#`; plans are keyed by exact heads
                    # (`_head`), so cutting at the first `/` alone can only miss (a `?`/`#` before
                    # it), never find another origin's plan: such rare URLs take the slow path.
                    j = url.find("/", i)
                    if j < 0:
                        j = len(url)
                    plan = self._plans.get(url[:j])
                    hit = plan[1][bisect_right(plan[0], day)] if plan is not None else None
                    if hit is not None:
                        fast = hit.fast  # the Decision for every path, unless the document carries signals
                        if fast is not None and not ("html_meta" in meta or "http_headers" in meta or "headers" in meta):
                            return fast
                        return self._apply(hit, path_of(url[j:]), meta)  # the path or the document's own signals decide
        try:
            origin, path = split_url(meta.get("url"))
        except BadURL as e:
            return Decision(self.cfg.no_url == "keep", e.reason, rule=str(e))
        as_of = self.cfg.as_of
        if as_of == "crawl" and day:  # the common case: two dict lookups for most documents
            # the origin's plan under its raw scheme://netloc: the fast path above finds it next time
            head = _head(meta["url"])
            v = self._capture_verdict(origin, day, share=head is None)
            if head is not None:
                plan = self._plans.get(head)
                if plan is None:
                    dates = self.store.capture_dates(origin)
                    plan = self._plans[head] = (dates, [None] * (len(dates) + 1))
                plan[1][bisect_right(plan[0], day)] = v
            if v.fast is not None and not ("html_meta" in meta or "http_headers" in meta or "headers" in meta):
                return v.fast
            return self._apply(v, path, meta)
        if as_of == "now":
            return self._apply(self.verdict(origin, None), path, meta)
        d = self._apply(self.verdict(origin, day or None), path, meta)
        if as_of == "strictest" and d.keep:
            d2 = self._apply(self.verdict(origin, None), path, meta)
            if not d2.keep:
                d = d2
        if day == "":  # unreadable crawl_date: decided on the latest capture, counted, never silent
            return replace(d, flags=d.flags + ("bad_crawl_date",))
        if day is None and d.keep:
            return replace(d, flags=d.flags + ("no_crawl_date",))
        return d

    def _apply(self, v: Verdict, path: str, meta: dict) -> Decision:
        if v.fixed is not None and not v.fixed.keep:
            return v.fixed
        rules = v.robots  # None when no agent needs a path check
        if rules is not None and not always_allowed(path):  # /robots.txt is always allowed (RFC 9309 2.2.2)
            quoted = quote_path(path)
            drop = None
            if rules.checks is not None:  # one compiled regex per distinct group of the policy
                for agent, decide in rules.checks:
                    allowed, rule = decide(quoted)
                    if not allowed:
                        drop = agent, rule
                        break
            else:  # pragma: no cover - protego's internals not readable: the parsed file decides
                for agent in v.path_agents:
                    allowed, rule = rules.path_decision(path, agent, quoted)
                    if not allowed:
                        drop = agent, rule
                        break
            if drop is not None:
                agent, rule = drop
                key = (id(v), agent, rule)  # one Decision object per deciding rule, reused
                d = self._path_drops.get(key)
                if d is None:
                    if len(self._path_drops) >= PATH_DROPS:  # one per (capture, deciding rule): bounded
                        self._path_drops.clear()
                    d = self._path_drops[key] = Decision(False, "robots_path", agent=agent, rule=rule,
                                                         snapshot=v.snap_date, sha256=v.sha256, flags=v.keep.flags,
                                                         group=v.robots.group_evidence(agent))
                return d
        has_doc = "html_meta" in meta or "http_headers" in meta or "headers" in meta  # SIGNAL_KEYS, unrolled
        if v.tdm is not None or has_doc:
            level, ev = doc_tdm_reservation(meta) if has_doc else (None, "")
            if level is None:
                reserved, ev = v.tdm.reserved(path) if v.tdm is not None else (False, "")
            else:
                reserved = level == 1
            if reserved:
                return Decision(False, "tdmrep", rule=ev, snapshot=v.snap_date, sha256=v.sha256, flags=v.keep.flags)
        if has_doc:
            kind, ev = doc_noai(meta, self.agents_lower)
            if kind == "noai":
                return Decision(False, "noai", rule=ev, snapshot=v.snap_date, sha256=v.sha256, flags=v.keep.flags)
            usage = doc_content_usage(meta)
            if usage:
                return Decision(False, "content_usage", rule=usage, snapshot=v.snap_date, sha256=v.sha256, flags=v.keep.flags)
            if kind == "noimageai":
                k = v.keep
                return Decision(True, k.reason, k.agent, ev, k.snapshot, k.sha256, k.flags + ("noimageai",))
        if v.tos is not None:
            return v.tos
        return v.keep


def explain(store: SnapshotStore, url: str, date: str | None = None, cfg: DecideConfig | None = None) -> dict:
    """Why a URL is kept or dropped: the decision plus each agent's class in the capture used."""
    f = ConsentFilter(store, cfg)
    meta = {"url": url} | ({"crawl_date": date} if date else {})
    d = f.decide(type("Doc", (), {"meta": meta})())
    out = {"url": url, "keep": d.keep, "reason": d.reason, "agent": d.agent, "rule": d.rule,
           "snapshot": d.snapshot, "sha256": d.sha256, "flags": list(d.flags), "agents": []}
    try:
        origin, path = split_url(url)
    except BadURL:
        return out
    snap, _ = store.at(origin, date if f.cfg.as_of == "crawl" else None)
    if snap is not None:
        robots = store.robots(snap)
        for agent in f.policy.agents:
            st = robots.classify(agent)
            out["agents"].append({"agent": agent, "group": st.group, "status": st.status, "detail": st.detail,
                                  "may_fetch": robots.can_fetch(path, agent), "ai_train": st.ai_train})
            out["agents"][-1]["group_lines"] = st.group_lines
        out["robots_warnings"] = robots.warnings
    return out
