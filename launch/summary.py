"""The end-of-pipeline summary, read back from what each stage left in the run directory."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sentencepiece as spm

from glotta.data.manifest import Manifest
from glotta.data.shards import iter_samples, list_shards


def _read_json(path: Path) -> Any:
    if not path.is_file() or path.stat().st_size == 0:
        return None
    text = path.read_text(encoding="utf-8").strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:  # several ranks printed one object each: take the last
        return json.loads(text[text.rfind("\n{") + 1 :])


def _exclude_set(paths: list[Path]) -> set[str]:
    out: set[str] = set()
    for p in paths:
        if p.is_file():
            out.update(line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip())
    return out


def kept_per_language(shards: Path, sp: spm.SentencePieceProcessor | None, exclude: set[str]) -> dict[str, dict]:
    """Documents, bytes and (with a tokenizer) tokens per language of a shard set minus an exclude list."""
    out: dict[str, dict] = {}
    batch: dict[str, list[str]] = {}

    def flush(lang: str) -> None:
        if sp is not None and batch.get(lang):
            out[lang]["tokens"] += sum(len(ids) for ids in sp.encode(batch[lang]))
        batch[lang] = []

    for path in list_shards(shards):
        for s in iter_samples(path):
            if s.id in exclude:
                continue
            e = out.setdefault(s.lang, {"docs": 0, "bytes": 0, "tokens": 0 if sp is not None else None})
            e["docs"] += 1
            e["bytes"] += len(s.text.encode("utf-8"))
            batch.setdefault(s.lang, []).append(s.text)
            if len(batch[s.lang]) >= 256:
                flush(s.lang)
    for lang in list(batch):
        flush(lang)
    return dict(sorted(out.items()))


def corpus_table(run: Path, stage_sets: list[tuple[str, Path, list[Path]]]) -> list[dict]:
    """One row per language: docs and tokens kept after each stage."""
    model = run / "tokenizer" / "glotta.model"
    sp = spm.SentencePieceProcessor(model_file=str(model)) if model.is_file() else None
    per_stage = {}
    for name, shards, excludes in stage_sets:
        if (shards / "manifest.json").is_file():
            per_stage[name] = kept_per_language(shards, sp, _exclude_set(excludes))
    langs = sorted({lang for v in per_stage.values() for lang in v})
    rows = []
    for lang in langs:
        row: dict[str, Any] = {"lang": lang}
        for name, v in per_stage.items():
            e = v.get(lang, {"docs": 0, "tokens": 0})
            row[f"{name} docs"] = e["docs"]
            if sp is not None:
                row[f"{name} tokens"] = e["tokens"]
        rows.append(row)
    return rows


def premium_table(run: Path) -> list[dict]:
    """Token premium per language (Petrov et al.) from `glotta tokenizer eval --json`."""
    res = _read_json(run / "reports" / "tokenizer-eval.json")
    if not res:
        return []
    rows = []
    for name, tok in res["tokenizers"].items():
        for lang, r in sorted(tok["langs"].items(), key=lambda kv: kv[1].get("premium") or 0):
            rows.append({
                "lang": lang, "premium": r.get("premium"), "fertility": r.get("fertility"),
                "unit": r.get("fertility_unit"), "bytes/token": r.get("bytes_per_token"),
            })  # fmt: skip
    return rows


def manifest_langs(path: Path) -> dict[str, dict[str, int]]:
    return Manifest.load(path).langs() if (path / "manifest.json").is_file() else {}


def val_losses(run_dir: Path) -> tuple[dict[str, float], dict[str, float]]:
    """(first, last) validation losses a training stage logged in metrics.jsonl, per language + 'all'."""
    path = run_dir / "metrics.jsonl"
    evals = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if "val/loss" in rec:
                per = {k.removeprefix("val/loss/"): v for k, v in rec.items() if k.startswith("val/loss/")}
                evals.append({**per, "all": rec["val/loss"], "_step": rec["step"]})
    if not evals:
        return {}, {}
    return evals[0], evals[-1]


def loss_table(run: Path, stages: list[str]) -> list[dict]:
    """Validation loss per language: before training (step 0, when logged) and after each stage."""
    cols: dict[str, dict[str, float]] = {}
    for name in stages:
        first, last = val_losses(run / name)
        if first.get("_step") == 0 and name == stages[0]:
            cols["untrained"] = first
        if last:
            cols[name] = last
    langs = sorted({k for v in cols.values() for k in v if not k.startswith("_") and k != "all"}) + ["all"]
    return [{"lang": lang, **{f"{c} val loss": v.get(lang) for c, v in cols.items()}} for lang in langs] if cols else []


def pipeline_summary(cfg, results: list[dict], seconds: float, tracking_uri: str) -> dict:
    run = Path(cfg.run_dir)
    shards = run / "consent" / "shards" if cfg.consent.enabled else run / "data"
    holdout = run / "holdout" / "train.exclude.txt"
    sets = [("import", run / "data", [])]
    if cfg.consent.enabled:
        sets.append(("consent", shards, []))
    sets.append(("train", shards, [holdout]))
    if cfg.stage2 is not None and (run / "cat" / "exclude.txt").is_file():
        sets.append(("cat", shards, [holdout, run / "cat" / "exclude.txt"]))
    trained = [n for n in ("stage1", "stage2") if getattr(cfg, n) is not None]
    return {
        "run_dir": str(run),
        "seconds": round(seconds, 1),
        "stages": results,
        "corpus": corpus_table(run, sets),
        "premiums": premium_table(run),
        "validation": loss_table(run, trained) if trained else [],
        "mlflow": {"tracking_uri": tracking_uri, "ui": f"mlflow ui --backend-store-uri {tracking_uri}"},
    }


def print_summary(summary: dict) -> None:
    from glotta.launch.console import out, print_table

    print_table("Stages", summary["stages"], ["stage", "status", "seconds"])
    if summary["corpus"]:
        print_table("Documents · tokens kept per language after each stage", _compact(summary["corpus"]))
    if summary["premiums"]:
        print_table("Tokenizer: token premium vs the reference language (parallel gettext text)", summary["premiums"])
    if summary["validation"]:
        print_table("Validation loss per language (nats/token, held-out documents)", summary["validation"])
    out.print(f"\nRun directory: {summary['run_dir']}  ({summary['seconds']:.0f} s)")
    out.print(f"MLflow runs:   {summary['mlflow']['ui']}")


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e4 else f"{n:,}"


def _compact(rows: list[dict]) -> list[dict]:
    """{lang, 'X docs', 'X tokens', ...} -> {lang, X: 'docs · tokens'} so the table fits a terminal."""
    out = []
    for r in rows:
        c = {"lang": r["lang"]}
        for k, v in r.items():
            if k.endswith(" docs"):
                stage = k.removesuffix(" docs")
                tok = r.get(f"{stage} tokens")
                c[stage] = f"{v:,}" + (f" · {_human(tok)}" if tok is not None else "")
        out.append(c)
    return out
