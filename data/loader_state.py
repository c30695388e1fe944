"""Loader state: versioned, small, plain types; merging the ranks' states for an elastic resume.

A state holds one `[lane, rows, a, b]` entry per lane the rank owns (packing.py says what a and
b are), the rank's counters and a fingerprint of everything that fixes the global order. A
state saved with another config is refused with the list of what changed.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from glotta.errors import DataError

STATE_VERSION = 2  # 2: the fingerprint holds a hash of the shard list instead of the names


def merge_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One state holding every lane, from the states of all ranks (for an elastic resume)."""
    if not states:
        raise DataError("merge_states: no loader states given")
    base = states[0]
    for s in states[1:]:
        check_fingerprint(base, s)
    lanes: dict[int, list[int]] = {}
    unique, seen_ranks = [], set()
    for s in states:
        # Tensor/pipeline-parallel peers of one data-parallel rank hold the same lanes: keep one.
        rank = (s.get("dp_rank"), s.get("dp_size"))
        if rank[0] is not None and rank in seen_ranks:
            continue
        seen_ranks.add(rank)
        unique.append(s)
        for entry in s["lanes"]:
            if entry[0] in lanes and list(lanes[entry[0]]) != list(entry):
                raise DataError(f"merge_states: lane {entry[0]} has two different states")
            lanes[entry[0]] = entry
    stats = {"docs": 0, "split": 0, "empty": 0, "counts": Counter(), "lang_tokens": None}
    for s in unique:
        st = s["stats"]
        stats["docs"] += st["docs"]
        stats["split"] += st["split"]
        stats["empty"] += st["empty"]
        stats["counts"].update(st["counts"])
        lt = np.asarray(st["lang_tokens"], np.int64)
        stats["lang_tokens"] = lt if stats["lang_tokens"] is None else stats["lang_tokens"] + lt
    stats["counts"] = dict(stats["counts"])
    stats["lang_tokens"] = stats["lang_tokens"].tolist()
    return {
        "version": base["version"],
        "fingerprint": base["fingerprint"],
        "dp_rank": None,
        "dp_size": None,
        "lanes": [lanes[k] for k in sorted(lanes)],
        "stats": stats,
        # The earliest window start is valid for every lane.
        "schedule": min((s["schedule"] for s in unique if s.get("schedule")), key=lambda x: x["pos"], default=None),
    }


def check_fingerprint(ref: dict[str, Any], other: dict[str, Any], ours: str = "first state") -> None:
    a, b = ref["fingerprint"], other.get("fingerprint", {})
    diff = [f"{k}: saved {b.get(k)!r}, {ours} {a.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diff:
        raise DataError("loader state does not match this loader:\n  " + "\n  ".join(diff))
