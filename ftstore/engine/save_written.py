"""Saving what a writer writes (a ``torch.save`` of a state dict, say), with no file of the
caller's in between.

The writer writes straight into the staging folder of the new version, through a file
object that hashes every byte on its way to disk, so the payload is never read back to be
hashed and never copied. Then, as for any save: the sidecar is encoded from the staged copy
while it is flushed (or, with ``protect=False``, left for the background protector), and
the envelope commits. On a backend whose leaves are not local files the staged copy is
uploaded as the payload leaf.
"""

from __future__ import annotations

import msgspec

from ftstore.codec import DEFAULT_OVERHEAD, SidecarBuild, check_header_fits
from ftstore.documents import ArtifactEssentials, Envelope
from ftstore.durable import Writer, write_hashing
from ftstore.engine.integrity import pending_metadata
from ftstore.engine.save import check_request, commit_staged, encode_staged, new_essentials
from ftstore.stores.backend import PAYLOAD, Staging, StoreBackend


def save_written(
    store: StoreBackend,
    write: Writer,
    name: str,
    metadata: dict[str, str] | None = None,
    overhead: float = DEFAULT_OVERHEAD,
    jobs: int | None = None,
    protect: bool = True,
) -> Envelope:
    """Store what ``write(f)`` writes into ``f`` (front to back) as the next version of
    ``name``, a ``file`` artifact. ``protect=False`` commits with protection pending, as
    :func:`ftstore.engine.save.save` does. An exception from ``write`` aborts the save."""
    check_request(name, "file", overhead)
    if not protect:
        metadata = pending_metadata(metadata, overhead)
    # metadata refused before anything is written
    check_header_fits(new_essentials(name, "file", metadata, 0), overhead)

    def bring_in(staging: Staging) -> tuple[ArtifactEssentials, SidecarBuild | None]:
        staged = staging.workdir / PAYLOAD
        durable = not protect and store.capabilities.local_files  # else synced while encoding, or uploaded
        digest, size = write_hashing(staged, write, durable=durable)
        essentials = msgspec.structs.replace(new_essentials(name, "file", metadata, size), source_hash=digest)
        check_header_fits(essentials, overhead)  # its size is known now (a pending one's sidecar comes later)

        def flush() -> None:
            staging.add(PAYLOAD, staged)  # a no-op where the staged file is the stored one
            if not durable:
                staging.sync(PAYLOAD)

        if not protect:
            flush()
            return essentials, None
        return essentials, encode_staged(staging, essentials, overhead, jobs, flush)

    return commit_staged(store, name, bring_in)


__all__ = ["Writer", "save_written"]
