"""Coverage-guided fuzzing of every parser of untrusted bytes, with atheris.

    pip install atheris && python fuzz/fuzz_parsers.py -max_total_time=300 [corpus_dir]

Any exception other than ftstore's documented errors (FtstoreError and subclasses) is a
bug: atheris stops and writes the input to ``crash-<sha1>``. Copy such an input to
``tests/fixtures/fuzz/<parser>-<what>`` so the regular suite keeps it fixed.
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports():
    import msgspec
    import numpy as np

    from ftstore.payloads.bundle_format import BundleManifest
    from ftstore.errors import FtstoreError
    from targets import PARSERS

TMP = Path(tempfile.mkdtemp(prefix="ftstore-fuzz-"))
atexit.register(shutil.rmtree, TMP, True)
NAMES = sorted(PARSERS)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    name = NAMES[data[0] % len(NAMES)]
    try:
        PARSERS[name](data[1:])
    except FtstoreError:
        pass


def seed_corpus(directory: Path) -> None:
    """Valid examples of every input kind, so the fuzzer starts inside the formats."""
    from ftstore import Store

    directory.mkdir(parents=True, exist_ok=True)
    store = Store.open(TMP / "store", create=True)
    src = TMP / "src"
    src.write_bytes(os.urandom(5000))
    env = store.save(src, "seed")
    paths = store.paths("seed", env.version)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("manifest.json", msgspec.json.encode(BundleManifest(backend="pytorch", models=[])))
        zf.writestr("params.json", b'{"values": {"N": {"type": "int", "value": 8}}}')
    samples = {
        "envelope": paths.envelope.read_bytes(),
        "sidecar": paths.sidecar.read_bytes(),
        "manifest": msgspec.json.encode(BundleManifest(backend="tensorflow", models=[])),
        "params": b'{"values": {"N": {"type": "int", "value": 8}, "p": {"type": "tensor", "member": "params/0.npy", "dtype": "<f4", "shape": [2]}}}',
        "pickle": __import__("pickle").dumps({"N": 8, "probe": np.ones(3, np.complex64)}),
        "report": b'{"format": "ftstore-scrub-report", "schema_version": 1}',
        "bundle": buf.getvalue(),
        "zip": buf.getvalue(),
    }
    for name, data in samples.items():
        (directory / name).write_bytes(bytes([NAMES.index(name)]) + data)


def main() -> None:
    args = sys.argv[1:]
    corpus = next((a for a in args if not a.startswith("-")), None)
    if corpus is None:
        corpus = str(TMP / "corpus")
        args.append(corpus)
    seed_corpus(Path(corpus))
    atheris.Setup([sys.argv[0], *args], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
