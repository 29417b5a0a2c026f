"""ftstore's public API: every CLI command is one call here, and training code calls the
same functions, so the same input gets the same validation whichever door it comes in by.

    open_store        a directory or s3://bucket/prefix, as a :class:`Store`
    save / load       store a file as the next version; write a version's verified bytes
    verify            check versions (scrub --repair and load repair)
    list_artifacts    one row per version (a damaged envelope is a row too)
    show              a version's envelope, where its leaves are, and its typed content
    delete            remove one version
    copy              between stores, committing only intact versions
    scrub / drill     whole-store check and repair; fault-injection drills
    import_legacy     a PtychoPINN archive as a model bundle
    compare_baseline  a benchmark run against a stored baseline (a CI gate)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from ftstore import bundles, engine, payloads
from ftstore import scrub as maintenance
from ftstore.codec.layout import DEFAULT_OVERHEAD
from ftstore.documents import ARTIFACT_TYPES, Envelope, check_name
from ftstore.engine.copy import CopyResult, copy_store
from ftstore.engine.integrity import Health, RepairResult
from ftstore.engine.load import LoadResult
from ftstore.engine.store import Store
from ftstore.errors import BadInputError, DamageError, FtstoreError, NewerFormatError
from ftstore.lazy import lazy_exports
from ftstore.payloads.reports import BenchmarkBaseline, MetricComparison
from ftstore.scrub.report import DrillReport, ScrubReport
from ftstore.tempdirs import held_temp_dir

# Bundles, scrubs, drills and typed payloads are imported when a CLI command first needs
# them, and at the first Store in any other process (see ftstore.lazy).
__getattr__, __dir__ = lazy_exports(__name__, {"save_bundle": "bundle", "load_bundle": "bundle"}, globals(),
                                    base="ftstore.bundles")

if TYPE_CHECKING:
    from ftstore.bundles.bundle import load_bundle, save_bundle


def open_store(location: str | os.PathLike | None = None, create: bool = False) -> Store:
    return Store.open(location, create=create)


def save(store: Store, src: str | os.PathLike, name: str, artifact_type: str | None = None,
         metadata: dict[str, str] | None = None, **kw: Any) -> Envelope:
    return store.save(src, name, artifact_type, metadata, **kw)


def load(store: Store, ref: str, out: str | os.PathLike, *, self_heal: bool = True, jobs: int | None = None,
         progress: Any = None) -> LoadResult:
    """Write ``ref``'s payload to ``out``; raises :class:`UnrecoverableError`, never returns
    wrong bytes."""
    return store.load(ref, out, self_heal=self_heal, jobs=jobs, progress=progress)


def verify(store: Store, refs: Sequence[str] = ()) -> list[Health]:
    return store.verify(refs)


def import_legacy(location: str | os.PathLike | Store | None, archive: str | os.PathLike, name: str,
                  metadata: dict[str, str] | None = None) -> tuple[Store, Envelope]:
    """Convert a PtychoPINN archive into a model bundle and save it as ``name``. Every
    check runs before the store is opened (or created), so a refused archive leaves
    nothing behind. Returns the store and the new version's envelope."""
    check_name(name)  # before the conversion's work
    with held_temp_dir("legacy") as tmp:
        bundle, meta = bundles.convert_legacy(archive, Path(tmp), metadata)
        engine.save.validated_request(bundle, name, "model_bundle", meta, DEFAULT_OVERHEAD)  # the metadata too
        store = location if isinstance(location, Store) else Store.open(location, create=True)
        return store, store.save(bundle, name, "model_bundle", meta)


def delete(store: Store, ref: str) -> None:
    store.delete(ref)


@dataclass(frozen=True)
class ArtifactRow:
    name: str
    version: int
    type: str | None
    size: int | None
    created_unix_ms: int | None
    scrub_status: str | None
    envelope: str  # "ok", or why it cannot be read (starting with NEWER_FORMAT: a newer ftstore wrote it)


NEWER_FORMAT = "newer format: "


def entries_outside_versions(store: Store) -> list[tuple[str, str]]:
    """(path in the store, why) of every entry that belongs to no version: what ``scrub``
    reports as orphans (a name like ``01``, a link in place of a folder, an interrupted
    save). ``verify`` and ``ls`` of a whole store mention them, so that a store whose
    ``artifacts`` folder became a link does not pass for an empty, healthy one."""
    return [(o.path, o.reason) for o in store.backend.orphans()]


def list_artifacts(store: Store) -> list[ArtifactRow]:
    rows = []
    for key in store.keys():
        try:
            e = store.read_envelope(key)
            rows.append(ArtifactRow(e.name, e.version, e.artifact_type, e.size, e.created_unix_ms, e.scrub.status, "ok"))
        except (FtstoreError, OSError) as err:  # one unreadable entry is a row; the listing goes on
            why = " ".join(str(err).split())
            rows.append(ArtifactRow(key.name, key.version, None, None, None, None,
                                    NEWER_FORMAT + why if isinstance(err, NewerFormatError) else why))
    return rows


def show(store: Store, ref: str) -> dict[str, Any]:
    """A version's envelope, where its leaves are, and (for typed payloads) what it holds."""
    key = store.resolve(ref)
    env = store.read_envelope(key)
    doc: dict[str, Any] = {"envelope": msgspec.to_builtins(env), "paths": store.describe(key)}
    if env.artifact_type not in ("file", "ledger", "manifest"):
        with held_temp_dir("show") as tmp:
            local = Path(tmp) / "payload"
            try:
                store.load(key, local, self_heal=False)  # show never writes to the store
                extra = payloads.describe_payload(local, env.artifact_type)
            except DamageError as e:
                extra = {"error": str(e)}
        if extra is not None:
            doc["content"] = extra
    return doc


def copy(src: Store, dst: Store, refs: Sequence[str] = (), jobs: int | None = None) -> list[CopyResult]:
    return copy_store(src.backend, dst.backend, [src.resolve(r) for r in refs], jobs=jobs)


def scrub(store: Store, **kw: Any) -> ScrubReport:
    """See :func:`ftstore.scrub.scrubber.scrub` for the options."""
    return maintenance.scrubber.scrub(store.backend, **kw)


def run_drill(source: Store | None = None, **kw: Any) -> DrillReport:
    """See :func:`ftstore.scrub.drill.drill` for the options."""
    return maintenance.drill.drill(source.backend if source is not None else None, **kw)


def parse_threshold(text: str) -> float:
    """The allowed slowdown as a fraction: finite and not negative, since every comparison
    with NaN is false and a gate of ``nan`` would pass every metric."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise BadInputError(f"threshold {text!r}: expected a percentage like 5% or a fraction like 0.05, not negative")
    return value


@dataclass(frozen=True)
class BaselineComparison:
    baseline: str
    threshold: float
    metrics: list[MetricComparison]

    @property
    def failed(self) -> list[MetricComparison]:
        return [r for r in self.metrics if r.verdict in ("regression", "missing", "unit_changed")]


def compare_baseline(store: Store, baseline_ref: str, new: str | os.PathLike, threshold: float) -> BaselineComparison:
    """Compare a benchmark run (a JSON file) against a stored ``benchmark_baseline``."""
    new = Path(new)
    if not new.is_file():
        raise BadInputError(f"{new}: no such file")
    with held_temp_dir("baseline") as tmp:
        res = store.load(baseline_ref, Path(tmp) / "baseline.json")
        if res.envelope.artifact_type != "benchmark_baseline":
            raise BadInputError(f"{res.ref} is a {res.envelope.artifact_type}, not a benchmark_baseline")
        stored = payloads.read_capped(Path(tmp) / "baseline.json", payloads.TYPED_DOC_LIMIT)
        base: BenchmarkBaseline = payloads.parse_typed(stored, "benchmark_baseline", res.ref)
    current = payloads.parse_typed(payloads.read_capped(new, payloads.TYPED_DOC_LIMIT), "benchmark_baseline", str(new))
    return BaselineComparison(res.ref, threshold, payloads.compare(base, current, threshold))


__all__ = [
    "ARTIFACT_TYPES",
    "DEFAULT_OVERHEAD",
    "ArtifactRow",
    "BaselineComparison",
    "CopyResult",
    "FtstoreError",
    "Health",
    "LoadResult",
    "RepairResult",
    "Store",
    "compare_baseline",
    "copy",
    "delete",
    "import_legacy",
    "list_artifacts",
    "load",
    "load_bundle",
    "open_store",
    "parse_threshold",
    "run_drill",
    "save",
    "save_bundle",
    "scrub",
    "show",
    "verify",
]
