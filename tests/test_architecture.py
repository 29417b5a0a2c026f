"""The code's shape, checked: layers import only downwards and no package has an import
cycle (import-linter contracts in pyproject.toml), and no import hides inside a function
except of an optional heavy library."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ftstore"
# Optional extras (and their own dependencies): imported where they are used, so that
# ftstore works without them and does not pay for them at start-up.
OPTIONAL_HEAVY = {"torch", "tensorflow", "keras", "lightning", "pytorch_lightning", "h5py", "dill",
                  "safetensors", "boto3", "botocore", "urllib3"}
# Required, but only for some work (numpy: bundles and typed payloads; importlib.metadata:
# the codec's version, when a sidecar is written), and each costs every command 15-50 ms of
# start-up (issue 19: the CLI's start-up is a third of a 512 MiB verify).
DEFERRED = OPTIONAL_HEAVY | {"numpy", "importlib.metadata"}


def deferred(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in DEFERRED)


def test_import_linter_contracts_are_kept():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint, "import-linter is not installed (it is in requirements-dev.txt)"
    res = subprocess.run([lint, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


def function_level_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of every import statement inside a function body."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    found += [(inner.lineno, a.name) for a in inner.names]
                elif isinstance(inner, ast.ImportFrom):
                    found.append((inner.lineno, "." * inner.level + (inner.module or "")))
    return found


def test_no_import_inside_a_function_except_deferred_libraries():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, module in function_level_imports(path.read_text()):
            if not deferred(module):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: import {module}")
    assert offenders == []


def test_the_import_check_sees_an_import_inside_a_function():
    code = "import os\ndef f():\n    import json\n    from ftstore import api\n"
    assert function_level_imports(code) == [(3, "json"), (4, "ftstore")]


def test_the_cli_starts_without_the_deferred_libraries():
    """Every command pays for what the CLI imports at start-up: none of the deferred
    libraries is among it."""
    code = "import sys, ftstore.cli.main; print(sorted(m for m in sys.modules if m.split('.')[0] in %r " \
           "or m == 'importlib.metadata'))" % (sorted(DEFERRED),)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert res.stdout.strip() == "[]", res.stdout


# What only saving, repairing, bundles, scrubs or typed payloads need: a verify, a load of
# an intact version or a listing imports none of it (see ftstore.lazy). Together they were
# 60 ms of every command's start-up (issue 19).
NOT_FOR_A_VERIFY = ("ftstore.codec.build", "ftstore.codec.decoder", "ftstore.codec.encoder", "ftstore.codec.parallel",
                    "ftstore.engine.save", "ftstore.bundles.bundle", "ftstore.bundles.legacy", "ftstore.scrub.scrubber",
                    "ftstore.scrub.drill", "ftstore.payloads.typed", "zipfile", "pickle", "subprocess",
                    "concurrent.futures")


def test_a_verify_imports_nothing_only_saving_or_repairing_needs(tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(bytes(range(256)) * 300)
    store = tmp_path / "s"
    subprocess.run([sys.executable, "-m", "ftstore.cli", "save", str(src), "--name", "a", "--store", str(store)],
                   check=True, capture_output=True, cwd=tmp_path)
    code = ("import sys\nfrom ftstore.cli.main import main\n"
            f"for argv in (['verify', 'a'], ['load', 'a', '-o', {str(tmp_path / 'out')!r}], ['ls'], ['show', 'a']):\n"
            f"    sys.argv = ['ftstore', *argv, '--store', {str(store)!r}]\n"
            "    try:\n        main()\n    except SystemExit as e:\n        assert e.code == 0, (argv, e.code)\n"
            f"print(sorted(m for m in sys.modules if m in {NOT_FOR_A_VERIFY!r}), file=sys.stderr)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip().splitlines()[-1] == "[]", res.stderr
    assert (tmp_path / "out").read_bytes() == src.read_bytes()


def test_the_type_hints_of_public_functions_resolve():
    """Names a module imports only for type checking cannot be resolved at run time; the
    engine's and the API's public signatures name only what they import."""
    import typing

    from ftstore import api
    from ftstore.engine import integrity, store

    for fn in (integrity.raptorq_section, integrity.unrecoverable_message, integrity.repair, api.scrub,
               api.run_drill, api.compare_baseline, api.BaselineComparison, store.Store.save_written,
               store.Store.load, store.Store.save):
        assert typing.get_type_hints(fn), fn
