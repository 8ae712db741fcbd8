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
import typing
from typing import Any

import torch

from mpsl.errors import ProtocolError
from mpsl.protocol.messages import MESSAGE_TYPES

MAGIC = b"MPSL"
VERSION = 1
_PREFIX = struct.Struct("<4sBI")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_ELEMENT_SIZE = {name: torch.empty((), dtype=d).element_size() for name, d in DTYPES.items()}


def _tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().contiguous().reshape(-1)  # [numel]
    if sys.byteorder != "little":
        raise ProtocolError("big-endian hosts are not supported by the wire format")
    return flat.view(torch.uint8).numpy().tobytes()


class Codec:
    """Encodes messages with float tensors cast to `wire_dtype`; decodes them back to float32."""

    def __init__(self, wire_dtype: str = "float32") -> None:
        if wire_dtype not in DTYPES:
            raise ProtocolError(f"wire dtype {wire_dtype!r} is not one of {', '.join(DTYPES)}")
        self.wire_dtype = DTYPES[wire_dtype]
        self.wire_dtype_name = wire_dtype

    def encode(self, msg: Any) -> bytes:
        name, fields, layout, tensors = _describe(msg)
        header = _header(name, fields, layout, self.wire_dtype_name).encode()
        chunks = [_tensor_bytes(t.to(self.wire_dtype)) for t in tensors]
        return _PREFIX.pack(MAGIC, VERSION, len(header)) + header + b"".join(chunks)

    def encoded_nbytes(self, msg: Any) -> int:
        """len(self.encode(msg)), computed from the header and the tensors' shapes alone."""
        return encoded_nbytes(msg, self.wire_dtype_name)

    def decode(self, frame: bytes) -> Any:
        header = _read_header(frame)
        cls = MESSAGE_TYPES.get(header.get("type"))  # type: ignore[arg-type]
        if cls is None:
            raise ProtocolError(f"unknown message type {header.get('type')!r}")
        values: dict[str, Any] = dict(header.get("fields", {}))
        offset = _PREFIX.size + header["_length"]
        for entry in header.get("tensors", []):
            tensor, offset = _read_tensor(frame, offset, entry)
            key, _, sub = str(entry["name"]).partition(".")
            if sub:
                values.setdefault(key, {})[sub] = tensor
            else:
                values[key] = tensor
        if offset != len(frame):
            raise ProtocolError(f"{len(frame) - offset} trailing bytes after the last tensor")
        names = {f.name for f in dataclasses.fields(cls)}
        if set(values) != names:
            raise ProtocolError(f"{cls.__name__}: expected fields {sorted(names)}, got {sorted(values)}")
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
        raise ProtocolError(f"wire dtype {wire_dtype!r} is not one of {', '.join(DTYPES)}")
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
    dtype = DTYPES[wire_dtype]
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
    for name, hint in typing.get_type_hints(cls).items():
        value = values[name]
        if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ProtocolError(f"{cls.__name__}.{name}: expected an integer, got {value!r}")
        if hint is float and (isinstance(value, bool) or not isinstance(value, int | float)
                              or not math.isfinite(value)):
            raise ProtocolError(f"{cls.__name__}.{name}: expected a finite number, got {value!r}")
        if hint is float:
            values[name] = float(value)
        if hint is torch.Tensor and not isinstance(value, torch.Tensor):
            raise ProtocolError(f"{cls.__name__}.{name}: expected a tensor")
        if typing.get_origin(hint) is dict and not isinstance(value, dict):
            raise ProtocolError(f"{cls.__name__}.{name}: expected named tensors")


def _read_header(frame: bytes) -> dict[str, Any]:
    if len(frame) < _PREFIX.size:
        raise ProtocolError(f"frame of {len(frame)} bytes is shorter than the {_PREFIX.size}-byte prefix")
    magic, version, length = _PREFIX.unpack_from(frame)
    if magic != MAGIC or version != VERSION:
        raise ProtocolError(f"not an MPSL v{VERSION} frame (magic {magic!r}, version {version})")
    if _PREFIX.size + length > len(frame):
        raise ProtocolError(f"header length {length} runs past the end of the frame")
    try:
        header = json.loads(frame[_PREFIX.size:_PREFIX.size + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    header["_length"] = length
    return header


def _read_tensor(frame: bytes, offset: int, entry: Any) -> tuple[torch.Tensor, int]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ProtocolError(f"malformed tensor entry {entry!r}")
    dtype = DTYPES.get(entry.get("dtype"))  # type: ignore[arg-type]
    if dtype is None:
        raise ProtocolError(f"tensor {entry['name']}: dtype {entry.get('dtype')!r} is not one of {', '.join(DTYPES)}")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise ProtocolError(f"tensor {entry['name']}: shape {shape!r} is not a list of sizes")
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if offset + nbytes > len(frame):
        raise ProtocolError(f"tensor {entry['name']}: {nbytes} bytes expected, {len(frame) - offset} left")
    raw = bytearray(frame[offset:offset + nbytes])
    flat = torch.frombuffer(raw, dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)
    tensor = flat.view(dtype).reshape(shape).to(torch.float32)  # [nbytes] -> [numel] -> shape
    if not torch.isfinite(tensor).all():
        raise ProtocolError(f"tensor {entry['name']}: contains NaN or infinite values")
    return tensor, offset + nbytes


def framing_nbytes(frame: bytes) -> int:
    """Prefix + header bytes of an encoded frame: everything that is not tensor payload."""
    return _PREFIX.size + _PREFIX.unpack_from(frame)[2]


def payload_nbytes(msg: Any, wire_dtype: str = "float32") -> int:
    """numel x element size of every tensor in a message: what must cross the wire, without framing."""
    size = torch.empty((), dtype=DTYPES[wire_dtype]).element_size()
    total = 0
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        tensors = value.values() if isinstance(value, dict) else [value] if isinstance(value, torch.Tensor) else []
        total += sum(t.numel() * size for t in tensors)
    return total
