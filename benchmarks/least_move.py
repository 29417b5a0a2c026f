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
- each worker takes the next group of stripes (ftstore's layout and grouping, passed in as
  JSON) from a pipe all workers read, so none idles while another has work left, reads
  its rows into one buffer, joins each stripe into the ``bytes`` the binding takes, hashes
  every source symbol, encodes, writes the repair symbols into the sidecar at their place
  and hashes them; at its end it sends all its hashes back on a pipe;
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

from least_workers import Workers

WORKER = r"""
path, sidecar, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
t, S, ks, rs, starts, base = spec["t"], spec["stripes"], spec["k"], spec["r"], spec["rstart"], spec["base"]
pf = sf = None
out = []
buf = memoryview(mmap.mmap(-1, spec["group"] * max(ks) * t))
for a in groups(spec["group"]):
    if pf is None:  # opened at the first group: with --copy the payload is not there before
        pf, sf = os.open(path, os.O_RDONLY), os.open(sidecar, os.O_WRONLY)
    group = range(a, min(a + spec["group"], S))
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
answer(out)
"""


def main() -> None:
    payload, sidecar, spec_json = sys.argv[1:4]
    source = sys.argv[5] if sys.argv[4:5] == ["--copy"] else None
    workers = Workers(WORKER, payload, sidecar, spec_json)
    spec = json.loads(spec_json)
    if source is not None:
        with open(source, "rb") as src, open(payload, "xb") as dst:
            while os.copy_file_range(src.fileno(), dst.fileno(), 1 << 30):
                pass
    workers.go(spec["stripes"], spec["group"])

    import threading

    import blake3

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
    for answer in workers.answers():
        for s, a, b in answer:
            src[s], rep[s] = a, b
    tables = b"".join(src[s] for s in range(spec["stripes"])) + b"".join(rep[s] for s in range(spec["stripes"]))
    fd = os.open(sidecar, os.O_WRONLY)
    os.pwrite(fd, tables, 0)
    os.fsync(fd)
    os.close(fd)


if __name__ == "__main__":
    main()
