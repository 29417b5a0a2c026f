"""Every parser of untrusted bytes, by name: the fuzz script's targets and the regression
fixtures' runners. Each may raise only ftstore's documented errors."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ftstore.payloads.archive import SafeZip
from ftstore.payloads.bundle_format import BundleManifest, ParamsSnapshot, decode_doc, from_snapshot, read_bundle
from ftstore.codec.sidecar import read_meta
from ftstore.documents import decode_envelope
from ftstore.bundles.restricted_pickle import loads_plain
from ftstore.scrub.report import decode_report

_TMP = Path(tempfile.mkdtemp(prefix="ftstore-fuzz-"))
atexit.register(shutil.rmtree, _TMP, True)  # one per process that imports the targets


def _as_file(data: bytes) -> Path:
    p = _TMP / "input"
    p.write_bytes(data)
    return p


def _params(data: bytes) -> None:
    snap = decode_doc(data, ParamsSnapshot, "params.json")
    from_snapshot(snap, lambda t: np.zeros(t.shape if len(t.shape) < 4 and all(d < 64 for d in t.shape) else (0,)))


def _bundle(data: bytes) -> None:
    _, _, z = read_bundle(_as_file(data))
    z.__exit__(None, None, None)


def _zip(data: bytes) -> None:
    with SafeZip(_as_file(data)) as z:
        for n in z.names()[:8]:
            z.read(n, max_bytes=1 << 20)


PARSERS: dict[str, Callable[[bytes], object]] = {
    "envelope": decode_envelope,
    "sidecar": lambda d: read_meta(_as_file(d)),
    "manifest": lambda d: decode_doc(d, BundleManifest, "manifest.json"),
    "params": _params,
    "pickle": lambda d: loads_plain(d, "fuzz.dill"),
    "report": decode_report,
    "bundle": _bundle,
    "zip": _zip,
}
