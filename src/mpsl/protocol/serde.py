"""Wire encoding of protocol messages: a small JSON header, then raw little-endian tensor bytes.

No pickle: decoding only ever builds the message dataclasses from numbers, strings and tensors
whose dtype is on an allow-list and whose byte length matches their shape. The in-process runtime
uses the same encoding, so every runtime moves and counts exactly the same bytes.

    frame = b"MPSL" | version u8 | header length u32 (LE) | header JSON (UTF-8) | tensor bytes ...
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import struct
import sys
import types
import typing
from dataclasses import dataclass
from typing import Any

import torch

from mpsl.errors import ProtocolError
from mpsl.protocol.messages import MESSAGE_TYPES
from mpsl.registry import Registry

MAGIC = b"MPSL"
VERSION = 1
_PREFIX = struct.Struct("<4sBI")
# the allow-list of tensor dtypes on the wire; deploy.wire_dtype names one of them
DTYPES: Registry[torch.dtype] = Registry("wire dtype", config_keys=("deploy.wire_dtype",))
for _name, _dtype in (("float32", torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16)):
    DTYPES.register(_name)(_dtype)
_ELEMENT_SIZE = {name: torch.empty((), dtype=d).element_size() for name, d in DTYPES.items()}


def _tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().cpu().contiguous().reshape(-1)  # [numel], in host memory
    if sys.byteorder != "little":
        raise ProtocolError("big-endian hosts are not supported by the wire format")
    return flat.view(torch.uint8).numpy().tobytes()


class Codec:
    """Encodes messages with float tensors cast to `wire_dtype`; decodes them back to float32."""

    def __init__(self, wire_dtype: str = "float32") -> None:
        if wire_dtype not in DTYPES:
            raise ProtocolError(DTYPES.unknown(wire_dtype))
        self.wire_dtype = DTYPES.get(wire_dtype)
        self.wire_dtype_name = wire_dtype

    def encode(self, msg: Any) -> bytes:
        name, fields, layout, tensors = _describe(msg)
        header = _header(name, fields, layout, self.wire_dtype_name).encode()
        chunks = [_tensor_bytes(t.to(self.wire_dtype)) for t in tensors]
        return _PREFIX.pack(MAGIC, VERSION, len(header)) + header + b"".join(chunks)

    def encoded_nbytes(self, msg: Any) -> int:
        """len(self.encode(msg)), computed from the header and the tensors' shapes alone."""
        return encoded_nbytes(msg, self.wire_dtype_name)

    def decode(self, frame: bytes, bounds: DecodeBounds | None = None) -> Any:
        """The message in `frame`, or ProtocolError: any input, however malformed, raises nothing else."""
        bounds = bounds or _BOUNDS
        header, offset = _read_header(frame, bounds)
        cls = _message_class(header)
        values: dict[str, Any] = dict(header["fields"])
        for entry in header["tensors"]:
            name = entry["name"]
            tensor, offset = _read_tensor(frame, offset, entry, bounds)
            key, _, sub = name.partition(".")
            if sub:
                values.setdefault(key, {})[sub] = tensor
            else:
                values[key] = tensor
        if offset != len(frame):
            raise ProtocolError(f"{len(frame) - offset} trailing bytes after the last tensor")
        names = {f.name for f in dataclasses.fields(cls)}
        if set(values) != names:
            raise ProtocolError(f"{cls.__name__}: expected fields {sorted(names)}, got {_show(sorted(values))}")
        _check_scalars(cls, values)
        return cls(**values)


_JSON = json.JSONEncoder(separators=(",", ":"))  # the header's compact JSON; one encoder, not one per message
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


Layout = tuple[tuple[str, tuple[int, ...]], ...]  # (tensor name, shape) of each tensor, in frame order


def _describe(msg: Any) -> tuple[str, dict[str, Any], Layout, list[torch.Tensor]]:
    """A message's type name, scalar fields, tensor layout and tensors in frame order: the one reading of a
    message that encode and the byte count share, so a count from shapes cannot drift from what is sent."""
    cls = type(msg)
    name = cls.__name__
    if MESSAGE_TYPES.get(name) is not cls:
        raise ProtocolError(f"{name} is not a protocol message")
    names = _FIELD_NAMES.get(cls) or _FIELD_NAMES.setdefault(cls, tuple(f.name for f in dataclasses.fields(cls)))
    fields: dict[str, Any] = {}
    layout: list[tuple[str, tuple[int, ...]]] = []
    tensors: list[torch.Tensor] = []
    for field_name in names:
        value = getattr(msg, field_name)
        if isinstance(value, torch.Tensor):
            layout.append((field_name, tuple(value.shape)))
            tensors.append(value)
        elif isinstance(value, dict):
            for m, t in value.items():
                layout.append((f"{field_name}.{m}", tuple(t.shape)))
                tensors.append(t)
        else:
            fields[field_name] = value
    return name, fields, tuple(layout), tensors


def _header(name: str, fields: dict[str, Any], layout: Layout, wire_dtype: str) -> str:
    """The compact JSON of {"type", "fields", "tensors"}: the fixed parts and the tensor entries (the same
    few shapes every step) are serialized once and reused; only the scalar fields are written per message."""
    head, tail, _ = _fixed_parts(name, layout, wire_dtype)
    return head + _fields_json(fields) + tail


def _fields_json(fields: dict[str, Any]) -> str:
    """json.dumps(fields, separators=(",", ":")) for identifier keys: ints and finite floats as json writes
    them (their repr), anything else through the encoder."""
    return "{" + ",".join(f'"{key}":{_scalar_json(value)}' for key, value in fields.items()) + "}"


def _scalar_json(value: Any) -> str:
    if type(value) is int:
        return int.__repr__(value)
    if type(value) is float and math.isfinite(value):
        return float.__repr__(value)
    return _JSON.encode(value)


@functools.lru_cache(maxsize=4096)
def _fixed_parts(name: str, layout: Layout, wire_dtype: str) -> tuple[str, str, int]:
    """The header before and after its scalar fields, and the tensors' total numel."""
    entries = _JSON.encode([{"name": key, "dtype": wire_dtype, "shape": list(shape)} for key, shape in layout])
    return (f'{{"type":{_JSON.encode(name)},"fields":', f',"tensors":{entries}}}',
            sum(math.prod(shape) for _, shape in layout))


def frame_nbytes(msg: Any, wire_dtype: str = "float32") -> tuple[int, int]:
    """(len(Codec(wire_dtype).encode(msg)), its tensor payload), from the header and the shapes alone."""
    if wire_dtype not in DTYPES:
        raise ProtocolError(DTYPES.unknown(wire_dtype))
    name, fields, layout, _ = _describe(msg)
    head, tail, numel = _fixed_parts(name, layout, wire_dtype)
    payload = numel * _ELEMENT_SIZE[wire_dtype]
    return _PREFIX.size + len(head) + len(_fields_json(fields).encode()) + len(tail) + payload, payload


def encoded_nbytes(msg: Any, wire_dtype: str = "float32") -> int:
    """The exact length of Codec(wire_dtype).encode(msg) without encoding a tensor: prefix + header +
    numel x element size of each tensor. What the in-process runtimes count instead of encoding."""
    return frame_nbytes(msg, wire_dtype)[0]


def wire_copy(msg: Any, wire_dtype: str = "float32") -> Any:
    """The message as Codec(wire_dtype).decode(encode(msg)) returns it, without the bytes: every tensor a
    fresh float32 copy through the wire dtype (no shared memory or graph with the sender), refused if it
    holds NaN or infinite values as decode refuses it."""
    dtype = DTYPES.get(wire_dtype)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        if isinstance(value, torch.Tensor):
            values[f.name] = _wire_tensor(f.name, value, dtype)
        elif isinstance(value, dict):
            values[f.name] = {m: _wire_tensor(f"{f.name}.{m}", t, dtype) for m, t in value.items()}
        else:
            values[f.name] = value
    return type(msg)(**values)


def _wire_tensor(name: str, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    copy = t.detach().to(dtype, copy=True).to(torch.float32)  # what the receiver decodes: [same shape]
    if not all_finite(copy):
        raise ProtocolError(f"tensor {name}: contains NaN or infinite values")
    return copy


def all_finite(t: torch.Tensor) -> bool:
    """torch.isfinite(t).all() in one pass without a boolean copy: NaN or an infinity reaches the extremes."""
    if t.numel() == 0:
        return True
    low, high = torch.aminmax(t)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def _check_scalars(cls: type, values: dict[str, Any]) -> None:
    for name, hint in _hints(cls).items():
        value = values[name]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # an optional scalar: None, or its type
            if value is None:
                continue
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if hint is int and (isinstance(value, bool) or not isinstance(value, int)
                            or not _INT64[0] <= value <= _INT64[1]):
            raise ProtocolError(f"{cls.__name__}.{name}: expected an integer (64-bit), got {_show(value)}")
        if hint is float and (isinstance(value, bool) or not isinstance(value, int | float)
                              or not math.isfinite(value)):
            raise ProtocolError(f"{cls.__name__}.{name}: expected a finite number, got {_show(value)}")
        if hint is float:
            values[name] = float(value)
        if hint is torch.Tensor and not isinstance(value, torch.Tensor):
            raise ProtocolError(f"{cls.__name__}.{name}: expected a tensor")
        if typing.get_origin(hint) is dict and not (
                isinstance(value, dict) and all(isinstance(t, torch.Tensor) for t in value.values())):
            raise ProtocolError(f"{cls.__name__}.{name}: expected named tensors")


# ---------------------------------------------------------------------------------------------
# decoding untrusted frames: every check below raises ProtocolError, and nothing else can escape


@dataclass(frozen=True)
class DecodeBounds:
    """What a frame may contain at most; checked before anything of that size is parsed or allocated."""

    max_header_bytes: int = 1 << 20  # the JSON header (a Weights message spends ~100 bytes per tensor)
    max_depth: int = 4  # JSON nesting: header > tensors > tensor entry > shape
    max_int_digits: int = 19  # digits of any JSON integer (int64 has 19)
    max_dims: int = 8  # dimensions of one tensor
    max_dim_size: int = 2**31 - 1  # size of one dimension
    max_tensors: int = 4096  # tensors in one message


_BOUNDS = DecodeBounds()
_INT64 = (-(2**63), 2**63 - 1)
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _show(value: Any, limit: int = 60) -> str:
    """A short, printable (ASCII) rendering of untrusted input for an error message."""
    text = ascii(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _json_hooks(bounds: DecodeBounds) -> dict[str, Any]:
    def parse_int(text: str) -> int:
        if len(text.lstrip("-")) > bounds.max_int_digits:
            raise ProtocolError(f"header: an integer of {len(text.lstrip('-'))} digits, at most "
                                f"{bounds.max_int_digits} are allowed")
        return int(text)

    def parse_float(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ProtocolError(f"header: number {_show(text)} is not finite")
        return value

    def parse_constant(text: str) -> Any:
        raise ProtocolError(f"header: {text} is not a finite number")

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            raise ProtocolError("header: an object names the same key twice")
        return obj

    return {"parse_int": parse_int, "parse_float": parse_float, "parse_constant": parse_constant,
            "object_pairs_hook": unique_keys}


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            todo.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _read_header(frame: bytes, bounds: DecodeBounds) -> tuple[dict[str, Any], int]:
    """The parsed JSON header and the offset of the first tensor byte."""
    if not isinstance(frame, bytes | bytearray):
        raise ProtocolError(f"a frame is bytes, got {type(frame).__name__}")
    if len(frame) < _PREFIX.size:
        raise ProtocolError(f"frame of {len(frame)} bytes is shorter than the {_PREFIX.size}-byte prefix")
    magic, version, length = _PREFIX.unpack_from(frame)
    if magic != MAGIC or version != VERSION:
        raise ProtocolError(f"not an MPSL v{VERSION} frame (magic {magic!r}, version {version})")
    if length > bounds.max_header_bytes:
        raise ProtocolError(f"header of {length} bytes, the limit is {bounds.max_header_bytes}")
    if _PREFIX.size + length > len(frame):
        raise ProtocolError(f"header length {length} runs past the end of the frame")
    try:
        header = json.loads(bytes(frame[_PREFIX.size:_PREFIX.size + length]).decode("utf-8"), **_json_hooks(bounds))
    except RecursionError:
        raise ProtocolError(f"header nests deeper than {bounds.max_depth} levels") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"header is not valid UTF-8 JSON: {_show(str(exc), 120)}") from None
    if _depth(header) > bounds.max_depth:
        raise ProtocolError(f"header nests deeper than {bounds.max_depth} levels")
    if not isinstance(header, dict) or set(header) != {"type", "fields", "tensors"}:
        raise ProtocolError("header is not a JSON object of exactly type, fields and tensors")
    if not isinstance(header["fields"], dict):
        raise ProtocolError(f"header: fields is {type(header['fields']).__name__}, expected an object")
    if not isinstance(header["tensors"], list):
        raise ProtocolError(f"header: tensors is {type(header['tensors']).__name__}, expected a list")
    if len(header["tensors"]) > bounds.max_tensors:
        raise ProtocolError(f"header lists {len(header['tensors'])} tensors, the limit is {bounds.max_tensors}")
    return header, _PREFIX.size + length


def _message_class(header: dict[str, Any]) -> type:
    """The message's class, after checking that every scalar and tensor name is one of its fields, once."""
    name = header["type"]
    cls = MESSAGE_TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {_show(name)}")
    hints = _hints(cls)
    tensor_fields = {f for f, h in hints.items() if h is torch.Tensor}
    named_fields = {f for f, h in hints.items() if typing.get_origin(h) is dict}
    for key in header["fields"]:
        if key not in hints or key in tensor_fields or key in named_fields:
            raise ProtocolError(f"{cls.__name__}: {_show(key)} is not one of its scalar fields")
    seen: set[str] = set()
    for entry in header["tensors"]:
        if not isinstance(entry, dict) or set(entry) != {"name", "dtype", "shape"}:
            raise ProtocolError(f"tensor entry {_show(entry)} is not an object of exactly name, dtype and shape")
        tensor = entry["name"]
        if not isinstance(tensor, str):
            raise ProtocolError(f"tensor name {_show(tensor)} is not a string")
        key, dot, sub = tensor.partition(".")
        if not ((key in tensor_fields and not dot) or (key in named_fields and sub)):
            raise ProtocolError(f"{cls.__name__}: tensor {_show(tensor)} is not one of its tensor fields")
        if tensor in seen:
            raise ProtocolError(f"{cls.__name__}: tensor {_show(tensor)} appears twice")
        seen.add(tensor)
    return cls


def _read_tensor(frame: bytes, offset: int, entry: dict[str, Any], bounds: DecodeBounds) -> tuple[torch.Tensor, int]:
    name = _show(entry["name"])
    dtype = DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) and entry["dtype"] in DTYPES else None
    if dtype is None:
        raise ProtocolError(f"tensor {name}: dtype {_show(entry['dtype'])} is not one of {', '.join(DTYPES)}")
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise ProtocolError(f"tensor {name}: shape {_show(shape)} is not a list of sizes")
    if len(shape) > bounds.max_dims:
        raise ProtocolError(f"tensor {name}: {len(shape)} dimensions, the limit is {bounds.max_dims}")
    if not all(0 <= s <= bounds.max_dim_size for s in shape):
        raise ProtocolError(f"tensor {name}: shape {_show(shape)} has a size outside 0..{bounds.max_dim_size}")
    nbytes = math.prod(shape) * dtype.itemsize  # exact (Python integers); compared before anything is allocated
    if nbytes > len(frame) - offset:
        raise ProtocolError(f"tensor {name}: {nbytes} bytes expected, {len(frame) - offset} left")
    raw = bytearray(frame[offset:offset + nbytes])
    flat = torch.frombuffer(raw, dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)
    tensor = flat.view(dtype).reshape(shape).to(torch.float32)  # [nbytes] -> [numel] -> shape
    if not torch.isfinite(tensor).all():
        raise ProtocolError(f"tensor {name}: contains NaN or infinite values")
    return tensor, offset + nbytes


def framing_nbytes(frame: bytes) -> int:
    """Prefix + header bytes of an encoded frame: everything that is not tensor payload."""
    return _PREFIX.size + _PREFIX.unpack_from(frame)[2]


def element_bytes(wire_dtype: str = "float32") -> int:
    """Bytes of one tensor element on the wire: the one place a size per element is looked up."""
    if wire_dtype not in DTYPES:
        raise ProtocolError(DTYPES.unknown(wire_dtype))
    return _ELEMENT_SIZE[wire_dtype]


def payload_nbytes(msg: Any, wire_dtype: str = "float32") -> int:
    """numel x element size of every tensor in a message: what must cross the wire, without framing."""
    size = element_bytes(wire_dtype)
    total = 0
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        tensors = value.values() if isinstance(value, dict) else [value] if isinstance(value, torch.Tensor) else []
        total += sum(t.numel() * size for t in tensors)
    return total
