"""`glotta data ...`: import corpora into text shards, inspect shard sets, build the demo corpus."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from glotta.config import StrictModel
from glotta.launch.console import out as stdout
from glotta.launch.console import print_counters, print_json_if, print_table
from glotta.launch.errors import guarded
from glotta.launch.options import ConfigOpt, JsonOpt, SetOpt, StrictOpt, command_config
from glotta.progress import console as err_console
from glotta.progress import set_quiet

app = typer.Typer(no_args_is_help=True, help="Import, inspect and build webdataset text shard sets.")

Str = Optional[str]
ShardDirArg = Annotated[Optional[Path], typer.Argument(help="Shard directory.", show_default=False)]


def _opt(*names: str, help: str) -> typer.models.OptionInfo:
    return typer.Option(*names, help=help, show_default=False)


def _lang_rows(rows: list[dict]) -> list[dict]:
    return [dict(r, docs_share=f"{r['docs_share']:.1%}", bytes_share=f"{r['bytes_share']:.1%}") for r in rows]


@app.command("import")
@guarded
def import_(
    inputs: Annotated[Optional[list[str]], typer.Argument(help="Files, directories or globs (.jsonl[.gz], .parquet, .txt).", show_default=False)] = None,
    out: Annotated[Str, _opt("--out", "-o", help="Output shard directory.")] = None,
    text_field: Annotated[Str, _opt("--text-field", help="Field holding the document text (default: text).")] = None,
    url_field: Annotated[Str, _opt("--url-field", help="Field holding the URL (default: url).")] = None,
    lang_field: Annotated[Str, _opt("--lang-field", help="Field holding the language; missing -> language id (default: lang).")] = None,
    id_field: Annotated[Str, _opt("--id-field", help="Field used for the sample key (default: id; missing: r{rank}-{n}).")] = None,
    source_field: Annotated[Str, _opt("--source-field", help="Field holding the source (default: source; missing: file:NAME).")] = None,
    date_field: Annotated[Str, _opt("--date-field", help="Field holding the crawl date (default: date).")] = None,
    license_field: Annotated[Str, _opt("--license-field", help="Field holding the license (default: license).")] = None,
    keep_fields: Annotated[Str, _opt("--keep-fields", help="Other fields to copy into KEY.json, comma-separated ('*' = all).")] = None,
    fmt: Annotated[Str, _opt("--format", help="jsonl | parquet | text (default: from the suffix).")] = None,
    text_split: Annotated[Str, _opt("--text-split", help="Plain text: file | lines | paragraphs per document (default: file).")] = None,
    shard_samples: Annotated[Optional[int], _opt("--shard-samples", help="Samples per shard at most (default: 10000).")] = None,
    shard_mb: Annotated[Optional[float], _opt("--shard-mb", help="Text MiB per shard at most (default: 256).")] = None,
    prefix: Annotated[Str, _opt("--prefix", help="Shard name prefix: PREFIX-RANK-INDEX.tar (default: shard).")] = None,
    utf8: Annotated[Str, _opt("--utf8", help="Invalid UTF-8: replace | skip (default: replace).")] = None,
    lid: Annotated[Str, _opt("--lid", help="Language id: auto (when no language given) | always | never (default: auto).")] = None,
    lid_backend: Annotated[Str, _opt("--lid-backend", help="cld2 | fasttext (lid.176 lite) (default: cld2).")] = None,
    lid_threshold: Annotated[Optional[float], _opt("--lid-threshold", help="Below this confidence the language is 'und' (default: 0.5).")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    json_out: JsonOpt = False,
    strict: StrictOpt = False,
) -> None:
    """Import JSONL / Parquet / text files into webdataset text shards with manifest.json.

    Work is split by RANK/WORLD_SIZE (torchrun) or SLURM_PROCID/SLURM_NTASKS; rerunning the same command resumes after a crash and does nothing when the import is complete.
    """
    from glotta.data.importer import ImportConfig, run_import
    from glotta.data.inspect import InspectReport

    cfg = command_config(
        ImportConfig, config, sets, None, inputs=inputs or None, out=out, text_field=text_field, url_field=url_field, lang_field=lang_field,
        id_field=id_field, source_field=source_field, date_field=date_field, license_field=license_field,
        keep_fields=[k.strip() for k in keep_fields.split(",") if k.strip()] if keep_fields else None,
        format=fmt, text_split=text_split, shard_samples=shard_samples, shard_mb=shard_mb, prefix=prefix,
        utf8=utf8, lid=lid, lid_backend=lid_backend, lid_threshold=lid_threshold, strict=strict or None,
    )  # fmt: skip
    set_quiet(json_out)
    res = run_import(cfg)
    if print_json_if(json_out, res.to_json()):
        return
    if res.status == "nothing to do":
        err_console.print(f"nothing to do: rank {res.rank}'s shards in {res.out} are complete and verified")
    summary = res.to_json()
    stdout.print(f"import rank {res.rank}/{res.world_size} {res.status}: {summary['samples']:,} docs, "
                 f"{summary['bytes']:,} bytes in {summary['shards']} shard(s)", highlight=False)
    print_counters("", res.counters)
    report = InspectReport(res.out, "import", summary["shards"], summary["langs"])
    print_table("", _lang_rows(report.rows()), ["lang", "docs", "bytes", "docs_share", "bytes_share"])
    if res.manifest_written:
        err_console.print(f"wrote {Path(res.out) / 'manifest.json'}")


@app.command("inspect")
@guarded
def inspect(
    path: ShardDirArg = None,
    verify: Annotated[bool, typer.Option("--verify", help="Check every shard's size and sha256 against manifest.json.")] = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    json_out: JsonOpt = False,
    strict: StrictOpt = False,
) -> None:
    """Per-language docs, bytes and shares of a shard set (from manifest.json, else by scanning)."""
    from glotta.data.inspect import InspectConfig, inspect_shards

    cfg = command_config(InspectConfig, config, sets, None, path=str(path) if path else None, verify=verify or None, strict=strict or None)
    set_quiet(json_out)
    report = inspect_shards(cfg.path, verify=cfg.verify, strict=cfg.strict)
    if print_json_if(json_out, report.to_json()):
        return
    how = "from manifest.json" if report.source == "manifest" else "no manifest.json: scanned every sample"
    title = f"{report.path}: {report.samples:,} docs, {report.bytes:,} bytes, {report.shards} shard(s), {len(report.langs)} language(s) ({how})"
    stdout.print(title, highlight=False)
    print_table("", _lang_rows(report.rows()), ["lang", "docs", "bytes", "docs_share", "bytes_share"])
    if report.counters:
        stdout.print("counters" + (" (from the import)" if report.source == "manifest" else " (scan)"))
        print_counters("", report.counters)
    if report.verified:
        err_console.print(f"verified: all {report.shards} shard(s) match manifest.json (size and sha256)")


class IndexConfig(StrictModel):
    path: str
    force: bool = False
    strict: bool = False


@app.command("index")
@guarded
def index(
    path: ShardDirArg = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild every index, also those that match their shard.")] = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    json_out: JsonOpt = False,
    strict: StrictOpt = False,
) -> None:
    """Write the per-shard index (NAME.tar.idx) the loader memory-maps, and its hashes in manifest.json.

    The import writes indexes itself; use this for shard sets made elsewhere (a manifest.json is written when there is none).
    Work is split by RANK/WORLD_SIZE (torchrun) or SLURM_PROCID/SLURM_NTASKS: each rank indexes every WORLD_SIZE-th shard and the last rank to finish writes manifest.json.
    """
    from glotta.data.shard_index import index_shard_set

    cfg = command_config(IndexConfig, config, sets, None, path=str(path) if path else None, force=force or None, strict=strict or None)
    set_quiet(json_out)
    rep = index_shard_set(cfg.path, force=cfg.force, strict=cfg.strict)
    if print_json_if(json_out, rep.to_json()):
        return
    who = f" (rank {rep.rank} of {rep.world_size})" if rep.world_size > 1 else ""
    stdout.print(f"{rep.path}{who}: {rep.shards} shard(s), {rep.docs:,} docs; indexes built {rep.built}, "
                 f"reused {rep.reused}; manifest.json {rep.manifest}; heads.idx {rep.heads}", highlight=False)
    if rep.counters:
        print_counters("read problems (counted)", rep.counters)


@app.command("show")
@guarded
def show(
    path: ShardDirArg = None,
    lang: Annotated[Str, _opt("--lang", help="Only samples of this language.")] = None,
    n: Annotated[Optional[int], _opt("-n", help="Number of samples (default: 5).")] = None,
    lines: Annotated[Optional[int], _opt("--lines", help="First lines of text per sample (default: 3).")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    json_out: JsonOpt = False,
    strict: StrictOpt = False,
) -> None:
    """Print a few samples (id, language, URL, first lines) so you can look at your data."""
    from glotta.data.show import ShowConfig, show_samples

    cfg = command_config(ShowConfig, config, sets, None, path=str(path) if path else None, lang=lang, n=n, lines=lines, strict=strict or None)
    set_quiet(json_out)
    shown, counters = show_samples(cfg)
    if print_json_if(json_out, {"samples": [s.to_json() for s in shown], "counters": counters}):
        return
    for s in shown:
        stdout.print(f"[bold]{s.id}[/bold]  lang={s.lang}  url={s.url or '-'}  chars={s.chars:,}")
        for line in s.head:
            stdout.print("    " + (line if len(line) <= 160 else line[:157] + "..."), highlight=False, markup=False)
    problems = {k: v for k, v in counters.items() if k != "samples"}
    if problems:
        print_counters("read problems", problems)


class DemoCorpusConfig(StrictModel):
    out: str
    langs: Optional[list[str]] = None
    max_docs_per_lang: Optional[int] = None
    doc_chars: int = 2000
    shard_samples: int = 1000
    locale_dirs: Optional[list[str]] = None  # default: /usr/share/locale and /usr/local/share/locale


@app.command("demo-corpus")
@guarded
def demo_corpus(
    out: Annotated[Str, _opt("--out", "-o", help="Output shard directory.")] = None,
    langs: Annotated[Str, _opt("--langs", help="Comma-separated languages, e.g. en,de,ja (default: all found).")] = None,
    max_docs_per_lang: Annotated[Optional[int], _opt("--max-docs-per-lang", help="Cap per language (default: none).")] = None,
    shard_samples: Annotated[Optional[int], _opt("--shard-samples", help="Samples per shard (default: 1000).")] = None,
    locale_dirs: Annotated[Str, _opt("--locale-dirs", help="Comma-separated gettext locale roots (default: /usr/share/locale,...).")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Build real multilingual shards offline from the machine's gettext catalogs (*.mo)."""
    from glotta.data.demo_corpus import LOCALE_DIRS, build_demo_corpus
    from glotta.data.inspect import inspect_shards

    def split(s: str | None) -> list[str] | None:
        return [x.strip() for x in s.split(",") if x.strip()] if s else None

    cfg = command_config(
        DemoCorpusConfig, config, sets, None, out=out, langs=split(langs), max_docs_per_lang=max_docs_per_lang,
        shard_samples=shard_samples, locale_dirs=split(locale_dirs),
    )  # fmt: skip
    set_quiet(json_out)
    build_demo_corpus(
        cfg.out, langs=cfg.langs, doc_chars=cfg.doc_chars, max_docs_per_lang=cfg.max_docs_per_lang,
        shard_samples=cfg.shard_samples, locale_dirs=tuple(cfg.locale_dirs or LOCALE_DIRS),
    )  # fmt: skip
    report = inspect_shards(cfg.out)
    if print_json_if(json_out, report.to_json()):
        return
    stdout.print(f"{cfg.out}: {report.samples:,} docs, {report.bytes:,} bytes, {report.shards} shard(s), {len(report.langs)} language(s)", highlight=False)
    print_table("", _lang_rows(report.rows()), ["lang", "docs", "bytes", "docs_share", "bytes_share"])


@app.command("holdout")
@guarded
def holdout(
    shards: Annotated[Optional[Path], typer.Argument(help="Shard set to hold documents out of.", show_default=False)] = None,
    out: Annotated[Optional[Path], _opt("--out", "-o", help="Output folder: valid/ shards and train.exclude.txt.")] = None,
    fraction: Annotated[Optional[float], _opt("--fraction", help="Share of each language held out (default: 0.05).")] = None,
    max_docs_per_lang: Annotated[Optional[int], _opt("--max-docs-per-lang", help="Cap per language (default: 50).")] = None,
    exclude: Annotated[Optional[list[Path]], _opt("--exclude", help="Exclude list already applied (repeatable).")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    json_out: JsonOpt = False,
    strict: StrictOpt = False,
) -> None:
    """Hold out validation documents per language (stable hash) and write the exclude list that keeps them out of training."""
    from glotta.data.holdout import HoldoutConfig, run_holdout

    cfg = command_config(
        HoldoutConfig, config, sets, None, shards=str(shards) if shards else None, out=str(out) if out else None, fraction=fraction,
        max_docs_per_lang=max_docs_per_lang, exclude=[str(e) for e in exclude] if exclude else None,
        strict=strict or None,
    )  # fmt: skip
    set_quiet(json_out)
    res = run_holdout(cfg)
    if print_json_if(json_out, res.to_json()):
        return
    print_table(f"held out -> {res.valid}", [{"lang": k, "docs": v} for k, v in res.held_out.items()], ["lang", "docs"])
    if res.counters:
        print_counters("counters", res.counters)
    stdout.print(f"training exclude list: {res.exclude}", highlight=False)
