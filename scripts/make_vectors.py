"""Generate docs/vectors/: test vectors for a second implementation of docs/format.md.

    python scripts/make_vectors.py [OUT_DIR]        (default: docs/vectors)

For a few small artifacts (empty, 1 byte, two stripes, 50% overhead) it writes the exact
``payload``, ``sidecar.ftrq`` and ``envelope.json`` ftstore stores, and ``vectors.json``:
each artifact's RaptorQ parameters per stripe, and damaged variants given as byte
operations on those files, each with the expected outcome (the files' BLAKE3 after repair,
or "unrecoverable") and the expected decode proofs. Everything is deterministic: payloads
are BLAKE3 output of a fixed string, ids and times are fixed, and repairs take their clock
from ``repair(..., now_ms=...)``. ``tests/test_vectors.py`` regenerates them and compares
byte for byte.
"""

from __future__ import annotations

import json
import shutil
from bisect import bisect_left, bisect_right
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import msgspec

from ftstore.codec import check_and_decode, read_meta, write_sidecar
from ftstore.codec.layout import Layout, ceil_div
from ftstore.codec.rq import library_version
from ftstore.codec.sidecar import SidecarError
from ftstore.documents import ArtifactEssentials, ArtifactKey, envelope_from
from ftstore.documents import encode_envelope
from ftstore.documents.envelope import ENVELOPE_SCHEMA_VERSION
from ftstore.errors import UnrecoverableError
from ftstore.engine.integrity import check, repair
from ftstore.engine.integrity import raptorq_section
from ftstore.engine.leaves import FolderLeaves

VECTORS_FORMAT = "ftstore-test-vectors"
VECTORS_VERSION = 1
CREATED_UNIX_MS = 1_700_000_000_000
REPAIR_UNIX_MS = 1_700_000_600_000
REPAIR_REASON = "scrub"
FILES = ("payload", "sidecar.ftrq", "envelope.json")

# -- RFC 6330 parameters --------------------------------------------------------------------

# K' of RFC 6330 section 5.6, Table 2: the source block sizes the code is defined for.
K_PRIME = (
    10, 12, 18, 20, 26, 30, 32, 36, 42, 46, 48, 49, 55, 60, 62, 69, 75, 84, 88, 91, 95, 97, 101,
    114, 119, 125, 127, 138, 140, 149, 153, 160, 166, 168, 179, 181, 185, 187, 200, 213, 217, 225,
    236, 242, 248, 257, 263, 269, 280, 295, 301, 305, 324, 337, 341, 347, 355, 362, 368, 372, 380,
    385, 393, 405, 418, 428, 434, 447, 453, 466, 478, 486, 491, 497, 511, 526, 532, 542, 549, 557,
    563, 573, 580, 588, 594, 600, 606, 619, 633, 640, 648, 666, 675, 685, 693, 703, 718, 728, 736,
    747, 759, 778, 792, 802, 811, 821, 835, 845, 860, 870, 891, 903, 913, 926, 938, 950, 963, 977,
    989, 1002, 1020, 1032, 1050, 1074, 1085, 1099, 1111, 1136, 1152, 1169, 1183, 1205, 1220, 1236,
    1255, 1269, 1285, 1306, 1347, 1361, 1389, 1404, 1420, 1436, 1461, 1477, 1502, 1522, 1539, 1561,
    1579, 1600, 1616, 1649, 1673, 1698, 1716, 1734, 1759, 1777, 1800, 1824, 1844, 1863, 1887, 1906,
    1926, 1954, 1979, 2005, 2040, 2070, 2103, 2125, 2152, 2195, 2217, 2247, 2278, 2315, 2339, 2367,
    2392, 2416, 2447, 2473, 2502, 2528, 2565, 2601, 2640, 2668, 2701, 2737, 2772, 2802, 2831, 2875,
    2906, 2938, 2979, 3015, 3056, 3101, 3151, 3186, 3224, 3265, 3299, 3344, 3387, 3423, 3466, 3502,
    3539, 3579, 3616, 3658, 3697, 3751, 3792, 3840, 3883, 3924, 3970, 4015, 4069, 4112, 4165, 4207,
    4252, 4318, 4365, 4418, 4468, 4513, 4567, 4626, 4681, 4731, 4780, 4838, 4901, 4954, 5008, 5063,
    5116, 5172, 5225, 5279, 5334, 5391, 5449, 5506, 5566, 5637, 5694, 5763, 5823, 5896, 5975, 6039,
    6102, 6169, 6233, 6296, 6363, 6427, 6518, 6589, 6655, 6730, 6799, 6878, 6956, 7033, 7108, 7185,
    7281, 7360, 7445, 7520, 7596, 7675, 7770, 7855, 7935, 8030, 8111, 8194, 8290, 8377, 8474, 8559,
    8654, 8744, 8837, 8928, 9019, 9111, 9206, 9303, 9400, 9497, 9601, 9708, 9813, 9916, 10017, 10120,
    10241, 10351, 10458, 10567, 10676, 10787, 10899, 11015, 11130, 11245, 11358, 11475, 11590, 11711,
    11829, 11956, 12087, 12208, 12333, 12460, 12593, 12726, 12857, 13002, 13143, 13284, 13417, 13558,
    13695, 13833, 13974, 14115, 14272, 14415, 14560, 14713, 14862, 15011, 15170, 15325, 15496, 15651,
    15808, 15977, 16161, 16336, 16505, 16674, 16851, 17024, 17195, 17376, 17559, 17742, 17929, 18116,
    18309, 18503, 18694, 18909, 19126, 19325, 19539, 19740, 19939, 20152, 20355, 20564, 20778, 20988,
    21199, 21412, 21629, 21852, 22073, 22301, 22536, 22779, 23010, 23252, 23491, 23730, 23971, 24215,
    24476, 24721, 24976, 25230, 25493, 25756, 26022, 26291, 26566, 26838, 27111, 27392, 27682, 27959,
    28248, 28548, 28845, 29138, 29434, 29731, 30037, 30346, 30654, 30974, 31285, 31605, 31948, 32272,
    32601, 32932, 33282, 33623, 33961, 34302, 34654, 35031, 35395, 35750, 36112, 36479, 36849, 37227,
    37606, 37992, 38385, 38787, 39176, 39576, 39980, 40398, 40816, 41226, 41641, 42067, 42490, 42916,
    43388, 43840, 44279, 44729, 45183, 45638, 46104, 46574, 47047, 47523, 48007, 48489, 48976, 49470,
    49978, 50511, 51017, 51530, 52062, 52586, 53114, 53650, 54188, 54735, 55289, 55843, 56403,
)
# What the raptorq binding's `with_defaults(F, T)` feeds RFC 6330 section 4.3: decoder
# memory WS = 10 MiB, alignment Al = 8 and sub-symbol size SS = 8 (both 1 when T < 64).
DECODER_MEMORY = 10 * 1024 * 1024


def extended_k(k: int) -> int:
    """K': the smallest K' of Table 2 that is >= K (RFC 6330 section 5.3.1)."""
    return K_PRIME[bisect_left(K_PRIME, k)]


def oti(transfer_length: int, symbol_size: int) -> dict[str, int]:
    """The object transmission information (RFC 6330 section 3.3) RFC 6330 section 4.3
    derives for an object of ``transfer_length`` bytes sent in ``symbol_size``-byte symbols."""
    al = ss = 8 if symbol_size >= 64 else 1
    t = symbol_size - symbol_size % al
    kt = ceil_div(transfer_length, t)
    n_max = t // (ss * al)

    def kl(n: int) -> int:
        bound = DECODER_MEMORY // (al * ceil_div(t, al * n))
        return K_PRIME[bisect_right(K_PRIME, bound) - 1]

    z = ceil_div(kt, kl(n_max))
    n = next((i for i in range(1, n_max + 1) if ceil_div(kt, z) <= kl(i)), n_max)
    return {"F": transfer_length, "T": t, "Z": z, "N": n, "Al": al}


def oti_hex(p: dict[str, int]) -> str:
    """The 12-byte encoded OTI (RFC 6330 section 3.3.2 and 3.3.3): F (40 bits), reserved
    (8 bits), T (16 bits), Z (8 bits), N (16 bits), Al (8 bits), big-endian."""
    return (
        p["F"].to_bytes(5, "big") + b"\0" + p["T"].to_bytes(2, "big") + p["Z"].to_bytes(1, "big")
        + p["N"].to_bytes(2, "big") + p["Al"].to_bytes(1, "big")
    ).hex()


def ranges(values: list[int]) -> list[list[int]]:
    """[[start, count], ...] runs of sorted integers, as decode proofs write symbol sets."""
    out: list[list[int]] = []
    for v in sorted(values):
        if out and out[-1][0] + out[-1][1] == v:
            out[-1][1] += 1
        else:
            out.append([v, 1])
    return out


def stripe_parameters(lay: Layout, block_len: int) -> list[dict]:
    out = []
    for s in range(lay.stripes):
        k, r, t = lay.stripe_k(s), lay.repair_counts[s], lay.symbol_size
        p = oti(k * t, t)
        out.append({
            "stripe": s,
            "source_symbols": k,
            "file_symbols": f"j = {s} + {lay.stripes} * i for i in 0..{k - 1}",
            "repair_symbols": r,
            "budget": lay.budget(s),
            "oti": p,
            "oti_hex": oti_hex(p),
            "extended_source_symbols": extended_k(k),
            "source_esis": [[0, k]],
            "repair_esis": [[k, r]],
            "repair_offset": block_len + lay.repair_starts[s] * t,
        })
    return out


# -- artifacts and damage ---------------------------------------------------------------------


def payload_bytes(name: str, size: int) -> bytes:
    return blake3.blake3(f"ftstore test vector payload: {name}".encode()).digest(length=size)


def b3(data: bytes) -> str:
    return "blake3:" + blake3.blake3(data).hexdigest()


@dataclass
class Artifact:
    name: str
    size: int
    overhead: float = 0.10
    symbol_size: int | None = None
    artifact_type: str = "file"
    metadata: dict[str, str] = field(default_factory=dict)
    note: str = ""

    @property
    def artifact_id(self) -> str:
        return blake3.blake3(f"ftstore test vector id: {self.name}".encode()).hexdigest(length=16)

    def essentials(self, payload: bytes) -> ArtifactEssentials:
        return ArtifactEssentials(
            artifact_id=self.artifact_id, artifact_type=self.artifact_type, name=self.name, size=len(payload),
            source_hash=b3(payload), created_unix_ms=CREATED_UNIX_MS, metadata=self.metadata,
        )


ARTIFACTS = [
    Artifact("empty", 0, note="no symbols, no stripes: the sidecar is two metadata blocks and the trailer"),
    Artifact("one-byte", 1, artifact_type="ledger", metadata={"b": "2", "a": "1"},
             note="one source symbol (1 byte, zero-padded to T) and 3 repair symbols"),
    Artifact("two-stripes", 1025 * 256 - 100, symbol_size=256,
             note="T = 256 given explicitly (a writer would pick 512): N = 1025 > 1024 symbols make 2 stripes "
                  "of 513 and 512 symbols; the last symbol is 156 bytes"),
    Artifact("overhead-50", 10_000, overhead=0.5,
             note="overhead 0.5: 40 symbols (the last 16 bytes), 22 repair symbols, repair budget 20"),
]


def op_xor(file: str, offset: int, length: int, mask: int = 0xFF) -> dict:
    return {"file": file, "op": "xor", "offset": offset, "length": length, "mask": mask}


def op_zero(file: str, offset: int, length: int) -> dict:
    return {"file": file, "op": "zero", "offset": offset, "length": length}


def op_truncate(file: str, length: int) -> dict:
    return {"file": file, "op": "truncate", "length": length}


def op_delete(file: str) -> dict:
    return {"file": file, "op": "delete"}


def op_insert(file: str, offset: int, data: bytes) -> dict:
    return {"file": file, "op": "insert", "offset": offset, "data_hex": data.hex()}


def apply(op: dict, d: Path) -> None:
    p = d / op["file"]
    if op["op"] == "delete":
        p.unlink()
        return
    data = bytearray(p.read_bytes())
    kind = op["op"]
    if kind in ("xor", "zero"):
        a, n = op["offset"], op["length"]
        assert a + n <= len(data), op
        data[a : a + n] = bytes((b ^ op["mask"]) if kind == "xor" else 0 for b in data[a : a + n])
    elif kind == "truncate":
        assert op["length"] <= len(data), op
        del data[op["length"] :]
    elif kind == "insert":
        assert op["offset"] <= len(data), op
        data[op["offset"] : op["offset"]] = bytes.fromhex(op["data_hex"])
    else:
        raise ValueError(op)
    p.write_bytes(bytes(data))


def duplicate_size_key(envelope: bytes, wrong: int) -> dict:
    """Insert ``"size": <wrong>,`` before the envelope's ``"size"`` line: the key is then given
    twice, the true value last (a last-value-wins reader would accept it, checksum and all)."""
    at = envelope.index(b'\n  "size": ') + 1
    return op_insert("envelope.json", at, f'  "size": {wrong},\n'.encode())


def damages(a: Artifact, d: Path, lay: Layout, block_len: int) -> list[tuple[str, str, list[dict]]]:
    """(name, description, operations) of each damaged variant of artifact ``a`` in ``d``."""
    env = (d / "envelope.json").read_bytes()
    t, size = lay.symbol_size, lay.size
    side = (d / "sidecar.ftrq").stat().st_size

    def rep(s: int, k: int) -> int:
        return block_len + (lay.repair_starts[s] + k) * t

    common = [
        ("envelope-duplicate-key", "the envelope gives `size` twice (wrong value first): refused, rebuilt from the sidecar",
         [duplicate_size_key(env, size + 1)]),
        ("envelope-deleted", "envelope.json lost: rebuilt from the sidecar header", [op_delete("envelope.json")]),
    ]
    if a.name == "empty":
        return common + [
            ("payload-extended", "3 bytes appended to the empty payload: cut back", [op_insert("payload", 0, b"\x01\x02\x03")]),
            ("sidecar-copy-a-damaged", "metadata block A zeroed (magic and header): the sidecar fails its BLAKE3 "
             "in the envelope and is re-encoded", [op_zero("sidecar.ftrq", 0, 64)]),
            ("envelope-and-sidecar-lost", "both envelope and sidecar deleted: nothing records the payload",
             [op_delete("envelope.json"), op_delete("sidecar.ftrq")]),
        ]
    if a.name == "one-byte":
        return common + [
            ("payload-byte-flipped", "the only byte xor 0xff: decoded from repair symbols", [op_xor("payload", 0, 1)]),
            ("payload-deleted", "payload file lost: every source symbol erased, decoded from repair symbols",
             [op_delete("payload")]),
            ("payload-damaged-envelope-lost", "payload byte flipped and envelope lost: two proofs, payload then "
             "envelope, in a new chain", [op_xor("payload", 0, 1), op_delete("envelope.json")]),
            ("payload-and-every-repair-symbol", "payload byte flipped and all 3 repair symbols damaged: "
             "4 erasures > 3 repair symbols", [op_xor("payload", 0, 1)] + [op_xor("sidecar.ftrq", rep(0, k), 1) for k in range(3)]),
        ]
    if a.name == "two-stripes":
        return common + [
            ("payload-range-zeroed", "bytes [1000, 6000) zeroed: file symbols 3..23 (11 in stripe 1, 10 in stripe 0)",
             [op_zero("payload", 1000, 5000)]),
            ("payload-truncated", "payload cut to 250000 bytes: file symbols 976..1024 erased (25 in stripe 0, 24 in stripe 1)",
             [op_truncate("payload", 250_000)]),
            ("payload-and-repair-symbols", "file symbols 1 and 3 (stripe 1, positions 0 and 1) flipped and repair "
             "symbols 0 and 2 of stripe 1 damaged: decoded without them, then the sidecar is re-encoded",
             [op_xor("payload", 1 * t, 1), op_xor("payload", 3 * t + 7, 1), op_xor("sidecar.ftrq", rep(1, 0), 1),
              op_xor("sidecar.ftrq", rep(1, 2) + 100, 4)]),
            ("envelope-lost-sidecar-copy-a-damaged", "envelope deleted and metadata block A damaged: the envelope is "
             "rebuilt from copy B, the sidecar re-encoded; proofs sidecar then envelope",
             [op_delete("envelope.json"), op_xor("sidecar.ftrq", 20, 8)]),
            ("stripe-0-beyond-budget", "file symbols 0, 2, ..., 110 (56 symbols of stripe 0) zeroed: more than its 54 "
             "repair symbols", [op_xor("payload", j * t, 1) for j in range(0, 112, 2)]),
        ]
    if a.name == "overhead-50":
        return common + [
            ("payload-budget-used-up", "symbols 10..29 (20 = the budget) zeroed", [op_zero("payload", 10 * t, 20 * t)]),
            ("payload-beyond-repair", "symbols 0..22 zeroed: 23 erasures > 22 repair symbols", [op_zero("payload", 0, 23 * t)]),
            ("sidecar-tail-cut", "sidecar cut by 1000 bytes (copy B and trailer lost): re-encoded",
             [op_truncate("sidecar.ftrq", side - 1000)]),
            ("last-symbol-and-sidecar-copy-b", "the short last symbol flipped and metadata block B damaged: decoded "
             "with copy A, then the sidecar re-encoded", [op_xor("payload", size - 1, 1), op_xor("sidecar.ftrq", side - 100, 1)]),
        ]
    raise ValueError(a.name)


def file_hashes(d: Path) -> dict[str, str | None]:
    return {f: b3((d / f).read_bytes()) if (d / f).exists() else None for f in FILES}


def erasures(paths: FolderLeaves) -> list[dict] | None:
    """Per damaged stripe: erased source symbols (positions in the stripe) and the repair
    symbols (indices in the stripe) that fail their hash. None without a usable sidecar."""
    try:
        meta = read_meta(paths.sidecar)
    except SidecarError:
        return None
    out = []
    for oc in check_and_decode(paths.payload, paths.sidecar, meta, 1, decode=False):
        if oc.erased:
            out.append({"stripe": oc.stripe, "erased_source": ranges(oc.erased), "bad_repair": ranges(oc.bad_repair),
                        "intact": oc.k - len(oc.erased) + oc.r - len(oc.bad_repair), "needed": oc.k})
    return out


def run_case(a: Artifact, src: Path, work: Path, name: str, description: str, ops: list[dict]) -> dict:
    d = work / "artifacts" / a.name / "1"
    if d.parent.exists():
        shutil.rmtree(d.parent)
    d.mkdir(parents=True)
    for f in FILES:
        shutil.copyfile(src / f, d / f)
    for op in ops:
        apply(op, d)
    damaged = file_hashes(d)
    paths = FolderLeaves(d, ArtifactKey(a.name, 1))
    h = check(paths)
    case = {
        "name": name,
        "description": description,
        "operations": ops,
        "damaged_files": damaged,
        "detected": {
            "envelope": h.envelope_problem is not None,
            "sidecar": h.sidecar_problem is not None,
            "payload": h.payload_problem is not None,
        },
    }
    if h.payload_problem:
        case["erasures"] = erasures(paths)
    try:
        res = repair(paths, h, reason=REPAIR_REASON, jobs=1, now_ms=REPAIR_UNIX_MS)
    except UnrecoverableError:
        assert file_hashes(d) == damaged, f"{a.name}/{name}: an unrecoverable repair wrote something"
        case["outcome"] = "unrecoverable"
        return case
    after = check(paths)
    assert after.intact, (a.name, name, after.problems)
    assert (d / "payload").read_bytes() == (src / "payload").read_bytes(), (a.name, name)
    case["outcome"] = "repaired"
    case["repaired"] = res.repaired
    case["decode_proofs"] = msgspec.to_builtins(res.proofs)
    case["repaired_files"] = file_hashes(d)
    return case


def build_artifact(a: Artifact, out: Path) -> tuple[Layout, int, int]:
    d = out / a.name
    d.mkdir(parents=True)
    payload = payload_bytes(a.name, a.size)
    (d / "payload").write_bytes(payload)
    info = write_sidecar(d / "payload", d / "sidecar.ftrq", a.essentials(payload), a.overhead, a.symbol_size, jobs=1, version=1)
    env = envelope_from(a.essentials(payload), 1, raptorq_section(info))
    (d / "envelope.json").write_bytes(encode_envelope(env))
    meta = read_meta(d / "sidecar.ftrq")
    return info.layout, meta.block_len, meta.header.sidecar_version


def generate(out: Path) -> None:
    """Write every vector file into ``out`` (which must not exist yet)."""
    out.mkdir(parents=True)
    artifacts = []
    sidecar_version = None
    with tempfile.TemporaryDirectory(prefix="ftstore-vectors-") as tmp:
        for a in ARTIFACTS:
            lay, block_len, sidecar_version = build_artifact(a, out)
            src = out / a.name
            cases = [run_case(a, src, Path(tmp), *dmg) for dmg in damages(a, src, lay, block_len)]
            artifacts.append({
                "name": a.name,
                "note": a.note,
                "files": {f: {"path": f"{a.name}/{f}", "size": (src / f).stat().st_size, "blake3": b3((src / f).read_bytes())}
                          for f in FILES},
                "payload_generator": f"BLAKE3 extended output of the UTF-8 text 'ftstore test vector payload: {a.name}', "
                                     f"first {a.size} bytes",
                "raptorq": {
                    "symbol_size": lay.symbol_size,
                    "stripes": lay.stripes,
                    "source_symbols": lay.source_symbols,
                    "overhead": a.overhead,
                    "repair_symbols_per_stripe": list(lay.repair_counts),
                    "metadata_block_length": block_len,
                    "stripe_objects": stripe_parameters(lay, block_len),
                },
                "damaged_variants": cases,
            })
    manifest = {
        "format": VECTORS_FORMAT,
        "vectors_version": VECTORS_VERSION,
        "envelope_schema_version": ENVELOPE_SCHEMA_VERSION,
        "sidecar_version": sidecar_version,
        "raptorq_library_version": library_version(),
        "described_in": "docs/format.md, section 'Test vectors'",
        "repair": {"reason": REPAIR_REASON, "time_unix_ms": REPAIR_UNIX_MS},
        "artifacts": artifacts,
    }
    (out / "vectors.json").write_text(json.dumps(manifest, indent=2) + "\n")


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "docs" / "vectors"
    if out.exists():
        shutil.rmtree(out)
    generate(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
