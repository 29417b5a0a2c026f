"""``python -m ftstore.engine.background STORE_URL NAME VERSION [ARTIFACT_ID [OVERHEAD]]``:
build a pending sidecar, with the overhead given, else the one its saver asked for.

Started by the checkpoint manager (and the Lightning plugin) with background protection, in
its own session, so it finishes even if the training process that started it is killed.
A version deleted before it was protected (retention, a superseding save) is not an error:
there is nothing left to protect, and the protector exits 0 saying so.
"""

from __future__ import annotations

import sys

from ftstore.documents import ArtifactKey, parse_ref
from ftstore.engine.integrity import protect_pending
from ftstore.engine.leaves import FolderLeaves, StoredLeaves, read_envelope
from ftstore.errors import FtstoreError
from ftstore.stores import open_store


def protect_in_store(store_url: str, name: str, version: int, artifact_id: str | None = None,
                     overhead: float | None = None) -> None:
    store = open_store(store_url)
    key = ArtifactKey(parse_ref(name).name, version)
    with store.working_copy(key) as folder:
        protect_pending(FolderLeaves(folder, key, store), jobs=1, overhead=overhead, artifact_id=artifact_id)


def _gone(store_url: str, name: str, version: int, artifact_id: str | None) -> bool:
    """True if the version no longer exists (or is now another artifact)."""
    try:
        store = open_store(store_url)
        if version not in store.versions(name):
            return True
        key = ArtifactKey(name, version)
        return artifact_id is not None and read_envelope(StoredLeaves(store, key)).artifact_id != artifact_id
    except (FtstoreError, OSError):
        return False


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4, 5):
        print("usage: python -m ftstore.engine.background STORE_URL NAME VERSION [ARTIFACT_ID [OVERHEAD]]",
              file=sys.stderr)
        return 2
    url, name, version = argv[:3]
    artifact_id = argv[3] if len(argv) > 3 else None
    try:
        number, overhead = int(version), float(argv[4]) if len(argv) > 4 else None
    except ValueError as e:
        print(f"ftstore protect: {e}", file=sys.stderr)
        return 2
    try:
        protect_in_store(url, name, number, artifact_id, overhead)
    except (FtstoreError, OSError) as e:
        if _gone(url, name, number, artifact_id):
            print(f"ftstore protect: {name}@{version} was deleted before its sidecar was built; nothing to do",
                  file=sys.stderr)
            return 0
        print(f"ftstore protect: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
