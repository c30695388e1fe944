"""The filter contract (DESIGN.md STYLE item 9): a filter implements only `decide(doc)`.

`decide` returns KEEP (or another keeping Decision carrying evidence) or a dropping Decision
with a reason code. Calling the filter counts `total`, `kept` and `dropped_<reason>`, plus a
`flag_<name>` for each flag the decision carries (advisory signals that did not drop the document).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    keep: bool
    reason: str = ""  # reason code: why dropped, or what decided a keep (e.g. robots_none)
    agent: str = ""
    rule: str = ""  # the robots.txt / tdmrep / header line that decided
    snapshot: str = ""  # snapshot date
    sha256: str = ""  # snapshot sha256
    flags: tuple[str, ...] = ()  # advisory signals (kept anyway): tos_<label>, noimageai, asof_fallback
    group: str = ""  # the robots.txt group that applied: `User-agent: GPTBot (line 4)`


KEEP = Decision(True, "no_restriction")


def drop(reason: str, **evidence) -> Decision:
    return Decision(False, reason, **evidence)


class DocFilter(ABC):
    name = "filter"

    def __init__(self) -> None:
        self.counters: Counter = Counter()
        self._keys: dict[str, str] = {}

    @abstractmethod
    def decide(self, doc) -> Decision: ...

    def __call__(self, doc) -> Decision:
        return self.count(self.decide(doc))

    def count(self, d: Decision) -> Decision:
        """Add one decision to the counters (what __call__ does after decide)."""
        c = self.counters
        c["total"] += 1
        if d.keep:
            c["kept"] += 1
        else:
            key = self._keys.get(d.reason)
            if key is None:
                key = self._keys[d.reason] = "dropped_" + d.reason
            c[key] += 1
        for f in d.flags:
            c["flag_" + f] += 1
        return d

    def summary(self) -> list[dict]:
        """The stage summary table: one row per counter, with its share of `total`."""
        total = self.counters.get("total", 0) or 1
        return [{"counter": k, "value": v, "share": v / total} for k, v in sorted(self.counters.items())]
