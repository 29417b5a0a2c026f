"""Classes 6 and 7: nothing outside the store is ever read, written or removed, and no
store file can hang a command.

Links are planted where the store's folders and files are (a version folder, a name,
``staging``, ``trash``, ``reports``, a staging or trash entry, a leaf) pointing at a folder
and files outside the store; FIFOs, ``/dev/zero`` and folders take the place of leaves. Then
the real commands run (in subprocesses, with a timeout): ``verify``, ``ls``, ``load``,
``scrub --repair``, ``scrub --remove-orphans``, ``save``, ``delete``. Afterwards the outside
is byte for byte what it was, and every command finished with a report."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import msgspec
import pytest

from ftstore import Store, load, verify
from ftstore.api import scrub
from ftstore.errors import BadInputError, DamageError
from ftstore.hashing import hash_file

from .conftest import files, run_cli


def _outside(tmp_path: Path) -> Path:
    """A folder outside the store that looks like what the store would write into or
    remove: an artifact version's files, a staging folder, a file to be overwritten."""
    out = tmp_path / "outside"
    (out / "victim").mkdir(parents=True)
    (out / "victim" / "payload").write_bytes(b"not the store's" * 1000)
    (out / "victim" / "sidecar.ftrq").write_bytes(b"not a sidecar")
    (out / "victim" / "envelope.json").write_bytes(b"{}")
    (out / "victim" / "keep.txt").write_bytes(b"precious")
    (out / "file").write_bytes(b"precious file" * 100)
    return out


def _state(root: Path) -> dict[str, object]:
    """Everything under ``root``: each entry's kind and, for files, its bytes."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            out[rel] = ("link", os.readlink(p)) if p.is_symlink() else ("dir",) if p.is_dir() else p.read_bytes()
    return out


LEAF_OWNER = {"payload": "p", "sidecar.ftrq": "s", "envelope.json": "e"}  # one artifact per damaged leaf


@pytest.fixture
def planted(tmp_path, make_file):
    """A store of intact artifacts a, b (and p, s, e, to damage one leaf each), and an
    outside folder; returns (store, outside, outside's state, sources)."""
    store = Store.open(tmp_path / "store", create=True)
    srcs = {n: make_file(50_000, seed=i) for i, n in enumerate(("a", "b", "p", "s", "e"))}
    for n, src in srcs.items():
        store.save(src, n)
    outside = _outside(tmp_path)
    return store, outside, _state(outside), srcs


def _everything(store: Store, tmp_path: Path, check_rc: dict[str, int] | None = None) -> dict[str, object]:
    """Run every store-wide command through the CLI (one line, no traceback, a timeout so a
    hang fails); return their exit codes."""
    rcs = {}
    has_b = "b" in store.names()
    for name, args in [("verify", ["verify"]), ("ls", ["ls"]), ("load-b", ["load", "b", "-o", str(tmp_path / "b.out")]),
                       ("scrub", ["scrub"]), ("repair", ["scrub", "--repair"]), ("orphans", ["scrub", "--remove-orphans"]),
                       ("repair-again", ["scrub", "--repair", "--remove-orphans"])]:
        res = run_cli(*args, store=store, timeout=120)
        assert res.returncode in ((0, 1) if has_b or name != "load-b" else (2,)), (name, res.stderr)
        rcs[name] = res.returncode
    return rcs


@pytest.mark.parametrize("top", ["staging", "trash", "reports"])
def test_a_store_folder_replaced_by_a_link_is_never_followed(planted, tmp_path, top):
    store, outside, before, srcs = planted
    target = store.backend.root / top
    shutil.rmtree(target, ignore_errors=True)
    target.symlink_to(outside / "victim")
    report = scrub(store, remove_orphans=False, write_report=True, warn=lambda _: None)
    assert top in [o.path for o in report.orphans]
    assert _state(outside) == before
    with pytest.raises(BadInputError, match="symbolic link"):
        if top == "staging":
            store.save(srcs["a"], "a")
        elif top == "trash":  # a@1 below a newer version: its folder goes through trash
            store.save(srcs["a"], "a")
            store.delete("a@1")
        else:
            store.backend.write_report("r.json", b"{}")
    _everything(store, tmp_path)
    assert _state(outside) == before
    assert not target.is_symlink()  # --remove-orphans removed the link itself (a scrub may make the real folder)
    store.save(srcs["a"], "a")
    store.delete("a@1")
    assert _state(outside) == before and all(h.intact for h in verify(store))


def test_links_inside_the_layout_are_orphans_removed_as_links(planted, tmp_path):
    store, outside, before, _ = planted
    root = store.backend.root
    links = [root / "artifacts" / "a" / "2", root / "artifacts" / "c", root / "staging" / ("f" * 32),
             root / "staging" / ("f" * 32 + ".lock"), root / "trash" / ("e" * 32),
             root / "artifacts" / "a" / "1" / "extra"]
    for link in links:
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(outside / "victim")
    refs = [k.ref for k in store.keys()]
    assert "a@2" not in refs and not any(r.startswith("c@") for r in refs)
    _everything(store, tmp_path)
    assert _state(outside) == before
    assert not any(link.is_symlink() for link in links)
    assert all(h.intact for h in verify(store))


@pytest.mark.parametrize("entry", ["file", "link"])
def test_a_stray_entry_at_the_next_version_number_is_passed_over(planted, tmp_path, entry):
    """A file or link named like the next version is an orphan, not a version: a save
    takes the number after it (it used to fail with "Not a directory"), and a copy that
    brings exactly that number is told what is in the way."""
    store, outside, before, srcs = planted
    stray = store.backend.root / "artifacts" / "a" / "2"
    stray.write_bytes(b"x") if entry == "file" else stray.symlink_to(outside / "victim")
    res = run_cli("save", str(srcs["b"]), "--name", "a", store=store)
    assert res.returncode == 0 and "saved a@3" in res.stdout, res.stderr
    src = Store.open(tmp_path / "other", create=True)
    src.save(srcs["b"], "a")
    src.save(srcs["b"], "a")
    res = run_cli("copy", str(src.url), str(store.url), "a@2")
    assert res.returncode == 1 and "remove-orphans" in res.stdout and "Traceback" not in res.stderr
    assert _state(outside) == before and store.versions("a") == [1, 3]


def test_the_artifacts_folder_replaced_by_a_link_shows_nothing_and_touches_nothing(planted, tmp_path):
    store, outside, before, _ = planted
    root = store.backend.root
    os.rename(root / "artifacts", tmp_path / "artifacts-aside")
    (root / "artifacts").symlink_to(tmp_path / "artifacts-aside")
    assert store.keys() == []
    _everything(store, tmp_path)
    assert not (root / "artifacts").is_symlink()
    shutil.rmtree(root / "artifacts", ignore_errors=True)
    os.rename(tmp_path / "artifacts-aside", root / "artifacts")
    assert all(h.intact for h in verify(store)) and len(store.keys()) == 5


def test_a_leaf_replaced_by_a_link_outside_is_never_read_or_written_through(planted, tmp_path):
    store, outside, before, srcs = planted
    for leaf, owner in LEAF_OWNER.items():
        folder = files(store, f"{owner}@1").folder
        (folder / leaf).unlink()
        (folder / leaf).symlink_to(outside / "victim" / leaf)
        [h] = verify(store, [f"{owner}@1"])
        assert not h.intact and "symbolic link" in " ".join(h.problems)
    rcs = _everything(store, tmp_path)
    assert _state(outside) == before
    assert rcs["repair"] == 1  # 10% overhead cannot rebuild a whole payload: reported, not lost silently
    with pytest.raises(DamageError):
        load(store, "p@1", tmp_path / "p.out")
    assert not (tmp_path / "p.out").exists()
    for owner in ("s", "e"):  # sidecar and envelope are rebuilt, the link replaced by a file
        assert not any(f.is_symlink() for f in files(store, f"{owner}@1").folder.iterdir())
        load(store, f"{owner}@1", tmp_path / "x.out")
        assert (tmp_path / "x.out").read_bytes() == srcs[owner].read_bytes()
    assert _state(outside) == before


def test_a_payload_link_is_replaced_by_a_file_when_the_sidecar_can_rebuild_it(tmp_path, make_file):
    """At 100% overhead the sidecar alone rebuilds the payload: the link is replaced by a
    new file (renamed over it), the file it pointed at is untouched."""
    store = Store.open(tmp_path / "store", create=True)
    src = make_file(20_000)
    store.save(src, "a", overhead=1.0)
    outside = _outside(tmp_path)
    before = _state(outside)
    a1 = files(store, "a@1")
    a1.payload.unlink()
    a1.payload.symlink_to(outside / "file")
    load(store, "a", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == src.read_bytes()
    assert not a1.payload.is_symlink() and a1.payload.read_bytes() == src.read_bytes()
    assert _state(outside) == before


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_a_special_file_in_place_of_a_leaf_is_reported_and_every_command_finishes(planted, tmp_path, kind):
    store, outside, before, srcs = planted
    for leaf, owner in LEAF_OWNER.items():
        path = files(store, f"{owner}@1").folder / leaf
        path.unlink()
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "dev-zero":
            path.symlink_to("/dev/zero")
        else:
            path.mkdir()
            (path / "inside").write_bytes(b"x")
    res = run_cli("verify", "--json", store=store, timeout=60, check_rc=1)
    status = {d["ref"]: d["status"] for d in msgspec.json.decode(res.stdout)}
    assert status == {"a@1": "ok", "b@1": "ok", "p@1": "damaged", "s@1": "damaged", "e@1": "damaged"}
    _everything(store, tmp_path)
    load(store, "b", tmp_path / "b2.out")
    assert (tmp_path / "b2.out").read_bytes() == srcs["b"].read_bytes()
    for owner in LEAF_OWNER.values():
        out = tmp_path / f"{owner}.out"
        try:
            load(store, f"{owner}@1", out)
            assert out.read_bytes() == srcs[owner].read_bytes()  # repaired (sidecar, envelope)
        except DamageError:
            assert owner == "p" and not out.exists()
    assert _state(outside) == before
    # `scrub --repair` rebuilt the sidecar and envelope in the store itself, a folder at
    # their name included (a rename cannot replace one: it used to fail on every run)
    healed = {h.key.ref: h.intact for h in verify(store)}
    assert healed == {"a@1": True, "b@1": True, "p@1": False, "s@1": True, "e@1": True}
    for owner in "se":
        assert all(f.is_file() and not f.is_symlink() for f in files(store, f"{owner}@1").folder.iterdir())


def test_remove_orphans_and_repair_never_touch_a_folder_a_link_points_into(tmp_path, make_file):
    """A store whose staging entry, trash entry and version folder all point at the same
    outside folder holding an artifact's worth of damaged files: nothing there changes."""
    store = Store.open(tmp_path / "store", create=True)
    src = make_file(100_000)
    store.save(src, "a")
    outside = tmp_path / "outside"
    shutil.copytree(files(store, "a@1").folder, outside)
    with open(outside / "payload", "r+b") as f:
        f.write(b"\0" * 100)  # damage a repair would be tempted to fix
    before = _state(outside)
    for link in (store.backend.root / "artifacts" / "a" / "2", store.backend.root / "staging" / ("1" * 32),
                 store.backend.root / "trash" / ("2" * 32)):
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(outside)
    report = scrub(store, repair=True, remove_orphans=True, write_report=False)
    assert report.totals.failed == 0 and len(report.orphans) == 3 and all(o.removed for o in report.orphans)
    assert _state(outside) == before
    assert hash_file(files(store, "a@1").payload)[0] == hash_file(src)[0]
