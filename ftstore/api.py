"""The library calls behind every CLI command; training code calls these directly."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .envelopes import Envelope
from .errors import BadInputError, DamageError, FtstoreError
from .integrity import Health, RepairResult, repair
from .storage.local import disk_full, is_disk_full, replace_durably, tmp_path
from .store import ArtifactPaths, Ref, Store


@dataclass
class LoadResult:
    envelope: Envelope
    paths: ArtifactPaths
    out: Path
    repair: RepairResult | None


def verify(store: Store, refs: Sequence[str] = ()) -> list[Health]:
    """Check the named artifacts (latest version for a bare name), or every version of every
    artifact when none is named. Read-only."""
    targets = [store.resolve(r) for r in refs] if refs else store.all_paths()
    return [store.check(p) for p in targets]


def heal(store: Store, ref: str | Ref, reason: str = "heal", jobs: int | None = None) -> tuple[Health, RepairResult | None]:
    """Check one artifact and repair it if it is damaged; raise if it cannot be."""
    paths = store.resolve(ref)
    h = store.check(paths)
    if not h.files_damaged:
        return h, None
    return h, _repair(store, paths, h, reason, jobs)


def _repair(store: Store, paths: ArtifactPaths, health: Health, reason: str, jobs: int | None) -> RepairResult:
    with store.checkout_checked(paths, health) as (local, local_health):
        return repair(local, local_health, reason=reason, jobs=jobs)


def load(
    store: Store,
    ref: str | Ref,
    out: str | os.PathLike,
    *,
    self_heal: bool = True,
    jobs: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> LoadResult:
    """Write the artifact's payload to ``out``. The stored payload's BLAKE3 is verified (and a
    damaged payload repaired in place) before anything is written; ``out`` appears atomically
    and only after its own bytes hashed right."""
    out = Path(out)
    if out.is_dir():
        raise BadInputError(f"{out} is a directory; give a file path")
    if not out.parent.is_dir():
        raise BadInputError(f"{out.parent}: no such directory")
    paths = store.resolve(ref)
    if store.remote:
        fast = _load_single_pass(store, paths, out, progress)
        if fast is not None:
            return fast
    h = store.check(paths)
    env, result = h.envelope, None
    if h.files_damaged:
        if not self_heal:
            raise DamageError("; ".join(h.problems))
        result = _repair(store, paths, h, "load", jobs)  # raises unless the payload verifies again
        env = result.envelope
    tmp = tmp_path(out)
    try:
        got, _ = store.fetch_payload(paths, tmp, progress=progress)
        if got != env.source_hash:
            raise DamageError(f"{paths.ref}: payload changed while it was being read; {out} was not written")
        replace_durably(tmp, out)
    except OSError as e:
        if is_disk_full(e):
            raise disk_full(e, f"writing {out}") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return LoadResult(env, paths, out, result)


def _load_single_pass(store: Store, paths: ArtifactPaths, out: Path, progress) -> LoadResult | None:
    """For remote stores: one download, hashed on the way into a temporary file beside
    ``out``, renamed only if it matches the envelope. None: take the checking path."""
    try:
        env = store.read_envelope(paths)
    except FtstoreError:
        return None
    tmp = tmp_path(out)
    try:
        got = store.fetch_payload(paths, tmp, progress=progress)
        if got != (env.source_hash, env.size):
            return None
        replace_durably(tmp, out)
        return LoadResult(env, paths, out, None)
    except FtstoreError:
        return None
    finally:
        tmp.unlink(missing_ok=True)
