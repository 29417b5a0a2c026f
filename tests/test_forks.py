"""A training process forks (fork-based DataLoader workers, multiprocessing) while its
threads save: the child must neither hang on an import the fork caught half done, nor
start a codec worker pool of its own. Each case is a real process tree."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

_FORK_DURING_FIRST_SAVE = textwrap.dedent("""
    import os, signal, sys, threading, time
    import ftstore
    folder, delay = sys.argv[1], float(sys.argv[2])
    with open(folder + "/a.bin", "wb") as f:
        f.write(os.urandom(20 << 20))
    store = ftstore.open_store(folder + "/st", create=True)
    saving = threading.Thread(target=store.save, args=(folder + "/a.bin", "bg"))  # a background checkpoint
    saving.start()
    time.sleep(delay)
    pid = os.fork()  # a fork-based DataLoader worker, say
    if pid == 0:
        signal.alarm(30)  # a hang ends as SIGALRM
        store.save(folder + "/a.bin", "child")
        os._exit(0)
    saving.join()
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
""")


@pytest.mark.parametrize("delay", [0.0, 0.005, 0.02])
def test_a_child_forked_during_another_threads_first_save_can_save(tmp_path, delay):
    """The save engine is imported when the store is opened, not in the thread of its first
    save: a child forked while that import ran inherited its lock and waited forever."""
    res = subprocess.run([sys.executable, "-c", _FORK_DURING_FIRST_SAVE, str(tmp_path), str(delay)],
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["0"], res.stdout + res.stderr  # the child's exit code
    store = __import__("ftstore").open_store(tmp_path / "st")
    assert [h.payload_problem for h in store.verify()] == [None, None]


_CHILD_SAVES = textwrap.dedent("""
    import os, sys
    from ftstore import Store  # the API imported; no store opened, no codec used before the fork
    folder = sys.argv[1]
    pid = os.fork()
    if pid == 0:
        with open(folder + "/a.bin", "wb") as f:
            f.write(os.urandom(40 << 20))  # past the size from which the codec runs in workers
        Store.open(folder + "/st", create=True).save(folder + "/a.bin", "m")
        me, kids = str(os.getpid()), 0
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/stat") as f:
                    kids += f.read().rsplit(")", 1)[1].split()[1] == me
            except (OSError, IndexError):
                pass
        print(kids, flush=True)
        os._exit(0)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts child processes through /proc")
def test_a_forked_child_does_its_codec_work_in_process_even_if_its_parent_never_used_the_codec(tmp_path):
    """Whether the process is a forked child is known once the API is imported; it was a
    flag of the worker pool's module, which a child forked before the pool's first use did
    not have, so each such child started a worker per core."""
    res = subprocess.run([sys.executable, "-c", _CHILD_SAVES, str(tmp_path)], capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["0", "0"], res.stdout + res.stderr  # no child processes; exit code 0
    store = __import__("ftstore").open_store(tmp_path / "st")
    assert store.load_bytes("m")[0].getvalue() == (tmp_path / "a.bin").read_bytes()


_DEFERRED_AFTER = textwrap.dedent("""
    import sys
    {setup}
    from ftstore import lazy
    print(sorted(m for m in lazy._deferred if m not in sys.modules))
""")


@pytest.mark.parametrize("setup", [
    # a Store opened before ftstore.api was imported: preloading the API registers bundles and scrub
    "from ftstore.engine.store import Store\nStore.open({root!r}, create=True)",
    # a script that ran a CLI command in-process and goes on to open a Store of its own
    "from ftstore.cli.main import main\ntry:\n    main(['ls', '--store', {root!r}])\nexcept SystemExit:\n    pass\n"
    "import ftstore\nftstore.open_store({root!r}, create=True)",
], ids=["store-before-api", "after-an-in-process-command"])
def test_a_store_leaves_nothing_to_import_on_first_use(tmp_path, setup):
    code = _DEFERRED_AFTER.format(setup=setup.format(root=str(tmp_path / "st")))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]", res.stdout
