"""The contract every store backend keeps (as fsspec's abstract tests do for its
filesystems): each test runs on a local directory and on a real SeaweedFS server, through
the :class:`StoreBackend` interface alone. A new backend proves itself by passing these."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ftstore.documents import ArtifactKey
from ftstore.errors import BadInputError, NotFoundError
from ftstore.stores import StoreBackend
from ftstore.stores.backend import ENVELOPE, PAYLOAD, SIDECAR, VersionTakenError


@pytest.fixture
def backend(any_store) -> StoreBackend:
    return any_store.backend


def _commit(backend: StoreBackend, name: str, payload: bytes, tmp_path: Path, version: int | None = None,
            envelope: bytes = b"{}") -> int:
    src = tmp_path / f"src-{name}-{len(payload)}"
    src.write_bytes(payload)
    staging = backend.stage(name, version)
    try:
        assert staging.copy_in(PAYLOAD, src, None, None, True)[1] == len(payload)
        (staging.workdir / SIDECAR).write_bytes(b"sidecar of " + payload[:10])
        staging.add(SIDECAR, staging.workdir / SIDECAR)
        return staging.commit(lambda v: envelope + str(v).encode())
    except BaseException:
        staging.abort()
        raise


def test_a_new_store_is_empty(backend):
    assert backend.names() == [] and backend.keys() == [] and backend.orphans() == []


def test_a_committed_version_is_listed_and_reads_back_exactly(backend, tmp_path):
    data = bytes(range(256)) * 1000
    assert _commit(backend, "a", data, tmp_path) == 1
    key = ArtifactKey("a", 1)
    assert backend.names() == ["a"] and backend.versions("a") == [1] and backend.keys() == [key]
    with backend.open_leaf(key, PAYLOAD) as f:
        assert f.read() == data
    assert backend.read_leaf(key, ENVELOPE, 1000) == b"{}1"
    assert backend.read_leaf(key, SIDECAR, 1000) == b"sidecar of " + data[:10]
    assert backend.leaf_sizes(key) == {PAYLOAD: len(data), SIDECAR: 21, ENVELOPE: 3}
    assert set(backend.describe(key)) >= {"dir", "payload", "sidecar", "envelope"}


def test_versions_count_up_and_stagings_never_share_one(backend, tmp_path):
    first, second = backend.stage("a"), backend.stage("a")
    for st, data in ((second, b"second"), (first, b"first")):
        src = tmp_path / data.decode()
        src.write_bytes(data)
        st.copy_in(PAYLOAD, src, None, None, True)
    v_second = second.commit(lambda v: b"env")
    v_first = first.commit(lambda v: b"env")
    assert sorted([v_first, v_second]) == [1, 2] and backend.versions("a") == [1, 2]
    assert _commit(backend, "a", b"third", tmp_path) == 3


def test_an_exact_version_that_exists_is_refused(backend, tmp_path):
    _commit(backend, "a", b"one", tmp_path)
    with pytest.raises(VersionTakenError):
        _commit(backend, "a", b"other", tmp_path, version=1)
    with backend.open_leaf(ArtifactKey("a", 1), PAYLOAD) as f:
        assert f.read() == b"one"
    assert _commit(backend, "a", b"five", tmp_path, version=5) == 5 and backend.versions("a") == [1, 5]


def test_an_aborted_save_leaves_nothing(backend, tmp_path):
    staging = backend.stage("a")
    src = tmp_path / "src"
    src.write_bytes(b"x" * 1000)
    staging.copy_in(PAYLOAD, src, None, None, True)
    staging.abort()
    assert backend.names() == [] and backend.orphans() == []


def test_absent_leaves_and_oversized_documents(backend, tmp_path):
    _commit(backend, "a", b"p" * 5000, tmp_path)
    key = ArtifactKey("a", 1)
    backend.delete_leaf(key, SIDECAR)
    assert backend.open_leaf(key, SIDECAR) is None and backend.read_leaf(key, SIDECAR, 10) is None
    with pytest.raises(BadInputError, match="limit"):
        backend.read_leaf(key, PAYLOAD, 100)


def test_write_leaf_replaces_one_leaf_of_a_committed_version(backend, tmp_path):
    _commit(backend, "a", b"payload", tmp_path)
    key = ArtifactKey("a", 1)
    backend.write_leaf(key, ENVELOPE, b"new envelope")
    src = tmp_path / "new-sidecar"
    src.write_bytes(b"new sidecar")
    backend.write_leaf(key, SIDECAR, src)
    assert backend.read_leaf(key, ENVELOPE, 100) == b"new envelope"
    assert backend.read_leaf(key, SIDECAR, 100) == b"new sidecar"
    assert backend.versions("a") == [1]


def test_a_working_copy_writes_back_what_changed(backend, tmp_path):
    _commit(backend, "a", b"payload", tmp_path)
    key = ArtifactKey("a", 1)
    with backend.working_copy(key) as folder:
        assert (folder / PAYLOAD).read_bytes() == b"payload"
        (folder / PAYLOAD).write_bytes(b"repaired")
        (folder / SIDECAR).unlink()
    assert backend.read_leaf(key, PAYLOAD, 100) == b"repaired" and backend.read_leaf(key, SIDECAR, 100) is None


def test_delete_removes_exactly_one_version(backend, tmp_path):
    _commit(backend, "a", b"one", tmp_path)
    _commit(backend, "a", b"two", tmp_path)
    backend.delete(ArtifactKey("a", 1))
    assert backend.versions("a") == [2] and backend.open_leaf(ArtifactKey("a", 1), PAYLOAD) is None
    assert backend.orphans() == []


def test_a_deleted_newest_version_keeps_its_number_from_every_later_save(backend, tmp_path):
    for data in (b"one", b"two", b"three"):
        _commit(backend, "a", data, tmp_path)
    backend.delete(ArtifactKey("a", 3))
    assert backend.versions("a") == [1, 2] and backend.open_leaf(ArtifactKey("a", 3), PAYLOAD) is None
    assert backend.orphans() == []  # a tombstone is not an orphan, and no scrub removes it
    assert _commit(backend, "a", b"four", tmp_path) == 4  # never 3 again
    with pytest.raises(NotFoundError):
        backend.delete(ArtifactKey("a", 3))
    backend.delete(ArtifactKey("a", 4))
    backend.delete(ArtifactKey("a", 2))  # below a tombstone: removed whole
    backend.delete(ArtifactKey("a", 1))
    assert backend.names() == [] and backend.versions("a") == []
    assert _commit(backend, "a", b"five", tmp_path) == 5
    with pytest.raises(VersionTakenError, match="was deleted"):  # nor a copy, which brings its number
        _commit(backend, "a", b"copy", tmp_path, version=4)
    assert backend.versions("a") == [5] and backend.orphans() == []


def test_deleting_the_newest_version_drops_the_tombstones_below_it_on_a_local_store(backend, tmp_path):
    for data in (b"one", b"two"):
        _commit(backend, "a", data, tmp_path)
    backend.delete(ArtifactKey("a", 2))  # a tombstone at 2
    assert _commit(backend, "a", b"three", tmp_path) == 3
    backend.delete(ArtifactKey("a", 3))  # a tombstone at 3; a local store drops the one at 2
    if backend.capabilities.local_files:
        assert _commit(backend, "a", b"two again", tmp_path, version=2) == 2  # a copy may fill it now
        assert backend.versions("a") == [1, 2]
    else:  # S3 keeps every tombstone: with no lock, dropping one could race a copy's claim
        with pytest.raises(VersionTakenError, match="was deleted"):
            _commit(backend, "a", b"two again", tmp_path, version=2)
        assert backend.versions("a") == [1]
    assert _commit(backend, "a", b"four", tmp_path) == 4


def _interrupted_delete(backend: StoreBackend, tmp_path: Path) -> ArtifactKey:
    """a@1 and a@2 saved, a@2 deleted by a delete that died after its tombstone, before it
    removed the payload."""
    for data in (b"one", b"two"):
        _commit(backend, "a", data, tmp_path)
    key = ArtifactKey("a", 2)
    payload = backend.read_leaf(key, PAYLOAD, 100)
    backend.delete(key)
    backend.write_leaf(key, PAYLOAD, payload)
    return key


def test_a_delete_interrupted_after_its_tombstone_leaves_orphans_never_a_version(backend, tmp_path):
    key = _interrupted_delete(backend, tmp_path)
    assert backend.versions("a") == [1]
    orphans = backend.orphans()
    assert [o.reason for o in orphans] == ["interrupted delete"] and orphans[0].path.endswith(PAYLOAD)
    assert orphans[0].version == key  # maintenance asks that version's envelope before touching it
    assert backend.remove_orphan(orphans[0].path)
    assert backend.orphans() == [] and backend.versions("a") == [1]
    assert _commit(backend, "a", b"three", tmp_path) == 3


_SAVE_AND_DROP = """
import sys
from pathlib import Path
from ftstore.documents import ArtifactKey
from ftstore.stores import open_store
from ftstore.stores.backend import PAYLOAD
store, who, rounds, folder = open_store(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
for i in range(rounds):
    src = folder / f"{who}-{i}"
    src.write_bytes(f"{who}-{i}".encode())
    st = store.stage("a")
    st.copy_in(PAYLOAD, src, None, None, True)
    v = st.commit(lambda v: b"env")
    print(v, src.name, flush=True)
    if who == "dropper":  # deletes what it just saved, the newest unless the other was quicker
        store.delete(ArtifactKey("a", v))
"""


def test_no_two_saves_are_ever_given_one_number_while_the_newest_is_deleted(backend, tmp_path):
    """Two processes save one name; one deletes each of its saves at once. Every number
    any save was given is distinct, and every kept version reads back its own bytes."""
    rounds = "25" if backend.capabilities.local_files else "8"
    procs = [subprocess.Popen([sys.executable, "-c", _SAVE_AND_DROP, backend.url, who, rounds, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True) for who in ("dropper", "keeper")]
    given = [line.split() for p in procs for line in p.communicate(timeout=300)[0].splitlines()]
    assert all(p.returncode == 0 for p in procs) and len(given) == 2 * int(rounds)
    numbers = [int(v) for v, _ in given]
    assert len(set(numbers)) == len(numbers), sorted(numbers)
    kept = {int(v): src for v, src in given if src.startswith("keeper")}
    assert backend.versions("a") == sorted(kept)
    for v, src in kept.items():
        with backend.open_leaf(ArtifactKey("a", v), PAYLOAD) as f:
            assert f.read() == src.encode()


def test_a_save_that_died_is_an_orphan_and_a_live_one_is_not(backend, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.write_bytes(b"y" * 3000)
    live = backend.stage("live")  # this process is alive and holds it
    live.copy_in(PAYLOAD, src, None, None, True)
    code = ("import os, sys; from pathlib import Path; from ftstore.stores import open_store\n"
            "st = open_store(sys.argv[1]).stage('dead')\n"
            "st.copy_in('payload', Path(sys.argv[2]), None, None, True)\n"
            "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", code, backend.url, str(src)], check=True)
    monkeypatch.setattr("ftstore.stores.s3.CLAIM_LEASE_SECONDS", 0)  # S3 tells a dead save by its age
    orphans = backend.orphans()
    if not backend.capabilities.local_files:  # S3 cannot tell the live claim from the dead by age 0
        orphans = [o for o in orphans if "dead" in o.path]
    assert len(orphans) == 1 and "interrupted save" in orphans[0].reason
    assert backend.remove_orphan(orphans[0].path)
    assert [o for o in backend.orphans() if "dead" in o.path] == []
    if backend.capabilities.local_files:
        assert backend.orphans() == []  # the live save's folder was never listed
    assert live.commit(lambda v: b"env") == 1 and backend.names() == ["live"]


def test_scratch_is_a_private_folder_removed_afterwards(backend):
    with backend.scratch() as folder:
        assert folder.is_dir() and not any(folder.iterdir())
        (folder / "built").write_bytes(b"x")
    assert not folder.exists()


def _plant(backend: StoreBackend, rel: str, data: bytes) -> None:
    """A stray file (or object) at ``rel`` inside the store."""
    if backend.capabilities.local_files:
        (backend.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (backend.root / rel).write_bytes(data)
    else:
        backend._put(rel, data)


@pytest.mark.parametrize("stray", ["artifacts/x", "artifacts/x/2"])
def test_an_orphan_listed_before_a_save_made_a_real_folder_there_is_never_removed_with_it(backend, tmp_path, stray):
    """Two maintenance runs overlap: A lists a stray file where a name (or version) folder
    goes, B removes it, saves then make that folder. A's removal must not take the
    committed versions with it (it removed the whole folder by path)."""
    if stray.count("/") == 2:
        _commit(backend, "x", b"one", tmp_path)
    _plant(backend, stray, b"stray")
    listed = [o.path for o in backend.orphans()]
    assert listed == [stray]
    assert backend.remove_orphan(stray)  # maintenance run B
    while len(backend.versions("x")) < 2:
        _commit(backend, "x", b"saved meanwhile %d" % len(backend.versions("x")), tmp_path)
    backend.remove_orphan(stray)  # maintenance run A, from its older listing
    assert backend.versions("x") == [1, 2] and backend.orphans() == []
    for v in (1, 2):
        assert backend.read_leaf(ArtifactKey("x", v), PAYLOAD, 100) is not None


def test_a_tombstone_orphan_is_not_removed_once_a_copy_committed_that_version(backend, tmp_path):
    """A delete killed after its tombstone leaves its leaves as orphans; if the tombstone
    goes and a copy commits that number before maintenance removes them (a local store may
    fill the gap), the leaves are the new version's own."""
    if not backend.capabilities.local_files:
        pytest.skip("an S3 store keeps every tombstone: no copy fills its number")
    key = _interrupted_delete(backend, tmp_path)
    listed = [o.path for o in backend.orphans()]
    assert listed == ["artifacts/a/2/payload"]
    shutil.rmtree(backend.version_dir(key))  # the tombstone dropped meanwhile...
    assert _commit(backend, "a", b"copied in", tmp_path, version=2) == 2  # ...and a copy fills the number
    assert not backend.remove_orphan(listed[0])
    assert backend.read_leaf(key, PAYLOAD, 100) == b"copied in"


def test_a_stray_entry_named_like_the_tombstone_marker_is_not_removed_once_it_is_one(backend, tmp_path):
    """Listed as a stray folder named ``deleted`` in a live version; the version is then
    deleted (``deleted`` becomes the tombstone's marker): removing it from the old listing
    brought the deleted version back as a damaged one."""
    if not backend.capabilities.local_files:
        pytest.skip("no folders on S3: an object named deleted is the marker itself")
    for data in (b"one", b"two"):
        _commit(backend, "m", data, tmp_path)
    key = ArtifactKey("m", 2)
    (backend.version_dir(key) / "deleted").mkdir()
    listed = [o.path for o in backend.orphans()]
    assert listed == ["artifacts/m/2/deleted"]
    shutil.rmtree(backend.version_dir(key) / "deleted")
    backend.delete(key)
    assert not backend.remove_orphan(listed[0])
    assert backend.versions("m") == [1] and backend.orphans() == []


def test_a_save_slow_to_commit_never_takes_a_number_another_save_had(backend, tmp_path):
    """A save listed its next number (1), then, before its rename, another process saved
    and deleted twice: 1 became a tombstone, then 2 did and 1's tombstone was dropped. The
    rename into the gap at 1 succeeded: the slow save was given a number that had named
    another artifact (seen once in 40-60 runs of the test above). The commit lists the
    next number again under the name's lock, as deletes take it."""
    src = tmp_path / "slow"
    src.write_bytes(b"slow")
    staging = backend.stage("a")
    staging.copy_in(PAYLOAD, src, None, None, True)
    given: list[str] = []

    def envelope_for(version):
        if not given:  # the other process's saves and deletes, while this one is about to rename
            out = subprocess.run([sys.executable, "-c", _SAVE_AND_DROP, backend.url, "dropper", "2", str(tmp_path)],
                                 capture_output=True, text=True, timeout=300, check=True).stdout
            given.extend(line.split()[0] for line in out.splitlines())
        return b"env"

    version = staging.commit(envelope_for)
    assert len(given) == 2 and str(version) not in given
    assert backend.versions("a") == [version]
