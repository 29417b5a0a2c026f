"""``python -m ftstore.engine.background STORE_URL NAME VERSION``: build a pending sidecar.

Started by ``CheckpointManager.save(background=True)`` in its own session, so it finishes
even if the training process that started it is killed.
"""

from __future__ import annotations

import sys

from ftstore.documents import ArtifactKey, parse_ref
from ftstore.engine.integrity import protect_pending
from ftstore.engine.leaves import FolderLeaves
from ftstore.errors import FtstoreError
from ftstore.stores import open_store


def protect_in_store(store_url: str, name: str, version: int) -> None:
    store = open_store(store_url)
    key = ArtifactKey(parse_ref(name).name, version)
    with store.working_copy(key) as folder:
        protect_pending(FolderLeaves(folder, key, store), jobs=1)


def main(argv: list[str]) -> int:
    url, name, version = argv
    try:
        protect_in_store(url, name, int(version))
    except FtstoreError as e:
        print(f"ftstore protect: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
