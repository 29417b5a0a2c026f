"""Background protection: repair sidecars built by separate processes, off the training
loop's critical path.

A save with protection pending is valid and verifiable at once (its envelope records the
payload's BLAKE3); a process running ``ftstore.engine.background`` then builds its sidecar.
Each such process runs in its own session, so it finishes even if the trainer is killed.
It runs this very ``ftstore``, under the trainer's isolation flags, and nothing from the
trainer's working folder (see :mod:`ftstore.interpreter`). Its messages go to a temporary
file, not a pipe, so however much it writes it never blocks. Deleting a version
(retention, a superseding save, Lightning pruning its top-k) first cancels its
protection, so the two never race: the protector is stopped and reaped before the
version goes, and nothing reports an error for a version that was deleted on purpose.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from ftstore import interpreter
from ftstore.documents import ArtifactKey
from ftstore.errors import DamageError, FtstoreError

if TYPE_CHECKING:
    from ftstore.engine.store import Store

_SHOWN_BYTES = 4096  # of a failed protector's messages, the last
V = TypeVar("V")


@dataclass
class _Job:
    proc: subprocess.Popen
    err: BinaryIO  # its stderr

    def finish(self) -> str:
        """What it said (the end of it), once it has exited; closes the file."""
        try:
            self.err.seek(0, 2)
            self.err.seek(max(0, self.err.tell() - _SHOWN_BYTES))
            return self.err.read().decode(errors="replace").strip()
        finally:
            self.err.close()


class BackgroundProtector:
    def __init__(self, store_url: str):
        self.store_url = store_url
        self._procs: dict[ArtifactKey, _Job] = {}
        self._errors: dict[ArtifactKey, str] = {}  # a failed one's, until waited for or cancelled
        self._lock = threading.Lock()

    def start(self, key: ArtifactKey, artifact_id: str) -> None:
        """Start building the sidecar of ``key`` (committed with protection pending)."""
        err = tempfile.TemporaryFile()
        try:
            proc = subprocess.Popen(
                # the overhead is the one the version records: its saver's, whoever starts this
                interpreter.command("ftstore.engine.background", self.store_url, key.name, str(key.version),
                                    artifact_id),
                start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            )
        except BaseException:
            err.close()
            raise
        with self._lock:
            self._reap_finished()
            self._procs[key] = _Job(proc, err)

    def cancel(self, key: ArtifactKey) -> None:
        """Stop building ``key``'s sidecar (before the version is deleted); no error either
        way, nor one it already had (a version deleted is no failure of its protection)."""
        with self._lock:
            job = self._procs.pop(key, None)
            self._errors.pop(key, None)
        if job is None:
            return
        if job.proc.poll() is None:
            job.proc.kill()
        job.proc.wait()
        job.finish()

    def pending(self) -> list[ArtifactKey]:
        with self._lock:
            self._reap_finished()
            return sorted(self._procs)

    def wait(self) -> None:
        """Block until every sidecar started here is committed; :class:`DamageError` naming
        the ones that failed (a cancelled one never counts)."""
        while True:
            with self._lock:
                if not self._procs:
                    errors, self._errors = list(self._errors.values()), {}
                    break
                key, job = next(iter(self._procs.items()))
            job.proc.wait()
            with self._lock:
                if self._procs.get(key) is job:
                    del self._procs[key]
                    self._record(key, job)
        if errors:
            raise DamageError("background protection failed: " + "; ".join(errors))

    def _reap_finished(self) -> None:
        for key, job in list(self._procs.items()):
            if job.proc.poll() is not None:
                del self._procs[key]
                self._record(key, job)

    def _record(self, key: ArtifactKey, job: _Job) -> None:
        said, code = job.finish(), job.proc.returncode
        if code:
            if code < 0:  # a signal: what it said, if anything, is not why it stopped
                said = " ".join(filter(None, [said, f"({interpreter.how_it_ended(code)})"]))
            self._errors[key] = f"{key.ref}: " + (said or interpreter.how_it_ended(code))


def has_sidecar(store: Store, key: ArtifactKey) -> bool:
    """Whether ``key``'s envelope, as stored now, records a sidecar (False where it cannot
    be read: such a version is no fallback)."""
    try:
        return store.read_envelope(key).raptorq is not None
    except FtstoreError:
        return False


def kept_while_protecting(older: Sequence[V], protected: Callable[[V], bool],
                          being_protected: Callable[[V], bool]) -> list[V]:
    """Of the versions a newer save replaces (``older``, oldest first), those kept while the
    newer one has no sidecar yet, in which one flipped byte is beyond repair: the newest
    that has one (``protected``), for a restore to fall back to; and the oldest after it
    whose sidecar is still being built, whose protection is let finish, so that however
    fast saves come, a protected version exists and moves forward."""
    fallback = next((i for i in range(len(older) - 1, -1, -1) if protected(older[i])), None)
    start = 0 if fallback is None else fallback + 1
    building = next((v for v in older[start:] if being_protected(v)), None)
    kept = [] if fallback is None else [older[fallback]]
    return kept if building is None else [*kept, building]


__all__ = ["BackgroundProtector", "has_sidecar", "kept_while_protecting"]
