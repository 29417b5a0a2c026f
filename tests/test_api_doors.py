"""Every door into ftstore (the CLI, the API, the checkpoint manager) gives the same input
the same validation, and a store that cannot be used is a clear error, not a disk-full."""

from __future__ import annotations

import json
import os
import zipfile

import pytest

from ftstore import CheckpointManager, api
from ftstore.errors import BadInputError

from .conftest import run_cli


def _malformed_bundle(tmp_path):
    """A zip that says it is an ftstore bundle, with a manifest that breaks its schema."""
    path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("manifest.json", json.dumps({"format": "ftstore-bundle", "format_version": 1,
                                                 "backend": "pytorch", "models": "not a list"}))
        zf.writestr("params.json", "{}")
    return path


def test_a_malformed_typed_payload_gets_the_same_refusal_through_every_door(store, tmp_path):
    bad = _malformed_bundle(tmp_path)
    res = run_cli("save", str(bad), "--name", "run", store=store, check_rc=2)
    cli_message = res.stderr.strip().removeprefix("ftstore: error: ")
    with pytest.raises(BadInputError) as through_api:
        api.save(store, bad, "run")
    with pytest.raises(BadInputError) as through_manager:
        CheckpointManager(store, "run").save(0, bad)
    assert "manifest.json" in cli_message
    assert cli_message == str(through_api.value) == str(through_manager.value)
    assert store.names() == []


def test_wrong_credentials_are_a_clear_error_with_what_the_server_said(seaweed, make_file, monkeypatch):
    url = f"s3://ftstore-doors/creds-{os.getpid()}"
    api.open_store(url, create=True)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    src = make_file(1000)
    for args in (["ls"], ["save", str(src), "--name", "a"]):
        res = run_cli(*args, "--store", url, check_rc=2)
        assert "object storage error" in res.stderr and "403" in res.stderr and "credentials" in res.stderr
        assert "no space" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_an_unreachable_endpoint_is_a_clear_error(make_file, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "k")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    res = run_cli("save", str(make_file(100)), "--name", "a", "--store", "s3://nowhere/x", check_rc=2, timeout=120)
    assert "object storage error" in res.stderr and "127.0.0.1:9" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
