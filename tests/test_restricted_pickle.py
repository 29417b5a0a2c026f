"""The restricted unpickler: what it admits beyond plain data (each allow-list entry), what
it refuses, and that hostile streams cost time linear in their size."""

import os
import pickle
import re
import struct
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from ftstore.errors import BadInputError
from ftstore.bundles.restricted_pickle import MAX_HASHED, TensorflowTensor, UnsafePickleError, loads_plain

dill = pytest.importorskip("dill")
P61 = 2**61 - 1  # every positive multiple of it hashes to 0


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip("tensorflow")


def test_a_dill_pickled_tensorflow_tensor_becomes_its_array_a_tensor_or_a_marker():
    """PtychoPINN keeps its probe in params.cfg as an EagerTensor; dill pickles it as
    convert_to_tensor(<array rebuilt by dill._dill._create_array>)."""
    tf = _tf()
    probe = (np.arange(8, dtype=np.float32).reshape(2, 4, 1) * (1 + 2j)).astype(np.complex64)
    data = dill.dumps({"probe": tf.convert_to_tensor(probe), "scale": tf.constant(np.float32(2.5)), "N": 64})
    assert b"convert_to_tensor" in data and b"_create_array" in data

    plain = loads_plain(data, "params.dill")
    assert type(plain["probe"]) is np.ndarray and plain["probe"].dtype == np.complex64
    assert np.array_equal(plain["probe"], probe) and plain["scale"] == np.float32(2.5) and plain["N"] == 64

    tensors = loads_plain(data, "params.dill", tensors="tensorflow")
    assert isinstance(tensors["probe"], tf.Tensor) and tensors["probe"].dtype == tf.complex64
    assert np.array_equal(tensors["probe"].numpy(), probe)

    kept = loads_plain(data, "params.dill", tensors="keep")
    assert isinstance(kept["probe"], TensorflowTensor) and np.array_equal(kept["probe"].value, probe)


def _stream(*parts: bytes) -> bytes:
    return pickle.PROTO + b"\x04" + b"".join(parts) + pickle.STOP


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


CONVERT = _global("tensorflow.python.framework.ops", "convert_to_tensor")


@pytest.mark.parametrize("args", [
    pickle.SHORT_BINUNICODE + b"\x04text" + pickle.TUPLE1,          # a string
    pickle.BININT1 + b"\x07" + pickle.TUPLE1,                      # a plain int
    pickle.EMPTY_TUPLE,                                            # nothing
    pickle.NONE + pickle.NONE + pickle.TUPLE2,                     # two arguments
], ids=["str", "int", "no-args", "two-args"])
def test_the_tensor_stand_in_takes_exactly_one_numpy_array(args):
    with pytest.raises(UnsafePickleError, match="TensorFlow tensor made from something other than one plain numpy array"):
        loads_plain(_stream(CONVERT, args, pickle.REDUCE), "t")


def test_tensorflow_is_never_imported_for_a_pickle(tmp_path):
    """The allow-list maps TensorFlow's name to a stand-in: reading a pickled tensor in a
    process without TensorFlow loaded does not load it."""
    tf = _tf()
    path = tmp_path / "p.dill"
    path.write_bytes(dill.dumps({"probe": tf.constant([1.0, 2.0])}))
    code = textwrap.dedent("""
        import sys
        from ftstore.bundles.restricted_pickle import loads_plain
        print(loads_plain(open(sys.argv[1], 'rb').read(), 'p')['probe'].tolist(), 'tensorflow' in sys.modules)
    """)
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["[1.0,", "2.0]", "False"]


def test_asking_for_tensors_without_tensorflow_loaded_is_a_clear_error():
    code = "from ftstore.bundles.restricted_pickle import loads_plain\nloads_plain(b'N.', 'x', tensors='tensorflow')"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "needs TensorFlow imported first" in res.stderr


def test_other_tensorflow_and_dill_names_are_still_refused():
    for module, name in [("tensorflow.python.framework.ops", "EagerTensor"), ("tensorflow", "py_function"),
                         ("dill._dill", "_create_function"), ("dill._dill", "_load_type")]:
        stream = _stream(_global(module, name), pickle.SHORT_BINUNICODE + b"\x08function" + pickle.TUPLE1, pickle.REDUCE)
        with pytest.raises(UnsafePickleError, match="refusing"):
            loads_plain(stream, "x")


def _timed(code: str, *args: str, limit: float = 5.0) -> str:
    """Run ``code`` in a fresh interpreter; fail if it takes more than ``limit`` seconds
    (the subprocess is killed at 60 s, so a regression fails instead of hanging)."""
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert res.returncode == 0, res.stderr[-2000:]
    assert elapsed < limit, f"took {elapsed:.1f} s"
    return res.stdout


def test_shared_references_forty_levels_deep_are_read_in_linear_time(tmp_path):
    """Each level holds the one below twice: 2**40 paths through 41 objects. Reading it
    used to walk every path (minutes, doubling per level)."""
    deep: list = []
    for _ in range(40):
        deep = [deep, deep]
    path = tmp_path / "manifest.dill"
    path.write_bytes(pickle.dumps(deep, protocol=4))
    assert len(path.read_bytes()) < 400
    out = _timed("""
        import sys
        from ftstore.bundles.restricted_pickle import loads_plain
        obj = loads_plain(open(sys.argv[1], 'rb').read(), 'manifest.dill')
        depth = 0
        while obj:
            assert obj[0] is obj[1]  # sharing is kept, not copied out
            obj, depth = obj[0], depth + 1
        print(depth)
    """, str(path))
    assert out.split() == ["40"]


def _colliding_ints(n: int, value: bytes = b"") -> list[bytes]:
    """n distinct ints of one hash value (each followed by ``value``), as pickle opcodes."""
    out = []
    for k in range(1, n + 1):
        raw = pickle.encode_long(k * P61)
        out.append(pickle.LONG1 + bytes([len(raw)]) + raw + value)
    return out


def _batched(container: bytes, items: list[bytes], add: bytes) -> bytes:
    """Protocol 4's way: the container, then MARK ... ADD per 1000 items."""
    return _stream(container, *(pickle.MARK + b"".join(items[i:i + 1000]) + add for i in range(0, len(items), 1000)))


@pytest.mark.parametrize("kind", ["set", "dict-keys", "frozenset", "protocol-2-set"])
def test_sixty_thousand_hash_colliding_keys_are_refused_quickly(tmp_path, kind):
    """Inserting n keys of one hash value costs n**2 / 2 comparisons: 60,000 kept
    import-legacy busy for over 30 s. Past MAX_HASHED non-string keys the load stops."""
    ints = _colliding_ints(60_000)
    if kind == "set":
        data = _batched(pickle.EMPTY_SET, ints, pickle.ADDITEMS)
    elif kind == "dict-keys":
        data = _batched(pickle.EMPTY_DICT, _colliding_ints(60_000, pickle.NONE), pickle.SETITEMS)
    elif kind == "frozenset":
        data = _stream(pickle.MARK, *ints, pickle.FROZENSET)
    else:  # set([...]) as protocol 2 writes it
        data = (pickle.PROTO + b"\x02" + _global("__builtin__", "set") + pickle.EMPTY_LIST + pickle.MARK + b"".join(ints)
                + pickle.APPENDS + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP)
    assert len(data) > 600_000
    path = tmp_path / "params.dill"
    path.write_bytes(data)
    out = _timed("""
        import sys
        from ftstore.bundles.restricted_pickle import loads_plain
        from ftstore.errors import BadInputError
        try:
            loads_plain(open(sys.argv[1], 'rb').read(), 'params.dill')
        except BadInputError as e:
            print(e)
    """, str(path))
    assert f"more than {MAX_HASHED} dict keys or set members that are not strings" in out


def test_sets_and_dicts_within_the_bound_still_load():
    ints = {k * P61 for k in range(1, 1001)}  # colliding, but few
    doc = {"ints": ints, "frozen": frozenset({1, 2}), "by_int": {i: str(i) for i in range(500)},
           "many_str_keys": {f"k{i}": i for i in range(50_000)}}
    for proto in (2, 4):
        assert loads_plain(pickle.dumps(doc, protocol=proto), "ok") == doc
    assert loads_plain(dill.dumps(doc), "ok") == doc


def test_a_cycle_is_refused_as_nested_too_deeply():
    loop: list = []
    loop.append(loop)
    with pytest.raises(BadInputError, match="nested too deeply"):
        loads_plain(pickle.dumps(loop), "loop")


def test_refuse_calls_passes_a_pickle_that_only_names_things_and_refuses_one_that_calls():
    """custom_objects.dill is never unpickled; its opcodes alone decide whether an archive
    is refused for what PtychoPINN's loader would run."""
    import zipfile
    from pathlib import Path

    from ftstore.bundles.restricted_pickle import refuse_calls

    with zipfile.ZipFile(Path(__file__).parent / "fixtures" / "ptychopinn" / "tf-keras3-head.zip") as z:
        refuse_calls(z.read("autoencoder/custom_objects.dill"), "custom_objects.dill")  # {'relu': tf.nn.relu}
    refuse_calls(pickle.dumps({"ndarray": np.ndarray, "names": ["a"]}), "names.dill")

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    for proto in (0, 2, 4):
        with pytest.raises(UnsafePickleError, match=r"would run code when unpickled \(REDUCE after posix.system\)"):
            refuse_calls(pickle.dumps({"x": Evil()}, protocol=proto), "custom_objects.dill")
    with pytest.raises(BadInputError, match="not a readable pickle"):
        refuse_calls(b"\x80\x04garbage", "custom_objects.dill")


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _text(s: str) -> bytes:
    return b"X" + struct.pack("<I", len(s.encode())) + s.encode()


_RELU = _text("relu") + _global("tensorflow.nn", "relu") + b"s"  # {'relu': tf.nn.relu}, as PtychoPINN writes


@pytest.mark.parametrize(
    "stream, why",
    [
        (_global("os", "environ") + _text("LD_PRELOAD") + _text("/tmp/evil.so") + b"s0", "SETITEM on os.environ"),
        (_global("sys", "path") + b"(" + _text("/tmp/attacker") + b"e0", "APPENDS on sys.path"),
        (_global("sys", "path") + _text("/tmp/attacker") + b"a0", "APPEND on sys.path"),
        # the named object laundered through the memo, then changed
        (_global("os", "environ") + b"q\x050" + b"h\x05" + _text("K") + _text("V") + b"s0", "SETITEM on os.environ"),
        (_global("builtins", "__dict__") + _text("input") + _global("os", "system") + b"s0", "the name builtins.__dict__"),
        (_text("os") + _text("system.__globals__") + b"\x93" + b"0", "the name os.system.__globals__"),
        # a key that is not a string: hashing it calls its class's __hash__
        (_global("collections", "UserString") + _text("x") + b"s", "SETITEM with a key or member that is not a string"),
        (b"\x8f(" + _global("collections", "UserString") + b"\x90" + b"0", "ADDITEMS with a key or member that is not"),
        (b"(" + _global("json", "JSONEncoder") + b"I1\nd" + b"0", "DICT with a key or member that is not"),
        (b"(" + _global("json", "JSONEncoder") + b"\x91" + b"0", "FROZENSET with a key or member that is not"),
        (_global("__builtin__", "__import__") + b"0", "the name __builtin__.__import__"),
        (_global("gc", "garbage") + b"\x85" + b"(" + _text("x") + b"\x90" + b"0", "ADDITEMS on an object it did not build"),
        (_global("copyreg", "_extension_registry") + b"0\x82\x01" + b"0", "EXT1"),
    ],
)
def test_refuse_calls_refuses_a_pickle_that_changes_what_it_names(stream, why):
    """Setting an item on, or appending to, an object the stream only names calls that
    object's methods when PtychoPINN's loader reads the file (``os.environ[...] = ...``
    calls putenv; replacing ``builtins.__import__`` runs code at the next name): refused
    however the object is reached, while a dict of names, as PtychoPINN writes, passes."""
    from ftstore.bundles.restricted_pickle import refuse_calls

    refuse_calls(b"\x80\x02}" + _RELU + b".", "custom_objects.dill")
    with pytest.raises(UnsafePickleError, match=re.escape(f"would run code when unpickled ({why}")):
        refuse_calls(b"\x80\x02}" + stream + _RELU + b".", "custom_objects.dill")


@pytest.mark.parametrize("protocol", range(6))
@pytest.mark.parametrize("dumps", ["pickle", "dill"])
def test_refuse_calls_passes_names_filed_by_reference_at_every_protocol(protocol, dumps):
    """What a custom_objects.dill can genuinely hold: functions and classes by reference,
    builtins among them (protocol 2 names them ``__builtin__``; dill names builtin types
    through its ``_load_type``), with string and number keys, nested and shared."""
    import collections
    import json

    from ftstore.bundles.restricted_pickle import refuse_calls

    dill = pytest.importorskip("dill")
    shared = {"relu": np.maximum}
    objects = {"abs": abs, "float": float, "JSONEncoder": json.JSONEncoder, "OrderedDict": collections.OrderedDict,
               "nested": {"inner": shared, "again": shared}, 3: "three", "list": [len, np.ndarray]}
    data = (dill.dumps if dumps == "dill" else pickle.dumps)(objects, protocol=protocol)
    refuse_calls(data, "custom_objects.dill")


def test_build_is_refused_on_anything_but_the_numpy_stand_ins():
    """BUILD on the tensor stand-in would set its attributes, ``__class__`` among them, and
    pass any object (a cycle, a partial bound to the unpickler) off as an array."""
    scalar = (_global("numpy.core.multiarray", "scalar") + _global("numpy", "dtype") + _text("f8") + b"\x89\x88\x87R"
              + b"C\x08" + bytes(8) + b"\x86R")
    tensor = _global("tensorflow.python.framework.ops", "convert_to_tensor") + scalar + b"\x85R"
    state = (b"}" + _text("array") + b"]q\x00h\x00a" + b"s"
             + b"}" + _text("__class__") + _global("numpy.core.multiarray", "_reconstruct") + b"s" + b"\x86")
    stream = b"\x80\x02}" + _text("x") + tensor + state + b"b" + b"s."
    with pytest.raises(UnsafePickleError, match="BUILD on _TensorFromArray"):
        loads_plain(stream, "params.dill", tensors="keep")
    assert loads_plain(b"\x80\x02}" + _text("x") + tensor + b"s.", "params.dill", tensors="keep")["x"].value == 0.0


def test_an_ordered_dict_of_colliding_keys_is_refused_before_it_is_built():
    """``OrderedDict(pairs)`` (protocol 2's way) hashes every key: counted like any other."""
    import collections

    pairs = pickle.dumps([(i * (2**61 - 1), 0) for i in range(30_000)], protocol=2)  # one hash value
    stream = b"\x80\x02" + _global("collections", "OrderedDict") + pairs[2:-1] + b"\x85R."
    t = time.perf_counter()
    with pytest.raises(UnsafePickleError, match="dict keys or set members"):
        loads_plain(stream, "params.dill")
    assert time.perf_counter() - t < 3  # built first, then counted: about 10 s
    small = collections.OrderedDict([("a", 1), (2, [3])])
    assert loads_plain(pickle.dumps(small, protocol=2), "params.dill") == {"a": 1, 2: [3]}


def test_complex_numbers_pickled_by_dill_load():
    """dill writes a complex number as ``_load_type('complex')(real, imag)``."""
    dill = pytest.importorskip("dill")
    for protocol in range(6):
        assert loads_plain(dill.dumps({"c": [1 + 2j]}, protocol=protocol), "params.dill") == {"c": [1 + 2j]}
