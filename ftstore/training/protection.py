"""Background protection: repair sidecars built by separate processes, off the training
loop's critical path.

A save with protection pending is valid and verifiable at once (its envelope records the
payload's BLAKE3); ``python -m ftstore.engine.background`` then builds its sidecar. Each such
process runs in its own session, so it finishes even if the trainer is killed. Deleting a
version (retention, a superseding save, Lightning pruning its top-k) first cancels its
protection, so the two never race: the protector is stopped and reaped before the version
goes, and nothing reports an error for a version that was deleted on purpose.
"""

from __future__ import annotations

import subprocess
import sys
import threading

from ftstore.documents import ArtifactKey
from ftstore.errors import DamageError


class BackgroundProtector:
    def __init__(self, store_url: str, overhead: float = 0.10):
        self.store_url = store_url
        self.overhead = float(overhead)  # the sidecars' repair overhead: what the saver asked for
        self._procs: dict[ArtifactKey, subprocess.Popen] = {}
        self._errors: list[str] = []
        self._lock = threading.Lock()

    def start(self, key: ArtifactKey, artifact_id: str) -> None:
        """Start building the sidecar of ``key`` (committed with protection pending)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "ftstore.engine.background", self.store_url, key.name, str(key.version), artifact_id,
             repr(self.overhead)],
            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        with self._lock:
            self._reap_finished()
            self._procs[key] = proc

    def cancel(self, key: ArtifactKey) -> None:
        """Stop building ``key``'s sidecar (before the version is deleted); no error either way."""
        with self._lock:
            proc = self._procs.pop(key, None)
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        _close(proc)

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
                    errors, self._errors = self._errors, []
                    break
                key, proc = next(iter(self._procs.items()))
            proc.wait()  # its few lines of stderr fit in the pipe: it never blocks on them
            with self._lock:
                if self._procs.get(key) is proc:
                    del self._procs[key]
                    self._record(key, proc)
        if errors:
            raise DamageError("background protection failed: " + "; ".join(errors))

    def _reap_finished(self) -> None:
        for key, proc in list(self._procs.items()):
            if proc.poll() is not None:
                del self._procs[key]
                self._record(key, proc)

    def _record(self, key: ArtifactKey, proc: subprocess.Popen) -> None:
        err = proc.stderr.read() if proc.stderr else b""
        _close(proc)
        if proc.returncode:
            self._errors.append(f"{key.ref}: " + (err.decode(errors="replace").strip() or f"exit code {proc.returncode}"))


def _close(proc: subprocess.Popen) -> None:
    if proc.stderr:
        proc.stderr.close()


__all__ = ["BackgroundProtector"]
