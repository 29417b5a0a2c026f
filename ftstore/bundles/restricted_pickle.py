"""Reading legacy ``.dill`` / pickle files that may be hostile.

Unpickling can run arbitrary code, so only plain data is admitted: dict, list, tuple,
set, str, bytes, numbers, bool, None, and numpy arrays and scalars of plain dtypes
(bool, integers, floats, complex, fixed-length bytes and str). Any other global the stream
asks for is refused with an error that names it, before it is imported or called. Every
global admitted is an entry of ``_GLOBALS``, mapped to a stand-in defined here; none of
the named functions is ever imported or called with the stream's data.

numpy's own reconstructors are never handed the stream's data: fed a crafted state,
``dtype.__setstate__`` crashes the interpreter (found by fuzz/fuzz_parsers.py). Instead the
names numpy pickles refer to map to small builders here, which validate the dtype, shape
and byte count and then make the array with ``np.frombuffer``.

A TensorFlow tensor pickled by dill (PtychoPINN keeps its probe in ``params.cfg`` as one)
is ``tensorflow.python.framework.ops.convert_to_tensor(<array>)``: the stand-in accepts
only an array made by the builders above and yields a :class:`TensorflowTensor` holding
it; :func:`loads_plain` turns that into a numpy array, a real tensor, or keeps the marker,
as the caller asks.

Work is linear in the stream: results are memoised by identity, so shared references are
visited once (a 355-byte stream sharing each level twice, 40 levels deep, used to take
minutes), and at most ``MAX_HASHED`` keys and set members other than ``str`` may be
hashed in one load (60,000 ints of one hash value made building one set quadratic).
"""

from __future__ import annotations

import functools
import io
import pickle
import pickletools
import re
import struct
import sys
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np

from ftstore.errors import BadInputError
from ftstore.payloads.bundle_format import TensorflowTensor

_PLAIN_DTYPE = re.compile(r"^[<>|=]?(\?|b1|[iu][1248]|f[248]|c(8|16)|[SU]\d{1,7})$")
_MAX_ELEMENTS = 1 << 34
MAX_HASHED = 4096
"""Dict keys and set members other than ``str`` one load may hash. Ints, floats and
tuples have hashes anyone can collide, and n colliding keys cost n**2 / 2 comparisons;
str hashes are salted per process. Params and manifests have str keys."""
TensorMode = Literal["numpy", "tensorflow", "keep"]


class UnsafePickleError(BadInputError):
    """A pickle stream that asks for something other than plain data."""


class _DType:
    """Stands in for ``numpy.dtype(spec, align, copy)`` and takes its ``__setstate__``."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = True):
        if not isinstance(spec, str) or not _PLAIN_DTYPE.match(spec):
            raise UnsafePickleError(f"numpy dtype {spec!r} is not a plain dtype")
        self.spec, self.byteorder = spec, None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) >= 5 and state[1] in ("<", ">", "|", "=")
                and state[2] is None and state[3] is None and state[4] is None):
            raise UnsafePickleError("numpy dtype state that is not a plain dtype")
        self.byteorder = state[1]

    def resolve(self) -> np.dtype:
        import numpy as np
        dt = np.dtype(self.spec)
        if self.byteorder in ("<", ">") and dt.byteorder not in ("|",):
            dt = dt.newbyteorder(self.byteorder)
        return dt


def _as_dtype(d: Any) -> np.dtype:
    if not isinstance(d, _DType):
        raise UnsafePickleError("numpy array with an unexpected dtype object")
    return d.resolve()


def _shape(shape: Any) -> tuple[int, ...]:
    if not (isinstance(shape, tuple) and len(shape) <= 32 and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise UnsafePickleError("numpy array with an invalid shape")
    count = 1
    for n in shape:
        count *= n
    if count > _MAX_ELEMENTS:
        raise UnsafePickleError("numpy array too large")
    return shape


def _array(shape: Any, dtype: Any, data: Any, fortran: Any = False) -> np.ndarray:
    import numpy as np
    dt, shp = _as_dtype(dtype), _shape(shape)
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError("numpy array data that is not bytes")
    if len(data) != int(np.prod(shp, dtype=np.int64)) * dt.itemsize:
        raise UnsafePickleError("numpy array data does not match its shape and dtype")
    return np.frombuffer(bytes(data), dtype=dt).reshape(shp, order="F" if fortran else "C").copy()


class _ArrayBuilder:
    """Stands in for ``numpy.core.multiarray._reconstruct(ndarray, ...)``; its
    ``__setstate__`` gets (version, shape, dtype, is_fortran, data)."""

    def __init__(self, cls: Any = None, shape: Any = None, typecode: Any = None):
        if cls is not _NDARRAY:
            raise UnsafePickleError("numpy reconstruct of something other than ndarray")
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[0], int)):
            raise UnsafePickleError("numpy array state of an unexpected form")
        _, shape, dtype, fortran, data = state
        self.array = _array(shape, dtype, data, bool(fortran))


_NDARRAY = object()  # what the stream gets for numpy.ndarray: only _ArrayBuilder accepts it


def _scalar(dtype: Any, data: Any = b"") -> np.generic:
    import numpy as np
    dt = _as_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dt.itemsize:
        raise UnsafePickleError("numpy scalar data does not match its dtype")
    return np.frombuffer(data, dtype=dt)[0]


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
    return _array(shape, dtype, buf, order == "F")


def _dill_create_array(f: Any, args: Any, state: Any, npdict: Any = None) -> _ArrayBuilder:
    """What dill emits for a numpy array, admitted only with the reconstructor above."""
    if f is not _ArrayBuilder or not isinstance(args, tuple):
        raise UnsafePickleError("dill array with an unexpected constructor")
    if npdict:
        raise UnsafePickleError("dill array carrying instance attributes")
    builder = _ArrayBuilder(*args)
    builder.__setstate__(state)
    return builder


class _TensorFromArray:
    """Stands in for ``tensorflow.python.framework.ops.convert_to_tensor``, which is what
    dill's pickle of an EagerTensor calls: one argument, an array or numpy scalar."""

    def __init__(self, *args: Any):
        import numpy as np
        if len(args) != 1 or not isinstance(args[0], (_ArrayBuilder, np.ndarray, np.generic)):
            raise UnsafePickleError("a TensorFlow tensor made from something other than one plain numpy array")
        self.value = args[0]


def _bytes(*args: Any) -> bytes:
    """How protocol 2 writes ``bytes``: ``bytes()`` or ``_codecs.encode(text, 'latin1')``.
    Nothing else: ``bytes(n)`` from a stream would allocate n bytes."""
    if not args:
        return b""
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return args[0].encode("latin1")
    raise UnsafePickleError("bytes built from something other than latin-1 text")


def _dill_load_type(name: Any) -> Any:
    """dill's way (at protocol 2) of naming builtin types; only the plain containers.
    (The unpickler swaps set and frozenset for its counting builders.)"""
    types: dict[str, Any] = {"set": set, "frozenset": frozenset, "bytes": _bytes, "complex": complex}
    if name not in types:
        raise UnsafePickleError(f"refusing dill type {name!r}: only plain data is allowed")
    return types[name]


_GLOBALS: dict[tuple[str, str], Any] = {
    ("dill._dill", "_load_type"): _dill_load_type,
    ("_codecs", "encode"): _bytes,
    ("__builtin__", "bytes"): _bytes,
    ("builtins", "bytes"): _bytes,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("collections", "OrderedDict"): dict,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DType,
    ("dill._dill", "_create_array"): _dill_create_array,
    ("tensorflow.python.framework.ops", "convert_to_tensor"): _TensorFromArray,
}
for _name in ("set", "frozenset", "complex"):  # protocol 2 writes Python 2 module names
    _GLOBALS[("__builtin__", _name)] = _GLOBALS[("builtins", _name)]
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _GLOBALS[(_mod, "_reconstruct")] = _ArrayBuilder
    _GLOBALS[(_mod, "scalar")] = _scalar
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _GLOBALS[(_mod, "_frombuffer")] = _frombuffer


class _Restricted(pickle._Unpickler):  # type: ignore[name-defined]
    """The pure-Python unpickler: its memo is a dict, so a memo index in the stream cannot
    make it allocate (the C unpickler sizes an array by the largest index: a 222-byte
    stream asked it for gigabytes; found by fuzz/fuzz_parsers.py)."""

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data))
        self._size = len(data)
        self.hashed = 0

    def charge(self, keys: Any) -> None:
        """Count keys about to be hashed; refuse past ``MAX_HASHED`` (see the module doc)."""
        self.hashed += sum(1 for k in keys if type(k) is not str)
        if self.hashed > MAX_HASHED:
            raise UnsafePickleError(f"more than {MAX_HASHED} dict keys or set members that are not strings")

    def _load_bytearray8(self) -> None:
        """BYTEARRAY8 allocates its declared length before reading: bound it by the input
        (another fuzzer find: 9 bytes asked for exabytes)."""
        (length,) = struct.unpack("<Q", self.read(8))
        if length > self._size:
            raise pickle.UnpicklingError("BYTEARRAY8 longer than the whole stream")
        buf = bytearray(length)
        if self.readinto(buf) != length:
            raise pickle.UnpicklingError("pickle data was truncated")
        self.append(buf)

    def _load_build(self) -> None:
        """BUILD only on the two stand-ins that take a state: on any other object it would
        set attributes, ``__class__`` among them, and turn one stand-in into another."""
        state = self.stack.pop()
        target = self.stack[-1]
        if type(target) not in (_DType, _ArrayBuilder):
            raise UnsafePickleError(f"BUILD on {type(target).__name__}: only numpy dtypes and arrays take a state")
        target.__setstate__(state)

    # Every opcode that hashes keys or members charges them first.
    def _load_setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        self.charge((key,))
        self.stack[-1][key] = value

    def _load_setitems(self) -> None:
        items = self.pop_mark()
        self.charge(items[0::2])
        target = self.stack[-1]
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _load_dict(self) -> None:
        items = self.pop_mark()
        self.charge(items[0::2])
        self.append({items[i]: items[i + 1] for i in range(0, len(items), 2)})

    def _load_additems(self) -> None:
        items = self.pop_mark()
        self.charge(items)
        target = self.stack[-1]
        if not isinstance(target, set):
            raise UnsafePickleError("ADDITEMS on something other than a set")
        target.update(items)

    def _load_frozenset(self) -> None:
        items = self.pop_mark()
        self.charge(items)
        self.append(frozenset(items))

    def _new_set(self, kind: type, *args: Any) -> Any:
        """``set(items)`` / ``frozenset(items)`` as protocol 2 and dill write them."""
        if len(args) > 1:
            raise UnsafePickleError(f"{kind.__name__} built from more than one argument")
        items = list(args[0]) if args else []
        self.charge(items)
        return kind(items)

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8
    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.SETITEM[0]] = _load_setitem
    dispatch[pickle.SETITEMS[0]] = _load_setitems
    dispatch[pickle.DICT[0]] = _load_dict
    dispatch[pickle.ADDITEMS[0]] = _load_additems
    dispatch[pickle.FROZENSET[0]] = _load_frozenset

    def find_class(self, module: str, name: str) -> Any:
        try:
            found = _GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refusing to unpickle {module}.{name}: only plain data is allowed") from None
        if found is _dill_load_type:
            return lambda type_name: self._counted(_dill_load_type(type_name))
        return self._counted(found)

    def _new_dict(self, *args: Any) -> dict:
        """``OrderedDict(pairs)`` as protocol 2 writes it, its keys charged before hashing."""
        if len(args) > 1:
            raise UnsafePickleError("OrderedDict built from more than one argument")
        pairs = list(args[0]) if args else []
        if not all(type(p) in (list, tuple) and len(p) == 2 for p in pairs):
            raise UnsafePickleError("OrderedDict built from something other than key-value pairs")
        self.charge(p[0] for p in pairs)
        return dict(pairs)

    def _counted(self, found: Any) -> Any:
        if found is dict:
            return self._new_dict
        return functools.partial(self._new_set, found) if found is set or found is frozenset else found

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing a pickle with persistent ids")


def loads_plain(data: bytes, source: str, *, tensors: TensorMode = "numpy") -> Any:
    """Unpickle ``data`` admitting plain data only; the result is checked again after.

    ``tensors`` says what a pickled TensorFlow tensor becomes: ``"numpy"`` its array,
    ``"tensorflow"`` a tensor again (TensorFlow must already be imported by the caller:
    ftstore never imports it for a pickle), ``"keep"`` a :class:`TensorflowTensor`."""
    if tensors == "tensorflow" and "tensorflow" not in sys.modules:
        raise RuntimeError("loads_plain(tensors='tensorflow') needs TensorFlow imported first")
    try:
        unpickler = _Restricted(data)
        obj = unpickler.load()
        return _Finisher(source, tensors, unpickler).finish(obj, 0)
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{source}: {e}") from None
    except MemoryError:
        raise  # never mistake resource exhaustion for a bad file: that would be a bug here
    except RecursionError:
        raise BadInputError(f"{source}: data nested too deeply") from None
    except BadInputError:
        raise
    except Exception as e:  # a malformed stream raises anything from the pickle machinery
        raise BadInputError(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from None


class _Finisher:
    """Swaps array builders for their arrays and checks that only plain data is left.

    Each object is finished once (memoised by identity), so the walk is linear in the
    number of distinct objects however often they are shared; an object met again while
    it is being finished (a cycle) is refused as nested too deeply."""

    MAX_DEPTH = 64

    def __init__(self, source: str, tensors: TensorMode, unpickler: _Restricted):
        import numpy as np

        self.source, self.tensors, self.unpickler = source, tensors, unpickler
        self.done: dict[int, Any] = {}
        self.arrays = (np.ndarray, np.generic)  # looked up once, not at every object
        self.leaves = (bool, int, float, complex, str, bytes, *self.arrays)

    def finish(self, obj: Any, depth: int) -> Any:
        if obj is None or isinstance(obj, self.leaves):
            return obj
        key = id(obj)
        if key in self.done:
            return self.done[key]
        if depth > self.MAX_DEPTH:
            raise BadInputError(f"{self.source}: data nested too deeply")
        result = self._convert(obj, depth + 1)
        self.done[key] = result
        return result

    def _convert(self, obj: Any, depth: int) -> Any:
        kind = type(obj)  # exact types: no stand-in or subclass passes for another
        if kind is _ArrayBuilder:
            if type(obj.array) is not self.arrays[0]:
                raise UnsafePickleError("numpy array without data")
            return obj.array
        if kind is _TensorFromArray:
            return self._tensor(self.finish(obj.value, depth))
        if kind is dict:
            self.unpickler.charge(obj)  # rebuilt below: hashed again
            return {self.finish(k, depth): self.finish(v, depth) for k, v in obj.items()}
        if kind is list:
            return [self.finish(v, depth) for v in obj]
        if kind is tuple:
            return tuple(self.finish(v, depth) for v in obj)
        if kind is set or kind is frozenset:
            self.unpickler.charge(obj)
            return kind(self.finish(v, depth) for v in obj)
        raise UnsafePickleError(f"{kind.__name__} is not plain data")

    def _tensor(self, value: Any) -> Any:
        if not isinstance(value, self.arrays):
            raise UnsafePickleError("a TensorFlow tensor made from something other than one plain numpy array")
        if self.tensors == "keep":
            return TensorflowTensor(value)
        if self.tensors == "tensorflow":
            return sys.modules["tensorflow"].convert_to_tensor(value)
        return value


_CALLING_OPCODES = {"REDUCE", "NEWOBJ", "NEWOBJ_EX", "INST", "OBJ", "BUILD", "PERSID", "BINPERSID",
                    "EXT1", "EXT2", "EXT4"}  # EXTn: a name from the loader's registry, unseen here
_MUTATING_OPCODES = {"SETITEM", "SETITEMS", "APPEND", "APPENDS", "ADDITEMS"}
_FRESH_OPCODES = {"EMPTY_DICT", "EMPTY_LIST", "EMPTY_SET", "DICT", "LIST"}
_PLAIN_OPCODES = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT", "NONE",
                  "NEWTRUE", "NEWFALSE", "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES",
                  "BINBYTES8"}  # values whose hash and equality are the interpreter's own
_HASHING_OPCODES = {"SETITEM", "SETITEMS", "ADDITEMS", "DICT", "FROZENSET"}
_PUT_OPCODES = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET_OPCODES = {"GET", "BINGET", "LONG_BINGET"}


class _Item:
    """What :func:`refuse_calls` knows of a stack entry: its kind ("mark", "fresh" for a
    dict, list or set the stream built itself, "str", "plain" for a number, bool, None or
    bytes, "global", "str1" for a tuple of one string, or "other") and, for a string, a
    global or a tuple of one string, its text."""

    __slots__ = ("kind", "text")

    def __init__(self, kind: str, text: str | None = None):
        self.kind, self.text = kind, text


_MARK = _Item("mark")


def _dunder(name: str) -> bool:
    return any(part.startswith("__") and part.endswith("__") for part in name.split("."))


_LOAD_TYPE = "dill._dill._load_type"  # dill's name for a builtin type: a call, with one string


def refuse_calls(data: bytes, source: str) -> None:
    """Refuse a pickle that would run code when unpickled, by reading its opcodes only
    (nothing is imported, built or run). A pickle that merely names classes and functions
    and files them in dicts, lists and sets it builds itself, as PtychoPINN's
    ``custom_objects.dill`` does, passes; ftstore never unpickles it.

    Refused: every opcode that calls what it is given (REDUCE, BUILD, ...), but dill's
    ``_load_type('float')``, its name for a builtin type; a set-item, append or add on
    anything but a container the stream built (on a named object, such as ``os.environ``
    or a module's ``__dict__``, it calls that object's methods); a key or set member that
    is not a string or number (hashing it calls its class's ``__hash__``); and a name with
    a dunder part (``__dict__``, ``__globals__``: the way to a module's internals), but
    the module ``__builtin__``, protocol 2's name for builtins. The stack and memo are
    followed kind by kind, so a reference fetched back from the memo is judged as what it
    is. Which modules are named is not judged: loading imports them, as any pickle by
    reference does."""
    named = "nothing named"
    stack: list[_Item] = []
    memo: dict[int, _Item] = {}

    def refuse(why: str) -> UnsafePickleError:
        return UnsafePickleError(f"{source}: would run code when unpickled ({why}); refusing the archive "
                                 "(ftstore never unpickles this file, but PtychoPINN's loader would)")

    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name == "REDUCE" and len(stack) >= 2 and stack[-2].kind == "global" and stack[-2].text == _LOAD_TYPE \
                    and stack[-1].kind == "str1":  # how dill names ``float``: _load_type('float')
                type_name = stack[-1].text
                del stack[-2:]
                stack.append(_Item("global", f"builtins.{type_name}"))
                continue
            if name in _CALLING_OPCODES:
                raise refuse(f"{name} after {named}")
            if name in _PUT_OPCODES:
                memo[int(arg)] = stack[-1]
                continue
            if name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
                continue
            if name in _GET_OPCODES:
                stack.append(memo[int(arg)])
                continue
            if name == "DUP":
                stack.append(stack[-1])
                continue
            before = op.stack_before
            if pickletools.markobject in before:
                at = len(stack) - 1 - stack[::-1].index(_MARK)
                popped = stack[at - before.index(pickletools.markobject) :]
                top = stack[at + 1 :]
                del stack[at - before.index(pickletools.markobject) :]
            else:
                if len(stack) < len(before):
                    raise ValueError("stack underflow")
                popped = stack[len(stack) - len(before) :] if before else []
                top = popped[1:]  # what a set-item or append files (popped[0]: its target)
                del stack[len(stack) - len(before) :]
            if name in _HASHING_OPCODES:  # hashing a key calls its class's __hash__ (and __eq__)
                keys = top[0::2] if name in ("SETITEM", "SETITEMS", "DICT") else top
                if any(k.kind not in ("str", "plain") for k in keys):
                    raise refuse(f"{name} with a key or member that is not a string or number")
            pushed: _Item
            if name in _MUTATING_OPCODES:
                target = popped[0]
                if target.kind != "fresh":
                    raise refuse(f"{name} on {named if target.kind == 'global' else 'an object it did not build'}")
                pushed = target
            elif name in ("GLOBAL", "STACK_GLOBAL"):
                if name == "GLOBAL":
                    module, _, attr = str(arg).partition(" ")
                elif all(p.kind == "str" for p in popped):
                    module, attr = popped[0].text or "", popped[1].text or ""
                else:
                    raise refuse("STACK_GLOBAL with a name that is not a string")
                named = f"{module}.{attr}"
                if (_dunder(module) and module != "__builtin__") or _dunder(attr):  # protocol 2's name for builtins
                    raise refuse(f"the name {named}")
                pushed = _Item("global", named)
            elif name in _FRESH_OPCODES:
                pushed = _Item("fresh")
            elif "UNICODE" in name:
                pushed = _Item("str", str(arg))
            elif name in _PLAIN_OPCODES:
                pushed = _Item("plain")
            elif name == "TUPLE1" and popped[0].kind == "str":
                pushed = _Item("str1", popped[0].text)
            elif name == "TUPLE" and len(top) == 1 and top[0].kind == "str":  # protocols 0 and 1
                pushed = _Item("str1", top[0].text)
            else:
                pushed = _Item("other")
            stack.extend(_MARK if s is pickletools.markobject else pushed for s in op.stack_after)
    except UnsafePickleError:
        raise
    except Exception as e:  # pickletools raises ValueError and others on malformed streams
        raise BadInputError(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from None
