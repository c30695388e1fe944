"""`glotta consent ...`: parse options, call glotta.pruning.consent, print."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from glotta.launch.console import print_counters, print_json, print_table
from glotta.launch.errors import guarded
from glotta.launch.options import ConfigOpt, JsonOpt, SetOpt, StrictOpt, command_config
from glotta.progress import set_quiet

app = typer.Typer(no_args_is_help=True, help="Consent-aware source filtering: robots.txt, TDMRep, content signals.")

Str = Optional[str]
PathOpt = Optional[Path]
StoreOpt = Annotated[PathOpt, typer.Option("--store", help="Snapshot store: a directory of JSONL parts or one .jsonl file.")]
AgentsOpt = Annotated[Str, typer.Option("--agents", help="training | all-ai | * | comma-separated agent names.")]


def _show(res: dict, json_out: bool, title: str, counters: dict) -> bool:
    """`--json`: the whole result as JSON; else the counters as a table. True when the table was printed."""
    if json_out:
        print_json(res)
        return False
    print_counters(title, counters)
    return True


@app.command("agents")
@guarded
def agents_(policy: Annotated[Str, typer.Argument(help="training | all-ai | * | a comma-separated list.",
                                                  show_default=False)] = None,
            config: ConfigOpt = None, sets: SetOpt = None, json_out: JsonOpt = False) -> None:
    """List the agents of a policy (default: the filter's, training; all-ai comes from the shipped list)."""
    from glotta.pruning.consent.agents import ai_agents, resolve_policy
    from glotta.pruning.consent.filter import FilterConfig

    cfg = command_config(FilterConfig, config, sets, "consent_filter", agents=policy)
    p = resolve_policy(cfg.agents)
    facts = {a["name"].lower(): a for a in ai_agents()["agents"]}
    rows = [{"name": a, "function": facts.get(a.lower(), {}).get("function", ""),
             "respect": facts.get(a.lower(), {}).get("respect", "")} for a in p.agents]
    if json_out:
        print_json({"policy": p.name, "version": p.version, "agents": rows})
        return
    print_table(f"policy {p.name} ({len(rows)} agents, version {p.version})", rows)


@app.command("import")
@guarded
def import_(
    files: Annotated[Optional[list[Path]], typer.Argument(help="robots.txt files or folders: <host>/<YYYY-MM-DD>.txt, "
                                                          "or <host>.txt with --date.", show_default=False)] = None,
    store: StoreOpt = None,
    date: Annotated[Str, typer.Option(help="Capture date for files named <host>.txt.")] = None,
    scheme: Annotated[Str, typer.Option(help="Scheme of the hosts: http or https (default https).")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    strict: StrictOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Add robots.txt captures to the snapshot store: files, Common Crawl robots.txt WARC files, Wayback CDX + captures."""
    from glotta.pruning.consent.snapshots import ImportConfig, run_import

    cfg = command_config(ImportConfig, config, sets, "consent_import", files=[str(f) for f in files] if files else None,
                         store=store, date=date, scheme=scheme, strict=strict or None)
    res = run_import(cfg)
    if _show(res, json_out, f"imported into {res['store']}", {"snapshots": res["snapshots"], "origins": res["origins"], **res["counters"]}):
        for e in res["errors"]:
            print(f"  {e}")


@app.command("fetch")
@guarded
def fetch_(
    shards: Annotated[PathOpt, typer.Argument(help="Shard set whose document URLs name the origins.", show_default=False)] = None,
    store: StoreOpt = None,
    concurrency: Annotated[Optional[int], typer.Option(help="Requests in flight at most (default 32).")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Seconds per request, whole (default 10).")] = None,
    date: Annotated[Str, typer.Option(help="Capture date to record (default: today, UTC).")] = None,
    tdmrep: Annotated[Optional[bool], typer.Option("--tdmrep/--no-tdmrep", help="Also fetch /.well-known/tdmrep.json.")] = None,
    refetch: Annotated[Optional[bool], typer.Option("--refetch", help="Fetch origins already captured on --date.")] = None,
    origins: Annotated[PathOpt, typer.Option("--origins", help="Instead of shards: a file of origins/URLs, one a line.")] = None,
    retries: Annotated[Optional[int], typer.Option(help="Retries after 5xx/429/no answer (default 3).")] = None,
    on_failure: Annotated[Str, typer.Option("--on-failure", help="keep-previous | disallow | allow: "
                                                                  "an origin failing after retries.")] = None,
    bot_wall: Annotated[Str, typer.Option("--bot-wall", help="keep-previous | disallow | allow: a 403/429 answer.")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    strict: StrictOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Capture robots.txt (and tdmrep.json) for every origin of a shard set (RFC 9309 status rules).

    Streams each capture to the store as it completes; a killed run resumes where it stopped."""
    from glotta.pruning.consent.fetch import FetchConfig, run_fetch
    from glotta.pruning.consent.filter import rank_world

    cfg = command_config(FetchConfig, config, sets, "consent_fetch", shards=shards, store=store, concurrency=concurrency,
                         timeout_s=timeout, date=date, tdmrep=tdmrep, refetch=refetch, origins=origins, retries=retries,
                         on_failure=on_failure, bot_wall=bot_wall, strict=strict or None)
    set_quiet(json_out)
    res = run_fetch(cfg, *rank_world())
    _show(res, json_out, f"consent fetch -> {res['store']} ({res['date']})", res["counters"])


@app.command("index")
@guarded
def index_(
    store: StoreOpt = None,
    buckets: Annotated[Optional[int], typer.Option(help="Buckets by origin hash (default: one per ~1,000 origins, <= 1,024).")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    strict: StrictOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Build the origin-hash Parquet index of a snapshot store (run after fetch/import, before filter/report).

    `consent filter` reads the store through it and refuses a stale one."""
    from glotta.pruning.consent.store_index import IndexConfig, run_index

    cfg = command_config(IndexConfig, config, sets, "consent_index", store=store, buckets=buckets, strict=strict or None)
    res = run_index(cfg)
    if _show(res, json_out, f"consent index ({res['was']} before)",
             {k: res[k] for k in ("origins", "captures", "buckets", "parts", "torn_lines")}):
        print(f"{res['index']}: store hash {res['store_hash'][:16]}, built in {res['seconds']:.1f} s")


@app.command("filter")
@guarded
def filter_(
    shards: Annotated[PathOpt, typer.Argument(help="Shard set to decide.", show_default=False)] = None,
    store: StoreOpt = None,
    out: Annotated[PathOpt, typer.Option("--out", "-o", help="Output directory (audit, exclude list, stats).")] = None,
    agents: AgentsOpt = None,
    as_of: Annotated[Str, typer.Option("--as-of", help="crawl | now | strictest: which snapshot decides.")] = None,
    tos: Annotated[Str, typer.Option("--tos", help="off | advisory | enforce: use of ToS labels.")] = None,
    tos_labels: Annotated[PathOpt, typer.Option("--tos-labels", help="CSV domain,label or JSON {domain: label}.")] = None,
    unknown_host: Annotated[Str, typer.Option("--unknown-host", help="keep | drop origins without any snapshot.")] = None,
    no_url: Annotated[Str, typer.Option("--no-url", help="keep | drop documents without an http(s) url.")] = None,
    rewrite: Annotated[Optional[bool], typer.Option("--rewrite", help="Also write kept documents as shards (out/shards).")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    strict: StrictOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Decide every document: Parquet audit with reason and evidence, exclude list, optional rewritten shards."""
    from glotta.pruning.consent.filter import FilterConfig, run_filter

    cfg = command_config(FilterConfig, config, sets, "consent_filter", shards=shards, store=store, out=out, agents=agents,
                         as_of=as_of, tos=tos, tos_labels=tos_labels, unknown_host=unknown_host, no_url=no_url,
                         rewrite=rewrite, strict=strict or None)
    set_quiet(json_out)
    res = run_filter(cfg)
    if json_out:
        print_json(res)
        return
    counters = res.get("total", res["counters"])
    total = counters.get("total", 0) or 1
    rows = [{"counter": k, "value": v, "share": f"{v / total:.1%}"} for k, v in sorted(counters.items())]
    print_table(f"consent filter ({cfg.agents}, as of {cfg.as_of})" + (" - already complete" if res["skipped"] else ""),
                rows, ["counter", "value", "share"])
    # Documents decided without a usable URL or date are the ones an auditor asks about first.
    no_url = sum(v for k, v in counters.items() if k.endswith(("no_url", "bad_scheme", "no_host", "bad_host")))
    print(f"documents without a usable URL: {no_url:,} of {counters.get('total', 0):,} ({no_url / total:.2%}, "
          f"--no-url {cfg.no_url}); unreadable crawl_date: {counters.get('flag_bad_crawl_date', 0):,}")
    for name, docs in res.get("examples", {}).items():
        print(f"  {name}: " + "; ".join(docs[:3]) + (" ..." if len(docs) > 3 else ""))
    if res.get("exclude"):
        print(f"exclude list: {res['exclude']}")


@app.command("check")
@guarded
def check_(
    url: Annotated[str, typer.Argument(help="The URL to explain.")],
    store: StoreOpt = None,
    date: Annotated[Str, typer.Option(help="Crawl date (YYYY-MM-DD); default: the latest capture.")] = None,
    agents: AgentsOpt = None,
    as_of: Annotated[Str, typer.Option("--as-of", help="crawl | now | strictest.")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Explain one URL: the decision and every agent's robots.txt class in the capture used."""
    from glotta.errors import ConfigError
    from glotta.pruning.consent.decide import explain
    from glotta.pruning.consent.filter import FilterConfig
    from glotta.pruning.consent.snapshots import SnapshotStore
    from glotta.pruning.consent.store_index import IndexedStore, index_current

    cfg = command_config(FilterConfig, config, sets, "consent_filter", store=store, agents=agents, as_of=as_of)
    if cfg.store is None:
        raise ConfigError("consent check needs --store")
    # One URL needs one origin: through the index when it is current (one bucket), else the whole store.
    whole = not cfg.store.is_dir() or not index_current(cfg.store)
    res = explain(SnapshotStore.load(cfg.store) if whole else IndexedStore(cfg.store), url, date, cfg)
    if json_out:
        print_json(res)
        return
    verdict = "keep" if res["keep"] else "drop"
    print(f"{verdict}: {res['reason']} {res['agent']} {res['rule']} (capture {res['snapshot'] or '-'})".strip())
    if res["agents"]:
        print_table("agents", res["agents"], ["agent", "group", "status", "detail", "may_fetch", "ai_train"])


@app.command("report")
@guarded
def report_(
    out: Annotated[PathOpt, typer.Argument(help="The directory `consent filter` wrote.", show_default=False)] = None,
    store: StoreOpt = None,
    png: Annotated[PathOpt, typer.Option("--png", help="Write the chart (needs --store).")] = None,
    top: Annotated[Optional[int], typer.Option(help="Domains to list (default 20).")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Byte-weighted restricted share per reason, language, domain, and per agent group over snapshot months."""
    from glotta.pruning.consent.report import ReportConfig, build_report

    cfg = command_config(ReportConfig, config, sets, "consent_report", out=out, store=store, png=png, top=top)
    rep = build_report(cfg)
    if json_out:
        print_json(rep)
        return
    print(f"{rep['dropped_docs']:,} of {rep['docs']:,} documents dropped; {rep['dropped_byte_share']:.2%} of UTF-8 bytes")
    pct = lambda rows, *keys: [dict(r, **{k: f"{r[k]:.1%}" for k in keys}) for r in rows]  # noqa: E731
    print_table("by reason", pct(rep["reasons"], "byte_share"), ["decision", "reason", "docs", "bytes", "byte_share"])
    print_table("by language", pct(rep["langs"], "dropped_byte_share"),
                ["lang", "docs", "bytes", "dropped_docs", "dropped_byte_share"])
    print_table(f"top {len(rep['domains'])} domains by bytes", pct(rep["domains"], "dropped_byte_share"),
                ["reg_domain", "hosts", "docs", "bytes", "dropped_docs", "dropped_byte_share", "top_reason"])
    if rep["months"]:
        last = rep["months"][-1]["month"]
        rows = [r for r in rep["months"] if r["month"] == last and "lang" not in r]
        print_table(f"robots.txt status as of {last}, share of bytes per agent group",
                    pct(rows, "all", "unreachable", "some", "none", "no_robots", "no_snapshot", "ai_train_no"),
                    ["group", "all", "unreachable", "some", "none", "no_robots", "no_snapshot", "ai_train_no"])
    if rep.get("png"):
        print(f"chart: {rep['png']}")
