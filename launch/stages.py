"""The pipeline recipe: PipelineConfig and the stage list it expands to.

import -> consent -> tokenizer -> stage1 -> cat -> stage2. Every stage is the `glotta` command a
user would type; `set:` lists in each section pass `--set key=value` overrides through.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from glotta.config import StrictModel
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


class PipelineConfig(StrictModel):
    run_dir: Path = Path("runs/pipeline")
    nproc: int = Field(1, ge=1)  # processes per distributed stage (torchrun --nproc-per-node)
    data: DataStage
    consent: ConsentStage = Field(default_factory=ConsentStage)
    tokenizer: TokenizerStage = Field(default_factory=TokenizerStage)
    # MLflow store for the parent and child runs; default: SQLite + artifacts inside run_dir.
    tracking_uri: str | None = None

    def resolve_paths(self, base: Path) -> "PipelineConfig":
        """Input paths in a recipe are relative to the recipe's folder; run_dir stays relative to the cwd."""

        def fix(p):
            return p if p is None or Path(p).is_absolute() else base / p

        c = self.model_copy(deep=True)
        c.consent.robots, c.consent.store = fix(c.consent.robots), fix(c.consent.store)
        c.data.inputs = [str(fix(Path(i))) for i in c.data.inputs]
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
        for i, item in enumerate(self.data.inputs):
            if not any(Path().glob(item)) and not Path(item).exists():
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
    stages.append(tokenizer_stage(cfg, run, shards))
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
    build = ["tokenizer", "build", "--shards", shards, "--out", out, "--name", "glotta", "--vocab-size", t.vocab_size]
    build += ["--alpha", t.alpha] + (["--sample-bytes", t.sample_bytes] if t.sample_bytes else []) + _sets(t.set)
    parallel = out / "parallel.jsonl"
    langs = [a for lang in t.eval_langs for a in ("--lang", lang)]
    cmds = [
        glotta_cmd(*build, "--json"),
        glotta_cmd("tokenizer", "parallel", "--out", parallel, *langs),
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
        stdout={0: rep / "tokenizer-build.json", 2: rep / "tokenizer-eval.json"},
    )
