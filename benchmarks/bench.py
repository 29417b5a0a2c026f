"""Throughput of ftstore save / verify / repair next to par2cmdline-turbo, Debian's par2 and
BLAKE3 alone, all measured in the same run on the same file, printed as ratios.

Run by hand (not in CI):  python benchmarks/bench.py [--sizes 256,1024] [--memory-gib 4]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, installed or not

import blake3  # noqa: E402

from ftstore import Store  # noqa: E402
from ftstore.hashing import hash_file  # noqa: E402
from ftstore.integrity import check, repair  # noqa: E402

MB = 1e6


def make_file(path: Path, size: int) -> None:
    block = os.urandom(16 << 20)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            block = block[1:] + block[:1]
            left -= n


def blake3_alone(path: Path) -> None:
    """The baseline for verify: the plain way to BLAKE3 a file (16 MiB reads, multithreaded
    hashing), written here so that no ftstore code is in it."""
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    buf = memoryview(bytearray(16 << 20))
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(buf[:n])
    h.digest()


def blake3_mmap(path: Path) -> None:
    """BLAKE3's fastest path, for information: ftstore never maps stored files, because a
    bad sector under a mapping kills the process (SIGBUS) where read() returns EIO."""
    blake3.blake3(max_threads=blake3.blake3.AUTO).update_mmap(path).digest()


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def damage_bursts(path: Path, fraction: float, bursts: int, seed: int) -> None:
    size = path.stat().st_size
    each = int(size * fraction / bursts)
    rng = random.Random(seed)
    with open(path, "r+b") as f:
        for b in range(bursts):
            f.seek(b * (size // bursts) + rng.randrange(max(1, size // bursts - each)))
            f.write(os.urandom(each))


def par2_tool(name: str) -> str | None:
    if name == "turbo":
        cand = Path(sys.executable).with_name("par2")
        return str(cand) if cand.exists() else None
    return "/usr/bin/par2" if Path("/usr/bin/par2").exists() else None


def bench_par2(exe: str, src: Path, work: Path) -> dict[str, float]:
    d = work / f"par2-{Path(exe).parent.name}"
    d.mkdir()
    f = d / "data.bin"
    shutil.copyfile(src, f)
    out = {}
    run = lambda *a: subprocess.run([exe, *a], cwd=d, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out["save"] = timed(lambda: run("create", "-q", "-r10", "data.par2", "data.bin"))
    out["verify"] = timed(lambda: run("verify", "-q", "data.par2"))
    damage_bursts(f, 0.05, 10, 1)
    out["repair"] = timed(lambda: run("repair", "-q", "data.par2"))
    ok = hash_file(f)[0] == hash_file(src)[0]
    shutil.rmtree(d)
    return out if ok else {**out, "repair": float("nan")}


def bench_ftstore(src: Path, work: Path) -> dict[str, float]:
    store = Store.open(work / "store", create=True)
    out = {}
    env = None

    def save():
        nonlocal env
        env = store.save(src, "bench", overhead=0.10)

    out["save"] = timed(save)
    # --move: the same bytes as a file of its own (built untimed, on disk), taken over in place
    moved = work / "moved.bin"
    shutil.copyfile(src, moved)
    os.sync()
    out["save --move"] = timed(lambda: store.save(moved, "bench-move", overhead=0.10, move=True))
    paths = store.paths(env.name, env.version)
    out["verify"] = timed(lambda: check(paths))
    damage_bursts(paths.payload, 0.05, 10, 1)
    h = check(paths)
    out["repair"] = timed(lambda: repair(paths, h, reason="bench"))
    assert hash_file(paths.payload)[0] == env.source_hash, "repair produced wrong bytes"
    shutil.rmtree(work / "store")
    return out


PEAK_RSS_PROBE = """
import sys
from ftstore import Store, load
from ftstore.codec import parallel

def hwm_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0

s = Store.open(sys.argv[2], create=True)
s.save(sys.argv[1], "m")
load(s, "m", sys.argv[3])
workers = parallel.worker_pids()
print(max([hwm_kib("self")] + [hwm_kib(p) for p in workers]))
"""


def peak_memory_of_save(size: int, work: Path) -> float:
    """Peak RSS (MiB) of the largest process, codec workers included, over a save and a
    load in a fresh interpreter. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from
    the forking parent (this benchmark, which has just mapped a GiB), VmHWM starts afresh."""
    src = work / "mem.bin"
    make_file(src, size)
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_PROBE, str(src), str(work / "memstore"), str(work / "mem.out")],
        check=True, capture_output=True, text=True,
    )
    for p in ("mem.bin", "mem.out", "memstore"):
        (shutil.rmtree if (work / p).is_dir() else os.unlink)(work / p)
    return int(out.stdout.split()[-1]) / 1024


def bench_scrub(total_mib: int, artifacts: int, work: Path) -> None:
    """Scrub of an intact store of many artifacts vs BLAKE3 of the same payloads and
    par2cmdline-turbo verify of the same files with 10% recovery data."""
    from ftstore.scrub import scrub

    store = Store.open(work / "scrub-store", create=True)
    each = (total_mib << 20) // artifacts
    files = []
    for i in range(artifacts):
        f = work / f"a{i}.bin"
        make_file(f, each)
        store.save(f, f"a{i}")
        files.append(f)
    total = each * artifacts
    for p in store.all_paths():
        hash_file(p.payload)
        hash_file(p.sidecar)
    t_b3 = timed(lambda: [blake3_alone(p.payload) for p in store.all_paths()])
    t_scrub = timed(lambda: scrub(store, write_report=False))
    print(f"\n== scrub of an intact store: {artifacts} artifacts, {total / MB:.0f} MB ==")
    print(f"ftstore scrub         {total / t_scrub / MB:8.0f} MB/s")
    print(f"BLAKE3 alone          {total / t_b3 / MB:8.0f} MB/s   (scrub/BLAKE3 time: {t_scrub / t_b3:.2f})")
    exe = par2_tool("turbo")
    if exe:
        run = lambda *a: subprocess.run([exe, *a], cwd=work, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for f in files:
            run("create", "-q", "-r10", f"{f.name}.par2", f.name)
        t_par2 = timed(lambda: [run("verify", "-q", f"{f.name}.par2") for f in files])
        print(f"par2-turbo verify     {total / t_par2 / MB:8.0f} MB/s   (ftstore scrub is {t_par2 / t_scrub:.2f}x faster)")
    shutil.rmtree(work / "scrub-store")
    for f in files:
        f.unlink()


def bench_s3(mib: int, work: Path) -> None:
    """ftstore save/load to SeaweedFS next to a plain boto3 upload/download of the same
    bytes, against one real local SeaweedFS server started here."""
    import boto3

    from tests.seaweed import Seaweed

    from ftstore import load

    server = Seaweed(work / "weed")
    server.start()
    try:
        os.environ.update(server.env())
        src = work / "s3src.bin"
        make_file(src, mib << 20)
        hash_file(src)
        size = src.stat().st_size
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="plain")
        t_up = timed(lambda: s3.upload_file(str(src), "plain", "obj"))
        t_down = timed(lambda: s3.download_file("plain", "obj", str(work / "plain.out")))
        store = Store.open("s3://bench/store", create=True)
        t_save = timed(lambda: store.save(src, "bench"))
        t_load = timed(lambda: load(store, "bench", work / "ft.out"))
        assert hash_file(work / "ft.out")[0] == hash_file(src)[0]
        print(f"\n== SeaweedFS (local server), {mib} MiB ==")
        print(f"plain boto3 upload     {size / t_up / MB:8.0f} MB/s")
        print(f"ftstore save (s3)      {size / t_save / MB:8.0f} MB/s   ({t_up / t_save:.2f}x of plain upload; "
              "includes hashing, encoding and uploading the 10% sidecar)")
        print(f"plain boto3 download   {size / t_down / MB:8.0f} MB/s")
        print(f"ftstore load (s3)      {size / t_load / MB:8.0f} MB/s   ({t_down / t_load:.2f}x of plain download; "
              "includes streaming verification of payload and sidecar)")
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="256,1024", help="payload sizes in MiB")
    ap.add_argument("--memory-gib", type=float, default=0, help="also measure peak RSS of save+load of this size")
    ap.add_argument("--scrub-mib", type=int, default=2048, help="size of the scrub benchmark store (0: skip)")
    ap.add_argument("--scrub-artifacts", type=int, default=32)
    ap.add_argument("--s3-mib", type=int, default=0, help="also benchmark a SeaweedFS store with this payload size")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = ap.parse_args()
    work_root = Path(tempfile.mkdtemp(prefix="ftstore-bench-", dir=args.dir))
    try:
        for mib in [int(x) for x in args.sizes.split(",") if x]:
            work = work_root / f"{mib}"
            work.mkdir()
            src = work / "src.bin"
            size = mib << 20
            make_file(src, size)
            os.sync()  # every tool starts from a file that is on disk...
            hash_file(src)  # ...and in the page cache
            b3 = timed(lambda: blake3_alone(src))
            b3_mmap = timed(lambda: blake3_mmap(src))
            results = {"ftstore": bench_ftstore(src, work)}
            for tool in ("turbo", "debian"):
                exe = par2_tool(tool)
                if exe:
                    results[f"par2-{tool}"] = bench_par2(exe, src, work)
            print(f"\n== {mib} MiB payload, 10% redundancy, repair of 5% damage in 10 bursts ==")
            print(f"BLAKE3 alone (read + multithreaded hash, page cache): {size / b3 / MB:8.0f} MB/s"
                  f"   (mmap, for information: {size / b3_mmap / MB:.0f} MB/s)")
            print(f"{'tool':<14}{'save MB/s':>12}{'verify MB/s':>14}{'repair MB/s':>14}")
            for name, r in results.items():
                print(f"{name:<14}" + "".join(f"{size / r[k] / MB:>{w}.0f}" for k, w in (("save", 12), ("verify", 14), ("repair", 14))))
            ft, tb = results["ftstore"], results.get("par2-turbo")
            print(f"ftstore save --move: {size / ft['save --move'] / MB:.0f} MB/s (the file is taken over, not copied)")
            if tb:
                print("ratios vs par2cmdline-turbo (target):")
                print(f"  save    {tb['save'] / ft['save']:6.2f}x  (copies the payload into the store, durably)")
                print(f"  save --move {tb['save'] / ft['save --move']:6.2f}x  (>= 2x; writes what par2 create writes)")
                print(f"  repair  {tb['repair'] / ft['repair']:6.2f}x  (>= 3x)")
                print(f"  verify  {tb['verify'] / ft['verify']:6.2f}x  (>= 5x)")
            print(f"verify time / BLAKE3-alone time: {ft['verify'] / b3:.2f}  (<= 1.5)")
            shutil.rmtree(work)
        if args.scrub_mib:
            (work_root / "scrub").mkdir()
            bench_scrub(args.scrub_mib, args.scrub_artifacts, work_root / "scrub")
        if args.s3_mib:
            (work_root / "s3").mkdir()
            bench_s3(args.s3_mib, work_root / "s3")
        if args.memory_gib:
            peak = peak_memory_of_save(int(args.memory_gib * (1 << 30)), work_root)
            print(f"\npeak RSS of save+load of a {args.memory_gib} GiB payload: {peak:.0f} MiB (target < 512)")
    finally:
        shutil.rmtree(work_root, ignore_errors=True)


if __name__ == "__main__":
    main()
