"""`glotta consent report`: what the filter removed and how consent changed over time.

Weights are UTF-8 text bytes of the documents (byte-weighted, not token-weighted: the report
runs before any tokenizer exists; the paper's "tokens" were regex word counts, also a proxy).

Three views:
  decisions   from the audit: docs/bytes kept and dropped, per reason, per language, per domain
  months      the paper's figure (plus `ai_train_no`: bytes under a Content-Signal ai-train=no): for every month between the first and last snapshot, each
              origin's robots.txt as of month end (latest capture at or before it) classified for
              each agent group; a group takes the strictest status of its agents; shares are of
              all audited bytes (origins without a capture that month count as no_snapshot)
  chart       a PNG with the monthly full-restriction share per group and per language
"""
from __future__ import annotations

import calendar
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from glotta.config import StrictModel
from glotta.errors import ConfigError, DataError
from glotta.pruning.consent.agents import ORGANISATIONS, STAR, TRAINING
from glotta.pruning.consent.snapshots import Snapshot, SnapshotStore
from glotta.pruning.consent.store_index import INDEX, build_index, index_state, stale_message
from glotta.pruning.consent.urls import owner

RANK = {"no_snapshot": 0, "no_robots": 1, "none": 2, "some": 3, "unreachable": 4, "all": 5}
STATUSES = ("all", "unreachable", "some", "none", "no_robots", "no_snapshot")


class ReportConfig(StrictModel):
    out: Path | None = None  # the filter's output directory (audit/ inside)
    store: Path | None = None  # snapshot store; without it the monthly view is skipped
    png: Path | None = None
    top: int = 20  # domains listed
    months: int = 120  # at most this many most recent months


def agent_groups() -> dict[str, tuple[str, ...]]:
    groups = {name: agents for name, agents in ORGANISATIONS.items()}
    groups["training (combined)"] = TRAINING
    groups["* only"] = (STAR,)
    return groups


def _month_ends(first: str, last: str, limit: int) -> list[str]:
    y, m = int(first[:4]), int(first[5:7])
    ly, lm = int(last[:4]), int(last[5:7])
    out = []
    while (y, m) <= (ly, lm):
        out.append(f"{y:04d}-{m:02d}-{calendar.monthrange(y, m)[1]:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out[-limit:]


def _share(part: float, total: float) -> float:
    return part / total if total else 0.0


def _group_sums(batches, keys: list[str], sums: list[str], derive=None) -> pa.Table:
    """Sum `sums` per `keys` over record batches with pyarrow group-bys, one batch at a time:
    memory follows the number of groups, not of audit rows (10^9 rows stream through)."""
    parts: list[pa.Table] = []
    held = 0

    def combine(tables: list[pa.Table]) -> pa.Table:
        t = pa.concat_tables(tables).group_by(keys).aggregate([(c, "sum") for c in sums])
        return t.rename_columns([c[:-4] if c.endswith("_sum") and c[:-4] in sums else c for c in t.column_names])

    for batch in batches:
        t = pa.Table.from_batches([batch])
        if derive is not None:
            t = derive(t)
        parts.append(combine([t.select(keys + sums)]))
        held += len(parts[-1])
        if len(parts) > 64 or held > 1 << 22:
            parts, held = [combine(parts)], len(parts[0]) if parts else 0
    if not parts:
        return pa.table({k: pa.array([], pa.string()) for k in keys} | {c: pa.array([], pa.int64()) for c in sums})
    return combine(parts)


def _derive(t: pa.Table) -> pa.Table:
    drop = pc.equal(t["decision"], "drop")
    t = t.append_column("docs", pa.array(np.ones(len(t), dtype=np.int64)))
    t = t.append_column("dropped", pc.cast(drop, pa.int64()))
    return t.append_column("dropped_bytes", pc.if_else(drop, t["bytes"], 0))


def decisions(dataset: ds.Dataset) -> dict:
    """Per-reason, per-language and per-domain tables, aggregated batch by batch."""
    cols = ["origin", "reg_domain", "lang", "bytes", "decision", "reason"]
    per = _group_sums(dataset.to_batches(columns=cols), ["decision", "reason", "lang", "reg_domain", "origin"],
                      ["docs", "bytes", "dropped", "dropped_bytes"], _derive).to_pandas()
    total_bytes = int(per["bytes"].sum())
    reasons = (per.groupby(["decision", "reason"]).agg(docs=("docs", "sum"), bytes=("bytes", "sum")).reset_index()
               .sort_values("bytes", ascending=False))
    reasons["byte_share"] = reasons["bytes"] / max(total_bytes, 1)
    langs = per.groupby("lang").agg(docs=("docs", "sum"), bytes=("bytes", "sum"), dropped_docs=("dropped", "sum"),
                                    dropped_bytes=("dropped_bytes", "sum")).reset_index()
    langs["dropped_byte_share"] = langs["dropped_bytes"] / langs["bytes"].clip(lower=1)
    d = per[per["reg_domain"] != ""]
    dom = d.groupby("reg_domain").agg(hosts=("origin", "nunique"), docs=("docs", "sum"), bytes=("bytes", "sum"),
                                      dropped_docs=("dropped", "sum"), dropped_bytes=("dropped_bytes", "sum")).reset_index()
    top = d.groupby(["reg_domain", "reason"])["docs"].sum().reset_index().sort_values(["reg_domain", "docs", "reason"],
                                                                                          ascending=[True, False, True])
    dom = dom.merge(top.drop_duplicates("reg_domain")[["reg_domain", "reason"]].rename(columns={"reason": "top_reason"}),
                    on="reg_domain", how="left")
    dom["dropped_byte_share"] = dom["dropped_bytes"] / dom["bytes"].clip(lower=1)
    dom = dom.sort_values("bytes", ascending=False)
    dropped_bytes = int(per["dropped_bytes"].sum())
    return {
        "docs": int(per["docs"].sum()), "bytes": total_bytes,
        "dropped_docs": int(per["dropped"].sum()), "dropped_bytes": dropped_bytes,
        "dropped_byte_share": _share(float(dropped_bytes), total_bytes),
        "reasons": reasons.to_dict("records"), "langs": langs.sort_values("bytes", ascending=False).to_dict("records"),
        "domains": dom.to_dict("records"),
    }


def _captures(store: Path, origins: set[str]):
    """(first capture date, last capture date, iterator of (origin, its captures sorted by date)) for
    the audited origins. A store directory is read through its origin index, one bucket at a time
    and only the buckets of those origins; a single .jsonl file (small stores) is read whole."""
    store = Path(store)
    if not store.is_dir():
        whole = SnapshotStore.load(store)
        dates = [s.date for lst in whole.by_origin.values() for s in lst]
        items = ((o, whole.by_origin[o]) for o in sorted(origins) if o in whole.by_origin)
        return (min(dates) if dates else None), (max(dates) if dates else None), items, whole
    state, meta = index_state(store)
    if state == "stale":
        raise DataError(stale_message(store, meta))
    if state == "missing" or "first_date" not in meta:  # none yet, or built before the date range was recorded
        meta = build_index(store)
    root, n = store / INDEX, int(meta["buckets"])
    files = [root / f"bucket-{b:05d}.parquet" for b in range(n)]
    lo, hi = meta.get("first_date"), meta.get("last_date")  # the month axis spans every capture of the store
    parser = SnapshotStore()  # parses robots.txt (cached by content, bounded); holds no captures

    def items():
        wanted: dict[int, list[str]] = defaultdict(list)
        for o in origins:
            wanted[owner(o, n)].append(o)
        for b in sorted(wanted):
            t = pq.read_table(files[b])
            t = t.filter(pc.is_in(t["origin"], value_set=pa.array(wanted[b], pa.string())))
            part = SnapshotStore([Snapshot(**row) for row in t.to_pylist()])  # sorted per origin as the filter sees them
            yield from part.by_origin.items()

    return lo, hi, items(), parser


def monthly(dataset: ds.Dataset, store: Path, months: int) -> list[dict]:
    """Byte-weighted share of each status per (month, group) and per (month, language) for the
    training group. Each capture is classified once; it holds from its month to the month before
    the origin's next capture, so bytes enter a difference array over months (no month x origin
    loop). The store is read by origin-hash bucket, only for the origins of the audit."""
    per = _group_sums(dataset.to_batches(columns=["origin", "lang", "bytes"]), ["origin", "lang"], ["bytes"]).to_pandas()
    total = float(per["bytes"].sum())
    per = per[per["origin"] != ""]
    if per.empty:
        return []
    by_origin = per.groupby("origin")["bytes"].sum()
    first, last, captures, parser = _captures(store, set(by_origin.index))
    if first is None:
        return []
    ends = _month_ends(first, last, months)
    index = {e[:7]: i for i, e in enumerate(ends)}
    first_month = ends[0][:7]
    groups = agent_groups()
    n = len(ends)
    acc: dict[tuple[str, str], np.ndarray] = defaultdict(lambda: np.zeros(n + 1))
    lang_acc: dict[tuple[str, str], np.ndarray] = defaultdict(lambda: np.zeros(n + 1))
    covered = np.zeros(n + 1)
    langs = per.groupby(["origin", "lang"])["bytes"].sum()
    lang_of = defaultdict(list)
    for (origin, lang), b in langs.items():
        lang_of[origin].append((lang, float(b)))
    lang_tot = per.groupby("lang")["bytes"].sum().to_dict()
    for origin, snaps in captures:
        nbytes = float(by_origin[origin])
        # the capture of a month is the latest one dated on or before the month's end
        month_of = [max(s.date[:7], first_month) for s in snaps]
        for i, snap in enumerate(snaps):
            start = index.get(month_of[i], n)
            stop = index.get(month_of[i + 1], n) if i + 1 < len(snaps) else n
            if stop <= start:
                continue
            robots = parser.robots(snap)
            covered[start] += nbytes
            covered[stop] -= nbytes
            for name, agents in groups.items():
                st = max((robots.classify(a).status for a in agents), key=RANK.get)
                acc[(name, st)][start] += nbytes
                acc[(name, st)][stop] -= nbytes
                if any(robots.classify(a).ai_train == "no" for a in agents):
                    acc[(name, "ai_train_no")][start] += nbytes
                    acc[(name, "ai_train_no")][stop] -= nbytes
                if name == "training (combined)":
                    for lang, b in lang_of[origin]:
                        lang_acc[(lang, st)][start] += b
                        lang_acc[(lang, st)][stop] -= b
    audited = float(by_origin.sum())
    no_snap = audited - np.cumsum(covered)[:n]  # origins without a capture yet that month
    lang_cov = {k: np.cumsum(v)[:n] for k, v in lang_acc.items()}
    out = []
    for i, end in enumerate(ends):
        for name in groups:
            row = {"month": end[:7], "group": name}
            row.update({st: _share(float(np.cumsum(acc[(name, st)])[i]), total) for st in STATUSES if st != "no_snapshot"})
            row["no_snapshot"] = _share(float(no_snap[i]), total)
            row["ai_train_no"] = _share(float(np.cumsum(acc[(name, "ai_train_no")])[i]), total)
            out.append(row)
        for lang, tot in sorted(lang_tot.items()):
            row = {"month": end[:7], "group": "training (combined)", "lang": lang}
            seen = 0.0
            for st in STATUSES:
                if st == "no_snapshot":
                    continue
                v = float(lang_cov[(lang, st)][i]) if (lang, st) in lang_cov else 0.0
                row[st] = _share(v, tot)
                seen += v
            row["no_snapshot"] = _share(tot - seen, tot)
            out.append(row)
    return out


def build_report(cfg: ReportConfig) -> dict:
    if cfg.out is None:
        raise ConfigError("consent report needs out: the directory `glotta consent filter` wrote")
    audit_dir = Path(cfg.out) / "audit"
    parts = sorted(audit_dir.glob("part-*.parquet"))
    if not parts:
        raise DataError(f"{audit_dir}: no audit parts (run `glotta consent filter --out {cfg.out}` first)")
    audit = ds.dataset([str(p) for p in parts], format="parquet")
    report = {"weight": "utf8_bytes", **decisions(audit)}
    report["domains"] = report["domains"][: cfg.top]
    report["policies"] = sorted(_group_sums(audit.to_batches(columns=["policy"]), ["policy"], [])["policy"].to_pylist())
    report["months"] = monthly(audit, cfg.store, cfg.months) if cfg.store else []
    if cfg.png is not None:
        if not report["months"]:
            raise DataError("the chart needs the monthly view: pass --store with the snapshots")
        chart(report["months"], Path(cfg.png))
        report["png"] = str(cfg.png)
    return report


def chart(rows: list[dict], path: Path) -> Path:
    """Two panels like the paper's figures: full restriction per agent group, and per language."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    for ax, key, title in ((ax1, "group", "by agent group"), (ax2, "lang", "by language (training agents)")):
        series: dict[str, list[tuple[str, float]]] = defaultdict(list)
        for r in rows:
            if (key == "lang") == ("lang" in r):
                series[r[key]].append((r["month"], 100 * (r["all"] + r["unreachable"])))
        for name, pts in sorted(series.items()):
            style = "-" if name != "training (combined)" else "k-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=name, linewidth=1.5 if key == "lang" or style == "k-" else 1)
        ax.set_title(f"Bytes fully restricted by robots.txt, {title}")
        ax.set_xlabel("snapshot month")
        ax.xaxis.set_major_locator(MaxNLocator(12))
        ax.tick_params(axis="x", rotation=60, labelsize=7)
        ax.legend(fontsize=7, ncols=2)
        ax.grid(alpha=0.3)
    ax1.set_ylabel("% of audited bytes")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
