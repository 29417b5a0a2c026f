"""Hostile archives are refused before anything is written."""

import stat
import zipfile

import pytest

from ftstore.payloads.archive import ArchiveError, ArchiveLimits, SafeZip
from ftstore.payloads.bundle_format import read_bundle
from ftstore.errors import BadInputError

from .conftest import run_cli


def _zip(path, members, **info_kw):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zi = zipfile.ZipInfo(name)
            for k, v in info_kw.get(name, {}).items():
                setattr(zi, k, v)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
    return path


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/etc/passwd", "C:/x", "a\\b", "a//b", "./a"])
def test_unsafe_member_names_are_refused(tmp_path, name):
    p = _zip(tmp_path / "a.zip", [("manifest.json", b"{}"), (name, b"x")])
    with pytest.raises(ArchiveError, match="unsafe member name"):
        SafeZip(p)


def test_symlink_members_are_refused(tmp_path):
    p = _zip(tmp_path / "a.zip", [("link", b"/etc/passwd")], link={"external_attr": (stat.S_IFLNK | 0o777) << 16})
    with pytest.raises(ArchiveError, match="symlink"):
        SafeZip(p)


def test_duplicate_members_are_refused(tmp_path):
    p = tmp_path / "a.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("manifest.json", b"{}")
        with pytest.warns(UserWarning):
            zf.writestr("manifest.json", b"{}")
    with pytest.raises(ArchiveError, match="duplicate"):
        SafeZip(p)


def test_zip_bombs_are_refused_by_ratio(tmp_path):
    p = _zip(tmp_path / "a.zip", [("weights/m.h5", bytes(50 * 1024 * 1024))])
    with pytest.raises(ArchiveError, match="zip bomb"):
        SafeZip(p)


def test_members_whose_data_overlap_are_refused(tmp_path):
    """The overlapping zip bomb: central entries pointing into one compressed stream each
    pass the ratio check. Members laid end to end, with names of any encoding, pass."""
    import struct

    names = ["a", "b", "caf\u00e9", "\u00e7\u00e0"]
    p = _zip(tmp_path / "a.zip", [(n, bytes(1000)) for n in names])
    with SafeZip(p) as z:
        assert sorted(z.names()) == sorted(names)
    data = bytearray(p.read_bytes())
    first = data.find(b"PK\x01\x02")
    second = data.find(b"PK\x01\x02", first + 1)
    data[second + 42 : second + 46] = data[first + 42 : first + 46]  # b's data is a's
    p.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="overlap"):
        SafeZip(p)


def test_member_count_and_total_size_limits(tmp_path):
    p = _zip(tmp_path / "a.zip", [(f"m{i}", b"x" * 10) for i in range(20)])
    with pytest.raises(ArchiveError, match="over the limit"):
        SafeZip(p, ArchiveLimits(max_members=10))
    with pytest.raises(ArchiveError, match="expand to over"):
        SafeZip(p, ArchiveLimits(max_total_bytes=100))


def test_a_header_that_lies_about_sizes_is_caught(tmp_path):
    p = tmp_path / "a.zip"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("manifest.json", b"A" * 100)
    raw = bytearray(p.read_bytes())
    cd = raw.rindex(b"PK\x01\x02")
    raw[cd + 24 : cd + 28] = (10).to_bytes(4, "little")  # central directory: uncompressed size 10
    p.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="damaged or lies|does not hold"):
        SafeZip(p).read("manifest.json")


def test_not_a_zip_is_a_clean_error(tmp_path):
    p = tmp_path / "a.zip"
    p.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ArchiveError, match="not a readable zip"):
        SafeZip(p)
    with pytest.raises(BadInputError):
        read_bundle(p)


def test_cli_refuses_hostile_bundle_without_storing_it(store, tmp_path):
    p = _zip(tmp_path / "b.zip", [("manifest.json", b'{"format": "ftstore-bundle"}'), ("../x", b"")])
    res = run_cli("save", str(p), "--name", "b", "--type", "model_bundle", store=store, check_rc=2)
    assert "unsafe member name" in res.stderr
    assert store.keys() == []
