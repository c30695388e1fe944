"""Consent-aware source filtering: robots.txt, TDMRep and content signals, with an audit trail.

Follow the data: `fetch` (or `import`) captures robots.txt per origin into a snapshot store ->
`filter` decides every document (keep, or drop with a reason code and evidence) and writes a
Parquet audit plus an exclude list for the loader -> `report` summarises what was removed and
how consent changed over snapshot months. See docs/consent.md.
Config sections (YAML): consent_import, consent_fetch, consent_filter, consent_report.
"""
from __future__ import annotations

from glotta.pruning.consent.agents import AgentPolicy, resolve_policy
from glotta.pruning.consent.base import KEEP, Decision, DocFilter
from glotta.pruning.consent.decide import ConsentFilter, DecideConfig
from glotta.pruning.consent.fetch import FetchConfig, fetch_origins, run_fetch
from glotta.pruning.consent.filter import FilterConfig, run_filter
from glotta.pruning.consent.report import ReportConfig, build_report
from glotta.pruning.consent.robots import Robots
from glotta.pruning.consent.snapshots import Snapshot, SnapshotStore, import_files


run = run_filter  # the stage entry point the pipeline runner calls: run(FilterConfig) -> result dict

__all__ = [
    "AgentPolicy", "ConsentFilter", "DecideConfig", "Decision", "DocFilter", "FetchConfig",
    "FilterConfig", "KEEP", "ReportConfig", "Robots", "Snapshot", "SnapshotStore", "build_report", "fetch_origins",
    "import_files", "resolve_policy", "run", "run_fetch", "run_filter",
]
