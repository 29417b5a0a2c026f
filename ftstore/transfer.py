"""Copying artifacts between stores (local <-> S3): verify on the way, repair at the
destination. The source is only read; its versions keep their numbers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .errors import FtstoreError
from .integrity import check, repair
from .store import Store


@dataclass(frozen=True)
class CopyResult:
    ref: str
    status: Literal["copied", "repaired", "skipped", "conflict", "failed"]
    detail: str = ""


def copy_store(src: Store, dst: Store, refs: Sequence[str] = (), jobs: int | None = None) -> list[CopyResult]:
    targets = [src.resolve(r) for r in refs] if refs else src.all_paths()
    out = []
    for paths in targets:
        if paths.version in dst.versions(paths.name):
            out.append(_existing(src, dst, paths))
            continue
        try:
            with src.checkout(paths, upload=False) as local:
                found = check(local)  # verify on the way
                if not dst.import_files(local):
                    out.append(CopyResult(paths.ref, "conflict", "the destination took this version meanwhile"))
                    continue
            if not found.files_damaged:
                out.append(CopyResult(paths.ref, "copied"))
                continue
            dpaths = dst.paths(paths.name, paths.version)
            with dst.checkout(dpaths) as dlocal:
                repair(dlocal, check(dlocal), reason="copy", jobs=jobs)
            out.append(CopyResult(paths.ref, "repaired", "; ".join(found.problems)))
        except (FtstoreError, OSError) as e:
            out.append(CopyResult(paths.ref, "failed", str(e)))
    return out


def _existing(src: Store, dst: Store, paths) -> CopyResult:
    try:
        same = src.read_envelope(paths).artifact_id == dst.read_envelope(dst.paths(paths.name, paths.version)).artifact_id
    except FtstoreError as e:
        return CopyResult(paths.ref, "conflict", f"destination has this version; cannot compare: {e}")
    if same:
        return CopyResult(paths.ref, "skipped", "already at the destination")
    return CopyResult(paths.ref, "conflict", "the destination holds a different artifact under this version")
