"""Writing a sidecar for a payload, and patching a damaged payload with decoded symbols."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ftstore.durable import clear_folder_at
from ftstore.fileio import NotRegularFileError, open_regular, pwrite_all
from ftstore.errors import BadInputError, UnrecoverableError
from ftstore.hashing import (CHUNK, SYMBOL_HASH_BYTES, format_hash, hash_file, hash_stream, new_hasher, read_ahead,
                             symbol_hash)
from ftstore.codec.results import SidecarInfo, StripeOutcome
from ftstore.codec.encoder import encode_sidecar_body
from ftstore.codec.layout import LARGE_STRIPE_BYTES, Layout, default_symbol_size, stripe_count, writer_stripes
from ftstore.codec.rq import library_version
from ftstore.documents.envelope import ArtifactEssentials
from ftstore.documents.names import MAX_VERSION
from ftstore.codec.sidecar import (
    MAX_HEADER_BYTES,
    SidecarHeader,
    SidecarMeta,
    block_length,
    build_block,
    header_bytes,
    sidecar_size,
    write_meta,
)


class SymbolHasher:
    """A copy sink that hashes the stream symbol by symbol (the last one zero-padded), so a
    copy can be checked against the sidecar's source-symbol table without reading it again."""

    def __init__(self, symbol_size: int):
        self.t = symbol_size
        self.parts = bytearray()  # 16 bytes a symbol (a list of bytes objects took 65: 13 MiB at 4 GiB)
        self.rest = b""

    def __call__(self, chunk: memoryview) -> None:
        t = self.t
        if self.rest:
            take = t - len(self.rest)
            self.rest += bytes(chunk[:take])
            chunk = chunk[take:]
            if len(self.rest) < t:
                return
            self.parts += symbol_hash(self.rest)
            self.rest = b""
        whole = len(chunk) - len(chunk) % t
        self.parts += b"".join(symbol_hash(chunk[i : i + t]) for i in range(0, whole, t))
        self.rest = bytes(chunk[whole:])

    def table(self) -> bytes:
        tail = symbol_hash(self.rest + bytes(self.t - len(self.rest))) if self.rest else b""
        return bytes(self.parts) + tail


def check_header_fits(template: ArtifactEssentials, overhead: float, symbol_size: int | None = None) -> None:
    """Refuse, before a byte is written, an artifact whose sidecar header would outgrow what
    readers accept (``MAX_HEADER_BYTES``): such a sidecar would be written, and then be
    refused as unreadable by every repair. The header holds the artifact's metadata and a
    count per stripe, so too much metadata, or a payload of terabytes, outgrows it."""
    planned_layout(template, overhead, symbol_size)


def planned_layout(template: ArtifactEssentials, overhead: float, symbol_size: int | None = None) -> Layout:
    """The layout a sidecar for ``template`` gets: the writers' stripes, or where their
    header would pass ``MAX_HEADER_BYTES`` (a payload of tens of GiB with much metadata),
    the 4 MiB stripes earlier writers used, whose header is shorter. So whatever an earlier
    release accepted can still be given a sidecar (one pending, one lost). Checked with the
    longest version number, known only at the commit; :class:`BadInputError` where neither
    fits."""
    t = symbol_size or default_symbol_size(template.size)
    header = b""
    for stripes in (writer_stripes(template.size, t, overhead), stripe_count(template.size, t, LARGE_STRIPE_BYTES)):
        if stripes * 2 > MAX_HEADER_BYTES:  # at least two bytes a count: too long, and too many to list
            continue
        layout = Layout.plan(template.size, overhead, t, stripes)
        header = header_bytes(_header(layout, overhead, template, MAX_VERSION))
        if len(header) <= MAX_HEADER_BYTES:
            return layout
    if not header:
        raise BadInputError(f"a payload of {template.size} bytes in symbols of {t} bytes is more than one artifact "
                            "can protect: its sidecar's header would list too many stripes")
    raise _too_long(header, template)


def _header(layout: Layout, overhead: float, essentials: ArtifactEssentials, version: int) -> SidecarHeader:
    return SidecarHeader(
        artifact_version=version,
        library_version=library_version(),
        payload_size=layout.size,
        symbol_size=layout.symbol_size,
        stripes=layout.stripes,
        source_symbols=layout.source_symbols,
        overhead=overhead,
        repair_symbols_per_stripe=list(layout.repair_counts),
        artifact=essentials,
    )


def _check_room(header: bytes, template: ArtifactEssentials) -> None:
    if len(header) > MAX_HEADER_BYTES:
        raise _too_long(header, template)


def _too_long(header: bytes, template: ArtifactEssentials) -> BadInputError:
    metadata = len(header_bytes(template.metadata))  # type: ignore[arg-type]
    why = (f"its metadata takes {metadata} bytes: store less of it" if metadata * 2 > len(header)
           else f"a payload of {template.size} bytes is more than one artifact can protect at this overhead")
    return BadInputError(f"the repair sidecar's header would be {len(header)} bytes, over the "
                         f"{MAX_HEADER_BYTES} readers accept; {why}")


class SidecarBuild:
    """A sidecar written in two steps: ``encode`` the repair region from a file, then
    ``finish`` with the final essentials (whose ``source_hash`` may be learned meanwhile:
    it has a fixed length, so the metadata block's size is known from the start) and the
    artifact version it belongs to. ``finish`` may be called again with another version
    (a save that lost its first version to a concurrent writer): only the metadata blocks
    are rewritten, unless the version's length in digits changed, which moves the repair
    region (copied, never re-encoded)."""

    def __init__(self, dest: Path, template: ArtifactEssentials, overhead: float, symbol_size: int | None = None,
                 *, version: int):
        self.dest = dest
        self.overhead = overhead
        self.version = version
        self.layout = planned_layout(template, overhead, symbol_size)
        self.block_len = block_length(header_bytes(self._header(template)), self.layout)
        self.source_table = b""
        self.repair_table = b""

    def _header(self, essentials: ArtifactEssentials) -> SidecarHeader:
        return _header(self.layout, self.overhead, essentials, self.version)

    def encode(self, source: Path, jobs: int | None, source_table: bytes | None = None) -> bytes:
        """Write every repair symbol; returns the source-symbol hash table (``source_table``
        where the caller hashed ``source``'s symbols already, see :class:`SymbolHasher`)."""
        with open(self.dest, "xb") as f:
            f.truncate(sidecar_size(self.block_len, self.layout))
        self.source_table, self.repair_table = encode_sidecar_body(source, self.dest, self.layout, self.block_len,
                                                                   jobs, source_table)
        return self.source_table

    def finish(self, essentials: ArtifactEssentials, version: int | None = None) -> SidecarInfo:
        if version is not None:
            self.version = version
        hj = header_bytes(self._header(essentials))
        _check_room(hj, essentials)  # a later version number may have more digits
        block_len = block_length(hj, self.layout)
        if block_len != self.block_len:
            self._move_repair_region(block_len)
        with open(self.dest, "r+b") as f:
            write_meta(f, build_block(hj, self.source_table, self.repair_table), self.layout)
            f.flush()
            with ThreadPoolExecutor(1) as ex:  # the disk flushes while the CPU hashes
                synced = ex.submit(os.fsync, f.fileno())
                digest, size = hash_file(self.dest)
                synced.result()
        return SidecarInfo(self.layout, self.overhead, size, digest, library_version())

    def _move_repair_region(self, block_len: int) -> None:
        """Rewrite the file with the repair region at ``block_len`` (a header of another
        length): the symbols are copied, and fsynced by the ``finish`` that follows."""
        tmp = self.dest.with_name(self.dest.name + ".move")
        region = self.layout.total_repair * self.layout.symbol_size
        with open(self.dest, "rb") as src, open(tmp, "xb") as out:
            out.truncate(sidecar_size(block_len, self.layout))
            src.seek(self.block_len)
            out.seek(block_len)
            left = region
            while left:
                chunk = src.read(min(left, 1 << 20))
                if not chunk:
                    raise OSError(f"{self.dest}: repair region shorter than its layout")
                out.write(chunk)
                left -= len(chunk)
        os.replace(tmp, self.dest)
        self.block_len = block_len


def write_sidecar(
    payload: Path,
    dest: Path,
    essentials: ArtifactEssentials,
    overhead: float,
    symbol_size: int | None = None,
    jobs: int | None = None,
    *,
    version: int,
) -> SidecarInfo:
    """Encode ``payload`` into a new sidecar file ``dest`` (fsynced) for artifact version
    ``version``. ``payload`` must hold exactly ``essentials.size`` bytes matching
    ``essentials.source_hash`` while it is encoded: what the encoders read is checked
    afterwards (:func:`check_encoded`), and :class:`UnrecoverableError` raised, with no
    sidecar finished, where it was not."""
    build = SidecarBuild(dest, essentials, overhead, symbol_size, version=version)
    table = build.encode(payload, jobs)
    check_encoded(payload, essentials, build.layout.symbol_size, table)
    return build.finish(essentials)


def check_encoded(payload: Path, essentials: ArtifactEssentials, symbol_size: int, table: bytes) -> None:
    """Check that the bytes the encoders read were the recorded payload: the payload is read
    again, and its BLAKE3 and every symbol's hash must match ``essentials`` and ``table``
    (the hashes the encoders took of exactly what they encoded). A sidecar built after the
    payload was checked, while a writer (through a hard link) or rot changed it, would
    describe other bytes: useless to repair them, where the recorded bytes' sidecar would
    repair that very change. Raises :class:`UnrecoverableError` then."""
    hasher = SymbolHasher(symbol_size)
    try:
        f = open_regular(payload)
        if f is None:
            raise FileNotFoundError(payload)
        with f:
            got = hash_stream(f, essentials.size + 1, sink=hasher)
    except (OSError, NotRegularFileError) as e:
        raise UnrecoverableError(f"{payload}: the payload could not be read back after its sidecar was encoded ({e}); "
                                 "no sidecar was installed") from None
    if got != (essentials.source_hash, essentials.size) or hasher.table() != table:
        raise UnrecoverableError(f"{payload}: the payload does not match its recorded BLAKE3, or changed while its repair "
                                 "sidecar was being built; no sidecar was installed")


@dataclass(frozen=True)
class _Patch:
    """One recovered symbol: file symbol ``j`` at ``off``, ``length`` bytes; ``data`` when
    the outcomes carry it, None when it lies in the spill file (read when it is used)."""

    j: int
    off: int
    length: int
    data: bytes | None


class SpilledSymbols:
    """Recovered symbols read back from a spill file a run of adjacent ones at a time, each
    checked against its hash in the sidecar's table just before use: a spill file changed
    or damaged since the decode never puts a wrong byte anywhere
    (:class:`SpillMismatchError`)."""

    def __init__(self, path: Path | None, meta: SidecarMeta):
        self.path, self.meta = path, meta
        self.f: BinaryIO | None = None

    def __enter__(self) -> SpilledSymbols:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.f is not None:
            self.f.close()

    def _file(self) -> BinaryIO:
        if self.f is None:
            if self.path is None:
                raise SpillMismatchError("recovered symbols were spilled, but no spill file was given")
            try:
                self.f = open_regular(self.path)
            except NotRegularFileError as e:
                raise SpillMismatchError(f"spill file {e}; nothing was written from it") from None
            if self.f is None:
                raise SpillMismatchError(f"{self.path}: spill file vanished before the repair was written; "
                                         "nothing was written from it")
        return self.f

    def run_data(self, run: list[_Patch]) -> bytes | memoryview:
        """The bytes of a run of adjacent symbols (see :func:`_runs`), each checked against
        its hash: spilled ones read with one ``pread``."""
        if all(p.data is None for p in run):
            data: bytes | memoryview = os.pread(self._file().fileno(), _run_length(run), run[0].off)
        else:
            data = b"".join(p.data[: p.length] if p.data is not None else
                            os.pread(self._file().fileno(), p.length, p.off) for p in run)
        bad = next((p for p, sym in _symbols_of(run, data) if not _holds(self.meta, p, sym)), None)
        if bad is not None:
            where = f"spill file {self.path}" if bad.data is None else "decoder output"
            raise SpillMismatchError(f"recovered symbol {bad.j} in the {where} does not match its hash "
                                     "(changed since it was decoded); refusing to use it")
        return data


def _holds(meta: SidecarMeta, p: _Patch, data: bytes | memoryview) -> bool:
    """Whether ``data`` is symbol ``p`` as the sidecar's table records it (a short last
    symbol is hashed zero-padded to the symbol size)."""
    h, pad = SYMBOL_HASH_BYTES, meta.layout.symbol_size - p.length
    return len(data) == p.length and \
        symbol_hash(bytes(data) + bytes(pad) if pad else data) == meta.source_hashes[p.j * h : (p.j + 1) * h]


_RUN_SYMBOLS = 256
"""The most symbols patched with one read and one write (4 MiB of 16 KiB symbols, 16 MiB
of the largest): few system calls for a burst of damage, memory bounded whatever the
damage."""


def _runs(patches: list[_Patch]) -> list[list[_Patch]]:
    """``patches`` (in file order) cut into runs of adjacent symbols, at most
    ``_RUN_SYMBOLS`` each: a burst of damage is read, checked and written a run at a time."""
    out: list[list[_Patch]] = []
    for p in patches:
        if out and out[-1][-1].j + 1 == p.j and len(out[-1]) < _RUN_SYMBOLS:
            out[-1].append(p)
        else:
            out.append([p])
    return out


def _run_length(run: list[_Patch]) -> int:
    return run[-1].off + run[-1].length - run[0].off


def _symbols_of(run: list[_Patch], data: bytes | memoryview) -> Iterator[tuple[_Patch, memoryview]]:
    """Each symbol of ``run`` with its bytes in ``data`` (the run's bytes, read from its
    start; a short read leaves the symbols past its end short, so they never hold)."""
    view, start = memoryview(data), run[0].off
    for p in run:
        yield p, view[p.off - start : p.off - start + p.length]


class SpillMismatchError(UnrecoverableError):
    """A recovered symbol no longer matches its hash: the repair is refused."""


class PatchError(UnrecoverableError):
    """The payload does not read back as the repair wrote it (another writer, a failing
    disk): the repair is not reported done."""


def _patches(meta: SidecarMeta, outcomes: list[StripeOutcome]) -> list[_Patch]:
    """Every recovered symbol (its bytes, or where it lies in the spill file), in file
    order. Nothing is trusted yet: :meth:`SpilledSymbols.data` checks each as it is used."""
    lay = meta.layout
    out = []
    for oc in outcomes:
        for i, sym in (oc.recovered or {}).items():
            j = lay.global_index(oc.stripe, i)
            off, length = lay.symbol_extent(j)
            out.append(_Patch(j, off, length, sym))
        for i in oc.spilled or ():
            j = lay.global_index(oc.stripe, i)
            off, length = lay.symbol_extent(j)
            out.append(_Patch(j, off, length, None))
    return sorted(out, key=lambda p: p.j)


def _readable(payload: Path, write: bool = False) -> BinaryIO | None:
    """The payload to read or patch in place; None if absent or not a regular file (a
    link, FIFO or folder is never read or written through: it is replaced whole)."""
    try:
        return open_regular(payload, write=write)
    except NotRegularFileError:
        return None


def patched_digest(payload: Path, meta: SidecarMeta, outcomes: list[StripeOutcome], spill: Path | None = None) -> str:
    """BLAKE3 of what ``payload`` would hold after :func:`patch_in_place`, computed without
    writing anything: a repair is decided, and its whole result checked, before a byte of
    the stored payload changes. The payload is read ahead by a helper thread (as a verify
    reads it) and the recovered symbols, checked against their hashes, are laid over their
    place in the read buffer a run of adjacent ones at a time; spilled ones are read from
    ``spill`` as they come. Past the end of a short file the payload reads as zeros (those
    symbols are erased)."""
    lay = meta.layout
    runs = _runs(_patches(meta, outcomes))
    hasher = new_hasher()
    pos = k = 0
    data: bytes | memoryview | None = None  # run k's checked bytes, while it spans read chunks

    def hash_with_patches(view: memoryview) -> None:
        nonlocal pos, k, data
        end = pos + len(view)
        while k < len(runs) and runs[k][0].off < end:
            if data is None:
                data = symbols.run_data(runs[k])
            start = runs[k][0].off
            lo, hi = max(start, pos), min(start + len(data), end)
            view[lo - pos : hi - pos] = data[lo - start : hi - start]
            if start + len(data) > end:
                break  # the rest of this run lies in the next chunk
            k, data = k + 1, None
        hasher.update(view)
        pos = end

    f = _readable(payload)
    with SpilledSymbols(spill, meta) as symbols:
        if f is not None:
            with f:
                for view in read_ahead(f, lay.size):
                    hash_with_patches(view)
        zeros = bytearray(min(CHUNK, lay.size - pos))
        while pos < lay.size:
            view = memoryview(zeros)[: min(len(zeros), lay.size - pos)]
            view[:] = bytes(len(view))
            hash_with_patches(view)
    return format_hash(hasher.digest())


def patch_in_place(payload: Path, meta: SidecarMeta, outcomes: list[StripeOutcome], spill: Path | None = None) -> None:
    """Write recovered symbols over the damaged ones and cut the file to its recorded size.

    Only bytes that are wrong are overwritten: each symbol is read again just before, and
    one that now matches its hash in the sidecar is left alone (never is a symbol the
    trusted table vouches for modified). Only symbols that match their hash are written,
    so a crash at any point leaves a payload no more damaged than before, which the next
    repair finishes. The caller checks the whole result (:func:`patched_digest`) before;
    after the fsync every written symbol is read back and checked against its hash (and the
    file's size), so the whole is what was checked (:class:`PatchError` if not). A payload
    that is not a regular file (a link, a FIFO) is never written through: a new file, every
    symbol of which was decoded, replaces it.

    The payload is read, checked and written a run of adjacent symbols at a time (a burst of
    damage costs a few system calls, not a few per symbol). Spilled symbols are read from
    ``spill`` a run at a time, each checked against its hash just before the run is
    written: one that no longer matches (the spill file was changed since the decode) stops
    the patch with :class:`SpillMismatchError`, having written only symbols that match their
    hash."""
    lay = meta.layout
    patches = _patches(meta, outcomes)
    with SpilledSymbols(spill, meta) as symbols:
        f = _readable(payload, write=True)
        if f is None:
            _replace_whole(payload, lay, patches, symbols)
            return
        with f:
            fd = f.fileno()
            found = os.fstat(fd)
            for run in _runs(patches):
                now = os.pread(fd, _run_length(run), run[0].off)
                # a symbol already right (a repair before this one was killed after writing it) is left alone
                wrong = [p for p, sym in _symbols_of(run, now) if not _holds(meta, p, sym)]
                for part in _runs(wrong):
                    pwrite_all(fd, symbols.run_data(part), part[0].off)
            if os.fstat(fd).st_size != lay.size:
                os.ftruncate(fd, lay.size)
            os.fsync(fd)
            _check_written(fd, meta, patches, payload)
            _keep_mtime(fd, found)


def _keep_mtime(fd: int, found: os.stat_result) -> None:
    """Undoing damage is not a change: the file keeps the time it was last modified, as
    after bit rot, for tools that order files by it (Lightning's "last"). Setting a time
    needs the file's owner: another user who may write the file repairs it all the same."""
    try:
        os.utime(fd, ns=(found.st_atime_ns, found.st_mtime_ns))
    except PermissionError:
        pass


def _check_written(fd: int, meta: SidecarMeta, patches: list[_Patch], payload: Path) -> None:
    """Read every patched symbol back and check it against its hash, and the file's size:
    with the rest of the file as :func:`patched_digest` hashed it, the payload is then the
    recorded one, without reading all of it a third time."""
    size = os.fstat(fd).st_size
    if size != meta.layout.size:
        raise PatchError(f"{payload}: {size} bytes after the repair, not {meta.layout.size}")
    for run in _runs(patches):
        for p, sym in _symbols_of(run, os.pread(fd, _run_length(run), run[0].off)):
            if not _holds(meta, p, sym):
                raise PatchError(f"{payload}: symbol {p.j} does not read back as written by the repair")


def _replace_whole(payload: Path, lay: Layout, patches: list[_Patch], symbols: SpilledSymbols) -> None:
    """A new payload from decoded symbols only (the old one was missing or not a file):
    written beside it exclusively, fsynced, renamed over the old name (a link is replaced
    as a link, never followed)."""
    if len(patches) != lay.source_symbols:  # it was there, and checked, when the repair began: deleted since?
        raise PatchError(f"{payload}: the payload vanished while it was being repaired (only {len(patches)} of "
                         f"{lay.source_symbols} symbols were decoded, for the damage found); nothing was written")
    tmp = payload.with_name(f"{payload.name}.tmp-{os.urandom(6).hex()}")
    try:
        with open(tmp, "xb") as out:
            for run in _runs(patches):
                out.seek(run[0].off)
                out.write(symbols.run_data(run))
            out.truncate(lay.size)
            out.flush()
            os.fsync(out.fileno())
        clear_folder_at(payload)  # a folder at the payload's name is damage; a rename cannot replace it
        os.replace(tmp, payload)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["PatchError", "SidecarBuild", "SidecarInfo", "SpillMismatchError", "SpilledSymbols", "SymbolHasher", "patch_in_place", "patched_digest", "write_sidecar"]
