"""How long a checkpoint save blocks the training loop, next to ``torch.save`` + ``fsync`` of
the same state dict to the same disk, measured in the same run, rounds interleaved.

    ftstore     CheckpointManager(background=True).save(step, state): the time until the
                call returns (payload and envelope durable, protection pending), and the
                time until the repair sidecar is committed by the background protector
    inline      CheckpointManager(background=False).save(step, state): sidecar included
    torch       torch.save(state, f) + fsync, the baseline

Run by hand (not in CI):  python benchmarks/critical_path.py [--sizes-mib 27,1024] [--dir D]
The goal is ftstore / torch <= 1.3 for the blocking time. A shared machine is noisy: read
the medians, and rerun.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, installed or not

import torch  # noqa: E402

from ftstore import CheckpointManager, Store  # noqa: E402

MiB = 1 << 20


def state_dict(size: int) -> dict:
    """A model-like state of ``size`` bytes of float32 tensors (4 MiB each, the last one
    smaller): weights, and an optimizer's moments beside them."""
    floats = [1 << 20] * (size // (4 << 20)) + ([size % (4 << 20) // 4] if size % (4 << 20) else [])
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(n, generator=g) for n in floats]
    half = len(tensors) // 2
    return {
        "model": {f"layer{i}.weight": t for i, t in enumerate(tensors[:half])},
        "optimizer": {"state": {i: {"exp_avg": t} for i, t in enumerate(tensors[half:])},
                      "param_groups": [{"lr": 1e-3, "params": list(range(len(tensors) - half))}]},
        "step": 0,
    }


def torch_save_fsync(state: dict, path: Path) -> float:
    t = time.perf_counter()
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t


def run(size_mib: int, rounds: int, folder: Path) -> dict[str, list[float]]:
    state = state_dict(size_mib * MiB)
    store = Store.open(folder / "store", create=True)
    background = CheckpointManager(store, "bg", keep_last=2, background=True)
    inline = CheckpointManager(store, "inline", keep_last=2)
    out: dict[str, list[float]] = {"torch": [], "ftstore": [], "sidecar": [], "inline": []}
    for r in range(rounds + 1):  # round 0 warms up (imports, page cache, first process start)
        base = torch_save_fsync(state, folder / "plain.pt")
        (folder / "plain.pt").unlink()
        t = time.perf_counter()
        background.save(r, state)
        blocked = time.perf_counter() - t
        background.wait_until_finished()
        protected = time.perf_counter() - t
        t = time.perf_counter()
        inline.save(r, state)
        inline_s = time.perf_counter() - t
        if r:
            out["torch"].append(base)
            out["ftstore"].append(blocked)
            out["sidecar"].append(protected)
            out["inline"].append(inline_s)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-mib", default="27,1024")
    ap.add_argument("--rounds", type=int, default=0, help="default: 15 under 256 MiB, else 3")
    ap.add_argument("--dir", default=None, help="a folder on the disk to measure (default: a temporary one)")
    args = ap.parse_args()
    top = Path(tempfile.mkdtemp(prefix="ftstore-critical-", dir=args.dir))
    print(f"disk: {top}   cpus: {len(os.sched_getaffinity(0))}   torch {torch.__version__}")
    print("medians over the rounds (ratio of minimums in brackets, the least disturbed rounds)")
    print(f"{'state':>9} {'torch.save+fsync':>17} {'ftstore save':>13} {'ratio':>14} {'sidecar in':>11} "
          f"{'inline save':>12} {'ratio':>6}")
    try:
        for size in (int(s) for s in args.sizes_mib.split(",")):
            folder = top / f"{size}MiB"
            folder.mkdir()
            rounds = args.rounds or (15 if size < 256 else 3)
            res = run(size, rounds, folder)
            med = {k: statistics.median(v) for k, v in res.items()}
            best = min(res["ftstore"]) / min(res["torch"])
            print(f"{size:>5} MiB {med['torch']:>15.3f} s {med['ftstore']:>11.3f} s "
                  f"{med['ftstore'] / med['torch']:>5.2f}x [{best:.2f}x] {med['sidecar']:>9.3f} s {med['inline']:>10.3f} s "
                  f"{med['inline'] / med['torch']:>5.2f}x")
            print(f"          (all rounds: torch {', '.join(f'{x:.3f}' for x in res['torch'])}; "
                  f"ftstore {', '.join(f'{x:.3f}' for x in res['ftstore'])})")
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
