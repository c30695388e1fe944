"""The report's batch-wise pyarrow group-bys and its difference-array monthly view against a
straightforward month x origin loop (the previous implementation), on a random store and audit."""
from __future__ import annotations

import random
from collections import defaultdict

import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
import pyarrow.dataset as ds

from glotta.pruning.consent import Snapshot, SnapshotStore
from glotta.pruning.consent.store_index import build_index
from glotta.pruning.consent.urls import owner
from glotta.pruning.consent.report import RANK, STATUSES, _month_ends, agent_groups, decisions, monthly

BODIES = [None, "User-agent: *\nDisallow: /\n", "User-agent: GPTBot\nDisallow: /\n", "User-agent: *\nDisallow: /x\n",
          "User-agent: *\nContent-Signal: ai-train=no\nAllow: /\n"]


def _loop_monthly(t: pa.Table, store: SnapshotStore, months: int) -> list[dict]:
    rows = t.to_pylist()
    by_origin, by_lang = defaultdict(float), defaultdict(float)
    for r in rows:
        if r["origin"]:
            by_origin[r["origin"]] += r["bytes"]
            by_lang[(r["origin"], r["lang"])] += r["bytes"]
    total = float(sum(r["bytes"] for r in rows))
    dates = [s.date for lst in store.by_origin.values() for s in lst]
    out = []
    for end in _month_ends(min(dates), max(dates), months):
        acc, status_of = defaultdict(float), {}
        for origin, nbytes in by_origin.items():
            snap = next((s for s in reversed(store.by_origin.get(origin, [])) if s.date <= end), None)
            robots = store.robots(snap) if snap is not None else None
            for name, agents in agent_groups().items():
                st = "no_snapshot" if robots is None else max((robots.classify(a).status for a in agents), key=RANK.get)
                acc[(name, st)] += nbytes
                if robots is not None and any(robots.classify(a).ai_train == "no" for a in agents):
                    acc[(name, "ai_train_no")] += nbytes
                if name == "training (combined)":
                    status_of[origin] = st
        for name in agent_groups():
            out.append({"month": end[:7], "group": name, **{st: acc[(name, st)] / total for st in STATUSES},
                        "ai_train_no": acc[(name, "ai_train_no")] / total})
        la, lt = defaultdict(float), defaultdict(float)
        for (origin, lang), b in by_lang.items():
            la[(lang, status_of[origin])] += b
            lt[lang] += b
        for lang, tot in sorted(lt.items()):
            out.append({"month": end[:7], "group": "training (combined)", "lang": lang,
                        **{st: la[(lang, st)] / tot for st in STATUSES}})
    return out


def test_report_matches_the_loop(tmp_path):
    rnd = random.Random(7)
    snaps = []
    for o in range(50):
        for _ in range(rnd.randint(0, 4)):
            body = rnd.choice(BODIES)
            date = f"20{rnd.randint(20, 24)}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}"
            snaps.append(Snapshot(f"https://h{o}.example", date, 404 if body is None else rnd.choice([200, 200, 503]),
                                  body, "s", "t"))
    store = SnapshotStore(snaps)
    root = tmp_path / "store"
    SnapshotStore.append(root / "import.jsonl", snaps)
    build_index(root, buckets=8)
    rows = [{"origin": f"https://h{o}.example" if o < 55 else "", "lang": rnd.choice(["de", "fr", "zh"]),
             "bytes": rnd.randint(1, 1000), "reg_domain": f"h{o % 20}.example", "decision": rnd.choice(["keep", "drop"]),
             "reason": rnd.choice(["robots_full", "robots_none", "no_url"])} for o in (rnd.randint(0, 60) for _ in range(3000))]
    t = pa.Table.from_pylist(rows)
    dataset = ds.dataset(t)
    ours, ref = monthly(dataset, root, 30), _loop_monthly(t, store, 30)
    # The report reads the store through its origin index, only the buckets of audited origins:
    # for an audit of 3 origins, delete every other bucket and the answer must not change.
    few = t.filter(pa.compute.is_in(t["origin"], value_set=pa.array(["https://h1.example", "https://h2.example", "https://h3.example"])))
    whole = monthly(ds.dataset(few), root / "import.jsonl", 30)  # a single .jsonl file is read whole
    gone = [b for b in range(8) if b not in {owner(f"https://h{o}.example", 8) for o in (1, 2, 3)}]
    for b in gone:
        (root / "index" / f"bucket-{b:05d}.parquet").unlink()
    assert len(gone) >= 5 and monthly(ds.dataset(few), root, 30) == whole and len(whole) > 30
    assert len(ours) == len(ref) > 100
    for a, b in zip(ours, ref):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == b[k] if isinstance(a[k], str) else abs(a[k] - b[k]) < 1e-9, (a, b, k)
    d = decisions(dataset)
    assert d["docs"] == 3000 and d["bytes"] == sum(r["bytes"] for r in rows)
    assert d["dropped_bytes"] == sum(r["bytes"] for r in rows if r["decision"] == "drop")
    dom = {r["reg_domain"]: r for r in d["domains"]}
    h3 = [r for r in rows if r["reg_domain"] == "h3.example"]
    assert dom["h3.example"]["hosts"] == len({r["origin"] for r in h3}) and dom["h3.example"]["docs"] == len(h3)
