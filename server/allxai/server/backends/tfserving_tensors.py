"""``tensorflow.TensorProto`` to and from numpy, without TensorFlow.

The tfserving backend used ``tf.make_tensor_proto``, ``tf.make_ndarray`` and ``tf.dtypes.as_dtype``, which
made the gateway image carry TensorFlow (~770 MB) for three small functions. These follow TensorFlow's
``tensor_util`` for the dtypes a gateway sends and receives (numbers, bools, strings), byte for byte:
numbers go in ``tensor_content`` (little-endian), bools and strings in their ``*_val`` fields, and a
repeated field shorter than the shape is padded with its last value, as TensorFlow does.
``tests/deploy/test_tfserving_protos.py`` compares them with TensorFlow's own on every such dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from allxai.tfs_protos.tensorflow.core.framework import tensor_pb2, types_pb2

DataType = types_pb2.DataType

_NUMPY: dict[int, np.dtype[Any]] = {
    types_pb2.DT_HALF: np.dtype(np.float16),
    types_pb2.DT_FLOAT: np.dtype(np.float32),
    types_pb2.DT_DOUBLE: np.dtype(np.float64),
    types_pb2.DT_INT8: np.dtype(np.int8),
    types_pb2.DT_INT16: np.dtype(np.int16),
    types_pb2.DT_INT32: np.dtype(np.int32),
    types_pb2.DT_INT64: np.dtype(np.int64),
    types_pb2.DT_UINT8: np.dtype(np.uint8),
    types_pb2.DT_UINT16: np.dtype(np.uint16),
    types_pb2.DT_UINT32: np.dtype(np.uint32),
    types_pb2.DT_UINT64: np.dtype(np.uint64),
    types_pb2.DT_BOOL: np.dtype(np.bool_),
}
_DATA_TYPE = {dtype: dtype_enum for dtype_enum, dtype in _NUMPY.items()}
#: The types whose values TensorFlow's make_tensor_proto writes as raw bytes in tensor_content (when there
#: is more than one value; tensor_util._TENSOR_CONTENT_TYPES); uint16 and bool always go in their fields.
_CONTENT = frozenset(_NUMPY) - {types_pb2.DT_UINT16, types_pb2.DT_BOOL}
#: The repeated field that holds each DataType's values when tensor_content is empty (tensor.proto).
_VALUES: dict[int, str] = {
    types_pb2.DT_HALF: "half_val",
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
}
#: TensorFlow's dtype names where they are not the enum's name in lower case.
_NAMES = {"DT_FLOAT": "float32", "DT_DOUBLE": "float64", "DT_HALF": "float16"}


def dtype_name(dtype: int) -> str | None:
    """TensorFlow's name for a DataType (``tf.dtypes.as_dtype(dtype).name``); None for an unknown one."""
    if dtype == types_pb2.DT_INVALID or dtype not in DataType.values():
        return None
    name = DataType.Name(dtype)  # type: ignore[arg-type]  # an int checked against the enum above
    base, ref = (name.removesuffix("_REF"), "_ref") if name.endswith("_REF") else (name, "")
    return _NAMES.get(base, base.removeprefix("DT_").lower()) + ref


def to_tensor_proto(value: npt.ArrayLike) -> tensor_pb2.TensorProto:
    """A TensorProto of ``value`` as ``tf.make_tensor_proto(value)`` writes it, for numbers, bools, bytes.

    One difference: a big-endian array is sent little-endian, as the wire format says (TensorFlow copies
    its bytes as they are).
    """
    array = np.asarray(value)
    proto = tensor_pb2.TensorProto()
    proto.tensor_shape.SetInParent()  # present even for a scalar (no dims), as TensorFlow writes it
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    flat = array.reshape(-1)
    if array.dtype.kind in "SUO":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(_as_bytes(v) for v in flat)
        return proto
    native = array.dtype.newbyteorder("=")
    if native not in _DATA_TYPE:
        raise TypeError(f"no TensorProto for numpy dtype {array.dtype}")
    dtype = _DATA_TYPE[native]
    proto.dtype = dtype  # type: ignore[assignment]  # a DataType value
    if dtype in _CONTENT and array.size > 1:
        proto.tensor_content = array.astype(native.newbyteorder("<"), copy=False).tobytes()
    elif dtype == types_pb2.DT_HALF:
        proto.half_val.extend(flat.astype(np.float16).view(np.uint16).tolist())  # each float16's bits
    else:
        getattr(proto, _VALUES[dtype]).extend(flat.tolist())
    return proto


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"a string tensor holds bytes or str, not {type(value).__name__}")


def to_array(tensor: tensor_pb2.TensorProto) -> npt.NDArray[Any]:
    """The numpy array of a TensorProto, as ``tf.make_ndarray(tensor)`` returns it.

    One difference: a string tensor with no values at all is filled with ``b""``, where TensorFlow puts
    ``""`` (a ``str`` among the ``bytes``).
    """
    shape = tuple(int(d.size) for d in tensor.tensor_shape.dim)
    count = int(np.prod(shape, dtype=np.int64))
    if tensor.dtype == types_pb2.DT_STRING:
        strings = list(tensor.string_val)
        # Fewer values than the shape holds (a constant is sent as one value): repeat the last one.
        strings += [strings[-1] if strings else b""] * (count - len(strings))
        out: npt.NDArray[Any] = np.empty(len(strings), dtype=object)
        out[:] = strings
        return out.reshape(shape)
    if tensor.dtype not in _NUMPY:
        name = dtype_name(tensor.dtype) or f"DataType {tensor.dtype}"
        raise TypeError(f"no numpy array for a {name} tensor")
    dtype = _NUMPY[tensor.dtype]
    if tensor.tensor_content:
        little = dtype.newbyteorder("<")
        return np.frombuffer(tensor.tensor_content, dtype=little).astype(dtype).reshape(shape)
    field = getattr(tensor, _VALUES[tensor.dtype])
    if tensor.dtype == types_pb2.DT_HALF:
        # half_val carries each float16's bits in an int32.
        values = np.fromiter(field, dtype=np.uint16, count=len(field)).view(np.float16)
    else:
        values = np.fromiter(field, dtype=dtype, count=len(field))
    if values.size == count:
        return values.reshape(shape)
    if values.size == 0:
        return np.zeros(shape, dtype=dtype)
    # Fewer values than the shape holds: TensorFlow repeats the last one.
    return np.pad(values, (0, count - values.size), mode="edge").reshape(shape)
