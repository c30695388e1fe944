"""The end-of-pipeline summary, read from the stages' manifests and reports (nothing re-tokenized).

Only stages whose recorded fingerprint matches their current inputs contribute figures (status
ran / resumed / skipped / current); a stale stage (its inputs moved on after --until) shows "-",
so the summary never pairs, say, a new CAT selection with the losses of the old stage 2.
"""
from __future__ import annotations

import json
from io import StringIO
from pathlib import Path
from typing import Any

from glotta.data.manifest import MANIFEST, Manifest
from glotta.launch.layout import RunLayout

CURRENT = {"ran", "resumed", "skipped", "current"}


def _read_json(path: Path) -> Any:
    if not path.is_file() or path.stat().st_size == 0:
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _manifest(path: Path) -> Manifest | None:
    return Manifest.load(path) if (path / MANIFEST).is_file() else None


def corpus_table(run: RunLayout, current: set[str], consent: bool) -> list[dict]:
    """Per language: documents (and bytes or tokens) after import, consent, hold-out and CAT."""
    cols: dict[str, dict[str, dict]] = {}
    for stage, path in (("import", run.data), ("consent", run.consent_shards if consent else None)):
        m = _manifest(path) if path is not None and stage in current else None
        if m is not None:
            cols[stage] = {lang: {"docs": e["samples"], "bytes": e["bytes"]} for lang, e in m.langs().items()}
    held = (_read_json(run.report("holdout")) or {}).get("held_out", {}) if "holdout" in current else {}
    cat = _read_json(run.cat_report) if "cat" in current else None
    if cat:  # CAT counted the training set's documents and tokens (after hold-out) and what it kept
        cols["train"] = {r["lang"]: {"docs": r["docs"], "tokens": r["tokens"]} for r in cat["langs"]}
        cols["cat"] = {r["lang"]: {"docs": r["kept_docs"], "tokens": r["kept_tokens"],
                                   "kept_frac_tokens": r["kept_frac_tokens"]} for r in cat["langs"]}  # fmt: skip
    elif held and (last := cols.get("consent") or cols.get("import")):
        cols["train"] = {lang: {"docs": e["docs"] - held.get(lang, 0)} for lang, e in last.items()}
    langs = sorted({lang for v in cols.values() for lang in v})
    rows = []
    for lang in langs:
        row: dict[str, Any] = {"lang": lang}
        for stage, v in cols.items():
            for k, x in v.get(lang, {"docs": 0}).items():
                row[f"{stage} {k}"] = x
        rows.append(row)
    return rows


def counter_table(run: RunLayout, current: set[str]) -> list[dict]:
    """Every named counter of documents dropped, split, renamed or changed, by stage."""
    rows = []
    m = _manifest(run.data) if "import" in current else None
    if m is not None:
        rows += [{"stage": "import", "counter": k, "value": v} for k, v in sorted(m.meta.get("counters", {}).items())]
    c = _read_json(run.consent / "summary.json") if "consent" in current else None
    if c:
        rows += [{"stage": "consent", "counter": k, "value": v} for k, v in sorted(c.get("counters", {}).items())]
    score = _read_json(run.report("cat-score")) if "cat-score" in current else None
    if score:  # scored_docs is a size, but the one figure that says CAT saw the corpus: shown too
        rows += [{"stage": "cat-score", "counter": k, "value": v} for k, v in sorted(score.get("counters", {}).items())]
    cat = _read_json(run.cat_report) if "cat" in current else None
    if cat:
        rows += [{"stage": "cat", "counter": k, "value": v} for k, v in sorted(cat.get("counters", {}).items())]
    totals = {"records", "written", "samples", "docs", "kept", "total", "lid_docs"}  # sizes, not losses
    return [r for r in rows if r["value"] and r["counter"] not in totals]


def premium_table(run: RunLayout, current: set[str]) -> tuple[list[dict], list[str]]:
    """Token premium per language from `glotta tokenizer eval --json`, and the languages without parallel text."""
    res = _read_json(run.report("tokenizer-eval")) if "tokenizer" in current else None
    if not res:
        return [], []
    rows, no_parallel = [], set()
    for tok in res["tokenizers"].values():
        for lang, r in sorted(tok["langs"].items(), key=lambda kv: kv[1].get("premium") or 0):
            kind = r.get("premium_kind")
            if kind != "parallel" and lang != "und":  # und: no language to find parallel text for
                no_parallel.add(lang)
            rows.append({
                "lang": lang, "premium": r.get("premium"), "kind": kind, "fertility": r.get("fertility"),
                "unit": r.get("fertility_unit"), "bytes/token": r.get("bytes_per_token"),
            })  # fmt: skip
    return rows, sorted(no_parallel)


def val_losses(metrics: Path) -> tuple[dict[str, float], dict[str, float]]:
    """(first, last) validation losses a training stage logged in metrics.jsonl, per language + 'all'."""
    evals = []
    if metrics.is_file():
        for line in metrics.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if "val/loss" in rec:
                per = {k.removeprefix("val/loss/"): v for k, v in rec.items() if k.startswith("val/loss/")}
                evals.append({**per, "all": rec["val/loss"], "_step": rec["step"]})
    if not evals:
        return {}, {}
    return evals[0], evals[-1]


def loss_table(run: RunLayout, stages: list[str], start: str = "untrained") -> list[dict]:
    """Validation loss per language: before training (step 0, when logged; `start` names that model)
    and after each stage."""
    cols: dict[str, dict[str, float]] = {}
    for name in stages:
        first, last = val_losses(run.metrics(name))
        if first.get("_step") == 0 and name == "stage1":
            cols[start] = first
        if last:
            cols[name] = last
    langs = sorted({k for v in cols.values() for k in v if not k.startswith("_") and k != "all"}) + ["all"]
    return [{"lang": lang, **{f"{c} val loss": v.get(lang) for c, v in cols.items()}} for lang in langs] if cols else []


def extension_table(run: RunLayout, current: set[str]) -> list[dict]:
    """`tokenizer.base_model`: per target language, premium and fertility under the base tokenizer and
    the extended one (`tokenizer extend`'s report), and how many base-language lines changed."""
    rep = _read_json(run.report("tokenizer-extend")) if "tokenizer" in current else None
    if not rep:
        return []
    rows = [{"lang": lang, "premium": f"{_num(r.get('premium_before'))} -> {_num(r.get('premium_after'))}",
             "fertility": f"{_num(r.get('fertility_before'))} -> {_num(r.get('fertility_after'))}",
             "tokens": f"{r.get('tokens_before', 0):,} -> {r.get('tokens_after', 0):,}"}
            for lang, r in sorted(rep.get("target", {}).items())]
    b = rep.get("base_total") or {}
    if b:
        rows.append({"lang": f"base languages ({b.get('lines_changed', 0)} of {b.get('lines', 0)} lines changed)",
                     "tokens": f"{b.get('tokens_before', 0):,} -> {b.get('tokens_after', 0):,}"})
    return rows


def _num(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def adaptation_table(run: RunLayout, current: set[str]) -> list[dict]:
    """`tokenizer.base_model`: per init method, target bits per byte and the base-language loss rise
    (nats/token, old tokenizer) right after adaptation, from adapt-checkpoint's adapt.json."""
    rep = _read_json(run.adapted / "adapt.json") if "adapt" in current else None
    if not rep:
        return []
    rows = [{"init": m + (" (used)" if m == rep.get("init") else ""), "target bpb": r.get("bpb"),
             "base loss rise": r.get("base_loss_rise_mean")} for m, r in rep.get("methods", {}).items()]
    return rows + [{"init": "base model, base tokenizer", "target bpb": rep.get("bpb_old_model_old_tokenizer"),
                    "base loss rise": 0.0}]


def generation_table(run: RunLayout, current: set[str]) -> list[dict]:
    """Stage 2's greedy continuation of one held-out line per language (reports/stage2-generate.json)."""
    rows = _read_json(run.report("stage2-generate")) if "stage2" in current else None
    if not isinstance(rows, list):
        return []
    return [{"lang": r.get("lang", ""), "prompt": r.get("prompt", ""),
             "continuation": _visible(r.get("text", "")) + (" [end of document]" if r.get("stopped") == "eod" else " …")}
            for r in rows]


def _visible(text: str) -> str:
    """Newlines as ⏎, and a continuation of spaces only (what a barely trained model often says) as ␣."""
    text = text.replace("\n", "⏎")
    return text if text.strip() else text.replace(" ", "␣")


def pipeline_summary(cfg, results: list, seconds: float, tracking_uri: str) -> dict:
    run = RunLayout(Path(cfg.run_dir))
    current = {r.stage for r in results if r.status in CURRENT}
    trained = [n for n in ("stage1", "stage2") if getattr(cfg, n) is not None and n in current]
    premiums, no_parallel = premium_table(run, current)
    return {
        "run_dir": str(run.root),
        "seconds": round(seconds, 1),
        "stages": [r.to_json() for r in results],
        "corpus": corpus_table(run, current, cfg.consent.enabled),
        "counters": counter_table(run, current),
        "premiums": premiums,
        "no_parallel_text": no_parallel,
        "extension": extension_table(run, current),
        "adaptation": adaptation_table(run, current),
        "validation": loss_table(run, trained, "adapted base" if _base_model(cfg) else "untrained"),
        "generations": generation_table(run, current),
        "pruning_method": getattr(getattr(cfg, "cat", None), "method", None) if "cat" in current else None,
        "mlflow": {"tracking_uri": tracking_uri, "ui": f"mlflow ui --backend-store-uri {tracking_uri}"},
    }


def _base_model(cfg) -> bool:
    return getattr(getattr(cfg, "tokenizer", None), "base_model", None) is not None


def summary_figures(cfg) -> list[Path]:
    run = RunLayout(Path(cfg.run_dir))
    return [run.consent / "consent.png", run.tokenizer / "premiums.png", *sorted((run.cat / "report").glob("*.png"))]


def print_summary(summary: dict, console=None) -> None:
    from glotta.launch.console import out, print_table

    c = console or out
    print_table("Stages", summary["stages"], ["stage", "status", "seconds"], console=c)
    if summary["corpus"]:
        print_table("Documents per language after each stage (· bytes or tokens)", _compact(summary["corpus"]), console=c)
    if summary["counters"]:
        print_table("Documents dropped, split or changed (named counters)", summary["counters"],
                    ["stage", "counter", "value"], console=c)
    if summary["premiums"]:
        print_table("Tokenizer: token premium vs the reference language", summary["premiums"], console=c)
    if summary["no_parallel_text"]:
        c.print(f"No parallel text for: {', '.join(summary['no_parallel_text'])} (premium from bytes per token; "
                "give tokenizer.parallel: FILE)", soft_wrap=True, highlight=False)
    if summary.get("extension"):
        print_table("Base tokenizer extended for the target languages (base -> extended)", summary["extension"],
                    ["lang", "premium", "fertility", "tokens"], console=c)
    if summary.get("adaptation"):
        print_table("Base model adapted to the extended tokenizer: target bits per byte, base-language loss rise "
                    "(nats/token)", summary["adaptation"], console=c)
    if summary["validation"]:
        print_table("Validation loss per language (nats/token, held-out documents)", summary["validation"], console=c)
    if summary.get("pruning_method"):
        c.print(f"Pruning method: {summary['pruning_method']}. In bench/prune_eval.py no method beat a random subset "
                "in both mean and worst-language loss; see docs/prune.md before relying on pruning.",
                soft_wrap=True, highlight=False)
    if summary.get("generations"):
        print_table("Stage 2 model continues a held-out line per language (greedy)", summary["generations"],
                    ["lang", "prompt", "continuation"], console=c)
    c.print(f"\nRun directory: {summary['run_dir']}  ({summary['seconds']:.0f} s)", soft_wrap=True, highlight=False)
    c.print(f"MLflow runs:   {summary['mlflow']['ui']}", soft_wrap=True, highlight=False)


def summary_text(summary: dict) -> str:
    """The printed summary as plain text (for MLflow), at a width that never wraps."""
    from rich.console import Console

    buf = StringIO()
    print_summary(summary, Console(file=buf, width=200, no_color=True))
    return buf.getvalue()


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e4 else f"{n:,}"


def _compact(rows: list[dict]) -> list[dict]:
    """{lang, 'X docs', 'X tokens'|'X bytes'} -> {lang, X: 'docs · NNk tok'} so the table fits a terminal."""
    out = []
    for r in rows:
        c = {"lang": r["lang"]}
        for k, v in r.items():
            if k.endswith(" docs"):
                stage = k.removesuffix(" docs")
                tok, nbytes = r.get(f"{stage} tokens"), r.get(f"{stage} bytes")
                extra = f" · {_human(tok)} tok" if tok is not None else f" · {_human(nbytes)} B" if nbytes is not None else ""
                c[stage] = f"{v:,}{extra}"
        out.append(c)
    return out
