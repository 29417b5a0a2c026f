"""A stateful property test of the two promises, across processes.

Hypothesis drives a real directory store (and a second one as a copy destination) through
interleaved saves, ``save --move``, deletes, checkpoint retention, damage of every kind
(bit flips, zeroed ranges, truncation, another artifact's or version's files swapped in,
links to files outside the store, FIFOs), ``scrub --repair``, ``scrub --remove-orphans``,
``copy``, loads, and commands SIGKILLed part way in other processes, plus saves running in
another process while this one scrubs.

The oracle is independent of ftstore's checking code: it keeps every artifact's original
payload and sidecar bytes and derives, from the files as they are, how many symbols of each
stripe are erased, whether a sidecar metadata copy survives and whether the envelope is
there. From that it knows whether an artifact is *repairable* (the layout's guarantee:
at most ``B_s`` erasures per stripe). The invariants, checked after every step:

- **never wrong bytes**: every load returns exactly the saved bytes or fails with a
  documented damage error, and writes nothing then;
- **never lost while repairable**: every saved, undeleted version stays listed; a completed
  ``scrub --repair`` leaves every repairable one intact, and a repair that fails changes no
  payload byte; a SIGKILLed repair leaves every repairable one repairable;
- **nothing outside touched**: a folder outside the store, which links planted in the store
  point into, is byte for byte what it was.

The default run is sized for CI (about a minute on two cores); set
``FTSTORE_STATEFUL_EXAMPLES`` (and ``FTSTORE_STATEFUL_STEPS``) for a longer one; the run
prints how many examples and steps it ran and its seed (``FTSTORE_STATEFUL_SEED`` replays).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, get_state_machine_test, invariant, rule

from ftstore import Store
from ftstore.api import copy, scrub
from ftstore.codec import read_meta
from ftstore.codec.layout import Layout
from ftstore.codec.sidecar import TRAILER_LEN
from ftstore.documents import ArtifactKey, decode_envelope, parse_ref
from ftstore.errors import BadInputError, FtstoreError
from ftstore.hashing import hash_bytes
from ftstore.training.checkpoints import CheckpointManager

EXAMPLES = int(os.environ.get("FTSTORE_STATEFUL_EXAMPLES", "12"))
STEPS = int(os.environ.get("FTSTORE_STATEFUL_STEPS", "25"))
SEED = int(os.environ.get("FTSTORE_STATEFUL_SEED", str(random.SystemRandom().randrange(1 << 32))))
NAMES = ("a", "b", "c")
SIZES = (0, 1, 300, 5_000, 70_000, 300_000, 4_300_000)  # the last has two stripes
LEAVES = ("payload", "sidecar.ftrq", "envelope.json")
RUNS = {"examples": 0, "steps": 0}
SEEN: dict[str, int] = {}  # what the run exercised, printed at the end


def _saw(what: str) -> None:
    SEEN[what] = SEEN.get(what, 0) + 1

BG_SAVER = r"""
import random, sys
from pathlib import Path
from ftstore import Store
store, out, n = Store.open(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    src = out / f"bg-{i}"
    src.write_bytes(random.Random(f"bg-{i}").randbytes(1000 + 5000 * i))
    store.save(src, "bg")
"""


def _bg_bytes(i: int) -> bytes:
    return random.Random(f"bg-{i}").randbytes(1000 + 5000 * i)


@dataclass
class Original:
    """What an artifact version was when saved: the oracle's reference."""

    artifact_id: str
    payload: bytes
    sidecar: bytes
    layout: Layout
    block_len: int


@dataclass
class Derived:
    payload: bytes | None  # None: absent or not a regular file
    erased: list[int]  # per stripe: source symbols erased (payload) + repair symbols erased
    sidecar_usable: bool
    sidecar_intact: bool
    envelope_ok: bool

    @property
    def intact(self) -> bool:
        return self.envelope_ok and self.sidecar_intact and self.erased_payload == 0

    erased_payload: int = 0


def _regular_bytes(path: Path) -> bytes | None:
    try:
        st_ = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st_.st_mode):
        return None
    return path.read_bytes()


def _symbols(data: bytes, lay: Layout) -> list[bytes]:
    t = lay.symbol_size
    return [data[j * t : (j + 1) * t].ljust(t, b"\0") for j in range(lay.source_symbols)]


def derive(folder: Path, key: ArtifactKey, orig: Original) -> Derived:
    """The state of one version's files, judged against its original bytes only."""
    lay, t, L = orig.layout, orig.layout.symbol_size, orig.block_len
    payload = _regular_bytes(folder / "payload")
    erased = [0] * lay.stripes
    erased_payload = 0
    if payload != orig.payload:
        want = _symbols(orig.payload, lay)
        have = _symbols(payload, lay) if payload is not None else [None] * lay.source_symbols
        for j in range(lay.source_symbols):
            if have[j] != want[j]:
                erased[j % lay.stripes] += 1
                erased_payload += 1
        erased_payload = max(erased_payload, 1)  # a longer file is damaged too
    sc = _regular_bytes(folder / "sidecar.ftrq")
    usable = intact = False
    if sc is not None:
        intact = sc == orig.sidecar
        a_ok = sc[:L] == orig.sidecar[:L]
        b_ok = len(sc) == len(orig.sidecar) and sc[-(L + TRAILER_LEN):] == orig.sidecar[-(L + TRAILER_LEN):]
        usable = a_ok or b_ok
    for s in range(lay.stripes):
        for i in range(lay.repair_counts[s]):
            off = L + (lay.repair_starts[s] + i) * t
            if not usable or sc is None or sc[off : off + t] != orig.sidecar[off : off + t]:
                erased[s] += 1
    env_ok = False
    env_bytes = _regular_bytes(folder / "envelope.json")
    if env_bytes is not None:
        try:
            env = decode_envelope(env_bytes)
            env_ok = (env.name, env.version, env.artifact_id, env.source_hash) == (
                key.name, key.version, orig.artifact_id, hash_bytes(orig.payload))
        except FtstoreError:
            env_ok = False
    d = Derived(payload, erased, usable, intact, env_ok)
    d.erased_payload = erased_payload
    return d


def repairable(d: Derived, orig: Original) -> bool:
    """Guaranteed repairable by the layout's promise (docs/format.md, Repair guarantee)."""
    if not (d.envelope_ok or d.sidecar_usable):
        return False  # nothing records what the payload should be
    if d.erased_payload == 0:
        return True  # sidecar re-encoded from the payload, envelope from either
    return d.sidecar_usable and all(e <= orig.layout.budget(s) for s, e in enumerate(d.erased))


def _pick(data, keys, label: str):
    """One of ``keys`` (None if there are none). The draw is an index, not a choice among
    the keys: which versions exist depends on killed processes, and what Hypothesis draws
    must not, so that a failing run replays."""
    i = data.draw(st.integers(0, 1 << 16), label=label)
    keys = sorted(keys)
    return keys[i % len(keys)] if keys else None


def _outside_state(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            out[str(p.relative_to(root))] = os.readlink(p) if p.is_symlink() else None if p.is_dir() else p.read_bytes()
    return out


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        RUNS["examples"] += 1
        self.tmp = Path(tempfile.mkdtemp(prefix="ftstore-stateful-"))
        self.store = Store.open(self.tmp / "store", create=True)
        self.dst = Store.open(self.tmp / "dst", create=True)
        self.root = self.store.backend.root
        self.outside = self.tmp / "outside"
        (self.outside / "victim").mkdir(parents=True)
        for leaf in LEAVES:
            (self.outside / "victim" / leaf).write_bytes(b"outside " + leaf.encode() * 100)
        (self.outside / "file").write_bytes(b"an outside file" * 100)
        self.outside_before = _outside_state(self.outside)
        self.originals: dict[ArtifactKey, Original] = {}
        self.by_id: dict[str, bytes] = {}
        self.src_n = 0
        self.step = 0
        self.ckpt = CheckpointManager(self.store, "ckpt", keep_last=2)
        self.ckpt_saved: list[ArtifactKey] = []

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers ------------------------------------------------------------------------------
    def _source(self, size: int, data_seed: int) -> Path:
        self.src_n += 1
        p = self.tmp / f"src-{self.src_n}"
        p.write_bytes(random.Random(data_seed).randbytes(size))
        return p

    def _record(self, key: ArtifactKey, data: bytes) -> None:
        folder = self.store.backend.version_dir(key)
        meta = read_meta(folder / "sidecar.ftrq")
        orig = Original(meta.header.artifact.artifact_id, data, (folder / "sidecar.ftrq").read_bytes(), meta.layout,
                        meta.block_len)
        assert (folder / "payload").read_bytes() == data
        self.originals[key] = orig
        self.by_id[orig.artifact_id] = data

    def _derive(self, key: ArtifactKey) -> Derived:
        return derive(self.store.backend.version_dir(key), key, self.originals[key])

    def _repairable(self) -> set[ArtifactKey]:
        return {k for k in self.originals if repairable(self._derive(k), self.originals[k])}

    def _folder(self, key: ArtifactKey) -> Path:
        return self.store.backend.version_dir(key)

    def _layout_blocked(self) -> bool:
        """A store folder (staging, trash) is a planted link: saves and deletes refuse."""
        return any(os.path.islink(self.root / top) for top in ("staging", "trash"))

    def _check_loaded(self, key: ArtifactKey, must: bool) -> None:
        out = self.tmp / "loaded"
        out.unlink(missing_ok=True)
        try:
            self.store.load(key, out)
        except FtstoreError as e:
            assert not must, f"{key.ref} was repairable but did not load: {e}"
            assert not out.exists()
            _saw("load refused (beyond repair)")
            return
        assert out.read_bytes() == self.originals[key].payload, f"{key.ref}: WRONG BYTES"
        _saw("load returned the saved bytes" + ("" if must else " (beyond the guarantee, decoded anyway)"))

    def _resync_new_versions(self, name: str, candidates: dict[str, bytes]) -> None:
        """Versions of ``name`` that appeared (a killed or concurrent save): each must be a
        whole, intact save of one of the candidate sources."""
        for v in self.store.versions(name):
            key = ArtifactKey(name, v)
            if key in self.originals:
                continue
            health = self.store.check(key)
            assert health.intact, f"a committed version is not whole: {health.problems}"
            data = self._folder(key).joinpath("payload").read_bytes()
            assert hash_bytes(data) in candidates, f"{key.ref} holds bytes nobody saved"
            self._record(key, data)

    # -- saving, deleting, retention -------------------------------------------------------------
    @rule(name=st.sampled_from(NAMES), size=st.sampled_from(SIZES), data_seed=st.integers(0, 1 << 16),
          move=st.booleans(), overhead=st.sampled_from([0.1, 0.1, 0.5, 1.0]))
    def save(self, name, size, data_seed, move, overhead):
        src = self._source(size, data_seed)
        data = src.read_bytes()
        try:
            if move:
                with self.store.scratch() as folder:
                    target = folder / "f"
                    os.replace(src, target)
                    env = self.store.save(target, name, overhead=overhead, move=True)
            else:
                env = self.store.save(src, name, overhead=overhead)
        except BadInputError as e:
            assert self._layout_blocked() and "symbolic link" in str(e), e
            return
        self._record(ArtifactKey(name, env.version), data)

    @rule(data=st.data())
    def delete(self, data):
        key = _pick(data, [k for k in self.originals if k.name != "ckpt"], "delete")
        if key is None:
            return
        try:
            self.store.delete(key)
        except BadInputError as e:
            assert self._layout_blocked(), e
            return
        del self.originals[key]

    @rule(size=st.sampled_from(SIZES[:5]), data_seed=st.integers(0, 1 << 16))
    def checkpoint_with_retention(self, size, data_seed):
        src = self._source(size, data_seed)
        step = len(self.ckpt_saved)
        try:
            cp = self.ckpt.save(step, src)
        except BadInputError as e:  # the save, or the retention after it, met a planted link
            assert self._layout_blocked(), e
            data = src.read_bytes()
            self._resync_new_versions("ckpt", {hash_bytes(data): data})
            return
        key = ArtifactKey("ckpt", cp.version)
        self._record(key, src.read_bytes())
        self.ckpt_saved.append(key)
        on_disk = set(self.store.versions("ckpt"))
        assert key.version in on_disk  # the newest is never deleted
        for k in [k for k in self.originals if k.name == "ckpt" and k.version not in on_disk]:
            del self.originals[k]  # deleted on purpose by retention

    # -- damage -----------------------------------------------------------------------------------
    @rule(data=st.data(), kind=st.sampled_from(
        ["flip", "flip", "zero", "truncate", "extend", "repair_symbols", "sidecar_head", "sidecar_tail",
         "sidecar_delete", "envelope_delete", "envelope_garbage", "envelope_other", "sidecar_foreign",
         "sidecar_other_version", "payload_swap", "payload_link", "sidecar_link", "envelope_link", "payload_fifo"]))
    def damage(self, data, kind):
        key = _pick(data, self.originals, "victim")
        rng = random.Random(data.draw(st.integers(0, 1 << 30), label="rng"))
        if key is None:
            return
        before = self._derive(key)
        self._damage(rng, kind, key)
        after = self._derive(key)
        if (after.payload, after.erased, after.sidecar_intact, after.envelope_ok) != \
                (before.payload, before.erased, before.sidecar_intact, before.envelope_ok):
            _saw(f"damage {kind} ({'repairable' if repairable(after, self.originals[key]) else 'beyond repair'})")

    @rule(data=st.data(), kind=st.sampled_from(["flip", "zero", "truncate", "repair_symbols", "payload_swap"]))
    def damage_bytes(self, data, kind):
        """Byte damage again, so that it piles up between repairs as often as it is repaired."""
        self.damage(data, kind)

    def _damage(self, rng: random.Random, kind: str, key: ArtifactKey) -> None:
        folder, orig = self._folder(key), self.originals[key]
        lay = orig.layout
        payload, sidecar, envelope = (folder / leaf for leaf in LEAVES)
        others = [k for k in self.originals if k != key]
        same_name = [k for k in others if k.name == key.name]

        def regular(p: Path) -> bool:
            return os.path.lexists(p) and stat.S_ISREG(os.lstat(p).st_mode)

        def replace_with(p: Path, make) -> None:
            if os.path.lexists(p):
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p)
                else:
                    p.unlink()
            make(p)

        if kind in ("flip", "zero", "truncate", "extend") and regular(payload) and lay.size:
            buf = bytearray(payload.read_bytes())
            if kind == "flip":
                for _ in range(1 + rng.randrange(lay.budget(0) + 2)):
                    if buf:
                        buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            elif kind == "zero" and buf:
                start = rng.randrange(len(buf))
                n = min(len(buf) - start, rng.randrange(1, lay.symbol_size * lay.stripes * (lay.budget(0) + 2) + 2))
                buf[start : start + n] = bytes(n)
            elif kind == "truncate":
                del buf[rng.randrange(len(buf) + 1):]
            else:
                buf += rng.randbytes(rng.randrange(1, 5000))
            payload.write_bytes(bytes(buf))
        elif kind == "repair_symbols" and regular(sidecar):
            buf = bytearray(sidecar.read_bytes())
            region = lay.total_repair * lay.symbol_size
            for _ in range(rng.randrange(1, 5)):
                if region:
                    buf[orig.block_len + rng.randrange(region)] ^= 0xFF
            sidecar.write_bytes(bytes(buf))
        elif kind == "sidecar_head" and regular(sidecar):
            buf = bytearray(sidecar.read_bytes())
            buf[rng.randrange(min(len(buf), orig.block_len))] ^= 0x01  # metadata copy A
            sidecar.write_bytes(bytes(buf))
        elif kind == "sidecar_tail" and regular(sidecar):
            buf = sidecar.read_bytes()
            sidecar.write_bytes(buf[: len(buf) - rng.randrange(1, orig.block_len + TRAILER_LEN + 1)])
        elif kind == "sidecar_delete":
            replace_with(sidecar, lambda p: None)
        elif kind == "envelope_delete":
            replace_with(envelope, lambda p: None)
        elif kind == "envelope_garbage" and regular(envelope):
            buf = bytearray(envelope.read_bytes())
            buf[rng.randrange(len(buf))] ^= 0x20
            envelope.write_bytes(bytes(buf))
        elif kind == "envelope_other" and others:
            other = self._folder(rng.choice(others)) / "envelope.json"
            if regular(other):
                replace_with(envelope, lambda p: shutil.copyfile(other, p))
        elif kind in ("sidecar_foreign", "sidecar_other_version") and (same_name if kind.endswith("version") else others):
            other = self._folder(rng.choice(same_name if kind.endswith("version") else others)) / "sidecar.ftrq"
            if regular(other):
                replace_with(sidecar, lambda p: shutil.copyfile(other, p))
        elif kind == "payload_swap" and others:
            other = self._folder(rng.choice(others)) / "payload"
            if regular(other):
                replace_with(payload, lambda p: shutil.copyfile(other, p))
        elif kind.endswith("_link"):
            leaf = {"payload_link": payload, "sidecar_link": sidecar, "envelope_link": envelope}[kind]
            target = self.outside / rng.choice(["file", "victim/payload", "victim/sidecar.ftrq", "victim/envelope.json"])
            replace_with(leaf, lambda p: p.symlink_to(target))
        elif kind == "payload_fifo":
            replace_with(payload, lambda p: os.mkfifo(p))

    @rule(where=st.sampled_from(["staging", "trash", "reports", "version", "name", "staging-entry", "trash-entry",
                                 "stray"]), data=st.data())
    def plant_link(self, where, data):
        target = self.outside / data.draw(st.sampled_from(["victim", "file"]), label="target")
        if where in ("staging", "trash", "reports"):
            p = self.root / where
            if os.path.isdir(p) and not os.path.islink(p):
                if any(os.scandir(p)):
                    return  # a save or a delete may be leaving things there; plant only on an empty one
                p.rmdir()
        elif where == "version":
            p = self.root / "artifacts" / data.draw(st.sampled_from(NAMES), label="name") / "999"
        elif where == "name":
            p = self.root / "artifacts" / "zz"
        elif where == "staging-entry":
            p = self.root / "staging" / ("f" * 32)
        elif where == "trash-entry":
            p = self.root / "trash" / ("e" * 32)
        else:
            key = _pick(data, self.originals, "in")
            if key is None:
                return
            p = self._folder(key) / "stray"
        if os.path.lexists(p) or not os.path.isdir(p.parent) or os.path.islink(p.parent):
            return
        p.symlink_to(target)
        _saw(f"link planted: {where}")

    # -- maintenance and reads ----------------------------------------------------------------------
    @rule(remove_orphans=st.booleans())
    def scrub_repair(self, remove_orphans):
        before = {k: self._derive(k) for k in self.originals}
        fixable = {k for k, d in before.items() if repairable(d, self.originals[k])}
        report = scrub(self.store, repair=True, remove_orphans=remove_orphans, write_report=False,
                       warn=lambda _: None, jobs=1)
        status = {a.ref: a.status for a in report.artifacts}
        for a in report.artifacts:
            _saw(f"scrub --repair: {a.status}")
        for k, d in before.items():
            after = self._derive(k)
            if k in fixable:
                assert status[k.ref] in ("ok", "recovered") and after.intact, (k.ref, status[k.ref], report)
            elif status[k.ref] == "failed":
                assert after.payload in (d.payload, self.originals[k].payload), \
                    f"{k.ref}: a failed repair changed the payload into something else"

    @rule()
    def remove_orphans(self):
        report = scrub(self.store, remove_orphans=True, write_report=False, warn=lambda _: None, jobs=1)
        assert all(o.removed for o in report.orphans), report.orphans
        SEEN["orphans removed"] = SEEN.get("orphans removed", 0) + len(report.orphans)
        for top in ("staging", "trash", "reports", "artifacts"):
            assert not os.path.islink(self.root / top)

    @rule(data=st.data())
    def load(self, data):
        key = _pick(data, self.originals, "load")
        if key is None:
            return
        must = repairable(self._derive(key), self.originals[key])
        self._check_loaded(key, must)

    @rule()
    def verify(self):
        for h in self.store.verify():
            if h.key in self.originals:
                assert h.intact == self._derive(h.key).intact, (h.ref, h.problems)

    @rule()
    def copy_to_second_store(self):
        fixable = self._repairable()
        dst_had = set(self.dst.keys())
        for r in copy(self.store, self.dst):
            ref = parse_ref(r.ref)
            key = ArtifactKey(ref.name, ref.version)
            if key in fixable and not (r.status == "conflict" and key in dst_had):
                assert r.status in ("copied", "repaired", "skipped"), r
        self._check_destination()

    def _check_destination(self) -> None:
        for h in self.dst.verify():
            assert h.intact, f"copy committed a damaged version: {h.problems}"
            env = self.dst.read_envelope(h.key)
            out = self.tmp / "dst-loaded"
            self.dst.load(h.key, out)
            assert out.read_bytes() == self.by_id[env.artifact_id], f"{h.ref} at the destination: WRONG BYTES"

    # -- other processes -------------------------------------------------------------------------------
    def _killed(self, args: list[str], delay: float, under_way=None) -> None:
        """Run an ftstore command in another process and SIGKILL it: ``delay`` seconds after
        ``under_way()`` first holds (a save's staging folder appeared), or after start."""
        proc = subprocess.Popen([sys.executable, "-m", "ftstore.cli", *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=dict(os.environ, FTSTORE_STORE=self.store.url))
        deadline = time.monotonic() + 30
        while under_way is not None and proc.poll() is None and time.monotonic() < deadline and not under_way():
            time.sleep(0.002)
        time.sleep(delay)
        _saw(f"SIGKILL {args[0]}" + (" (it had finished)" if proc.poll() is not None else ""))
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    @staticmethod
    def _staging_busy(store: Store):
        folder = store.backend.staging_dir
        return lambda: os.path.isdir(folder) and not os.path.islink(folder) and any(
            e.is_dir(follow_symlinks=False) for e in os.scandir(folder))

    @rule(name=st.sampled_from(NAMES), delay=st.floats(0, 0.3), data_seed=st.integers(0, 1 << 16))
    def sigkill_save(self, name, delay, data_seed):
        src = self._source(8_000_000, data_seed)
        self._killed(["save", str(src), "--name", name], delay, self._staging_busy(self.store))
        self._resync_new_versions(name, {hash_bytes(src.read_bytes()): src.read_bytes()})

    @rule(delay=st.floats(0.25, 1.0))
    def sigkill_scrub_repair(self, delay):
        fixable = self._repairable()
        self._killed(["scrub", "--repair", "--jobs", "1"], delay)
        now = self._repairable()
        assert fixable <= now, f"a killed repair made {sorted(k.ref for k in fixable - now)} unrepairable"

    @rule(delay=st.floats(0, 0.2))
    def sigkill_copy(self, delay):
        self._killed(["copy", self.store.url, self.dst.url], delay, self._staging_busy(self.dst))
        self._check_destination()

    @rule(n=st.integers(2, 6))
    def saves_in_another_process_while_this_one_scrubs(self, n):
        blocked = self._layout_blocked()
        proc = subprocess.Popen([sys.executable, "-c", BG_SAVER, self.store.url, str(self.tmp), str(n)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        fixable = self._repairable()
        while proc.poll() is None:
            scrub(self.store, remove_orphans=True, write_report=False, warn=lambda _: None, jobs=1)
        err = proc.stderr.read().decode()
        assert proc.returncode == 0 or blocked, err
        self._resync_new_versions("bg", {hash_bytes(_bg_bytes(i)): _bg_bytes(i) for i in range(n)})
        assert fixable <= self._repairable()

    # -- invariants ---------------------------------------------------------------------------------
    @invariant()
    def nothing_outside_the_store_changed(self):
        RUNS["steps"] += 1
        assert _outside_state(self.outside) == self.outside_before

    @invariant()
    def no_saved_version_is_lost(self):
        listed = set(self.store.keys())
        missing = set(self.originals) - listed
        assert not missing, f"lost: {sorted(k.ref for k in missing)}"


SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    database=None,
    phases=[Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def test_the_promises_hold_across_interleaved_operations_and_processes():
    run = seed(SEED)(get_state_machine_test(StoreMachine, settings=SETTINGS))
    try:
        run()
    finally:
        print(f"\nstateful run: FTSTORE_STATEFUL_SEED={SEED}, {RUNS['examples']} examples, "
              f"{RUNS['steps']} checked steps (FTSTORE_STATEFUL_EXAMPLES={EXAMPLES}, FTSTORE_STATEFUL_STEPS={STEPS})")
        for what, n in sorted(SEEN.items()):
            print(f"  {n:5d}  {what}")
