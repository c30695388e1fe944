"""The shipped pipeline recipe and the consent stage: a store directory (what `consent fetch`
writes), indexed once by `consent index` before the filter's ranks read it."""
from __future__ import annotations

from pathlib import Path

import yaml

from glotta.launch.stages import PipelineConfig, build_stages
from glotta.pruning.consent.fetch import FetchConfig

REPO = Path(__file__).resolve().parents[3]


def _consent_commands(cfg: PipelineConfig):
    stage = next(s for s in build_stages(cfg) if s.name == "consent")
    return [[str(a) for a in cmd] for cmd in stage.commands], stage


def test_recipe_store_is_a_directory_that_fetch_accepts_and_the_stage_indexes():
    raw = yaml.safe_load((REPO / "configs/pipeline.yaml").read_text())
    cfg = PipelineConfig.model_validate(raw).resolve_paths(REPO / "configs")
    store = cfg.consent.store
    assert store is not None and store.suffix != ".jsonl"
    FetchConfig(shards=Path("shards"), store=store)  # the same path `consent fetch` writes into
    cmds, stage = _consent_commands(cfg)
    verbs = [c[c.index("consent") + 1] for c in cmds]
    assert verbs == ["index", "filter", "report"]
    assert all(str(store) in c for c in cmds)
    assert stage.report_names == {0: "consent-index", 1: "consent-filter", 2: "consent-report"}


def test_demo_recipe_imports_then_indexes():
    raw = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    cfg = PipelineConfig.model_validate(raw).resolve_paths(REPO / "configs")
    cmds, stage = _consent_commands(cfg)
    assert [c[c.index("consent") + 1] for c in cmds] == ["import", "index", "filter", "report"]
    assert stage.report_names[1] == "consent-index"
