"""Where the CPU time of a save, a save --move, a verify and a repair goes, stage by stage:
the profile behind the floors ``bench.py`` prints.

Each stage of the command is run here, in this process, one after the other and on one
core (``jobs=1``: the codec's work runs in this process, where its CPU time can be
measured), timed with the process's CPU clock (helper threads included). The codec stages
are split further by cProfile on the same clock (its own overhead lands in the Python-level
stages). What a CLI process spends besides (start-up, worker processes, exit) is the CPU of
the whole command, which ``bench.py`` measures ("CPU s"), less the sum of these stages.

Run by hand (never in CI):  python benchmarks/stages.py --mib 512 [--rounds 3]
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench import damage_bursts, drop_dirty, keep_freed_memory, make_file  # noqa: E402
from ftstore.codec import SidecarBuild, check_and_decode, patch_in_place, patched_digest, read_meta  # noqa: E402
from ftstore.documents import ZERO_HASH, ArtifactEssentials  # noqa: E402
from ftstore.durable import copy_hashing, fsync_file, hash_durably  # noqa: E402
from ftstore.hashing import hash_file  # noqa: E402

# cProfile functions (by name) whose own time is a codec stage of its own
CODEC_SPLIT = {
    "RaptorQ binding (encode / decode)": ("get_encoded_packets", "with_defaults", "decode' of 'builtins.Decoder"),
    "symbol hashes (16-byte BLAKE3 per symbol)": ("symbol_hash",),
    "reading stripes (pread + join)": ("read_stripes", "pread", "join' of 'bytes"),
}
REST = "codec: the rest (tables, writes, packets, Python)"


def cpu(fn: Callable[[], object]) -> float:
    c = time.process_time()
    fn()
    return time.process_time() - c


def split_codec(fn: Callable[[], object]) -> dict[str, float]:
    """CPU seconds of ``fn`` (codec work, run in this process), split by CODEC_SPLIT."""
    prof = cProfile.Profile(time.process_time)
    c = time.process_time()
    prof.runcall(fn)
    total = time.process_time() - c
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    out: dict[str, float] = collections.Counter()
    for (_, _, func), (_, _, tottime, _, _) in stats.items():
        for stage, names in CODEC_SPLIT.items():
            if any(n in func for n in names):
                out[stage] += tottime
                break
    out[REST] = max(0.0, total - sum(out.values()))
    return dict(out)


def essentials(size: int, digest: str = ZERO_HASH) -> ArtifactEssentials:
    return ArtifactEssentials(artifact_id="0" * 32, artifact_type="file", name="profile", size=size,
                              source_hash=digest, created_unix_ms=0, metadata={})


def one_round(src: Path, work: Path) -> dict[str, dict[str, float]]:
    size = src.stat().st_size
    table: dict[str, dict[str, float]] = {}
    work.mkdir()

    # save: the kernel copies into the store while the copy is hashed as it lands; the copy
    # is then encoded (from the page cache) while it is fsynced
    save: dict[str, float] = {}
    copy = work / "payload"
    drop_dirty()
    save["copy (kernel) + BLAKE3 of the copy as it lands"] = cpu(lambda: copy_hashing(src, copy, durable=False))
    ess = essentials(size, hash_file(copy)[0])
    build = SidecarBuild(work / "sidecar", ess, 0.10, version=1)
    save.update(split_codec(lambda: build.encode(copy, 1)))
    save["fsync of the copy"] = cpu(lambda: fsync_file(copy))
    save["sidecar metadata, fsync, BLAKE3 of the sidecar"] = cpu(lambda: build.finish(ess))
    table["save"] = save

    # save --move: the file itself is hashed (durably) while it is encoded
    move: dict[str, float] = {}
    (work / "sidecar").unlink()
    drop_dirty()
    move["BLAKE3 of the file + fsync"] = cpu(lambda: hash_durably(copy))
    build = SidecarBuild(work / "sidecar", ess, 0.10, version=1)
    move.update(split_codec(lambda: build.encode(copy, 1)))
    move["sidecar metadata, fsync, BLAKE3 of the sidecar"] = cpu(lambda: build.finish(ess))
    table["save --move"] = move

    drop_dirty()
    table["verify"] = {"BLAKE3 of payload + sidecar": cpu(lambda: (hash_file(copy), hash_file(work / "sidecar")))}

    # repair (scrub --repair): the check finds the damage; every stripe is checked and the
    # damaged ones decoded, into a spill file; the result's BLAKE3 checked before a byte is
    # written; the recovered symbols patched in and read back
    damage_bursts(copy)
    drop_dirty()
    rep: dict[str, float] = {}
    rep["check: BLAKE3 of payload + sidecar"] = cpu(lambda: (hash_file(copy), hash_file(work / "sidecar")))
    meta = read_meta(work / "sidecar")
    spill = work / "spill"
    with open(spill, "xb") as f:
        f.truncate(size)
    outcomes: list = []
    rep.update(split_codec(lambda: outcomes.extend(check_and_decode(copy, work / "sidecar", meta, 1, spill=spill))))
    digest: list[str] = []
    rep["BLAKE3 the patched payload would have"] = cpu(lambda: digest.append(patched_digest(copy, meta, outcomes, spill)))
    assert digest == [ess.source_hash], "decoding would not give back the payload"
    rep["patching the recovered symbols in, reading them back"] = cpu(lambda: patch_in_place(copy, meta, outcomes, spill))
    assert hash_file(copy)[0] == ess.source_hash, "repair produced wrong bytes"  # untimed: the profile's own check
    table["repair"] = rep
    shutil.rmtree(work)
    return table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    keep_freed_memory()  # as in ftstore's codec workers, where this work runs
    root = Path(tempfile.mkdtemp(prefix="ftstore-profile-", dir=args.dir))
    try:
        src = root / "src.bin"
        make_file(src, args.mib << 20)
        drop_dirty()
        hash_file(src)
        rounds = [one_round(src, root / f"round-{i}") for i in range(args.rounds)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"CPU-seconds by stage, {args.mib} MiB, median of {args.rounds} rounds, every stage on one core "
          f"(load {os.getloadavg()[0]:.2f}); start-up, worker processes and exit are not in these")
    for command in rounds[0]:
        print(f"  {command}")
        total = 0.0
        for stage in rounds[0][command]:
            m = statistics.median(r[command].get(stage, 0.0) for r in rounds)
            total += m
            print(f"    {stage:<52}{m:7.2f}")
        print(f"    {'total':<52}{total:7.2f}")


if __name__ == "__main__":
    main()
