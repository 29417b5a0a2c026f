"""The codec on its own, over plain local files, with no store: a sidecar written for a
payload locates damage and decodes it back byte for byte within the budget, and reports
failure beyond it without touching the payload."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftstore.codec import check_and_decode, patch_in_place, read_meta, write_sidecar
from ftstore.codec.tasks import read_stripes
from ftstore.codec.layout import Layout, stripe_count
from ftstore.documents import ArtifactEssentials
from ftstore.errors import UnrecoverableError
from ftstore.hashing import hash_bytes


def _protected(tmp_path, size: int, overhead: float = 0.1, symbol_size: int | None = None):
    data = random.Random(size).randbytes(size)
    payload, sidecar = tmp_path / "payload", tmp_path / "sidecar"
    payload.write_bytes(data)
    ess = ArtifactEssentials(artifact_id="0" * 32, artifact_type="file", name="codec-test", size=size,
                             source_hash=hash_bytes(data), created_unix_ms=0, metadata={})
    info = write_sidecar(payload, sidecar, ess, overhead, symbol_size, jobs=1, version=1)
    assert info.size == sidecar.stat().st_size
    return data, payload, sidecar, read_meta(sidecar)


def _damage_symbols(payload, lay, per_stripe: int, rng: random.Random) -> None:
    with open(payload, "r+b") as f:
        for s in range(lay.stripes):
            for i in rng.sample(range(lay.stripe_k(s)), per_stripe):
                off, length = lay.symbol_extent(lay.global_index(s, i))
                f.seek(off + rng.randrange(length))
                f.write(b"\xa5")


@pytest.mark.parametrize("size, symbol_size", [(1, None), (70_001, 256), (5_000_000, None)])
def test_damage_within_the_budget_decodes_back_byte_identical(tmp_path, size, symbol_size):
    data, payload, sidecar, meta = _protected(tmp_path, size, symbol_size=symbol_size)
    lay = meta.layout
    _damage_symbols(payload, lay, min(lay.budget(s) for s in range(lay.stripes)), random.Random(1))
    outcomes = check_and_decode(payload, sidecar, meta, jobs=1)
    assert not any(o.failed for o in outcomes) and any(o.erased for o in outcomes)
    patch_in_place(payload, meta, outcomes)
    assert payload.read_bytes() == data


def test_an_intact_payload_has_nothing_to_decode(tmp_path):
    _, payload, sidecar, meta = _protected(tmp_path, 300_000)
    assert all(not o.erased and not o.failed for o in check_and_decode(payload, sidecar, meta, jobs=1))


def test_damage_beyond_the_budget_fails_and_changes_nothing(tmp_path):
    data, payload, sidecar, meta = _protected(tmp_path, 300_000, symbol_size=512)
    lay = meta.layout
    _damage_symbols(payload, lay, lay.budget(0) + lay.stripes + 3, random.Random(2))
    damaged = payload.read_bytes()
    outcomes = check_and_decode(payload, sidecar, meta, jobs=1)
    assert any(o.failed for o in outcomes)
    assert payload.read_bytes() == damaged != data


def test_either_metadata_copy_alone_is_enough(tmp_path):
    _, _, sidecar, meta = _protected(tmp_path, 100_000)
    raw = bytearray(sidecar.read_bytes())
    raw[:64] = bytes(64)  # copy A's head
    sidecar.write_bytes(bytes(raw))
    again = read_meta(sidecar)
    assert again.copies_ok == 1 and again.source_hashes == meta.source_hashes


def test_decoded_symbols_can_go_to_a_spill_file_and_are_patched_from_it(tmp_path):
    data, payload, sidecar, meta = _protected(tmp_path, 400_000, symbol_size=1024)
    lay = meta.layout
    _damage_symbols(payload, lay, min(lay.budget(s) for s in range(lay.stripes)), random.Random(4))
    spill = tmp_path / "spill"
    with open(spill, "xb") as f:
        f.truncate(lay.size)
    outcomes = check_and_decode(payload, sidecar, meta, jobs=1, spill=spill)
    assert all(o.recovered is None and o.spilled == o.erased for o in outcomes) and any(o.spilled for o in outcomes)
    held = spill.read_bytes()
    for o in outcomes:  # the spill file holds exactly the original bytes of each recovered symbol
        for i in o.spilled:
            off, n = lay.symbol_extent(lay.global_index(o.stripe, i))
            assert held[off : off + n] == data[off : off + n]
    with pytest.raises(UnrecoverableError, match="no spill file"):
        patch_in_place(payload, meta, outcomes)  # spilled symbols with nowhere to read them from
    patch_in_place(payload, meta, outcomes, spill)
    assert payload.read_bytes() == data


def test_a_spill_file_that_is_a_link_is_never_written_through(tmp_path):
    data, payload, sidecar, meta = _protected(tmp_path, 50_000, symbol_size=512)
    _damage_symbols(payload, meta.layout, 1, random.Random(5))
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep")
    link = tmp_path / "spill"
    link.symlink_to(target)
    with pytest.raises(OSError, match="not a regular file"):
        check_and_decode(payload, sidecar, meta, jobs=1, spill=link)
    assert target.read_bytes() == b"keep"


def test_a_long_burst_is_checked_and_patched_a_run_of_adjacent_symbols_at_a_time(tmp_path, monkeypatch):
    """600 adjacent symbols zeroed, across a 4 MiB read chunk: the digest before writing is
    the original's and the patch gives back the original bytes, with one read of the spill
    file and one write per run of at most 256 symbols (not a few system calls a symbol)."""
    from ftstore.codec import build, patched_digest

    t, first, burst = 4096, 900, 600
    data, payload, sidecar, meta = _protected(tmp_path, 6 * 1024 * 1024 + 99, overhead=0.5, symbol_size=t)
    lay = meta.layout
    with open(payload, "r+b") as f:
        f.seek(first * t)
        f.write(bytes(burst * t))
    spill = tmp_path / "spill"
    with open(spill, "xb") as f:
        f.truncate(lay.size)
    outcomes = check_and_decode(payload, sidecar, meta, jobs=1, spill=spill)
    assert sum(len(o.spilled) for o in outcomes) == burst and not any(o.failed for o in outcomes)
    assert patched_digest(payload, meta, outcomes, spill) == hash_bytes(data)
    writes, reads, real_write, real_pread = [], [], build.pwrite_all, os.pread
    monkeypatch.setattr(build, "pwrite_all", lambda fd, b, off: (writes.append(len(b)), real_write(fd, b, off)))
    monkeypatch.setattr(build.os, "pread", lambda fd, n, off: (reads.append(n), real_pread(fd, n, off))[1])
    patch_in_place(payload, meta, outcomes, spill)
    monkeypatch.undo()
    assert payload.read_bytes() == data
    assert writes == [256 * t, 256 * t, 88 * t]
    assert len(reads) == 3 * 3  # each run: the payload as it is, the spill file, the payload read back


@pytest.mark.parametrize("spilled", [False, True])
@pytest.mark.parametrize("cut", [0, 1, 300_000])
def test_the_digest_before_writing_covers_symbols_across_read_chunks_and_past_a_short_end(tmp_path, spilled, cut):
    """The symbol size (24 KiB) does not divide the 4 MiB read chunks, so recovered symbols
    straddle chunk boundaries; a truncated payload reads as zeros past its end. The digest
    of the patched result is the original's, and patching gives the original bytes."""
    from ftstore.codec import patched_digest
    from ftstore.hashing import READ_CHUNK

    size = 9 * 1024 * 1024 + 777
    t = 24 * 1024
    assert READ_CHUNK % t
    data, payload, sidecar, meta = _protected(tmp_path, size, symbol_size=t)
    lay = meta.layout
    with open(payload, "r+b") as f:  # a byte of every symbol that crosses a read-chunk boundary
        for b in range(READ_CHUNK, size, READ_CHUNK):
            f.seek(b - 1)
            f.write(bytes([data[b - 1] ^ 0xFF]))
        if cut:
            f.truncate(size - cut)
    spill = None
    if spilled:
        spill = tmp_path / "spill"
        spill.write_bytes(b"")
        with open(spill, "r+b") as f:
            f.truncate(size)
    outcomes = check_and_decode(payload, sidecar, meta, jobs=1, spill=spill)
    assert not any(o.failed for o in outcomes)
    assert patched_digest(payload, meta, outcomes, spill) == hash_bytes(data)
    patch_in_place(payload, meta, outcomes, spill)
    assert payload.read_bytes() == data


def test_the_recorded_raptorq_release_is_the_installed_one_whichever_way_it_is_read(monkeypatch):
    """``library_version`` reads the dist-info's METADATA itself and falls back to
    ``importlib.metadata`` when it cannot: both give what the installer recorded."""
    import importlib.metadata

    from ftstore.codec import rq

    installed = importlib.metadata.version("raptorq")

    def no_metadata_module(_name):
        raise AssertionError("importlib.metadata was not needed")

    with monkeypatch.context() as m:
        m.setattr(importlib.metadata, "version", no_metadata_module)
        assert rq.library_version.__wrapped__() == installed

    def unreadable(_path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rq.os, "scandir", unreadable)
    assert rq.library_version.__wrapped__() == installed


def _stripes_the_plain_way(data: bytes, lay: Layout, stripes: tuple[int, ...]) -> dict[int, bytes]:
    data, t, S = data[: lay.size], lay.symbol_size, lay.stripes
    return {
        s: b"".join(data[(i * S + s) * t : (i * S + s + 1) * t].ljust(t, b"\0") for i in range(lay.stripe_k(s)))
        for s in stripes
    }


@settings(max_examples=80, deadline=None)
@given(
    size=st.integers(1, 3 << 20),
    symbol_exp=st.integers(8, 14),
    extra_stripes=st.integers(0, 4),
    per_task=st.integers(1, 3),
    on_disk=st.sampled_from(["as recorded", "truncated", "grown"]),
    cut=st.floats(0, 1),
)
def test_stripes_read_from_the_payload_are_the_recorded_bytes_zero_padded(
    tmp_path_factory, size, symbol_exp, extra_stripes, per_task, on_disk, cut
):
    """Each stripe object is its symbols in stripe order: never a byte past the recorded size
    (a grown file), and zeros where a truncated file ends or the last symbol is short."""
    t = 1 << symbol_exp
    stripes = min(-(-size // t), stripe_count(size, t) + extra_stripes)
    lay = Layout.plan(size, 0.1, t, stripes)
    rng = random.Random(size ^ symbol_exp)
    actual = {"as recorded": size, "truncated": int(size * cut), "grown": size + 1 + int(cut * 3 * t)}[on_disk]
    data = rng.randbytes(actual)
    path = tmp_path_factory.mktemp("stripes") / "payload"
    path.write_bytes(data)
    with open(path, "rb") as f:
        for a in range(0, lay.stripes, per_task):
            group = tuple(range(a, min(a + per_task, lay.stripes)))
            got = dict(read_stripes(f, lay, group))
            assert all(type(obj) is bytes for obj in got.values())
            assert got == _stripes_the_plain_way(data, lay, group)


def test_a_repair_in_place_keeps_the_payloads_modification_time(tmp_path):
    """Bit rot does not touch a file's mtime, so undoing it must not either: tools order
    checkpoint files by it (Lightning's ``ckpt_path="last"`` among ``last*.ckpt``), and a
    Lightning checkpoint file is the stored payload itself."""
    data, payload, sidecar, meta = _protected(tmp_path, 300_000)
    os.utime(payload, ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    before = payload.stat()
    with open(payload, "r+b") as f:
        f.seek(5000)
        f.write(b"\xff" * 16)
    os.utime(payload, ns=(before.st_atime_ns, before.st_mtime_ns))  # rot, not a write
    outcomes = check_and_decode(payload, sidecar, meta, jobs=1)
    patch_in_place(payload, meta, outcomes)
    assert payload.read_bytes() == data and payload.stat().st_mtime_ns == before.st_mtime_ns


def test_a_repair_by_a_user_who_may_write_but_does_not_own_the_payload_succeeds():
    """Keeping the mtime needs the owner; a group-writable store's other users repair all
    the same (the mtime then moves)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as two users")
    shared = Path(tempfile.mkdtemp(prefix="ftstore-shared-"))  # pytest's own folder is private to root
    try:
        _repair_as_another_user(shared)
    finally:
        shutil.rmtree(shared)


def _repair_as_another_user(shared: Path) -> None:
    data, payload, sidecar, meta = _protected(shared, 200_000)
    with open(payload, "r+b") as f:
        f.seek(3000)
        f.write(b"\x00" * 32)
    for p in (shared, payload, sidecar):
        os.chmod(p, 0o777 if p == shared else 0o666)
    os.chown(payload, 1000, 1000)
    pid = os.fork()
    if pid == 0:  # the repair, as another user
        try:
            os.setgid(65534)
            os.setuid(65534)
            patch_in_place(payload, meta, check_and_decode(payload, sidecar, meta, jobs=1))
            os._exit(0)
        except BaseException as e:
            os.write(2, f"{type(e).__name__}: {e}\n".encode())
            os._exit(1)
    assert os.waitpid(pid, 0)[1] == 0
    assert payload.read_bytes() == data


def test_a_header_that_would_not_fit_with_small_stripes_gets_the_4_mib_stripes_earlier_writers_used(tmp_path):
    """A 64 GiB artifact with 900 KB of metadata: listing 65536 stripes' repair counts would
    pass the header's 1 MiB, 16384 (4 MiB stripes, as earlier releases wrote) do not. It is
    accepted, and its sidecar can be built (protected later, or rebuilt when lost) with
    those; one that fits neither way is refused before anything is allocated for it."""
    from ftstore.codec.build import SidecarBuild, check_header_fits
    from ftstore.codec.layout import LARGE_STRIPE_BYTES, writer_stripes
    from ftstore.errors import BadInputError

    size, t = 64 << 30, 16384
    def template(metadata):
        return ArtifactEssentials(artifact_id="0" * 32, artifact_type="file", name="big", size=size,
                                  source_hash="blake3:" + "0" * 64, created_unix_ms=0, metadata=metadata)
    light = SidecarBuild(tmp_path / "light", template({}), 1.0, version=1)
    assert light.layout.stripes == writer_stripes(size, t, 1.0) == 65536
    heavy = template({f"k{i}": "v" * 65536 for i in range(14)})
    check_header_fits(heavy, 1.0)
    build = SidecarBuild(tmp_path / "heavy", heavy, 1.0, version=1)
    assert build.layout.stripes == stripe_count(size, t, LARGE_STRIPE_BYTES) == 16384
    with pytest.raises(BadInputError, match="metadata"):
        check_header_fits(template({f"k{i}": "v" * 65536 for i in range(16)}), 1.0)
    with pytest.raises(BadInputError, match="too many stripes"):
        check_header_fits(ArtifactEssentials(artifact_id="0" * 32, artifact_type="file", name="huge", size=1 << 50,
                                             source_hash="blake3:" + "0" * 64, created_unix_ms=0, metadata={}),
                          0.1, symbol_size=256)
