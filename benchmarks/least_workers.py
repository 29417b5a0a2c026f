"""The worker processes of the least programs (``least_move.py``, ``least_repair.py``).

One worker per core, spawned as the program's first act, each an interpreter that imports
only what it uses (no ftstore code: these programs are floors for it). Groups of stripes
(as many as ftstore's workers take at a time) are handed out through one pipe all workers
read, so none idles while another has work left; each worker answers with one Python
literal on its stdout when the pipe ends.
"""

import os
import sys

PRELUDE = r'''
import ctypes, json, mmap, os, sys
import blake3, raptorq
mallopt = ctypes.CDLL(None).mallopt  # glibc: keep freed memory (fresh pages cost a fault each)
mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD


def groups(per):
    """The first stripe of every group of ``per`` handed to this worker, until the pipe ends."""
    while len(task := os.read(0, 4)) == 4:
        yield per * int.from_bytes(task, "little")


def answer(out):
    sys.stdout.buffer.write(repr(out).encode())
'''


class Workers:
    """``PRELUDE`` + ``body`` run with ``args`` in one process per core, waiting for work."""

    def __init__(self, body: str, *args: str):
        self.running: list[tuple[int, int]] = []  # (pid, the read end of its stdout)
        tasks_r, self.tasks_w = os.pipe()  # group numbers, 4 bytes each, read by whichever worker is free
        for _ in range(len(os.sched_getaffinity(0))):
            r, w = os.pipe()
            pid = os.posix_spawn(sys.executable, [sys.executable, "-c", PRELUDE + body, *args], os.environ,
                                 file_actions=[(os.POSIX_SPAWN_DUP2, w, 1), (os.POSIX_SPAWN_CLOSE, r),
                                               (os.POSIX_SPAWN_DUP2, tasks_r, 0),
                                               (os.POSIX_SPAWN_CLOSE, self.tasks_w)])
            os.close(w)
            self.running.append((pid, r))
        os.close(tasks_r)

    def go(self, stripes: int, per: int) -> None:
        """Hand out every group of ``per`` of ``stripes`` (none: the workers exit) in one
        write, atomic as it fits the pipe."""
        groups = -(-stripes // per)
        os.write(self.tasks_w, b"".join(g.to_bytes(4, "little") for g in range(groups)))
        os.close(self.tasks_w)

    def answers(self) -> list:
        """Every worker's answer, once each has ended."""
        import ast  # noqa: PLC0415 - after the workers are spawned, as every other import

        out = []
        for pid, r in self.running:
            with os.fdopen(r, "rb") as pipe:
                out.append(ast.literal_eval(pipe.read().decode()))
            os.waitpid(pid, 0)
        return out
