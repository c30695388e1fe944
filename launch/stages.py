"""The pipeline recipe: PipelineConfig and the stage list it expands to.

import -> consent -> holdout -> tokenizer -> stage1 -> cat-score -> cat -> stage2 (CAT scoring and
selection are separate stages, so a new `cat.keep` does not rescore; with `tokenizer.base_model`:
holdout -> base -> tokenizer -> adapt -> stage1, launch/base_model.py). Every stage is the `glotta`
command a user would type; `set:` lists in each section pass `--set key=value` overrides through,
validated here against the command's config model (so `--dry-run` catches a typo). Each stage
names the inputs it reads, so its fingerprint follows their content (launch/pipeline.py).
"""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from rich.markup import escape

from glotta.config import StrictModel
from glotta.errors import ConfigError
from glotta.launch.base_model import (
    adapt_stage, architecture_sets, base_stage, check_corpus_langs, check_target_langs, extend_commands, inspect_base,
)  # fmt: skip
from glotta.launch.checks import Origins, check_sets
from glotta.launch.layout import RunLayout
from glotta.launch.pipeline import Stage, glotta_cmd, torchrun_cmd
from glotta.progress import console
from glotta.tokenizer.embed_init import InitMethod

FIELDS = ("text", "url", "lang", "id", "source", "date", "license")


class DemoCorpus(StrictModel):
    langs: list[str] = []
    max_docs_per_lang: int | None = Field(None, gt=0)
    shard_samples: int = Field(1000, gt=0)


class DataStage(StrictModel):
    demo_corpus: DemoCorpus | None = None  # build shards from the gettext catalogs ...
    inputs: list[str] = []  # ... or import these files (JSONL/Parquet/text; see `glotta data import`)
    fields: dict[str, str] = {}  # field mapping, e.g. {text: body, lang: language, id: doc_id}
    set: list[str] = []

    @model_validator(mode="after")
    def _one_source(self):
        if (self.demo_corpus is None) == (not self.inputs):
            raise ValueError("give exactly one of data.demo_corpus or data.inputs")
        bad = sorted(set(self.fields) - set(FIELDS))
        if bad:
            raise ValueError(f"data.fields: unknown field(s) {bad}; map any of {list(FIELDS)}")
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
    eval_langs: list[str] = []  # languages of the premium table; [] = the corpus' languages
    # your parallel text (FLORES-style JSONL {id, lang, text} or TSV with a language header);
    # without it: the machine's gettext catalogs, for the corpus languages that have them
    parallel: Path | None = None
    reference: str = "en"
    set: list[str] = []  # `tokenizer build` overrides (`tokenizer extend` ones with base_model)
    # Bring your own model (docs/model.md): a local Hugging Face Llama/Mistral directory whose
    # SentencePiece tokenizer is extended with `add` pieces learned from `target_langs` text; its
    # weights are adapted to it (`init`) and stage 1 continues from them with its architecture.
    base_model: Path | None = None
    target_langs: list[str] = []
    add: int = Field(1000, gt=0)
    init: InitMethod = "mean-below"
    adapt_set: list[str] = []  # `tokenizer adapt-checkpoint` overrides
    import_set: list[str] = []  # `model import-hf` overrides, e.g. precision=bf16 (half the memory of fp32)

    @model_validator(mode="after")
    def _base_model_keys(self):
        given = self.model_fields_set
        if self.base_model is None:
            only = sorted(given & {"target_langs", "add", "init", "adapt_set", "import_set"})
            if only:
                raise ValueError(f"tokenizer.{only[0]} applies only with tokenizer.base_model (an HF model to adapt)")
        else:
            if "vocab_size" in given:
                raise ValueError("tokenizer.vocab_size: with tokenizer.base_model the vocabulary is the base model's "
                                 "plus tokenizer.add new pieces; remove vocab_size")
            if not self.target_langs:
                raise ValueError("tokenizer.target_langs: name the language(s) to extend the base model's tokenizer for")
        return self


class HoldoutStage(StrictModel):
    fraction: float = Field(0.05, gt=0, lt=1)
    max_docs_per_lang: int = Field(50, gt=0)


class TrainStage(StrictModel):
    config: Path  # training recipe, e.g. gpt-tiny.yaml (relative to the pipeline recipe)
    init: Literal["scratch", "stage1"] = "scratch"  # stage 2: from scratch or continue from stage 1's last checkpoint
    set: list[str] = []
    # stage 2: greedy continuation of one held-out line per language, shown in the summary (0 = none)
    generate_tokens: int = Field(24, ge=0)
    # publish the stage's last checkpoint as a Hugging Face Llama directory, <stage>/hf (`glotta model export-hf`)
    export_hf: bool = False


class CatStage(StrictModel):
    # best on validation in bench/prune_eval.py, but not shown to beat random (docs/prune.md)
    method: str = "ppl_mid"
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
        c.tokenizer.parallel, c.tokenizer.base_model = fix(c.tokenizer.parallel), fix(c.tokenizer.base_model)
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
        if self.tokenizer.base_model is not None and not Path(self.tokenizer.base_model).is_dir():
            missing.append(f"tokenizer.base_model: {self.tokenizer.base_model} (a local Hugging Face model directory)")
        if self.tokenizer.parallel is not None and not Path(self.tokenizer.parallel).is_file():
            missing.append(f"tokenizer.parallel: {self.tokenizer.parallel}")
        for key, t in (("stage1.config", self.stage1), ("stage2.config", self.stage2)):
            if t is not None and not Path(t.config).is_file():
                missing.append(f"{key}: {t.config}")
        if self.stage2 is not None and self.stage1 is None:
            raise ConfigError("stage2 needs stage1 (CAT scores stage 1's checkpoints across time)")
        demo = self.data.demo_corpus
        if self.tokenizer.base_model is not None and demo is not None and demo.langs:
            check_target_langs(self.tokenizer.target_langs, demo.langs, "data.demo_corpus.langs")
        for i, item in enumerate(self.data.inputs):
            if not glob.glob(item) and not Path(item).exists():
                missing.append(f"data.inputs[{i}]: {item}")
        if missing:
            raise ConfigError("files referenced by the pipeline config do not exist:\n  " + "\n  ".join(missing))


def build_stages(cfg: PipelineConfig, origins: Origins | None = None) -> list[Stage]:
    """The stage list; every `set:` list is checked against its command's config model first."""
    run = RunLayout(Path(cfg.run_dir))
    origins = origins or Origins(Path("recipe"), None)
    shards = run.training_shards(cfg.consent.enabled)
    builders = [lambda: data_stage(cfg, run, origins)]
    if cfg.consent.enabled:
        builders.append(lambda: consent_stage(cfg, run, origins))
    builders.append(lambda: holdout_stage(cfg, run, shards))
    base = None
    if cfg.tokenizer.base_model is not None:  # checked first: a bad base model is the one error to show
        stage1_cfg = user_train_config(cfg, "stage1", origins) if cfg.stage1 is not None else None
        base = inspect_base(cfg, stage1_cfg, origins)
        builders.append(lambda: base_stage(cfg, run, stage1_cfg, origins))
    builders.append(lambda: tokenizer_stage(cfg, run, shards, origins))
    if base is not None:
        builders.append(lambda: adapt_stage(cfg, run, stage1_cfg, origins))
    if cfg.stage1 is not None:
        builders.append(lambda: train_stage(cfg, run, shards, "stage1", [run.holdout_exclude], origins, base))
    if cfg.stage2 is not None:
        builders.append(lambda: cat_score_stage(cfg, run, shards, origins))
        builders.append(lambda: cat_select_stage(cfg, run, shards, origins))
        builders.append(lambda: train_stage(cfg, run, shards, "stage2", [run.holdout_exclude, run.cat_exclude], origins,
                                            base))
    stages, errors = [], []
    for build in builders:  # every stage's problems in one message, not the first one only
        try:
            stages.append(build())
        except ConfigError as e:
            errors.append(str(e))
    if errors:
        raise ConfigError("\n".join(errors))
    if cfg.tokenizer.base_model is not None:  # the corpus' own languages, before base/tokenizer spend time
        shard_sets = {"import": run.data, "consent": run.consent_shards}
        for s in stages:
            if s.name in shard_sets:
                s.check = check_corpus_langs(cfg.tokenizer.target_langs, shard_sets[s.name], s.name)
    return stages


def _sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]


def data_stage(cfg: PipelineConfig, run: RunLayout, origins: Origins) -> Stage:
    from glotta.data.importer import ImportConfig
    from glotta.launch.commands.data import DemoCorpusConfig

    out, d = run.data, cfg.data
    if d.demo_corpus is not None:
        check_sets(DemoCorpusConfig, d.set, "data.set", origins, "glotta data demo-corpus")
        args = ["data", "demo-corpus", "--out", out, "--shard-samples", d.demo_corpus.shard_samples]
        if d.demo_corpus.langs:
            args += ["--langs", ",".join(d.demo_corpus.langs)]
        if d.demo_corpus.max_docs_per_lang:
            args += ["--max-docs-per-lang", d.demo_corpus.max_docs_per_lang]
        cmd, inputs = glotta_cmd(*args, *_sets(d.set), "--json"), []
    else:
        sets = [f"{k}_field={v}" for k, v in sorted(d.fields.items())] + d.set
        check_sets(ImportConfig, d.set, "data.set", origins, "glotta data import")
        cmd, inputs = torchrun_cmd(cfg.nproc, "data", "import", *d.inputs, "--out", out, *_sets(sets), "--json"), list(d.inputs)
    inspect = glotta_cmd("data", "inspect", out, "--json")
    return Stage("import", [cmd, inspect], outputs=[out], inputs=inputs, reports=[out / "manifest.json"],
                 report_names={0: "import", 1: "import-inspect"})


def consent_stage(cfg: PipelineConfig, run: RunLayout, origins: Origins) -> Stage:
    from glotta.pruning.consent.filter import FilterConfig

    c, out = cfg.consent, run.consent
    check_sets(FilterConfig, c.set, "consent.set", origins, "glotta consent filter")
    cmds, names, inputs = [], [], [run.data]
    store = c.store
    if c.robots is not None:
        store = out / "store"
        files = sorted(str(p) for p in Path(c.robots).glob("*/*.txt"))
        cmds.append(glotta_cmd("consent", "import", *files, "--store", store, "--json"))
        names.append("consent-import")
        inputs += files
    else:
        inputs.append(store)
    if Path(store).suffix != ".jsonl":  # a store directory: index it once, before the ranks read it
        cmds.append(glotta_cmd("consent", "index", "--store", store, "--json"))
        names.append("consent-index")
    cmds.append(
        torchrun_cmd(
            cfg.nproc, "consent", "filter", run.data, "--store", store, "--out", out, "--agents", c.agents,
            "--as-of", c.as_of, "--rewrite", *_sets(c.set), "--json",
        )
    )  # fmt: skip
    cmds.append(glotta_cmd("consent", "report", out, "--store", store, "--png", out / "consent.png", "--json"))
    names += ["consent-filter", "consent-report"]
    return Stage("consent", cmds, outputs=[run.consent_shards, run.consent_exclude], inputs=inputs,
                 reports=[out / "summary.json", out / "consent.png"], report_names=dict(enumerate(names)))


def tokenizer_stage(cfg: PipelineConfig, run: RunLayout, shards: Path, origins: Origins) -> Stage:
    from glotta.tokenizer.build import BuildConfig

    t, out = cfg.tokenizer, run.tokenizer
    if t.base_model is None:
        check_sets(BuildConfig, t.set, "tokenizer.set", origins, "glotta tokenizer build")
    parallel = run.parallel  # the evaluation text, kept out of the tokenizer's sample
    build = ["tokenizer", "build", "--shards", shards, "--out", out, "--name", "glotta", "--vocab-size", t.vocab_size]
    build += ["--alpha", t.alpha] + (["--sample-bytes", t.sample_bytes] if t.sample_bytes else [])
    build += _sets([f"sample.holdout={parallel}", *t.set])
    langs = [a for lang in t.eval_langs for a in ("--lang", lang)]
    # without eval_langs: the corpus' languages (from the shard set's manifest) that have parallel text
    par = ["--set", f"langs_from={shards}"] if not t.eval_langs else langs
    if t.parallel is not None:
        par += ["--set", f"source={t.parallel}"]
    cmds = [
        glotta_cmd("tokenizer", "parallel", "--out", parallel, *par, "--json"),
        glotta_cmd(*build, "--json") if t.base_model is None else extend_commands(cfg, run, shards, origins),
        glotta_cmd(
            "tokenizer", "eval", run.tokenizer_model, "--parallel", parallel, "--shards", shards,
            "--reference", t.reference, "--chart", out / "premiums.png", *langs, "--json",
        ),
    ]  # fmt: skip
    inputs = [shards] + ([t.parallel] if t.parallel is not None else [])
    if t.base_model is not None:
        inputs.append(run.base / "tokenizer.model")
    return Stage("tokenizer", cmds, outputs=[run.tokenizer_model], inputs=inputs, reports=[out],
                 report_names={0: "tokenizer-parallel", 1: "tokenizer-build" if t.base_model is None else "tokenizer-extend",
                               2: "tokenizer-eval"})


def holdout_stage(cfg: PipelineConfig, run: RunLayout, shards: Path) -> Stage:
    h, out = cfg.holdout, run.holdout
    cmd = glotta_cmd(
        "data", "holdout", shards, "--out", out, "--fraction", h.fraction, "--max-docs-per-lang", h.max_docs_per_lang, "--json"
    )
    return Stage("holdout", [cmd], outputs=[run.holdout_valid, run.holdout_exclude], inputs=[shards],
                 report_names={0: "holdout"})


def user_train_config(cfg: PipelineConfig, name: str, origins: Origins, sets: list[str] = ()):
    """A training stage's TrainConfig from its recipe and `set:` list (the error names where they came from)."""
    from glotta.train import load_train_config
    from glotta.train.config import TrainConfig

    t: TrainStage = getattr(cfg, name)
    check_sets(TrainConfig, t.set, f"{name}.set", origins, "glotta train")
    try:
        return load_train_config(t.config, [*sets, *t.set])
    except ConfigError as e:
        where = ", ".join(sorted({origins.of(f"{name}.set[{i}]") for i in range(len(t.set))})) or origins.of(name)
        raise ConfigError(f"{name} (training recipe {t.config}, set: from {where}):\n{e}") from None


def train_stage(cfg: PipelineConfig, run: RunLayout, shards: Path, name: str, excludes: list[Path],
                origins: Origins, base=None) -> Stage:
    """A training stage; with `tokenizer.base_model` (`base`: its ModelConfig) it continues the adapted
    base model (stage 2 with `init: scratch` starts from the adapted base too) with its architecture."""
    t: TrainStage = getattr(cfg, name)
    out = run.root / name
    sets = [
        f"data.train=[{_yaml_str(shards)}]", f"data.valid=[{_yaml_str(run.holdout_valid)}]",
        f"data.tokenizer={_yaml_str(run.tokenizer_model)}", f"data.exclude=[{', '.join(map(_yaml_str, excludes))}]",
        f"stage={name}", f"tracking.run_name={name}",
    ]  # fmt: skip
    inputs: list = [shards, run.holdout_valid, run.tokenizer_model, t.config, *excludes]
    if t.init == "stage1":
        sets.append(f"checkpoint.init_from={_yaml_str(run.checkpoints('stage1'))}")
        inputs.append(run.checkpoints("stage1"))
    elif base is not None:
        sets.append(f"checkpoint.init_from={_yaml_str(run.adapted)}")
        inputs.append(run.adapted)
    tcfg = user_train_config(cfg, name, origins, sets)
    after = []  # the base model's architecture, after the user's overrides (which must not disagree)
    if base is not None:
        after, notes = architecture_sets(base, tcfg, Path(t.config), t.set, name, origins)
        for note in notes:
            console.print(f"[yellow]{escape(note)}[/]", soft_wrap=True)
        tcfg = user_train_config(cfg, name, origins, sets + after)
    cmds = [torchrun_cmd(cfg.nproc, "train", "-c", t.config, "--run-dir", out, *_sets(sets + t.set + after), "--json")]
    report_names, outputs = {0: name}, [run.checkpoints(name) / "latest", run.metrics(name)]
    if name == "stage2" and t.generate_tokens:
        report_names[len(cmds)] = f"{name}-generate"
        cmds.append(glotta_cmd("generate", run.checkpoints(name), "--prompts-shards", run.holdout_valid,
                               "--max-tokens", t.generate_tokens, "--json"))
    if t.export_hf:
        report_names[len(cmds)] = f"{name}-export-hf"
        cmds.append(glotta_cmd("model", "export-hf", run.checkpoints(name), "--out", out / "hf", "--overwrite", "--json"))
        outputs.append(out / "hf")
    return Stage(name, cmds, outputs=outputs, inputs=inputs, reports=[out / "config.json"], report_names=report_names,
                 total_steps=tcfg.train_iters)


def cat_score_stage(cfg: PipelineConfig, run: RunLayout, shards: Path, origins: Origins) -> Stage:
    """CAT scoring, the expensive half (forward passes at every kept checkpoint): its own stage, so a
    new `cat.keep` / `cat.method` / `cat.select_set` reruns only the selection below it."""
    from glotta.pruning.cat.score import ScoreConfig

    check_sets(ScoreConfig, cfg.cat.score_set, "cat.score_set", origins, "glotta prune score")
    holdout, tok = run.holdout_exclude, run.tokenizer_model
    score = torchrun_cmd(
        cfg.nproc, "prune", "score", "--checkpoints", run.checkpoints("stage1"), "--shards", shards,
        "--exclude", holdout, "--tokenizer", tok, "--out", run.cat_scores, *_sets(cfg.cat.score_set), "--json",
    )  # fmt: skip
    return Stage("cat-score", [score], outputs=[run.cat_scores], report_names={0: "cat-score"},
                 inputs=[run.checkpoints("stage1"), shards, holdout, tok])


def cat_select_stage(cfg: PipelineConfig, run: RunLayout, shards: Path, origins: Origins) -> Stage:
    """CAT selection (stage name `cat`): reads the scores by content, so it reruns when they change."""
    from glotta.pruning.cat.select import SelectConfig

    c, out = cfg.cat, run.cat
    check_sets(SelectConfig, c.select_set, "cat.select_set", origins, "glotta prune select")
    holdout, tok = run.holdout_exclude, run.tokenizer_model
    select = glotta_cmd(
        "prune", "select", "--scores", run.cat_scores, "--shards", shards, "--exclude", holdout, "--tokenizer", tok,
        "--method", c.method, "--keep", c.keep, "--out", out, *_sets(c.select_set), "--json",
    )  # fmt: skip
    return Stage("cat", [select], outputs=[run.cat_exclude, run.cat_report], reports=[out],
                 inputs=[run.cat_scores, shards, holdout, tok], report_names={0: "cat-select"})


def _yaml_str(p) -> str:
    """A path as a YAML string inside a flow list (a path with ', ' or ':' stays one item)."""
    import json

    return json.dumps(str(p))
