"""Typed payloads for conformance snapshots and benchmark baselines, and baseline comparison.

``ftstore save --type conformance_snapshot|benchmark_baseline`` parses the payload strictly
against these types (``schemas/conformance-snapshot.schema.json``,
``schemas/benchmark-baseline.schema.json``) before storing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Optional, Union

from msgspec import Meta

from ftstore.payloads.strict_docs import decode_doc
from ftstore.documents.envelope import NonNegInt, Strict

Finite = Annotated[float, Meta(ge=-1e308, le=1e308)]
Observed = Union[Finite, int, str, bool, None, list[Finite]]
Name = Annotated[str, Meta(min_length=1, max_length=512)]


class ConformanceCase(Strict, kw_only=True):
    name: Name
    status: Literal["pass", "fail", "skip", "error"]
    observed: Observed = None
    expected: Observed = None
    tolerance: Optional[Annotated[float, Meta(ge=0)]] = None
    message: Optional[Annotated[str, Meta(max_length=65536)]] = None


class ConformanceSnapshot(Strict, kw_only=True):
    """A parity report: each case's outcome, what was observed and what was expected."""

    format: Literal["ftstore-conformance-snapshot"] = "ftstore-conformance-snapshot"
    format_version: Literal[1] = 1
    suite: Name
    cases: list[ConformanceCase]


class Metric(Strict, kw_only=True):
    unit: Annotated[str, Meta(min_length=1, max_length=32)]
    p50: Finite
    p95: Finite
    p99: Finite
    samples: Annotated[int, Meta(ge=1)]
    better: Literal["lower", "higher"] = "lower"


class Machine(Strict, kw_only=True):
    cpu: Annotated[str, Meta(max_length=256)]
    cores: Annotated[int, Meta(ge=1)]
    memory_bytes: NonNegInt
    os: Annotated[str, Meta(max_length=256)]
    python: Annotated[str, Meta(max_length=64)]
    accelerator: Optional[Annotated[str, Meta(max_length=256)]] = None


class BenchmarkBaseline(Strict, kw_only=True):
    """Named metrics with unit, percentiles and sample count, plus the machine they ran on."""

    format: Literal["ftstore-benchmark-baseline"] = "ftstore-benchmark-baseline"
    format_version: Literal[1] = 1
    name: Name
    metrics: dict[Name, Metric]
    machine: Machine


TYPED = {"conformance_snapshot": ConformanceSnapshot, "benchmark_baseline": BenchmarkBaseline}


def parse_typed(data: bytes, artifact_type: str, source: str):
    return decode_doc(data, TYPED[artifact_type], source)


@dataclass(frozen=True)
class MetricComparison:
    metric: str
    baseline_p50: float | None
    new_p50: float | None
    change: float | None  # relative change of p50, signed so that positive is worse
    verdict: Literal["ok", "regression", "improvement", "missing", "unit_changed"]


def compare(baseline: BenchmarkBaseline, new: BenchmarkBaseline, threshold: float) -> list[MetricComparison]:
    """Compare p50 per metric. A metric worse by more than ``threshold`` (0.05 = 5%), a
    metric missing from the new run, or one whose unit changed, fails the gate."""
    out = []
    for name, base in sorted(baseline.metrics.items()):
        cur = new.metrics.get(name)
        if cur is None:
            out.append(MetricComparison(name, base.p50, None, None, "missing"))
            continue
        if cur.unit != base.unit:
            out.append(MetricComparison(name, base.p50, cur.p50, None, "unit_changed"))
            continue
        if base.p50 == 0:
            change = 0.0 if cur.p50 == 0 else float("inf")
        else:
            change = (cur.p50 - base.p50) / abs(base.p50)
        worse = change if base.better == "lower" else -change
        verdict = "regression" if worse > threshold else ("improvement" if worse < -threshold else "ok")
        out.append(MetricComparison(name, base.p50, cur.p50, worse, verdict))
    return out
