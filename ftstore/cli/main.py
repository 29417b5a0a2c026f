"""The ``ftstore`` command: parse arguments, make one library call, print the result.

Exit codes: 0 success, 1 damage found or unrecoverable, 2 bad usage or bad input.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from ftstore import api, hashing, lazy
from ftstore.cli.output import emit_json, human_size, info, printable_streams, progress, shown_name
from ftstore.api import ARTIFACT_TYPES, DEFAULT_OVERHEAD
from ftstore.errors import BadInputError, FtstoreError, NotFoundError, StorageError

store_option = click.option(
    "--store",
    "store_path",
    envvar="FTSTORE_STORE",
    default=None,
    metavar="DIR",
    help="Store location (default ./ftstore-store, or $FTSTORE_STORE).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
jobs_option = click.option("--jobs", type=click.IntRange(1, 256), default=None, help="Worker processes (default: CPUs).")


def _health_doc(h: api.Health) -> dict:
    return {
        "ref": h.ref,
        "status": "ok" if h.intact else "damaged" if h.damaged else "newer_format",
        "problems": h.problems,
        "protection": "unknown" if h.newer_format else "pending" if h.pending_protection else "protected",
    }


def _must_be_a_file(path: Path) -> None:
    if not path.is_file():
        raise BadInputError(f"{path}: no such file" if not os.path.lexists(path) else f"{path}: not a regular file")


def _parse_meta(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise BadInputError(f"--meta {p!r}: expected KEY=VALUE")
        if key in out and out[key] != value:  # which one was meant is not for ftstore to guess
            raise BadInputError(f"--meta {key!r} given twice, as {out[key]!r} and {value!r}")
        out[key] = value
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ftstore")
def cli() -> None:
    """ftstore: save ML artifacts with BLAKE3 hashes and RaptorQ repair sidecars, verify
    them, repair them, and load them back."""


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Artifact name; saving a name again makes a new version.")
@click.option("--type", "artifact_type", type=click.Choice(ARTIFACT_TYPES), default=None,
              help="Artifact type (default: model_bundle for an ftstore bundle zip, else file).")
@click.option("--meta", "meta", multiple=True, metavar="KEY=VALUE", help="User metadata (repeatable).")
@click.option("--overhead", type=float, default=DEFAULT_OVERHEAD, show_default=True,
              help="Repair data as a fraction of the payload (0.01-1.0): what each stripe can lose. The sidecar "
                   "adds hash tables and two spare symbols a stripe (about 14% of the payload at 0.1).")
@click.option("--move", is_flag=True,
              help="Take PATH over instead of copying it: hard-linked into the store when on the same "
                   "filesystem (no payload bytes written), and removed once the save is committed.")
@store_option
@jobs_option
@json_option
def save(path, name, artifact_type, meta, overhead, move, store_path, jobs, as_json):
    """Store a copy of PATH as the next version of NAME (with --move: store PATH itself)."""
    _must_be_a_file(path)
    metadata = _parse_meta(meta)
    store = _store_to_save_to(store_path,
                              lambda: api.Store.check_save(path, name, artifact_type, metadata, overhead, move))
    with progress(path.stat().st_size, "saving") as cb:
        env = api.save(store, path, name, artifact_type, metadata, overhead=overhead, jobs=jobs, progress=cb, move=move)
    if as_json:
        emit_json({"envelope": env, "paths": store.describe(f"{env.name}@{env.version}")})
        return
    rq = env.raptorq
    click.echo(
        f"saved {env.name}@{env.version}  {human_size(env.size)}  {env.source_hash}\n"
        f"  repair: {rq.repair_symbols} symbols of {rq.symbol_size} B over {rq.stripes} stripes "
        f"({rq.overhead:.0%} overhead, sidecar {human_size(rq.sidecar_size)})"
    )


def _store_to_save_to(store_path: str | None, check: Callable[[], object]) -> api.Store:
    """The store a command saves to, created if it does not exist yet, but only once the
    command's request has passed ``check``: a refused command leaves no new store behind."""
    try:
        return api.open_store(store_path)
    except (NotFoundError, StorageError):  # no store there yet (on S3, maybe no bucket either)
        check()
        return api.open_store(store_path, create=True)


@cli.command(name="ls")
@store_option
@json_option
def ls_cmd(store_path, as_json):
    """List every artifact version in the store."""
    store = api.open_store(store_path)
    rows = [r.__dict__ for r in api.list_artifacts(store)]
    if as_json:
        emit_json(rows)
        _mention_entries_outside_versions(store)
        return
    if not rows:
        info(f"{store.url}: no artifacts")
        _mention_entries_outside_versions(store)
        return
    click.echo(f"{'NAME':<32} {'VER':>4}  {'TYPE':<20} {'SIZE':>10}  STATUS")
    for r in rows:
        status = (r["scrub_status"] if r["envelope"] == "ok"
                  else "written by a newer ftstore" if r["envelope"].startswith(api.NEWER_FORMAT)
                  else "envelope damaged (run `ftstore scrub --repair`)")
        size = human_size(r["size"]) if r["size"] is not None else "?"
        click.echo(f"{r['name']:<32} {r['version']:>4}  {r['type'] or '?':<20} {size:>10}  {status}")
    _mention_entries_outside_versions(store)


def _mention_entries_outside_versions(store: api.Store) -> None:
    """One line on stderr naming what the store holds beside its versions (a store-wide
    listing or check skips it); nothing if there is none."""
    found = api.entries_outside_versions(store)
    if found:
        shown = "; ".join(f"{shown_name(path)} ({why})" for path, why in found[:3]) + ("; ..." if len(found) > 3 else "")
        info(f"{len(found)} {'entry' if len(found) == 1 else 'entries'} in the store "
             f"{'belongs' if len(found) == 1 else 'belong'} to no version, "
             f"skipped here: {shown}; `ftstore scrub` reports them, `--remove-orphans` removes them")


@cli.command()
@click.argument("ref")
@store_option
@json_option
def show(ref, store_path, as_json):
    """Print REF's envelope (NAME or NAME@VERSION) and where its files are."""
    emit_json(api.show(api.open_store(store_path), ref))  # a JSON document either way


@cli.command()
@click.argument("refs", nargs=-1)
@store_option
@json_option
def verify(refs, store_path, as_json):
    """Check REFS (default: every artifact) against their hashes and proof chains.
    Exits 1 if anything is damaged, else 2 if a newer ftstore wrote something (this one
    cannot judge it); repairs nothing (see `scrub --repair`, `load`)."""
    store = api.open_store(store_path)
    results = api.verify(store, refs)
    if as_json:
        emit_json([_health_doc(h) for h in results])
    else:
        for h in results:
            if h.intact:
                click.echo(f"ok       {h.ref}" + ("  (repair sidecar pending)" if h.pending_protection else ""))
            else:
                click.echo(f"{'DAMAGED' if h.damaged else 'NEWER':<8} {h.ref}")
                for p in h.problems:
                    click.echo(f"         - {p}")
        damaged, newer = sum(1 for h in results if h.damaged), sum(1 for h in results if h.newer_format)
        info(f"{len(results)} checked, {damaged} damaged" + (f", {newer} written by a newer ftstore" if newer else ""))
    if not refs:
        _mention_entries_outside_versions(store)
    if any(h.damaged for h in results):
        sys.exit(1)
    if any(not h.intact for h in results):
        sys.exit(2)


@cli.command()
@click.argument("ref")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="File to write.")
@click.option("--no-heal", is_flag=True, help="Refuse a damaged artifact instead of repairing it.")
@store_option
@jobs_option
@json_option
def load(ref, out, no_heal, store_path, jobs, as_json):
    """Write REF's payload to OUTPUT after verifying it, repairing a damaged payload in place."""
    res = api.load(api.open_store(store_path), ref, out, self_heal=not no_heal, jobs=jobs)
    repaired = res.repair.repaired if res.repair else []
    if as_json:
        emit_json({"ref": res.ref, "out": str(res.out), "source_hash": res.envelope.source_hash,
                   "size": res.envelope.size, "repaired": repaired, "repaired_in_store": res.repaired_in_store,
                   "proofs": res.repair.proofs if res.repair else []})
        return
    if repaired:
        rebuilt = f" ({res.repair.erased_source} damaged symbols rebuilt)" if res.repair.erased_source else ""
        if res.repaired_in_store:
            info(f"repaired {', '.join(repaired)} of {res.ref}{rebuilt}")
        else:
            info(f"repaired {', '.join(repaired)} of {res.ref} in a private copy{rebuilt}; the store could not be "
                 f"written and still holds the damage (`ftstore scrub --repair` where it can be written)")
    click.echo(f"loaded {res.ref} -> {res.out}  {human_size(res.envelope.size)}  {res.envelope.source_hash}")


def _one_line(text: str) -> str:
    """An error message as the one line the CLI promises, however many lines it came with."""
    return " ".join(text.split()) or "(no message)"


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning every documented error into one line and an exit code."""
    with lazy.on_first_use_only():  # a command imports only what its work needs (and never forks mid-import)
        _run(argv)


def console() -> None:
    """The ``ftstore`` program (console script, ``python -m ftstore.cli``): :func:`main`, then
    the process ends without the garbage collector walking every object it made.

    At exit the interpreter runs several full collections over everything the command
    imported and built, on one core, after the work is done: about 20 ms of every
    command's 40 ms from its last line to its exit (measured, a 20 MB save). Frozen objects
    are left out of those collections. Every file the CLI writes is closed (and made
    durable) before :func:`main` returns, so nothing waits on a finalizer; a program that
    calls :func:`main` itself keeps the collector as it was (and its memory: only this
    program keeps read buffers from one file's read to the next, see
    :func:`ftstore.hashing.keep_read_buffers`)."""
    hashing.keep_read_buffers()
    try:
        main()
    finally:
        gc.freeze()


def _run(argv: list[str] | None) -> None:
    printable_streams()
    try:
        rv = cli.main(args=argv, prog_name="ftstore", standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except getattr(click.exceptions, "NoArgsIsHelpError", ()) as e:  # a bare group: its help (click >= 8.2)
        e.show()
        sys.exit(2)
    except click.UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        info(f"ftstore: error: {_one_line(e.format_message())}{hint}")
        sys.exit(2)
    except click.ClickException as e:
        info(f"ftstore: error: {_one_line(e.format_message())}")
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        info("ftstore: aborted")
        sys.exit(130)
    except FtstoreError as e:
        info(f"ftstore: error: {_one_line(str(e))}")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        info("ftstore: interrupted")
        sys.exit(130)
    except OSError as e:
        info(f"ftstore: error: {_one_line(str(e.strerror or e))}{': ' + str(e.filename) if e.filename else ''}")
        sys.exit(2)
    except Exception as e:  # a bug: still no traceback unless asked for
        if os.environ.get("FTSTORE_DEBUG"):
            raise
        info(f"ftstore: internal error: {type(e).__name__}: {e} (set FTSTORE_DEBUG=1 for a traceback)")
        sys.exit(3)


@cli.group(name="bench")
def bench_group() -> None:
    """Benchmark baselines."""


@bench_group.command(name="compare")
@click.argument("baseline_ref")
@click.argument("new", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--threshold", default="5%", show_default=True, help="Allowed slowdown of p50, e.g. 5% or 0.05.")
@store_option
@json_option
def bench_compare(baseline_ref, new, threshold, store_path, as_json):
    """Compare NEW.json against the stored BASELINE_REF; exit 1 on any regression (CI gate)."""
    limit = api.parse_threshold(threshold)
    result = api.compare_baseline(api.open_store(store_path), baseline_ref, new, limit)
    rows, failed = result.metrics, result.failed
    if as_json:
        emit_json({"baseline": result.baseline, "threshold": limit, "metrics": [r.__dict__ for r in rows],
                   "passed": not failed})
    else:
        for r in rows:
            change = f"{r.change:+.1%}" if r.change is not None else "n/a"
            click.echo(f"{r.verdict.upper():<13} {r.metric:<32} p50 {r.baseline_p50} -> {r.new_p50}  ({change} worse)")
        info(f"{len(failed)} of {len(rows)} metrics fail the {limit:.1%} gate against {result.baseline}")
    if failed:
        sys.exit(1)


@cli.command(name="copy")
@click.argument("src")
@click.argument("dst")
@click.argument("refs", nargs=-1)
@jobs_option
@json_option
def copy_cmd(src, dst, refs, jobs, as_json):
    """Copy artifacts (REFS, default all) from store SRC to store DST, e.g. a local
    directory and s3://bucket/prefix. Verifies on the way, repairs at the destination."""
    source = api.open_store(src)
    keys = [source.resolve(r) for r in refs]  # a bad ref is refused before the destination is made
    results = api.copy(source, _store_to_save_to(dst, lambda: None), keys, jobs=jobs)
    bad = [r for r in results if r.status in ("conflict", "failed")]
    if as_json:
        emit_json([r.__dict__ for r in results])
    else:
        for r in results:
            click.echo(f"{r.status:<9} {r.ref}" + (f"  ({r.detail})" if r.detail else ""))
        info(f"{len(results)} artifacts: {len(results) - len(bad)} at the destination, {len(bad)} not copied")
    if bad:
        sys.exit(1)


@cli.command(name="import-legacy")
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Artifact name for the imported bundle.")
@store_option
@json_option
def import_legacy_cmd(archive, name, store_path, as_json):
    """Import a PtychoPINN wts.h5.zip archive as a model bundle, without running its code.

    Loading it later restores its params into $FTSTORE_PARAMS_TARGET (MODULE:ATTR, e.g.
    ptycho.params:cfg; default ftstore.params:cfg) unless load_bundle is given params=."""
    _must_be_a_file(archive)
    # Reading a SavedModel's checkpoint starts TensorFlow in this process: keep its start-up
    # log lines off stderr, where an error must be one line.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    store, env = api.import_legacy(store_path, archive, name)
    if as_json:
        emit_json({"envelope": env, "paths": store.describe(f"{env.name}@{env.version}")})
        return
    placeholders = env.metadata.get("placeholders")
    click.echo(f"imported {archive} as {env.name}@{env.version} ({env.metadata.get('backend')} bundle: "
               f"{env.metadata.get('models')}" + (f"; no weights for: {placeholders}" if placeholders else "") + ")")


@cli.command(name="scrub")
@click.option("--repair", is_flag=True, help="Repair damaged payloads, sidecars and envelopes; record proofs.")
@click.option("--deep", is_flag=True, help="Also prove recoverability: erase sampled symbols in memory and decode them.")
@click.option("--subset", default=None, metavar="K/N", help="Scrub only the deterministic K-th of N slices.")
@click.option("--max-rate", "max_rate", type=click.FloatRange(min=0.1), default=None, metavar="MB/s",
              help="Read at most this fast while checking (paced chunk by chunk); repairs run at full speed.")
@click.option("--remove-orphans", is_flag=True, help="Delete files that belong to no committed artifact.")
@store_option
@jobs_option
@json_option
def scrub_cmd(repair, deep, subset, max_rate, remove_orphans, store_path, jobs, as_json):
    """Verify every artifact in the store; with --repair, heal what can be healed.
    Exits 0 when every artifact is intact at the end (repaired counts as intact), 1 otherwise."""
    report = api.scrub(api.open_store(store_path), repair=repair, deep=deep, subset=subset, max_rate_mb_s=max_rate,
                       remove_orphans=remove_orphans, jobs=jobs, warn=lambda text: info(f"ftstore: warning: {text}"))
    if as_json:
        emit_json(report)
    else:
        for a in report.artifacts:
            line = f"{a.status:<10}{a.ref}"
            if a.repaired:
                line += f"  repaired {', '.join(a.repaired)}"
                if a.erased_source_symbols:
                    line += f" ({a.erased_source_symbols} symbols rebuilt)"
            if a.deep:
                line += f"  deep: {a.deep.symbols_erased} erased symbols decoded {'ok' if a.deep.recovered else 'FAILED'}"
            click.echo(line)
            if a.status != "ok" or a.error:
                for d in a.damage:
                    click.echo(f"          - found: {d}")
                if a.error:
                    click.echo(f"          - {a.error}")
        for o in report.orphans:
            click.echo(f"orphan    {shown_name(o.path)}  ({o.reason}{', removed' if o.removed else '; --remove-orphans deletes it'})")
        t = report.totals
        info(f"{t.artifacts} artifacts: {t.ok} ok, {t.recovered} recovered, {t.failed} failed; "
             f"{t.orphans} orphans; {human_size(t.bytes_read)} read; store {report.health}")
    if report.totals.failed:
        sys.exit(1)


@cli.command(name="drill")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same faults.")
@click.option("--rounds", type=click.IntRange(1, 1000), default=1, show_default=True)
@click.option("--from-store", "from_store", is_flag=True, help="Drill on a scratch copy of --store instead of sample artifacts.")
@store_option
@jobs_option
@json_option
def drill_cmd(seed, rounds, from_store, store_path, jobs, as_json):
    """Inject faults into a scratch store, scrub it with repair, and check every outcome.
    Exits 0 when every repairable fault came back byte-identical and every other was reported failed."""
    source = api.open_store(store_path) if from_store else None
    report = api.run_drill(source, seed=seed, rounds=rounds, jobs=jobs)
    if as_json:
        emit_json(report)
    else:
        for i in report.injections:
            verdict = "PASS" if i.passed else "FAIL"
            click.echo(f"{verdict}  round {i.round}  {i.ref:<16} {i.fault:<28} expected {i.expected:<9} got {i.status:<9} {i.detail}")
        info(f"drill seed {seed}: {sum(i.passed for i in report.injections)}/{len(report.injections)} faults handled as expected")
    if not report.passed:
        sys.exit(1)
