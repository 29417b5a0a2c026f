"""Repair through a spill file: decoded symbols go from the workers to a sparse file beside
the payload, never into the repairing process, and are checked against their hashes again
before a byte of the payload is written. Every test damages real stored files and checks
the bytes that come back."""

import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest

from ftstore import UnrecoverableError, verify
from ftstore.api import scrub
from ftstore import codec
from ftstore.codec import read_meta
from ftstore.codec.encoder import PARALLEL_MIN_BYTES
from ftstore.engine import integrity
from ftstore.engine.integrity import check, repair, spill_path
from ftstore.engine.leaves import FolderLeaves
from ftstore.stores.backend import PAYLOAD, SIDECAR

from .conftest import files

SIZE = PARALLEL_MIN_BYTES + 5 * 1024 * 1024 + 321  # big enough that stripes are decoded in worker processes


def _saved(store, make_file, size=SIZE):
    src = make_file(size, 7)
    store.save(src, "a")
    paths = files(store, "a")
    return src.read_bytes(), paths, read_meta(paths.sidecar).layout


def _damage_every_stripe(paths, lay, rng=None):
    """Flip a byte in up to half the budget of symbols of every stripe; returns the damaged bytes."""
    rng = rng or random.Random(3)
    data = bytearray(paths.payload.read_bytes())
    for s in range(lay.stripes):
        for i in rng.sample(range(lay.stripe_k(s)), max(1, lay.budget(s) // 2)):
            off, length = lay.symbol_extent(lay.global_index(s, i))
            data[off + rng.randrange(length)] ^= 0x5A
    paths.payload.write_bytes(bytes(data))
    return bytes(data)


def _symbols(data, lay):
    return [data[off : off + n] for off, n in map(lay.symbol_extent, range(lay.source_symbols))]


def _no_more_damaged(now, orig, damaged, lay):
    """Every symbol of ``now`` is either the original or what the damage left: nothing new."""
    return all(n in (o, d) for n, o, d in zip(_symbols(now, lay), _symbols(orig, lay), _symbols(damaged, lay)))


def _spills(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith(f"{PAYLOAD}.spill"))


def test_multi_stripe_repair_is_byte_identical_and_keeps_no_symbols_in_the_parent(store, make_file, monkeypatch):
    orig, paths, lay = _saved(store, make_file)
    assert lay.stripes >= 4
    _damage_every_stripe(paths, lay)
    seen = []
    real_patch = codec.patch_in_place

    def patch_and_look(payload, meta, outcomes, spill=None):
        seen.append((list(outcomes), spill, _spills(paths.folder)))
        return real_patch(payload, meta, outcomes, spill)

    monkeypatch.setattr(codec, "patch_in_place", patch_and_look)  # the engine calls it through the package
    res = repair(paths, check(paths), reason="test", jobs=2)
    assert paths.payload.read_bytes() == orig
    [(outcomes, spill, present)] = seen
    damaged = [o for o in outcomes if o.erased]
    assert len(damaged) == lay.stripes
    assert all(o.recovered is None and o.spilled == o.erased for o in damaged)
    assert spill is not None and present == [spill.name]  # the spill file lay beside the payload...
    assert _spills(paths.folder) == []  # ...and is gone after
    assert res.verified[PAYLOAD] == (read_envelope_hash(paths), len(orig))
    assert check(paths).intact


def read_envelope_hash(paths):
    return check(paths).envelope.source_hash


@pytest.mark.parametrize("when", ["before_digest", "before_patch"])
def test_a_spill_file_changed_after_the_decode_makes_the_repair_refuse(store, make_file, monkeypatch, when):
    orig, paths, lay = _saved(store, make_file)
    damaged = _damage_every_stripe(paths, lay)
    target = "patched_digest" if when == "before_digest" else "patch_in_place"
    real = getattr(codec, target)

    def tamper_then(payload, meta, outcomes, spill=None):
        mid = [o for o in outcomes if o.spilled][len(outcomes) // 2]  # a symbol in the middle of the file
        off, _ = lay.symbol_extent(lay.global_index(mid.stripe, mid.spilled[0]))
        with open(spill, "r+b") as f:
            f.seek(off + 5)
            byte = f.read(1)
            f.seek(off + 5)
            f.write(bytes([byte[0] ^ 1]))
        return real(payload, meta, outcomes, spill)

    monkeypatch.setattr(codec, target, tamper_then)
    with pytest.raises(UnrecoverableError, match="spill file .* does not match its hash"):
        repair(paths, check(paths), reason="test", jobs=2)
    now = paths.payload.read_bytes()
    if when == "before_digest":
        assert now == damaged  # refused before a byte was written
    else:
        assert _no_more_damaged(now, orig, damaged, lay) and now != orig  # right symbols only; stopped at the bad one
    assert _spills(paths.folder) == []
    monkeypatch.undo()
    repair(paths, check(paths), reason="test", jobs=2)  # the next repair finishes the job
    assert paths.payload.read_bytes() == orig


def test_a_decoded_symbol_that_does_not_match_its_hash_fails_its_stripe(store, make_file, monkeypatch):
    from ftstore.codec import tasks

    orig, paths, lay = _saved(store, make_file, 300_000)
    damaged = _damage_every_stripe(paths, lay)
    real_decode = tasks.decode

    def wrong_decode(size, t, packets):
        obj, used = real_decode(size, t, packets)
        return (None if obj is None else bytes(x ^ 1 for x in obj)), used

    monkeypatch.setattr(tasks, "decode", wrong_decode)
    with pytest.raises(UnrecoverableError, match="beyond repair"):
        repair(paths, check(paths), reason="test", jobs=1)
    assert paths.payload.read_bytes() == damaged


def test_the_scrubs_after_repair_check_does_not_read_the_payload_again(store, make_file, monkeypatch):
    orig, paths, lay = _saved(store, make_file, 2_000_000)
    _damage_every_stripe(paths, lay)
    paths.sidecar.write_bytes(paths.sidecar.read_bytes()[:-10])  # the sidecar is rebuilt too
    opened = []
    real_open = FolderLeaves.open

    def counting_open(self, leaf):
        opened.append(leaf)
        return real_open(self, leaf)

    monkeypatch.setattr(FolderLeaves, "open", counting_open)
    report = scrub(store, repair=True, jobs=1)
    assert report.totals.recovered == 1 and report.health == "healthy"
    assert opened.count(PAYLOAD) == 0  # the repair reads back what it wrote; the after-check takes it as known
    assert opened.count(SIDECAR) == 0
    assert paths.payload.read_bytes() == orig


def test_check_takes_verified_leaves_as_known(store, make_file):
    orig, paths, lay = _saved(store, make_file, 100_000)
    env = check(paths).envelope
    assert check(paths, verified={PAYLOAD: (env.source_hash, env.size)}).intact
    assert check(paths, verified={PAYLOAD: (env.source_hash, env.size + 1)}).payload_problem  # not read: believed
    paths.payload.write_bytes(b"x" + orig[1:])
    assert check(paths).payload_problem and check(paths, verified={}).payload_problem


def test_a_leftover_spill_file_is_harmless_and_removed_by_a_repairing_scrub(store, make_file):
    orig, paths, lay = _saved(store, make_file, 200_000)
    dead = spill_path(paths.payload)
    dead.write_bytes(b"\xff" * 1000)
    assert all(h.intact for h in verify(store))
    report = scrub(store)
    assert report.health == "healthy"
    assert [(o.path.split("/")[-1], o.reason, o.removed) for o in report.orphans] == [(dead.name, "interrupted write", False)]
    assert dead.exists()  # a checking scrub changes nothing
    report = scrub(store, repair=True)
    assert report.health == "healthy" and report.orphans == []
    assert not dead.exists() and paths.payload.read_bytes() == orig


def test_a_live_spill_file_is_left_alone(store, make_file):
    import fcntl

    _saved(store, make_file, 200_000)
    paths = files(store, "a")
    live = spill_path(paths.payload)
    with open(live, "xb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        assert integrity.remove_dead_spills(paths.folder) == []
        assert live.exists()
    assert integrity.remove_dead_spills(paths.folder) == [live.name]
    assert not live.exists()


_KILLED_REPAIR = textwrap.dedent("""
    import sys, time
    from ftstore import codec
    from ftstore.codec import build
    from ftstore.engine.integrity import check, repair
    from ftstore.engine.leaves import FolderLeaves
    from ftstore.documents import ArtifactKey

    folder, when = sys.argv[1], sys.argv[2]
    def stop(what):
        print(what, flush=True)
        time.sleep(600)
    if when == "decoded":
        real = codec.patched_digest
        def digest_then_stop(*a, **kw):
            real(*a, **kw)
            stop("decoded")
        codec.patched_digest = digest_then_stop
    else:
        real_write, count = build.pwrite_all, [0]
        def write_then_stop(*a):
            real_write(*a)
            count[0] += 1
            if count[0] == 5:
                stop("patching")
        build.pwrite_all = write_then_stop
    files = FolderLeaves(__import__("pathlib").Path(folder), ArtifactKey("a", 1))
    repair(files, check(files), reason="test", jobs=2)
    print("finished", flush=True)
""")


@pytest.mark.parametrize("when", ["decoded", "patching"])
def test_a_repair_killed_midway_leaves_no_new_damage_and_the_next_scrub_finishes_it(store, make_file, when):
    orig, paths, lay = _saved(store, make_file)
    damaged = _damage_every_stripe(paths, lay)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_REPAIR, str(paths.folder), when],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == when
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    now = paths.payload.read_bytes()
    assert _no_more_damaged(now, orig, damaged, lay)
    assert (now == damaged) == (when == "decoded")
    assert len(_spills(paths.folder)) == 1  # left behind by the kill
    report = scrub(store, repair=True)
    assert report.totals.recovered == 1 and report.orphans == []
    assert paths.payload.read_bytes() == orig and _spills(paths.folder) == []
    assert check(paths).intact


def test_a_write_that_does_not_read_back_fails_the_repair_and_the_next_one_finishes(store, make_file, monkeypatch):
    """Instead of hashing the whole payload a third time, the repair reads every symbol it
    wrote back after the fsync: a write that did not land (a disk that drops it, another
    writer) fails the repair (exit-1 damage, never reported recovered), and the next
    repair finishes the job."""
    from ftstore.codec import build

    orig, paths, lay = _saved(store, make_file)
    damaged = _damage_every_stripe(paths, lay)
    monkeypatch.setattr(build, "pwrite_all", lambda fd, data, off: None)  # every write is lost
    with pytest.raises(UnrecoverableError, match="does not read back as written"):
        repair(paths, check(paths), reason="test", jobs=2)
    assert paths.payload.read_bytes() == damaged
    report = scrub(store, repair=True, jobs=2)
    assert report.totals.failed == 1 and paths.payload.read_bytes() == damaged
    monkeypatch.undo()
    report = scrub(store, repair=True, jobs=2)
    assert report.totals.recovered == 1 and report.health == "healthy"
    assert paths.payload.read_bytes() == orig
