"""Weights of a Keras model saved as a TensorFlow SavedModel directory, read as data.

PtychoPINN archives made before mid-2025 hold, per model, ``saved_model.pb`` (the traced
graph, Lambda code included), ``keras_metadata.pb`` and ``variables/variables.{index,
data-*}``: a TensorFlow checkpoint, i.e. a table of named tensors plus an object graph. In
that graph the root (the Keras model) has a child ``variables`` whose i-th entry is the
model's i-th weight, in ``model.weights`` order, the order ftstore's HDF5 weights use.

Only the checkpoint is read, with TensorFlow's checkpoint reader (the index table and raw
tensor bytes); ``saved_model.pb`` is never loaded, so none of its functions run. TensorFlow
is needed for this, as for any TensorFlow bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

from ftstore.errors import BadInputError
from ftstore.payloads.bundle_format import TensorInfo

GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


class SavedModelError(BadInputError):
    """A SavedModel whose weights cannot be read as a Keras model's weights."""


def _require_tensorflow(where: str) -> Any:
    try:
        import tensorflow as tf
        from tensorflow.core.protobuf import trackable_object_graph_pb2
    except ImportError:
        raise SavedModelError(
            f"{where} is a TensorFlow SavedModel (PtychoPINN archives before mid-2025); reading its weights "
            "needs TensorFlow: pip install 'ftstore[tensorflow]', or re-save the models with PtychoPINN's "
            "current ModelManager (model.keras), which imports without it"
        ) from None
    return tf, trackable_object_graph_pb2


def read_weights(prefix: Path, data_bytes: int, where: str) -> list[tuple[str, np.ndarray]]:
    """The model's weights, in ``model.weights`` order, as (checkpoint key, array).

    ``prefix`` is ``.../variables/variables``; ``data_bytes`` the size of its data files,
    which the declared tensor sizes must fit in before any tensor is read."""
    import numpy as np
    tf, graph_pb2 = _require_tensorflow(where)
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
        graph = graph_pb2.TrackableObjectGraph.FromString(reader.get_tensor(GRAPH_KEY))
        keys = _weight_keys(graph, where)
        declared = 0
        for key in keys:
            if key not in shapes:
                raise SavedModelError(f"{where}: the checkpoint has no tensor {key!r}")
            declared += int(np.prod(shapes[key], dtype=np.int64)) * dtypes[key].size
        if declared > data_bytes:
            raise SavedModelError(f"{where}: tensors declare {declared} bytes, the data files hold {data_bytes}")
        out = []
        for key in keys:
            arr = np.asarray(reader.get_tensor(key))
            if arr.dtype.hasobject:
                raise SavedModelError(f"{where}: weight {key!r} is not numeric")
            out.append((key, arr))
        return out
    except BadInputError:
        raise
    except Exception as e:  # TensorFlow's reader and protobuf raise their own errors on bad bytes
        raise SavedModelError(f"{where}: not a readable TensorFlow checkpoint ({type(e).__name__}: {e})") from None


def _weight_keys(graph: Any, where: str) -> list[str]:
    """Checkpoint keys of the root's ``variables`` list, in order."""
    nodes = graph.nodes
    if not nodes:
        raise SavedModelError(f"{where}: empty checkpoint object graph")
    listed = [c.node_id for c in nodes[0].children if c.local_name == "variables"]
    if len(listed) != 1 or not 0 <= listed[0] < len(nodes):
        raise SavedModelError(
            f"{where}: the SavedModel does not list a Keras model's variables, so which tensor is which weight "
            "is unknown; load it in TensorFlow and re-save it as model.keras to import it"
        )
    entries = nodes[listed[0]].children
    if sorted(c.local_name for c in entries) != [str(i) for i in range(len(entries))]:
        raise SavedModelError(f"{where}: the model's variable list is not numbered 0..n-1")
    keys = []
    for c in sorted(entries, key=lambda c: int(c.local_name)):
        if not 0 <= c.node_id < len(nodes):
            raise SavedModelError(f"{where}: variable {c.local_name} points outside the object graph")
        values = [a.checkpoint_key for a in nodes[c.node_id].attributes if a.name == "VARIABLE_VALUE"]
        if len(values) != 1:
            raise SavedModelError(f"{where}: variable {c.local_name} has no single stored value")
        keys.append(values[0])
    if not keys:
        raise SavedModelError(f"{where}: the SavedModel holds no weights")
    return keys


def write_ftstore_h5(weights: list[tuple[str, np.ndarray]], dest: Path) -> list[TensorInfo]:
    """Write weights in the bundle's ``ftstore-h5`` layout; return their index."""
    import h5py

    with h5py.File(dest, "w") as f:
        for i, (key, arr) in enumerate(weights):
            ds = f.create_dataset(f"w/{i:06d}", data=arr)
            ds.attrs["path"] = key
    return [TensorInfo(name=key, dtype=str(arr.dtype), shape=list(arr.shape)) for key, arr in weights]
