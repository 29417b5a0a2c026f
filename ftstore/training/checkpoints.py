"""Checkpoints for training loops: numbered steps, retention, restore-what-verifies.

Each checkpoint is one version of one artifact name; its step and metrics live in the
envelope's metadata (``ftstore.step``, ``ftstore.metric.<name>``). A checkpoint is a training
state (nested dicts/lists of tensors, arrays, numbers, strings: written straight into the
store by ``torch.save`` while it is hashed, restored with ``weights_only``), a file, or a
model bundle.

Checkpoints are ordered as they were saved (by version), not by step: a run rolled back to
an earlier step, or a new run under the same name, saves steps below ones already stored,
and those saves are the newest, the ones to keep and to resume from. A newer save of a step
supersedes the older ones of that step, once it is committed (never a newer one: two
writers of one step never lose both); a run resumed from an earlier checkpoint saves
its steps again, as Lightning overwrites a path. Retention keeps the union of the last N
saved, every K-th step and the best N by a metric (NaN is never best), and never deletes
the newest checkpoint that verifies. With ``background=True`` a save returns once payload and envelope are durable; a
separate process (its own session, so it outlives a killed trainer) builds the repair
sidecar, a worker thread deletes what was superseded or falls out of retention (deleting a
version first cancels its pending protection), and :meth:`wait_until_finished` waits for
both.
"""

from __future__ import annotations

import math
import numbers
import os
import threading
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ftstore.api import Store, load_bundle
from ftstore.bundles.bundle import bundle_file
from ftstore.documents import ArtifactKey, Envelope, parse_ref
from ftstore.engine.load import repaired_envelope
from ftstore.errors import BadInputError, DamageError, FtstoreError, NotFoundError
from ftstore.training.protection import BackgroundProtector, has_sidecar, kept_while_protecting
from ftstore.training.state import FORMAT_KEY, TORCH_STATE, check_state, read_state, write_state

STEP_KEY = "ftstore.step"
METRIC_PREFIX = "ftstore.metric."


@dataclass(frozen=True)
class Checkpoint:
    step: int
    version: int
    ref: str
    metrics: dict[str, float]
    protected: bool = True  # False: its repair sidecar is still to be built
    artifact_id: str = ""
    artifact_type: str = "file"  # "model_bundle" for a BundleSpec's: restore_bundle, not restore

    @property
    def is_bundle(self) -> bool:
        return self.artifact_type == "model_bundle"


def whole_number(v: Any) -> bool:
    """A whole number: an int or numpy's (``numbers.Integral``), never a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _metric_values(metrics: dict[str, Any] | None) -> dict[str, float]:
    """The metrics as floats; a value that is not a number is refused, naming it."""
    if metrics is not None and not isinstance(metrics, Mapping):
        raise BadInputError(f"metrics is a {type(metrics).__name__}: pass a dict of name -> number")
    out = {}
    for k, v in (metrics or {}).items():
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            raise BadInputError(f"metric {k!r} is not a number: {v!r}") from None
    return out


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
            if v is not None and not whole_number(v):
                raise BadInputError(f"{k}={v!r}: a whole number (or None), not a {type(v).__name__}")
            if v is not None and v < 1:
                raise BadInputError(f"{k} must be at least 1")
        if self.best_metric is not None and not isinstance(self.best_metric, str):
            raise BadInputError(f"best_metric={self.best_metric!r}: the name of a metric, a string")
        if self.keep_best and not self.best_metric:
            raise BadInputError("keep_best needs best_metric")
        if self.best_mode not in ("min", "max"):
            raise BadInputError("best_mode is 'min' or 'max'")

    @property
    def deletes_anything(self) -> bool:
        return any(v is not None for v in (self.keep_last, self.keep_every, self.keep_best))

    def keep(self, cps: list[Checkpoint]) -> set[int]:
        """Versions to keep, from checkpoints in save order."""
        if not self.deletes_anything:
            return {c.version for c in cps}
        kept: set[int] = set()
        if self.keep_last:
            kept |= {c.version for c in cps[-self.keep_last :]}
        if self.keep_every:
            kept |= {c.version for c in cps if c.step % self.keep_every == 0}
        if self.keep_best:  # NaN is never best: it compares false with everything
            scored = [c for c in cps if self.best_metric in c.metrics and not math.isnan(c.metrics[self.best_metric])]
            scored.sort(key=lambda c: c.metrics[self.best_metric], reverse=self.best_mode == "max")
            kept |= {c.version for c in scored[: self.keep_best]}
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
    restored: Checkpoint | None = field(default=None, init=False)  # what the last restore() brought back
    _protector: BackgroundProtector = field(init=False, repr=False)
    _tidier: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _tidy_jobs: list[Future] = field(default_factory=list, init=False, repr=False)
    _tidy_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _kept_for_protection: bool = field(default=False, init=False, repr=False)  # see _spared

    def __post_init__(self) -> None:
        if not isinstance(self.store, Store):
            raise BadInputError(f"store is a {type(self.store).__name__}: pass a Store (Store.open(path_or_url))")
        if not isinstance(self.name, str):
            raise BadInputError(f"name is a {type(self.name).__name__}: pass the checkpoints' artifact name, a string")
        if parse_ref(self.name).version is not None:  # a bad name is refused there, in its words
            raise BadInputError(f"name {self.name!r} names a version: pass the artifact name alone")
        if not isinstance(self.background, bool):
            raise BadInputError(f"background={self.background!r}: True or False")
        if isinstance(self.overhead, bool) or not isinstance(self.overhead, numbers.Real):
            raise BadInputError(f"overhead={self.overhead!r}: a number, e.g. 0.1 for 10%")
        self.overhead = float(self.overhead)
        self.policy = RetentionPolicy(self.keep_last, self.keep_every, self.keep_best, self.best_metric, self.best_mode)
        self._protector = BackgroundProtector(self.store.url)

    # -- listing ----------------------------------------------------------------
    def checkpoints(self, rebuild: bool = False) -> list[Checkpoint]:
        """Every checkpoint with a readable envelope, in save order (a damaged envelope is
        skipped, unless ``rebuild``: see :meth:`_envelope`)."""
        out = []
        for v in self.store.versions(self.name):
            key = ArtifactKey(self.name, v)
            try:
                env = self._envelope(key) if rebuild else self.store.read_envelope(key)
                step = int(env.metadata[STEP_KEY])
            except (FtstoreError, KeyError, ValueError):
                continue
            metrics = {k[len(METRIC_PREFIX) :]: float(x) for k, x in env.metadata.items() if k.startswith(METRIC_PREFIX)}
            out.append(Checkpoint(step, v, key.ref, metrics, env.raptorq is not None, env.artifact_id, env.artifact_type))
        return sorted(out, key=lambda c: c.version)

    def steps(self) -> list[int]:
        """The steps stored, in save order."""
        return [c.step for c in self.checkpoints()]

    def latest(self) -> Checkpoint | None:
        """The checkpoint saved last."""
        cps = self.checkpoints()
        return cps[-1] if cps else None

    # -- save ---------------------------------------------------------------------
    def save(self, step: int, what: Any, metrics: dict[str, float] | None = None, *,
             move: bool = False) -> Checkpoint:
        """Save checkpoint ``step``: ``what`` is a training state (a dict, list or tuple of
        tensors, numpy arrays, numbers and strings), a file path (taken over, not copied, with
        ``move``), or a :class:`BundleSpec`. Older checkpoints of the same step are deleted
        once this one is committed."""
        if not whole_number(step) or step < 0:
            raise BadInputError(f"step must be a non-negative integer, not {step!r}")
        step = int(step)
        metrics = _metric_values(metrics)
        meta = {STEP_KEY: str(step), **{METRIC_PREFIX + k: repr(v) for k, v in metrics.items()}}
        protect = not self.background
        if isinstance(what, BundleSpec):
            with self.store.scratch() as tmp:  # built beside the store, so taken over, not copied
                path = bundle_file(what.models, what.backend, what.params, tmp)
                env = self.store.save(path, self.name, "model_bundle", {"backend": what.backend, **meta},
                                      self.overhead, protect=protect, move=True)
        elif isinstance(what, (str, os.PathLike)):
            path = Path(what)
            if path.is_dir():  # a DCP or Hugging Face checkpoint folder, say
                raise BadInputError(f"{path} is a folder: a checkpoint here is one file (folder checkpoints are "
                                    "not supported yet; save each file, or the state itself)")
            if not path.is_file():
                raise BadInputError(f"{path}: no such file" if not os.path.lexists(path) else f"{path}: not a regular file")
            env = self.store.save(path, self.name, None, meta, self.overhead, protect=protect, move=move)
        elif isinstance(what, (dict, list, tuple)):
            check_state(what)
            env = self.store.save_written(lambda f: write_state(what, f), self.name, {**meta, FORMAT_KEY: TORCH_STATE},
                                          self.overhead, protect=protect)
        else:
            raise BadInputError(f"a checkpoint is a state dict, a file path or a BundleSpec, not a {type(what).__name__}")
        cp = Checkpoint(step, env.version, f"{env.name}@{env.version}", metrics,
                        env.raptorq is not None, env.artifact_id, env.artifact_type)
        if protect:
            self._after_save(cp)
        else:  # sidecar, superseded versions and retention all off the critical path
            self._protector.start(ArtifactKey(env.name, env.version), env.artifact_id)
            self._tidy_later(cp)
        return cp

    def wait_until_finished(self) -> None:
        """Block until every background sidecar of this manager is committed (one whose
        version was deleted meanwhile is not an error) and retention has run, once more
        after the sidecars if it kept a checkpoint only until one of them was built."""
        with self._tidy_lock:
            jobs, self._tidy_jobs = self._tidy_jobs, []
        errors = []
        for job in jobs:
            try:
                job.result()
            except FtstoreError as e:
                errors.append(str(e))
        self._protector.wait()
        if self._kept_for_protection:
            self._kept_for_protection = False
            try:
                self._apply_retention()
            except FtstoreError as e:
                errors.append(str(e))
        if errors:
            raise DamageError("retention failed: " + "; ".join(errors))

    def _tidy_later(self, cp: Checkpoint) -> None:
        """Supersede and retention in a worker thread, one job at a time, in save order."""
        with self._tidy_lock:
            if self._tidier is None:
                self._tidier = ThreadPoolExecutor(1, thread_name_prefix="ftstore-retention")
            self._tidy_jobs = [j for j in self._tidy_jobs if not j.done() or j.exception() is not None]
            self._tidy_jobs.append(self._tidier.submit(self._after_save, cp))

    # -- supersede and retention -------------------------------------------------------
    def _after_save(self, saved: Checkpoint) -> None:
        cps = self.checkpoints()
        superseded = [c for c in cps if c.step == saved.step and c.version < saved.version]
        for c in superseded:
            self._delete(c)
        cps = [c for c in cps if c not in superseded]
        if self.policy.deletes_anything:
            self._apply_retention(cps, known_good=saved.version)

    def _apply_retention(self, cps: list[Checkpoint] | None = None, known_good: int | None = None) -> None:
        if not self.policy.deletes_anything:
            return
        cps = self.checkpoints() if cps is None else cps
        keep = self.policy.keep(cps)
        doomed = [c for c in cps if c.version not in keep]
        if not doomed:
            return
        spared = {c.version for c in self._spared(cps, known_good)}
        for c in doomed:
            if c.version not in spared:
                self._delete(c)

    def _spared(self, cps: list[Checkpoint], known_good: int | None) -> list[Checkpoint]:
        """What retention never deletes: the newest checkpoint that verifies and, while
        that one's sidecar is still to be built (a background save), the newest protected
        one that verifies and the oldest one after it still being protected (see
        :func:`kept_while_protecting`). Keeping only the newest lost a run's checkpoints to
        one flipped byte in it."""
        newest = self._newest_valid(cps, known_good)
        if newest is None or newest.protected:
            return [newest] if newest is not None else []
        running = set(self._protector.pending())  # before the envelopes are read again: see _protected_now
        kept = kept_while_protecting(
            [c for c in cps if c.version < newest.version],
            lambda c: self._protected_now(c, running) and self._newest_valid([c]) is not None,
            lambda c: ArtifactKey(self.name, c.version) in running)
        if kept:
            self._kept_for_protection = True
        return [newest, *kept]

    def _protected_now(self, c: Checkpoint, running: set[ArtifactKey]) -> bool:
        """Whether ``c`` has its sidecar, its listing being older than ``running``: one
        whose protector finished since is read again."""
        if c.protected:
            return True
        key = ArtifactKey(self.name, c.version)
        return key not in running and has_sidecar(self.store, key)

    def _delete(self, c: Checkpoint) -> None:
        key = ArtifactKey(self.name, c.version)
        self._protector.cancel(key)  # never delete under a running protector
        try:
            self.store.delete(key)
        except NotFoundError:
            pass

    def _newest_valid(self, cps: list[Checkpoint], known_good: int | None = None) -> Checkpoint | None:
        """The newest checkpoint that verifies; ``known_good`` (the version just saved) is
        taken as verified without reading it again."""
        for c in reversed(cps):
            if c.version == known_good:
                return c
            try:
                h = self.store.check(ArtifactKey(self.name, c.version))
            except NotFoundError:  # deleted meanwhile (another process's retention)
                continue
            if not (h.payload_problem or h.envelope_problem):
                return c
        return None

    # -- restore --------------------------------------------------------------------
    def _envelope(self, key: ArtifactKey) -> Envelope:
        """``key``'s envelope; a lost or damaged one is rebuilt first, as ``load`` and
        ``scrub --repair`` do (in a private copy where the store cannot be written), since
        its own sidecar still vouches for the checkpoint: a restore must not pass over the
        newest checkpoint for an older one. One that cannot
        be rebuilt raises :class:`FtstoreError` (and is skipped), with a warning, like a
        damaged payload."""
        try:
            return self.store.read_envelope(key)
        except NotFoundError:
            raise  # deleted since it was listed: nothing to warn about
        except FtstoreError:
            pass
        try:
            health = self.store.check(key)
            if not health.files_damaged:  # rewritten while it was read: read it again
                return self.store.read_envelope(key)
            return repaired_envelope(self.store.backend, key, health, "restore", None)
        except NotFoundError:
            raise
        except (FtstoreError, OSError) as e:
            warnings.warn(f"skipping checkpoint {key.ref}: its envelope is unusable and could not be rebuilt: {e}",
                          stacklevel=5)
            raise FtstoreError(str(e)) from None

    def _candidates(self, cps: list[Checkpoint], step: int | None, bundles: bool | None) -> list[Checkpoint]:
        """What a restore tries, newest first: every checkpoint, or those of ``step``; with
        ``bundles`` True or False, only the model bundles or only the others (a state
        cannot be read from a bundle, nor a bundle built from a state)."""
        if step is not None and not whole_number(step):
            raise BadInputError(f"step={step!r}: a whole number, not a {type(step).__name__}")
        if step is not None:
            cps = [c for c in cps if c.step == step]
            if not cps:
                raise NotFoundError(f"{self.name} has no checkpoint for step {step}")
        fits = [c for c in cps if bundles is None or c.is_bundle == bundles]
        if cps and not fits:
            which = f"step {step} of {self.name} is" if step is not None else f"every checkpoint of {self.name} is"
            raise BadInputError(f"{which} a model bundle: restore it with restore_bundle()" if not bundles
                                else f"{which} not a model bundle: restore it with restore()")
        if not fits:
            raise NotFoundError(f"{self.name} has no checkpoints")
        return list(reversed(fits))

    def restore(self, out: str | os.PathLike | None = None, *, step: int | None = None,
                map_location: Any = None) -> Any:
        """The newest checkpoint that verifies (or repairs), skipping damaged ones with a
        warning; with ``step``, only that one. Without ``out``: the training state, loaded
        without running code (``torch.load(weights_only=True)``, ``map_location`` as there);
        :attr:`restored` says which checkpoint it came from. With ``out``: the checkpoint's
        file is written there, and its :class:`Checkpoint` returned. Model bundle
        checkpoints are left to :meth:`restore_bundle`: the newest state is the newest
        checkpoint that is not one."""
        if out is not None and not isinstance(out, (str, os.PathLike)):
            raise BadInputError(f"out is a {type(out).__name__}: pass a path, or nothing for the state itself")
        if out is not None:
            return self._first_good(step, lambda c: self.store.load(c.ref, out), None)
        loaded = {}

        def attempt(c: Checkpoint) -> None:
            buf, _ = self.store.load_bytes(c.ref)
            loaded["state"] = read_state(buf, map_location)

        self._first_good(step, attempt, False)
        return loaded["state"]

    RESUMED_PROTECTION = 2
    """Checkpoints without a sidecar whose protection a restore takes over: the newest, which
    a resumed run depends on; ``scrub --repair`` protects any older ones."""

    def _remove_interrupted_saves(self) -> None:
        """A restore is where a run killed mid-save resumes: what its killed saves left in
        the store's staging area goes, so that a job killed again and again does not fill
        the disk between scrubs. Only ever a save whose process is gone; a failure warns."""
        try:
            self.store.backend.remove_interrupted_saves()
        except (FtstoreError, OSError) as e:
            warnings.warn(f"could not remove what interrupted saves left in {self.store.url}: {e}", stacklevel=4)

    def _protect_pending(self, cps: list[Checkpoint], damaged: set[int]) -> None:
        """Start building the newest sidecars ``cps`` (the restore's listing) still miss,
        but for the versions it skipped as ``damaged`` (no sidecar can be built for one): a
        resumed run (with background protection, as its predecessor had) takes over
        protection that died with the previous one (its protector killed with the job's
        cgroup, by the OOM killer, by a power loss), instead of leaving its newest
        checkpoints unprotected while retention removes the protected ones. A protector of
        the previous run still at work costs only time: encoding is deterministic, and a
        sidecar already built makes a new protector return at once. The restore has
        succeeded: a failure here only warns."""
        try:
            running = set(self._protector.pending())
            pending = [c for c in cps if not c.protected and c.version not in damaged][-self.RESUMED_PROTECTION :]
            for c in pending:
                key = ArtifactKey(self.name, c.version)
                if key not in running:
                    self._protector.start(key, c.artifact_id)
        except (FtstoreError, OSError) as e:
            warnings.warn(f"could not start protecting {self.name}'s unprotected checkpoints: {e}", stacklevel=4)

    def restore_bundle(self, backend: str, step: int | None = None, **kw: Any):
        """Like :meth:`restore`, for bundle checkpoints (the newest of them, skipping the
        others): returns (Checkpoint, LoadedBundle)."""
        loaded = {}

        def attempt(c: Checkpoint) -> None:
            loaded["b"] = load_bundle(self.store, c.ref, backend, **kw)

        cp = self._first_good(step, attempt, True)
        return cp, loaded["b"]

    LISTINGS = 5
    """How many times a restore lists again when every checkpoint it listed was deleted
    before it could be read (another process's retention, pruning as its run saves)."""

    def _first_good(self, step: int | None, attempt: Callable[[Checkpoint], Any], bundles: bool | None) -> Checkpoint:
        self._remove_interrupted_saves()
        failures = []
        damaged: set[int] = set()
        for _ in range(self.LISTINGS):
            cps = self.checkpoints(rebuild=True)
            for c in self._candidates(cps, step, bundles):
                try:
                    attempt(c)
                    self.restored = c
                    if self.background:
                        self._protect_pending(cps, damaged)
                    return c
                except NotFoundError:
                    if c.version in self.store.versions(self.name):
                        raise  # not a deletion: a model the bundle lacks, say
                    continue  # deleted since it was listed: the next one, or a new listing
                except DamageError as e:
                    warnings.warn(f"skipping damaged checkpoint {c.ref} (step {c.step}): {e}", stacklevel=3)
                    failures.append(f"step {c.step}: {e}")
                    damaged.add(c.version)
            if failures:
                break
        if not failures:
            raise NotFoundError(f"{self.name}: every checkpoint was deleted while it was being restored")
        raise DamageError(f"no checkpoint of {self.name} could be restored: " + "; ".join(failures))
