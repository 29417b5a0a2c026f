"""The least repair this codec allows from Python: a floor measured as a whole process.

Like ``least_move.py`` for a save: one program that does only what every repair of this
format built on the ``raptorq`` binding must do, in the cheapest arrangement, with no
ftstore code and none of its extra checks. If even this cannot reach a target, no ftstore
can.

What it does, in one process tree started by the caller:

- the interpreter starts and at once spawns one worker per core, each importing only
  blake3 and raptorq (a repair knows of the damage only after its check; starting the
  workers before it is a head start no real repair has);
- the parent checks the payload's whole BLAKE3 (multithreaded, by ``read()``) and, as it
  does not match, lets the workers go;
- each worker takes the next group of stripes (as many as ftstore's workers take) from a
  pipe all workers read (none idles while another has work left), reads the group's rows,
  hashes every source symbol against the table (a symbol that fails is an erasure), reads
  and hashes the stripe's repair symbols, decodes the stripe from packets built straight
  from the symbols as read, checks each decoded symbol's hash, and writes it into a spill
  file at its place in the payload; it sends back where it wrote;
- the parent hashes the payload again with every decoded symbol laid over its place (the
  whole BLAKE3 must match before a byte is written), then writes the decoded symbols over
  the damaged ones and fsyncs the payload.

Left out, and so not counted: the store (listing it, its lock, the envelope, the decode
proof), the sidecar's header and tables (handed over ready in TABLES), checking each
decoded symbol again when it is used and reading it back once written, and any error
handling.

    python benchmarks/least_repair.py PAYLOAD SIDECAR TABLES SPILL LAYOUT_JSON
"""

import os
import sys

from least_workers import Workers

WORKER = r"""
path, sidecar, tables, spill, spec = *sys.argv[1:5], json.loads(sys.argv[5])
t, S, ks, rs, starts, base = spec["t"], spec["stripes"], spec["k"], spec["r"], spec["rstart"], spec["base"]
with open(tables, "rb") as f:
    table = f.read()
rep_at = spec["rep_at"]  # source entries in file order (symbol i of stripe s is file symbol i * S + s), then repair
pf, sf, spf = os.open(path, os.O_RDONLY), os.open(sidecar, os.O_RDONLY), os.open(spill, os.O_WRONLY)
buf = memoryview(mmap.mmap(-1, spec["group"] * max(ks) * t))
rbuf = memoryview(mmap.mmap(-1, max(rs) * t))
h16 = lambda b: blake3.blake3(b).digest(16)
out = []
for a in groups(spec["group"]):
    group = range(a, min(a + spec["group"], S))
    width = len(group) * t
    syms = {s: [] for s in group}
    for r in range(ks[a]):
        start = (r * S + a) * t
        row = buf[r * width : r * width + min(width, spec["size"] - start)]
        os.preadv(pf, [row], start)
        for s in group:
            if r < ks[s]:
                sym = row[(s - a) * t : (s - a + 1) * t]
                syms[s].append(sym if len(sym) == t else bytes(sym) + bytes(t - len(sym)))
    for s in group:
        want = lambda i: table[(i * S + s) * 16 : (i * S + s + 1) * 16]
        erased = [i for i, sym in enumerate(syms[s]) if h16(sym) != want(i)]
        if not erased:
            continue
        rep = rbuf[: rs[s] * t]
        os.preadv(sf, [rep], base + starts[s] * t)
        good = [i for i in range(rs[s]) if h16(rep[i * t : (i + 1) * t]) == table[(rep_at + starts[s] + i) * 16 : (rep_at + starts[s] + i + 1) * 16]]
        gone = set(erased)
        packets = [bytes((0, i >> 16 & 255, i >> 8 & 255, i & 255)) + sym for i, sym in enumerate(syms[s]) if i not in gone]
        packets += [bytes((0, (ks[s] + i) >> 16 & 255, (ks[s] + i) >> 8 & 255, (ks[s] + i) & 255)) + rep[i * t : (i + 1) * t] for i in good]
        dec = raptorq.Decoder.with_defaults(ks[s] * t, t)
        for p in packets:
            if (obj := dec.decode(p)) is not None:
                break
        for i in erased:
            sym = obj[i * t : (i + 1) * t]
            assert h16(sym) == want(i)
            j = i * S + s
            os.pwrite(spf, sym[: min(t, spec["size"] - j * t)], j * t)
            out.append(j)
answer(out)
"""


def main() -> None:
    payload, sidecar, tables, spill, spec_json = sys.argv[1:6]
    workers = Workers(WORKER, payload, sidecar, tables, spill, spec_json)

    import json

    import blake3

    spec = json.loads(spec_json)
    t, size = spec["t"], spec["size"]
    buf = memoryview(bytearray(16 << 20))
    assert len(buf) % t == 0, "a symbol must not straddle two reads"

    def whole_hash(overlay: dict[int, int], spf: int | None) -> str:
        h = blake3.blake3(max_threads=blake3.blake3.AUTO)
        pos = 0
        with open(payload, "rb", buffering=0) as f:
            while k := f.readinto(buf):
                for j in range(pos // t, -(-(pos + k) // t)):
                    if j in overlay:
                        lo = j * t - pos
                        buf[lo : lo + overlay[j]] = os.pread(spf, overlay[j], j * t)
                h.update(buf[:k])
                pos += k
        return h.hexdigest()

    if whole_hash({}, None) == spec["hash"]:
        workers.go(0, 1)
        sys.exit("the payload is intact: nothing to time")
    workers.go(spec["stripes"], spec["group"])
    decoded = [j for answer in workers.answers() for j in answer]
    lengths = {j: min(t, size - j * t) for j in decoded}
    spf = os.open(spill, os.O_RDONLY)
    if whole_hash(lengths, spf) != spec["hash"]:
        sys.exit("the decoded payload does not match its BLAKE3")
    fd = os.open(payload, os.O_WRONLY)
    for j in sorted(decoded):
        os.pwrite(fd, os.pread(spf, lengths[j], j * t), j * t)
    os.fsync(fd)
    os.close(fd)


if __name__ == "__main__":
    main()
