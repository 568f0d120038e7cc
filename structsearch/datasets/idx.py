"""Reader for the IDX format of MNIST and Fashion-MNIST (raw or gzipped).

Layout (all integers big-endian): two zero bytes, a type byte, the number of dimensions d, then
d uint32 sizes, then the data in C order. http://yann.lecun.com/exdb/mnist/ describes it.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from structsearch.datasets.base import DatasetError

# IDX type byte -> numpy dtype (big-endian where it matters).
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_bytes(path: str | os.PathLike) -> bytes:
    """The decompressed content of ``path`` (gunzipped when it ends in ``.gz``)."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DatasetError(f"{path}: not a complete gzip file ({err}); delete it and fetch it again") from None


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX content into an array of the shape and type its header declares.

    Raises DatasetError for a wrong magic number or a size that does not match the header.
    """
    if len(data) < 4:
        raise DatasetError(f"{source}: too short for an IDX file ({len(data)} bytes)")
    zero, type_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or type_code not in IDX_TYPES or ndim == 0:
        raise DatasetError(
            f"{source}: not an IDX file (magic number 0x{data[:4].hex()}; expected 0x0000TTDD with type "
            f"TT in {', '.join(f'{t:02x}' for t in IDX_TYPES)} and DD >= 1 dimensions)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{source}: truncated IDX header ({len(data)} bytes, expected at least {header})")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_TYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        what = "truncated" if len(data) - header < expected else "has trailing bytes"
        raise DatasetError(
            f"{source}: IDX file {what}: header says shape {shape} of {dtype.name} ({expected} bytes of data), "
            f"found {len(data) - header} bytes"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw, or gzipped when the name ends in ``.gz``)."""
    return parse_idx(read_bytes(path), str(path))


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array`` (the inverse of ``parse_idx``; used by tests)."""
    codes = {dtype.newbyteorder("="): code for code, dtype in IDX_TYPES.items()}
    array = np.asarray(array)
    code = codes[array.dtype.newbyteorder("=")]
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + np.ascontiguousarray(array, dtype=IDX_TYPES[code]).tobytes()
