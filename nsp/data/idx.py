"""Generic IDX reader (the MNIST / Fashion-MNIST file format), parsed with numpy.

An IDX file is: two zero bytes, a dtype code byte, a dimension-count byte, one big-endian uint32 per
dimension, then the data in big-endian C order. Files may be gzip-compressed (detected by content).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from nsp.errors import NSPError, one_line

# IDX dtype code -> big-endian numpy dtype
IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """Return the (decompressed) bytes of ``path``."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise NSPError(
            f"cannot read IDX file {path}: {exc.strerror}; check the file and its permissions"
        ) from exc
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise NSPError(
            f"corrupt or truncated gzip file {path} ({one_line(exc)}); re-download or reinstall the dataset"
        ) from exc


def parse_idx(data: bytes, *, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX ``data`` into a native-endian numpy array; ``name`` is used in error messages."""
    if len(data) < 4:
        raise NSPError(
            f"IDX file {name} is truncated ({len(data)} bytes, no header); re-download it"
        )
    if data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise NSPError(
            f"IDX file {name} has a bad magic number 0x{data[:4].hex()}; "
            "it is not an IDX file (expected 0x0000 then a dtype code and a dimension count)"
        )
    dtype = np.dtype(IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise NSPError(
            f"IDX file {name} has a truncated or empty header (ndim={ndim}); re-download it"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    if got != expected:
        what = "truncated" if got < expected else "longer than its header says"
        raise NSPError(
            f"IDX file {name} is {what}: header dims {dims} need {expected} data bytes, found {got}; "
            "re-download it"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a numpy array."""
    path = Path(path)
    return parse_idx(_read_bytes(path), name=str(path))


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool = False) -> None:
    """Write ``array`` as an IDX file (used by tests and for exporting); gzip if ``compress``."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("=").str[1:]: k for k, v in IDX_DTYPES.items()}
    key = array.dtype.newbyteorder("=").str[1:]
    if key not in codes:
        raise ValueError(f"dtype {array.dtype} has no IDX code")
    code = codes[key]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    body = np.ascontiguousarray(array, dtype=np.dtype(IDX_DTYPES[code])).tobytes()
    blob = header + body
    if compress:
        blob = gzip.compress(blob, mtime=0)
    Path(path).write_bytes(blob)
