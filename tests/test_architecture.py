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


def test_no_import_inside_a_function_except_optional_heavy_libraries():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, module in function_level_imports(path.read_text()):
            if module.split(".")[0] not in OPTIONAL_HEAVY:
                offenders.append(f"{path.relative_to(ROOT)}:{line}: import {module}")
    assert offenders == []


def test_the_import_check_sees_an_import_inside_a_function():
    code = "import os\ndef f():\n    import json\n    from ftstore import api\n"
    assert function_level_imports(code) == [(3, "json"), (4, "ftstore")]
