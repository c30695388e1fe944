"""The pipeline recipe: PipelineConfig and the stage list it expands to.

import -> consent -> tokenizer -> stage1 -> cat -> stage2. Every stage is the `glotta` command a
user would type; `set:` lists in each section pass `--set key=value` overrides through.
"""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from glotta.config import StrictModel
from glotta.data.holdout import EXCLUDE as HOLDOUT_EXCLUDE
from glotta.errors import ConfigError
from glotta.launch.pipeline import Stage, glotta_cmd, torchrun_cmd


class DemoCorpus(StrictModel):
    langs: list[str] = []
    max_docs_per_lang: int | None = Field(None, gt=0)
    shard_samples: int = Field(1000, gt=0)


class DataStage(StrictModel):
    demo_corpus: DemoCorpus | None = None  # build shards from the gettext catalogs ...
    inputs: list[str] = []  # ... or import these files (JSONL/Parquet/text; see `glotta data import`)
    set: list[str] = []

    @model_validator(mode="after")
    def _one_source(self):
        if (self.demo_corpus is None) == (not self.inputs):
            raise ValueError("give exactly one of data.demo_corpus or data.inputs")
        return self


class ConsentStage(StrictModel):
    enabled: bool = True
    robots: Path | None = None  # robots.txt captures <host>/<YYYY-MM-DD>.txt to import ...
    store: Path | None = None  # ... or an existing snapshot store (`glotta consent fetch` writes one)
    agents: str = "training"
    as_of: Literal["crawl", "now", "strictest"] = "strictest"
    set: list[str] = []


class TokenizerStage(StrictModel):
    vocab_size: int = Field(8000, gt=0)
    alpha: float = Field(0.3, gt=0)
    sample_bytes: int | None = Field(None, gt=0)
    eval_langs: list[str] = []  # languages of the premium table (parallel gettext text); [] = all
    reference: str = "en"
    set: list[str] = []


class HoldoutStage(StrictModel):
    fraction: float = Field(0.05, gt=0, lt=1)
    max_docs_per_lang: int = Field(50, gt=0)


class TrainStage(StrictModel):
    config: Path  # training recipe, e.g. gpt-tiny.yaml (relative to the pipeline recipe)
    init: Literal["scratch", "stage1"] = "scratch"  # stage 2: from scratch or continue from stage 1's last checkpoint
    set: list[str] = []


class CatStage(StrictModel):
    method: str = "cat"  # the winner of bench/prune_eval.py; see docs/prune.md
    keep: float = Field(0.5, gt=0, le=1)
    score_set: list[str] = []
    select_set: list[str] = []


class PipelineConfig(StrictModel):
    run_dir: Path = Path("runs/pipeline")
    nproc: int = Field(1, ge=1)  # processes per distributed stage (torchrun --nproc-per-node)
    data: DataStage
    consent: ConsentStage = Field(default_factory=ConsentStage)
    tokenizer: TokenizerStage = Field(default_factory=TokenizerStage)
    holdout: HoldoutStage = Field(default_factory=HoldoutStage)
    stage1: TrainStage | None = None
    cat: CatStage = Field(default_factory=CatStage)
    stage2: TrainStage | None = None
    # MLflow store for the parent and child runs; default: SQLite + artifacts inside run_dir.
    tracking_uri: str | None = None

    def resolve_paths(self, base: Path) -> "PipelineConfig":
        """Input paths in a recipe are relative to the recipe's folder; run_dir stays relative to the cwd."""

        def fix(p):
            return p if p is None or Path(p).is_absolute() else base / p

        c = self.model_copy(deep=True)
        c.consent.robots, c.consent.store = fix(c.consent.robots), fix(c.consent.store)
        c.data.inputs = [str(fix(Path(i))) for i in c.data.inputs]
        for t in (c.stage1, c.stage2):
            if t is not None:
                t.config = fix(t.config)
        return c

    def check_files(self) -> None:
        """Referenced files must exist before any stage runs."""
        missing = []
        if self.consent.enabled:
            if self.consent.robots is None and self.consent.store is None:
                raise ConfigError("consent: give consent.robots (captures to import) or consent.store")
            for key, p in (("consent.robots", self.consent.robots), ("consent.store", self.consent.store)):
                if p is not None and not Path(p).exists():
                    missing.append(f"{key}: {p}")
        for key, t in (("stage1.config", self.stage1), ("stage2.config", self.stage2)):
            if t is not None and not Path(t.config).is_file():
                missing.append(f"{key}: {t.config}")
        if self.stage2 is not None and self.stage1 is None:
            raise ConfigError("stage2 needs stage1 (CAT scores stage 1's checkpoints across time)")
        for i, item in enumerate(self.data.inputs):
            if not glob.glob(item) and not Path(item).exists():
                missing.append(f"data.inputs[{i}]: {item}")
        if missing:
            raise ConfigError("files referenced by the pipeline config do not exist:\n  " + "\n  ".join(missing))


def build_stages(cfg: PipelineConfig) -> list[Stage]:
    run = Path(cfg.run_dir)
    stages = [data_stage(cfg, run)]
    shards = run / "data"
    if cfg.consent.enabled:
        stages.append(consent_stage(cfg, run, shards))
        shards = run / "consent" / "shards"
    stages.append(holdout_stage(cfg, run, shards))
    stages.append(tokenizer_stage(cfg, run, shards))
    if cfg.stage1 is not None:
        stages.append(train_stage(cfg, run, shards, "stage1", [run / "holdout" / HOLDOUT_EXCLUDE]))
    if cfg.stage2 is not None:
        stages.append(cat_stage(cfg, run, shards))
        excludes = [run / "holdout" / HOLDOUT_EXCLUDE, run / "cat" / "exclude.txt"]
        stages.append(train_stage(cfg, run, shards, "stage2", excludes))
    return stages


def _sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]


def data_stage(cfg: PipelineConfig, run: Path) -> Stage:
    out = run / "data"
    d = cfg.data
    if d.demo_corpus is not None:
        args = ["data", "demo-corpus", "--out", out, "--shard-samples", d.demo_corpus.shard_samples]
        if d.demo_corpus.langs:
            args += ["--langs", ",".join(d.demo_corpus.langs)]
        if d.demo_corpus.max_docs_per_lang:
            args += ["--max-docs-per-lang", d.demo_corpus.max_docs_per_lang]
        cmd = glotta_cmd(*args, *_sets(d.set), "--json")
    else:
        cmd = torchrun_cmd(cfg.nproc, "data", "import", *d.inputs, "--out", out, *_sets(d.set), "--json")
    inspect = glotta_cmd("data", "inspect", out, "--json")
    rep = run / "reports"
    return Stage(
        "import",
        [cmd, inspect],
        outputs=[out],
        reports=[out / "manifest.json"],
        stdout={0: rep / "import.json", 1: rep / "import-inspect.json"},
    )


def consent_stage(cfg: PipelineConfig, run: Path, shards: Path) -> Stage:
    c, out = cfg.consent, run / "consent"
    cmds = []
    store = c.store
    if c.robots is not None:
        store = out / "store"
        files = sorted(str(p) for p in Path(c.robots).glob("*/*.txt"))
        cmds.append(glotta_cmd("consent", "import", *files, "--store", store))
    cmds.append(
        torchrun_cmd(
            cfg.nproc, "consent", "filter", shards, "--store", store, "--out", out, "--agents", c.agents,
            "--as-of", c.as_of, "--rewrite", *_sets(c.set), "--json",
        )
    )  # fmt: skip
    cmds.append(glotta_cmd("consent", "report", out, "--store", store, "--png", out / "consent.png", "--json"))
    return Stage(
        "consent",
        cmds,
        outputs=[out / "shards", out / "exclude.txt"],
        reports=[out / "summary.json", out / "consent.png", run / "reports" / "consent-report.json"],
        stdout={len(cmds) - 2: run / "reports" / "consent-filter.json", len(cmds) - 1: run / "reports" / "consent-report.json"},
    )


def tokenizer_stage(cfg: PipelineConfig, run: Path, shards: Path) -> Stage:
    t, out = cfg.tokenizer, run / "tokenizer"
    parallel = out / "parallel.jsonl"  # gettext parallel text for the premium table, kept out of the sample
    build = ["tokenizer", "build", "--shards", shards, "--out", out, "--name", "glotta", "--vocab-size", t.vocab_size]
    build += ["--alpha", t.alpha] + (["--sample-bytes", t.sample_bytes] if t.sample_bytes else [])
    build += _sets([f"sample.holdout={parallel}", *t.set])
    langs = [a for lang in t.eval_langs for a in ("--lang", lang)]
    cmds = [
        glotta_cmd("tokenizer", "parallel", "--out", parallel, *langs),
        glotta_cmd(*build, "--json"),
        glotta_cmd(
            "tokenizer", "eval", out / "glotta.model", "--parallel", parallel, "--reference", t.reference,
            "--chart", out / "premiums.png", *langs, "--json",
        ),
    ]  # fmt: skip
    rep = run / "reports"
    return Stage(
        "tokenizer",
        cmds,
        outputs=[out / "glotta.model"],
        reports=[out, rep / "tokenizer-eval.json"],
        stdout={1: rep / "tokenizer-build.json", 2: rep / "tokenizer-eval.json"},
    )


def holdout_stage(cfg: PipelineConfig, run: Path, shards: Path) -> Stage:
    h, out = cfg.holdout, run / "holdout"
    cmd = glotta_cmd(
        "data", "holdout", shards, "--out", out, "--fraction", h.fraction, "--max-docs-per-lang", h.max_docs_per_lang, "--json"
    )
    return Stage("holdout", [cmd], outputs=[out / "valid", out / HOLDOUT_EXCLUDE], stdout={0: run / "reports" / "holdout.json"})


def train_stage(cfg: PipelineConfig, run: Path, shards: Path, name: str, excludes: list[Path]) -> Stage:
    t: TrainStage = getattr(cfg, name)
    out = run / name
    sets = [
        f"data.train=[{shards}]", f"data.valid=[{run / 'holdout' / 'valid'}]",
        f"data.tokenizer={run / 'tokenizer' / 'glotta.model'}", f"data.exclude=[{', '.join(map(str, excludes))}]",
        f"stage={name}", f"tracking.run_name={name}",
    ]  # fmt: skip
    if t.init == "stage1":
        sets.append(f"checkpoint.init_from={run / 'stage1' / 'checkpoints'}")
    cmd = torchrun_cmd(cfg.nproc, "train", "-c", t.config, "--run-dir", out, *_sets(sets + t.set), "--json")
    return Stage(
        name, [cmd], outputs=[out / "checkpoints" / "latest", out / "metrics.jsonl"],
        reports=[out / "config.json"], stdout={0: run / "reports" / f"{name}.json"},
    )  # fmt: skip


def cat_stage(cfg: PipelineConfig, run: Path, shards: Path) -> Stage:
    c, out = cfg.cat, run / "cat"
    holdout = run / "holdout" / HOLDOUT_EXCLUDE
    tok = run / "tokenizer" / "glotta.model"
    score = torchrun_cmd(
        cfg.nproc, "prune", "score", "--checkpoints", run / "stage1" / "checkpoints", "--shards", shards,
        "--exclude", holdout, "--tokenizer", tok, "--out", out / "scores", *_sets(c.score_set), "--json",
    )  # fmt: skip
    select = glotta_cmd(
        "prune", "select", "--scores", out / "scores", "--shards", shards, "--exclude", holdout, "--tokenizer", tok,
        "--method", c.method, "--keep", c.keep, "--out", out, *_sets(c.select_set), "--json",
    )  # fmt: skip
    rep = run / "reports"
    return Stage(
        "cat", [score, select], outputs=[out / "scores", out / "exclude.txt"], reports=[out],
        stdout={0: rep / "cat-score.json", 1: rep / "cat-select.json"},
    )  # fmt: skip
