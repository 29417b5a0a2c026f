"""The least ``save`` and ``save --move`` this codec allows from Python: floors measured as whole
processes.

The pieces in ``bench.py`` bound a command from below by adding up what it must compute.
This is the other kind of floor: one program that does only what every ``save --move``
built on the ``raptorq`` binding must do, in the cheapest arrangement, with no ftstore code
and none of its checks. If even this cannot reach a target, no ftstore can.

What it does, in one process tree started by the caller:

- the interpreter starts and at once spawns one worker per core (``posix_spawn``, each
  importing only blake3 and raptorq), before importing anything else itself;
- the parent hashes the payload with BLAKE3 (multithreaded, by ``read()``), while
- each worker takes the next group of two stripes (ftstore's layout, passed in as JSON)
  from a pipe all workers read, so none idles while another has work left, reads its rows
  into one buffer, joins each stripe into the ``bytes`` the binding takes, hashes every
  source symbol, encodes, writes the repair symbols into the sidecar at their place and
  hashes them; at its end it sends all its hashes back on a pipe;
- the parent writes the hash tables at the head of the sidecar and fsyncs it and the
  payload.

With ``--copy SOURCE`` (the least ``save``) the parent first copies SOURCE to PAYLOAD with
``copy_file_range`` while the workers start, and only then lets them read it; the disk
flushes the copy while it is hashed and encoded from the page cache.

Left out, and so not counted: the store (its lock, staging folder, hard link, envelope and
the folder fsyncs of the commit), the sidecar's header, every check that the payload did
not change while it was read, and any error handling.

    python benchmarks/least_move.py PAYLOAD SIDECAR LAYOUT_JSON [--copy SOURCE]
"""

import json
import os
import sys

WORKER = r"""
import ctypes, json, mmap, os, sys
import blake3, raptorq
mallopt = ctypes.CDLL(None).mallopt  # glibc: keep freed memory (fresh pages cost a fault each)
mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
path, sidecar, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
t, S, ks, rs, starts, base = spec["t"], spec["stripes"], spec["k"], spec["r"], spec["rstart"], spec["base"]
pf = sf = None
out = []
buf = memoryview(mmap.mmap(-1, 2 * max(ks) * t))
while len(task := os.read(0, 4)) == 4:  # the next group of two stripes, from the pipe all workers share
    if pf is None:
        pf, sf = os.open(path, os.O_RDONLY), os.open(sidecar, os.O_WRONLY)
    a = 2 * int.from_bytes(task, "little")
    group = range(a, min(a + 2, S))
    width = len(group) * t
    pieces = {s: [] for s in group}
    for r in range(ks[a]):
        start = (r * S + a) * t
        want = min(width, spec["size"] - start)
        if want <= 0:
            break
        row = buf[r * width : r * width + want]
        os.preadv(pf, [row], start)
        for s in group:
            if row[(s - a) * t : (s - a + 1) * t]:
                pieces[s].append(row[(s - a) * t : (s - a + 1) * t])
    for s in group:
        obj = b"".join(pieces.pop(s))
        obj += bytes(ks[s] * t - len(obj))
        view = memoryview(obj)
        src = b"".join(blake3.blake3(view[i * t : (i + 1) * t]).digest(16) for i in range(ks[s]))
        packets = raptorq.Encoder.with_defaults(obj, t).get_encoded_packets(rs[s])[ks[s]:]
        os.pwrite(sf, b"".join(memoryview(p)[4:] for p in packets), base + starts[s] * t)
        rep = b"".join(blake3.blake3(memoryview(p)[4:]).digest(16) for p in packets)
        out.append((s, src, rep))
sys.stdout.buffer.write(repr(out).encode())
"""


def main() -> None:
    payload, sidecar, spec_json = sys.argv[1:4]
    source = sys.argv[5] if sys.argv[4:5] == ["--copy"] else None
    n = len(os.sched_getaffinity(0))
    workers = []
    tasks_r, tasks_w = os.pipe()  # group numbers, 4 bytes each, read by whichever worker is free
    for _ in range(n):
        r, w = os.pipe()
        pid = os.posix_spawn(sys.executable, [sys.executable, "-c", WORKER, payload, sidecar, spec_json],
                             os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, w, 1), (os.POSIX_SPAWN_CLOSE, r),
                                                       (os.POSIX_SPAWN_DUP2, tasks_r, 0),
                                                       (os.POSIX_SPAWN_CLOSE, tasks_w)])
        os.close(w)
        workers.append((pid, r))
    os.close(tasks_r)

    def go(groups: int) -> None:
        """Hand out the groups (none: the workers exit) in one write, atomic as it fits the pipe."""
        os.write(tasks_w, b"".join(g.to_bytes(4, "little") for g in range(groups)))
        os.close(tasks_w)

    if source is not None:
        with open(source, "rb") as src, open(payload, "xb") as dst:
            while os.copy_file_range(src.fileno(), dst.fileno(), 1 << 30):
                pass
    go(-(-json.loads(spec_json)["stripes"] // 2))

    import ast
    import threading

    import blake3

    spec = json.loads(spec_json)
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    buf = memoryview(bytearray(16 << 20))
    with open(payload, "rb", buffering=0) as f:
        flushed = threading.Thread(target=os.fsync, args=(f.fileno(),))
        flushed.start()
        while k := f.readinto(buf):
            h.update(buf[:k])
        flushed.join()
    h.digest()

    src, rep = {}, {}
    for pid, r in workers:
        with os.fdopen(r, "rb") as pipe:
            for s, a, b in ast.literal_eval(pipe.read().decode()):
                src[s], rep[s] = a, b
        os.waitpid(pid, 0)
    tables = b"".join(src[s] for s in range(spec["stripes"])) + b"".join(rep[s] for s in range(spec["stripes"]))
    fd = os.open(sidecar, os.O_WRONLY)
    os.pwrite(fd, tables, 0)
    os.fsync(fd)
    os.close(fd)


if __name__ == "__main__":
    main()
