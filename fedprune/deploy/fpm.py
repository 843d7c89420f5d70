"""The .fpm file: one versioned, checksummed container for an exported sparse model.

Layout (integers little-endian)::

    0   b"FPM1"                      magic: a fedprune model, whatever the version
    4   uint32  format version       this fedprune writes and reads VERSION
    8   uint64  header length H
    16  uint64  file length          so a truncated copy is told from a corrupt one
    24  header                       zlib-compressed UTF-8 JSON, H bytes
    ..  zero padding to 8 bytes
    ..  payload                      raw arrays; the header gives each one's offset, dtype, shape
    -32 SHA-256 of every byte before it

The header is compressed because on small models (the MNIST-1D CNN keeps about 2,800 weights
at 90% sparsity) plain JSON would be a tenth of the file. Arrays stay raw so they can be read
in place. No pickle anywhere: dtypes come from a fixed list.

Tensor codecs: a masked tensor is stored as its kept values (row-major) plus its mask, as a
packed bitmap (d/8 bytes) or as flat indices in the smallest unsigned type that holds d
(whichever is smaller: indices win below a density of about 1/32 for uint32, 1/16 for uint16);
a tensor whose mask keeps everything, or that has no mask, is stored dense.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fedprune.atomic import replacing
from fedprune.pruning.bits import pack, unpack
from fedprune.validation import ConfigError

MAGIC = b"FPM1"
VERSION = 1
_PREFIX = struct.Struct("<4sIQQ")
_DIGEST = 32
_ALIGN = 8
DTYPES = ("float32", "uint8", "uint16", "uint32", "int64")
ENCODINGS = ("dense", "bitmap", "indices")


# --- container ---------------------------------------------------------------------------------

def write(path: str | Path, header: dict, arrays: list[np.ndarray]) -> int:
    """Write ``header`` and ``arrays`` (referenced by position as header["arrays"]); returns bytes."""
    table, chunks, offset = [], [], 0
    for array in arrays:
        array = np.ascontiguousarray(array)
        if array.dtype.name not in DTYPES:
            raise ConfigError(f"cannot store dtype {array.dtype} in a .fpm file; use one of {', '.join(DTYPES)}")
        pad = -offset % _ALIGN
        chunks += [b"\0" * pad, array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()]
        offset += pad
        table.append({"dtype": array.dtype.name, "shape": list(array.shape), "offset": offset})
        offset += array.nbytes
    try:
        text = json.dumps({**header, "arrays": table, "payload_length": offset},
                          separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"export metadata must be plain JSON (numbers, strings, lists, dicts; no NaN): {error}") \
            from None
    compressed = zlib.compress(text.encode(), 9)
    head_pad = b"\0" * (-(_PREFIX.size + len(compressed)) % _ALIGN)
    total = _PREFIX.size + len(compressed) + len(head_pad) + offset + _DIGEST
    body = b"".join([_PREFIX.pack(MAGIC, VERSION, len(compressed), total), compressed, head_pad, *chunks])
    data = body + hashlib.sha256(body).digest()
    try:
        with replacing(path) as file:  # an interrupted export never leaves half a model
            file.write(data)
    except OSError as error:
        raise ConfigError(f"cannot write {path} ({error.strerror}); pass a path in a folder you can write") from None
    return len(data)


def read(path: str | Path) -> tuple[dict, list[np.ndarray]]:
    """(header, arrays) of a .fpm file; ConfigError naming the problem for anything but a sound file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read model file {path}: {error.strerror or error}") from None
    fix = "copy the file again or export it again with `fedprune export`"
    if data[:4] != MAGIC[:len(data[:4])]:
        raise ConfigError(f"{path} is not a fedprune model file (no FPM1 magic at its start); pass a file "
                          "written by `fedprune export`")
    if len(data) < _PREFIX.size:
        raise ConfigError(f"{path} is truncated ({len(data)} bytes, shorter than the file header); {fix}")
    _, version, header_length, total = _PREFIX.unpack_from(data)
    if version > VERSION:
        raise ConfigError(f"{path} has model format version {version}, newer than this fedprune reads "
                          f"({VERSION}); upgrade fedprune on this machine, or export with the fedprune version here")
    if version < 1:
        raise ConfigError(f"{path} has an invalid model format version {version}; {fix}")
    if len(data) < total:
        raise ConfigError(f"{path} is truncated: {len(data)} bytes of {total}; {fix}")
    if len(data) > total:
        raise ConfigError(f"{path} has {len(data) - total} bytes after the end of the model (corrupt); {fix}")
    if hashlib.sha256(data[:-_DIGEST]).digest() != data[-_DIGEST:]:
        raise ConfigError(f"{path} is corrupt: its SHA-256 checksum does not match its content; {fix}")
    try:
        header = json.loads(zlib.decompress(data[_PREFIX.size:_PREFIX.size + header_length]))
    except (zlib.error, ValueError) as error:
        raise ConfigError(f"{path}: unreadable header ({error}); {fix}") from None
    start = _PREFIX.size + header_length
    start += -start % _ALIGN
    payload = memoryview(data)[start:len(data) - _DIGEST]
    if header.get("payload_length") != len(payload):
        raise ConfigError(f"{path}: the header's payload length does not match the file; {fix}")
    return header, [_array(payload, entry, path) for entry in header.get("arrays", [])]


def _array(payload: memoryview, entry: Mapping, path: Path) -> np.ndarray:
    dtype, shape, offset = entry.get("dtype"), entry.get("shape"), entry.get("offset")
    if dtype not in DTYPES or not isinstance(shape, list) or not isinstance(offset, int):
        raise ConfigError(f"{path}: malformed array entry {entry!r}; export the model again")
    size = np.dtype(dtype).itemsize * math.prod(shape)
    if offset < 0 or offset + size > len(payload):
        raise ConfigError(f"{path}: an array lies outside the payload; export the model again")
    # A copy: the arrays outlive the file's bytes and torch wants writable memory.
    return np.frombuffer(payload[offset:offset + size], dtype=np.dtype(dtype).newbyteorder("<")) \
        .astype(dtype).reshape(shape)


# --- tensor codecs -----------------------------------------------------------------------------

def encode(value: np.ndarray, mask: np.ndarray | None, arrays: list[np.ndarray]) -> dict:
    """The header entry of one tensor; appends its arrays to ``arrays``."""
    value = np.asarray(value, dtype=np.float32)
    entry = {"shape": list(value.shape)}
    if mask is None or bool(mask.all()):
        entry["encoding"] = "dense"
        entry["values"] = _add(arrays, value.reshape(-1))
        return entry
    flat = mask.reshape(-1)
    index_type = next(t for t in (np.uint8, np.uint16, np.uint32) if flat.size <= np.iinfo(t).max + 1)
    kept = int(flat.sum())
    if kept * np.dtype(index_type).itemsize < (flat.size + 7) // 8:
        entry["encoding"] = "indices"
        entry["mask"] = _add(arrays, np.flatnonzero(flat).astype(index_type))
    else:
        entry["encoding"] = "bitmap"
        entry["mask"] = _add(arrays, pack(flat))
    entry["values"] = _add(arrays, value.reshape(-1)[flat])
    return entry


def decode(name: str, entry: Mapping, arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """(dense float32 value with zeros where pruned, bool mask or None) of one tensor entry."""
    try:
        shape = tuple(int(s) for s in entry["shape"])
        encoding = entry["encoding"]
        values = arrays[entry["values"]]
        mask_array = arrays[entry["mask"]] if encoding != "dense" else None
    except (KeyError, IndexError, TypeError, ValueError):
        raise ConfigError(f"tensor {name!r}: malformed entry in the model file; export the model again") from None
    size = math.prod(shape)
    if values.dtype != np.float32 or values.ndim != 1:
        raise ConfigError(f"tensor {name!r}: values must be a 1-D float32 array; export the model again")
    if encoding == "dense":
        if values.size != size:
            raise ConfigError(f"tensor {name!r}: {values.size} values for shape {shape}; export the model again")
        return values.reshape(shape), None
    if encoding == "bitmap":
        flat = unpack(mask_array, size)
    elif encoding == "indices":
        if mask_array.ndim != 1 or mask_array.dtype.kind != "u" or (mask_array.size and (
                int(mask_array.max()) >= size or np.any(np.diff(mask_array.astype(np.int64)) <= 0))):
            raise ConfigError(f"tensor {name!r}: mask indices out of range or unsorted; export the model again")
        flat = np.zeros(size, dtype=bool)
        flat[mask_array] = True
    else:
        raise ConfigError(f"tensor {name!r}: unknown encoding {encoding!r}; this fedprune reads "
                          f"{', '.join(ENCODINGS)}: upgrade fedprune")
    if int(flat.sum()) != values.size:
        raise ConfigError(f"tensor {name!r}: mask keeps {int(flat.sum())} weights but {values.size} values are "
                          "stored; export the model again")
    dense = np.zeros(size, dtype=np.float32)
    dense[flat] = values
    return dense.reshape(shape), flat.reshape(shape)


def _add(arrays: list[np.ndarray], array: np.ndarray) -> int:
    arrays.append(array)
    return len(arrays) - 1
