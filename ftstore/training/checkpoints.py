"""Checkpoints for training loops: numbered steps, retention, restore-what-verifies.

Each checkpoint is one version of one artifact name; its step and metrics live in the
envelope's metadata (``ftstore.step``, ``ftstore.metric.<name>``). Retention keeps the union
of the last N, every K-th step and the best N by a metric, and never deletes the newest
checkpoint that verifies. With ``background=True`` a save returns once payload and
envelope are durable; a separate process (its own session, so it outlives a killed
trainer) builds the repair sidecar.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ftstore.api import Store, load_bundle
from ftstore.bundles.bundle import bundle_file
from ftstore.documents import ArtifactKey, parse_ref
from ftstore.errors import BadInputError, DamageError, FtstoreError, NotFoundError

STEP_KEY = "ftstore.step"
METRIC_PREFIX = "ftstore.metric."


@dataclass(frozen=True)
class Checkpoint:
    step: int
    version: int
    ref: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class BundleSpec:
    """What to save for a model bundle checkpoint (see :func:`ftstore.bundles.save_bundle`)."""

    models: dict[str, Any]
    backend: str
    params: dict[str, Any] | None = None


@dataclass
class RetentionPolicy:
    keep_last: int | None = None
    keep_every: int | None = None
    keep_best: int | None = None
    best_metric: str | None = None
    best_mode: Literal["min", "max"] = "min"

    def __post_init__(self) -> None:
        for k in ("keep_last", "keep_every", "keep_best"):
            v = getattr(self, k)
            if v is not None and v < 1:
                raise ValueError(f"{k} must be at least 1")
        if self.keep_best and not self.best_metric:
            raise ValueError("keep_best needs best_metric")
        if self.best_mode not in ("min", "max"):
            raise ValueError("best_mode is 'min' or 'max'")

    @property
    def deletes_anything(self) -> bool:
        return any(v is not None for v in (self.keep_last, self.keep_every, self.keep_best))

    def keep(self, cps: list[Checkpoint]) -> set[int]:
        """Steps to keep, from checkpoints sorted by step."""
        if not self.deletes_anything:
            return {c.step for c in cps}
        kept: set[int] = set()
        if self.keep_last:
            kept |= {c.step for c in cps[-self.keep_last :]}
        if self.keep_every:
            kept |= {c.step for c in cps if c.step % self.keep_every == 0}
        if self.keep_best:
            scored = [c for c in cps if self.best_metric in c.metrics]
            scored.sort(key=lambda c: c.metrics[self.best_metric], reverse=self.best_mode == "max")
            kept |= {c.step for c in scored[: self.keep_best]}
        return kept


@dataclass
class CheckpointManager:
    store: Store
    name: str
    keep_last: int | None = None
    keep_every: int | None = None
    keep_best: int | None = None
    best_metric: str | None = None
    best_mode: Literal["min", "max"] = "min"
    background: bool = False
    overhead: float = 0.10
    _pending: list[subprocess.Popen] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        parse_ref(self.name)
        self.policy = RetentionPolicy(self.keep_last, self.keep_every, self.keep_best, self.best_metric, self.best_mode)

    # -- listing ----------------------------------------------------------------
    def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint with a readable envelope, by step (a damaged envelope is skipped)."""
        out = []
        for v in self.store.versions(self.name):
            key = ArtifactKey(self.name, v)
            try:
                env = self.store.read_envelope(key)
                step = int(env.metadata[STEP_KEY])
            except (FtstoreError, KeyError, ValueError):
                continue
            metrics = {k[len(METRIC_PREFIX) :]: float(x) for k, x in env.metadata.items() if k.startswith(METRIC_PREFIX)}
            out.append(Checkpoint(step, v, key.ref, metrics))
        return sorted(out, key=lambda c: (c.step, c.version))

    def steps(self) -> list[int]:
        return [c.step for c in self.checkpoints()]

    def latest(self) -> Checkpoint | None:
        cps = self.checkpoints()
        return cps[-1] if cps else None

    # -- save ---------------------------------------------------------------------
    def save(self, step: int, bundle_or_path: BundleSpec | str | os.PathLike, metrics: dict[str, float] | None = None) -> Checkpoint:
        if not isinstance(step, int) or step < 0:
            raise BadInputError(f"step must be a non-negative integer, not {step!r}")
        if step in self.steps():
            raise BadInputError(f"{self.name} already has a checkpoint for step {step}")
        meta = {STEP_KEY: str(step), **{METRIC_PREFIX + k: repr(float(v)) for k, v in (metrics or {}).items()}}
        protect = not self.background
        if isinstance(bundle_or_path, BundleSpec):
            spec = bundle_or_path
            with self.store.scratch() as tmp:  # built beside the store, so taken over, not copied
                path = bundle_file(spec.models, spec.backend, spec.params, tmp)
                env = self.store.save(path, self.name, "model_bundle", {"backend": spec.backend, **meta},
                                      self.overhead, protect=protect, move=True)
        else:
            path = Path(bundle_or_path)
            if not path.is_file():
                raise BadInputError(f"{path}: no such file")
            env = self.store.save(path, self.name, None, meta, self.overhead, protect=protect)
        if not protect:
            self._pending.append(subprocess.Popen(
                [sys.executable, "-m", "ftstore.engine.background", self.store.url, env.name, str(env.version)],
                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            ))
        cp = Checkpoint(step, env.version, f"{env.name}@{env.version}", {k: float(v) for k, v in (metrics or {}).items()})
        self._apply_retention()
        return cp

    def wait_until_finished(self) -> None:
        """Block until every background sidecar of this manager is committed."""
        errors = []
        while self._pending:
            proc = self._pending.pop()
            _, err = proc.communicate()
            if proc.returncode:
                errors.append(err.decode(errors="replace").strip() or f"exit code {proc.returncode}")
        if errors:
            raise DamageError("background protection failed: " + "; ".join(errors))

    # -- retention ------------------------------------------------------------------
    def _apply_retention(self) -> None:
        if not self.policy.deletes_anything:
            return
        cps = self.checkpoints()
        keep = self.policy.keep(cps)
        doomed = [c for c in cps if c.step not in keep]
        if not doomed:
            return
        newest_valid = self._newest_valid(cps)
        for c in doomed:
            if newest_valid is not None and c.version == newest_valid.version:
                continue
            self.store.delete(ArtifactKey(self.name, c.version))

    def _newest_valid(self, cps: list[Checkpoint]) -> Checkpoint | None:
        for c in reversed(cps):
            h = self.store.check(ArtifactKey(self.name, c.version))
            if not (h.payload_problem or h.envelope_problem):
                return c
        return None

    # -- restore --------------------------------------------------------------------
    def _candidates(self, step: int | None) -> list[Checkpoint]:
        cps = self.checkpoints()
        if step is not None:
            cps = [c for c in cps if c.step == step]
            if not cps:
                raise NotFoundError(f"{self.name} has no checkpoint for step {step}")
        if not cps:
            raise NotFoundError(f"{self.name} has no checkpoints")
        return list(reversed(cps))

    def restore(self, out: str | os.PathLike, step: int | None = None) -> Checkpoint:
        """Write the newest checkpoint that verifies (or repairs) to ``out``, skipping
        damaged ones with a warning; with ``step``, only that one."""
        return self._first_good(step, lambda c: self.store.load(c.ref, out))

    def restore_bundle(self, backend: str, step: int | None = None, **kw: Any):
        """Like :meth:`restore`, for bundle checkpoints: returns (Checkpoint, LoadedBundle)."""
        loaded = {}

        def attempt(c: Checkpoint) -> None:
            loaded["b"] = load_bundle(self.store, c.ref, backend, **kw)

        cp = self._first_good(step, attempt)
        return cp, loaded["b"]

    def _first_good(self, step: int | None, attempt: Callable[[Checkpoint], Any]) -> Checkpoint:
        failures = []
        for c in self._candidates(step):
            try:
                attempt(c)
                return c
            except DamageError as e:
                warnings.warn(f"skipping damaged checkpoint {c.ref} (step {c.step}): {e}", stacklevel=3)
                failures.append(f"step {c.step}: {e}")
        raise DamageError(f"no checkpoint of {self.name} could be restored: " + "; ".join(failures))
