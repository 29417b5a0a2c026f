"""The command line of a child Python process that runs this very ``ftstore``.

Codec workers and background protectors are programs of their own, started by a trainer
or by the CLI. They must run the code their parent runs, under the rules it runs under:

- the same interpreter with the same isolation flags: a trainer started with ``-I`` or
  ``-E`` ignores ``PYTHONPATH`` and the user's site folder, so must its children;
- this package, loaded from the folder it was loaded from, whatever else is installed or
  on the path (a vendored copy, another release in ``site-packages``);
- nothing from the working folder: with ``-m`` or a script, Python puts that folder (or
  the script's) first on the path, and a project's own ``random.py`` or ``queue.py`` would
  run in place of the standard library's; ``-c`` puts ``''`` there, which the bootstrap
  drops;
- the standard library ahead of the folder that holds ``ftstore``: that folder is added
  *last*, if it is not already on the path. For a non-editable install it is
  ``site-packages``, where a stale backport of a standard module could lie; putting it
  first (on ``PYTHONPATH``, as earlier releases did) let such a module shadow the real one.

The package itself is loaded by file location, so the folder's place on the path only
matters for the libraries that may be vendored beside it. Where there is no source file
to load (a zip archive, a bytecode-only install), the folder goes first on the path
instead, for the import system to read.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
"""The folder that holds this ``ftstore`` package."""

_BOOTSTRAP = """\
import sys
root = sys.argv.pop(1)
sys.path[:] = [p for p in sys.path if p]
try:
    import importlib.util, os
    init = os.path.join(root, "ftstore", "__init__.py")
    if os.path.isfile(init):
        if root not in sys.path:
            sys.path.append(root)
        spec = importlib.util.spec_from_file_location(
            "ftstore", init, submodule_search_locations=[os.path.dirname(init)])
        package = importlib.util.module_from_spec(spec)
        sys.modules["ftstore"] = package
        spec.loader.exec_module(package)
    else:  # a zip archive, bytecode only: what only the import system reads
        sys.path.insert(0, root)
    from {module} import main
except Exception as e:
    sys.exit(f"{module} cannot start: {{type(e).__name__}}: {{e}}")
sys.exit(main(sys.argv[1:]))
"""


def flags() -> list[str]:
    """The parent's flags that decide where a child finds its code (``-I``, ``-E``, ``-s``,
    ``-P``) or whether it writes bytecode (``-B``). ``-S`` is not passed on: a parent
    without ``site`` found its libraries by other means, which the child could not repeat."""
    f = sys.flags
    if f.isolated:
        chosen = ["-I"]  # implies -E, -s and -P
    else:
        chosen = [opt for on, opt in ((f.ignore_environment, "-E"), (f.no_user_site, "-s"),
                                      (getattr(f, "safe_path", False), "-P")) if on]
    return chosen + (["-B"] if f.dont_write_bytecode else [])


def command(module: str, *args: str) -> list[str]:
    """Run ``module.main(args)`` of this ``ftstore`` in a new interpreter; its return value
    is the exit status. ``module`` is a dotted name inside this package."""
    if not module.startswith("ftstore.") or not module.replace(".", "").replace("_", "").isalnum():
        raise ValueError(f"not a module of ftstore: {module!r}")
    return [sys.executable, *flags(), "-c", _BOOTSTRAP.format(module=module), PACKAGE_ROOT, *args]


def how_it_ended(returncode: int) -> str:
    """A child's end in words: ``killed by SIGKILL`` for a signal, else its exit status."""
    if returncode < 0:
        number = -returncode
        return f"killed by {signal.Signals(number).name if number in signal.valid_signals() else number}"
    return f"exit status {returncode}"


__all__ = ["PACKAGE_ROOT", "command", "flags", "how_it_ended"]
