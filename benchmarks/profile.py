"""Where the CPU of a whole ftstore command goes: ``perf`` samples of its process tree (the
CLI process and its codec workers), by what was running when each was taken. This is the
profile behind the verdicts of issue 19 that a floor of separately timed pieces
(``bench.py``) cannot settle: the pieces' own time, measured inside the real command.

    python benchmarks/profile.py --mib 512 [--runs 3] [--dir D]

Needs Linux ``perf`` allowed to sample user and kernel code (``perf_event_paranoid`` <= 1,
or root). Run by hand, never in CI. Each command is run once without ``perf`` (its wall
and CPU seconds, as ``bench.py`` times them) and once under ``perf record`` with a
fixed CPU-clock period, so that a sample is a fixed slice of CPU time. Samples are
grouped by the shared object that was executing:

- the codec binding (``raptorq``), BLAKE3 (``blake3``): the work every save or repair must
  do, whatever calls it;
- the kernel, split into copies (reads, writes, the copy of ``copy_file_range``), zeroing
  and faulting in fresh pages, and the rest (syscalls, page-cache lookups, the disk's
  interrupts, scheduling);
- libc (``memcpy`` of the joins and of the binding's own copies, ``malloc``);
- the interpreter (``libpython``, the interpreter's extension modules, the dynamic
  loader): start-up, imports and every Python-level loop.

Last, the binding on its own, encoding (and decoding) stripes held in memory, gives how
its time splits between its own code and libc (its copies of every symbol, its
allocations): that share of a command's libc is the binding's too.

``perf`` itself slows what it samples by a few percent, so the shares, not the seconds,
are what to compare between runs.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import (  # noqa: E402
    ENV, ROOT, b3, become_subreaper, compile_bytecode, damage_bursts, drop_dirty, ftstore, make_file, run,
)

PERIOD_NS = 500_000  # one sample per 0.5 ms of CPU time
COPY = ("copy_to_iter", "copy_page_to_iter", "_copy_to_iter", "copy_folio_from_iter_atomic", "copy_user",
        "copy_mc_enhanced_fast_string", "rep_movs_alternative", "filemap_read", "generic_perform_write",
        "__pi_memcpy", "memcpy_orig", "copy_page")
FRESH_PAGES = ("clear_page", "do_anonymous_page", "exc_page_fault", "handle_mm_fault", "__handle_mm_fault",
               "alloc_pages", "get_page_from_freelist", "__pi_memset", "folio_zero", "do_fault")
GROUPS = ("codec binding", "BLAKE3", "kernel: copies", "kernel: fresh pages", "kernel: other", "libc",
          "interpreter", "other")


def group_of(dso: str, sym: str) -> str:
    if "raptorq" in dso:
        return "codec binding"
    if "blake3" in dso:
        return "BLAKE3"
    if "kernel" in dso:
        if sym.startswith(COPY):
            return "kernel: copies"
        return "kernel: fresh pages" if sym.startswith(FRESH_PAGES) else "kernel: other"
    if "libc.so" in dso:
        return "libc"
    if "python" in dso or "ld-linux" in dso or "cpython-" in dso:
        return "interpreter"
    return "other"


def profile(cmd: list[str], data: Path) -> collections.Counter[tuple[str, str]]:
    """Samples of ``cmd``'s process tree by (process, group); the first process seen is the CLI."""
    subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-c", str(PERIOD_NS), "-o", str(data), "--", *cmd],
                   env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = subprocess.run(["perf", "script", "-i", str(data), "-F", "pid,ip,sym,dso"], check=True,
                         capture_output=True, text=True).stdout
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    cli: str | None = None
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 3:
            continue
        pid, rest = parts[0], parts[2]
        cli = cli or pid
        sym, _, dso = rest.rpartition(" (")
        counts[("CLI" if pid == cli else "workers", group_of(dso.rstrip(")"), sym.split("+")[0]))] += 1
    return counts


# The binding on its own, on stripes held in memory: how its time splits between its own
# code and libc (the copies it makes of every symbol, its allocations). ``--decode`` first
# encodes every stripe, so a decode's share is that run less an encode-only run.
BINDING = """
import sys, blake3, ctypes, raptorq
m = ctypes.CDLL(None).mallopt; m(-3, 64 << 20); m(-1, 256 << 20)  # as ftstore's workers run
t, k, stripes, decode = 16384, 256, int(sys.argv[1]), sys.argv[2] == "1"
obj = blake3.blake3(b"stripe").digest(length=k * t)
for _ in range(stripes):
    packets = raptorq.Encoder.with_defaults(obj, t).get_encoded_packets(k // 10 + 2)
    if decode:
        dec = raptorq.Decoder.with_defaults(k * t, t)
        for p in packets[k // 20:]:  # the first 5% of the source symbols erased
            if dec.decode(p) is not None:
                break
"""


def binding_alone(mib: int, root: Path) -> dict[str, collections.Counter[tuple[str, str]]]:
    """Samples of the binding encoding, and decoding, ``mib`` MiB of 4 MiB stripes in one process."""
    stripes = str(max(1, mib // 4))
    runs = {d: profile([sys.executable, "-c", BINDING, stripes, d], root / "perf.data") for d in ("0", "1")}
    decode = collections.Counter({key: n for key, n in (runs["1"] - runs["0"]).items() if n > 0})
    return {"the binding alone: encode": runs["0"], "the binding alone: decode (less its encode)": decode}


def report(name: str, counts: collections.Counter[tuple[str, str]], runs: int,
           unprofiled: tuple[float, float] | None = None) -> None:
    """One table: CPU-seconds per run and share of the samples, by group and process;
    ``unprofiled``: the (wall, CPU) seconds of the same command without perf."""
    total = sum(counts.values())
    each = PERIOD_NS / 1e9 / runs
    timing = f"{unprofiled[0]:.2f} s wall, {unprofiled[1]:.2f} CPU-s without perf; " if unprofiled else ""
    print(f"\n{name}: {timing}{total * each:.2f} CPU-s sampled under perf")
    print(f"  {'':22} {'CLI':>12} {'workers':>12} {'all':>12}")
    for g in GROUPS:
        row = [counts[(role, g)] for role in ("CLI", "workers")]
        if sum(row):
            cells = [f"{n * each:5.2f} {100 * n / total:4.1f}%" for n in (*row, sum(row))]
            print(f"  {g:22} " + " ".join(f"{c:>12}" for c in cells))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=1, help="profiled runs of each command, added up")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    if shutil.which("perf") is None:
        raise SystemExit("profile.py needs Linux perf (apt install linux-tools-generic, or your distribution's)")
    become_subreaper()
    compile_bytecode(ROOT)
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="ftstore-profile-", dir=args.dir))
    try:
        src, kept, saves, moved = root / "src.bin", root / "kept", root / "saves", root / "moved.bin"
        make_file(src, args.mib << 20)
        run(ftstore("save", str(src), "--name", "a", "--store", str(kept)))  # verified, then damaged and repaired
        payload = next(p for p in kept.rglob("payload") if p.is_file())
        results: dict[str, list] = collections.defaultdict(lambda: [0.0, 0.0, collections.Counter()])

        def step(name: str, cmd: list[str], before: Callable[[], object]) -> None:
            for profiled in (False, True):
                before()
                drop_dirty()
                for f in (src, *kept.rglob("*")):
                    if f.is_file():
                        b3(f)  # in the page cache, as bench.py starts every step
                if profiled:
                    results[name][2] += profile(cmd, root / "perf.data")
                else:
                    t = run(cmd)
                    results[name][0] += t.wall
                    results[name][1] += t.cpu

        def fresh_saves() -> None:
            shutil.rmtree(saves, ignore_errors=True)

        def fresh_copy() -> None:
            fresh_saves()
            shutil.copyfile(src, moved)

        for _ in range(args.runs):
            step("save", ftstore("save", str(src), "--name", "c", "--store", str(saves)), fresh_saves)
            step("save --move", ftstore("save", str(moved), "--name", "m", "--move", "--store", str(saves)), fresh_copy)
            step("verify", ftstore("verify", "a", "--store", str(kept)), lambda: None)
            step("repair", ftstore("scrub", "--repair", "--store", str(kept)), lambda: damage_bursts(payload))
        for name, (wall, cpu, counts) in results.items():
            report(name, counts, args.runs, (wall / args.runs, cpu / args.runs))
        for name, counts in binding_alone(args.mib, root).items():
            report(name, counts, 1)
    finally:
        shutil.rmtree(root, ignore_errors=True)

if __name__ == "__main__":
    main()
