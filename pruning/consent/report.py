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

import pyarrow.compute as pc
import pyarrow.dataset as ds

from glotta.config import StrictModel
from glotta.errors import ConfigError, DataError
from glotta.pruning.consent.agents import ORGANISATIONS, STAR, TRAINING
from glotta.pruning.consent.snapshots import SnapshotStore

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


def decisions(audit) -> dict:
    """Per-reason, per-language and per-domain tables from the audit rows."""
    t = audit.to_pandas()
    t["dropped_bytes"] = t["bytes"].where(t["decision"] == "drop", 0)
    t["dropped"] = (t["decision"] == "drop").astype(int)
    total_bytes = int(t["bytes"].sum())
    reasons = (t.groupby(["decision", "reason"]).agg(docs=("key", "size"), bytes=("bytes", "sum")).reset_index()
               .sort_values("bytes", ascending=False))
    reasons["byte_share"] = reasons["bytes"] / max(total_bytes, 1)
    langs = t.groupby("lang").agg(docs=("key", "size"), bytes=("bytes", "sum"), dropped_docs=("dropped", "sum"),
                                  dropped_bytes=("dropped_bytes", "sum")).reset_index()
    langs["dropped_byte_share"] = langs["dropped_bytes"] / langs["bytes"].clip(lower=1)
    dom = t[t["reg_domain"] != ""].groupby("reg_domain").agg(
        hosts=("origin", "nunique"), docs=("key", "size"), bytes=("bytes", "sum"),
        dropped_docs=("dropped", "sum"), dropped_bytes=("dropped_bytes", "sum"),
        top_reason=("reason", lambda s: s.value_counts().index[0])).reset_index()
    dom["dropped_byte_share"] = dom["dropped_bytes"] / dom["bytes"].clip(lower=1)
    dom = dom.sort_values("bytes", ascending=False)
    return {
        "docs": int(len(t)), "bytes": total_bytes,
        "dropped_docs": int(t["dropped"].sum()), "dropped_bytes": int(t["dropped_bytes"].sum()),
        "dropped_byte_share": _share(float(t["dropped_bytes"].sum()), total_bytes),
        "reasons": reasons.to_dict("records"), "langs": langs.sort_values("bytes", ascending=False).to_dict("records"),
        "domains": dom.to_dict("records"),
    }


def monthly(audit, store: SnapshotStore, months: int) -> list[dict]:
    """Byte-weighted share of each status per (month, group) and per (month, language) for the training group."""
    t = audit.select(["origin", "lang", "bytes"]).to_pandas()
    t = t[t["origin"] != ""]
    by_origin = t.groupby("origin")["bytes"].sum().to_dict()
    by_origin_lang = t.groupby(["origin", "lang"])["bytes"].sum().to_dict()
    total = float(audit.column("bytes").to_numpy().sum())
    dates = [s.date for lst in store.by_origin.values() for s in lst]
    if not dates or not by_origin:
        return []
    groups = agent_groups()
    rows = []
    for end in _month_ends(min(dates), max(dates), months):
        acc: dict[tuple[str, str], float] = defaultdict(float)
        status_of: dict[str, str] = {}
        for origin, nbytes in by_origin.items():
            snaps = store.by_origin.get(origin, [])
            snap = next((s for s in reversed(snaps) if s.date <= end), None)
            robots = store.robots(snap) if snap is not None else None
            for name, agents in groups.items():
                st = "no_snapshot" if robots is None else max((robots.classify(a).status for a in agents), key=RANK.get)
                acc[(name, st)] += nbytes
                if robots is not None and any(robots.classify(a).ai_train == "no" for a in agents):
                    acc[(name, "ai_train_no")] += nbytes
                if name == "training (combined)":
                    status_of[origin] = st
        for name in groups:
            row = {"month": end[:7], "group": name}
            row.update({st: _share(acc[(name, st)], total) for st in STATUSES})
            row["ai_train_no"] = _share(acc[(name, "ai_train_no")], total)  # Content-Signal, any status
            rows.append(row)
        lang_acc: dict[tuple[str, str], float] = defaultdict(float)
        lang_tot: dict[str, float] = defaultdict(float)
        for (origin, lang), nbytes in by_origin_lang.items():
            lang_acc[(lang, status_of[origin])] += nbytes
            lang_tot[lang] += nbytes
        for lang, tot in sorted(lang_tot.items()):
            row = {"month": end[:7], "group": "training (combined)", "lang": lang}
            row.update({st: _share(lang_acc[(lang, st)], tot) for st in STATUSES})
            rows.append(row)
    return rows


def build_report(cfg: ReportConfig) -> dict:
    if cfg.out is None:
        raise ConfigError("consent report needs out: the directory `glotta consent filter` wrote")
    audit_dir = Path(cfg.out) / "audit"
    parts = sorted(audit_dir.glob("part-*.parquet"))
    if not parts:
        raise DataError(f"{audit_dir}: no audit parts (run `glotta consent filter --out {cfg.out}` first)")
    audit = ds.dataset([str(p) for p in parts], format="parquet").to_table(
        columns=["key", "origin", "reg_domain", "lang", "bytes", "decision", "reason"])
    report = {"weight": "utf8_bytes", **decisions(audit)}
    report["domains"] = report["domains"][: cfg.top]
    report["policies"] = sorted(set(pc.unique(ds.dataset([str(p) for p in parts]).to_table(columns=["policy"])["policy"]).to_pylist()))
    report["months"] = monthly(audit, SnapshotStore.load(cfg.store), cfg.months) if cfg.store else []
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
