"""``python -m ftstore.protect STORE_URL NAME VERSION``: build a pending repair sidecar.

Started by ``CheckpointManager.save(background=True)`` in its own session, so it finishes
even if the training process that started it is killed.
"""

from __future__ import annotations

import sys

from .errors import FtstoreError
from .integrity import protect_pending
from .store import Ref, Store


def main(argv: list[str]) -> int:
    root, name, version = argv
    try:
        store = Store.open(root)
        with store.checkout(store.resolve(Ref(name, int(version)))) as local:
            protect_pending(local, jobs=1)
    except FtstoreError as e:
        print(f"ftstore protect: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
