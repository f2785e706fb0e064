"""A small reader (and writer) for the IDX format of MNIST and Fashion-MNIST.

IDX is the format of Y. LeCun's MNIST files ("THE MNIST DATABASE of handwritten digits") and
of Fashion-MNIST (Xiao, Rasul and Vollgraf, "Fashion-MNIST: a Novel Image Dataset for
Benchmarking Machine Learning Algorithms", arXiv:1708.07747). A file is:

- a 4-byte magic number: two zero bytes, one byte for the element type (``0x08`` uint8,
  ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64) and one
  byte for the number of dimensions ``d``;
- ``d`` big-endian uint32 sizes;
- the elements, big-endian, in C order.

Files are often gzipped; the reader detects gzip by its magic bytes, not by the file name.

Example:
    >>> import numpy as np, tempfile, os
    >>> from bastion.data.idx import read_idx, write_idx
    >>> path = os.path.join(tempfile.mkdtemp(), "x-idx3-ubyte.gz")
    >>> write_idx(path, np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    >>> read_idx(path).shape
    (2, 3, 4)
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from bastion.errors import InputError

__all__ = ["IdxFormatError", "read_idx", "write_idx", "IDX_DTYPES"]

logger = logging.getLogger(__name__)

IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
"""IDX element-type code -> numpy dtype (big-endian as stored in the file)."""

_GZIP_MAGIC = b"\x1f\x8b"


class IdxFormatError(InputError):
    """Raised when a file is not a well-formed IDX file (bad magic, wrong size, bad gzip).

    A user's data file that cannot be read is a user-facing error: an ``InputError`` (so a
    ``BastionError`` the command line prints without a traceback, and a ``ValueError``)."""


def _read_bytes(path: Path) -> bytes:
    """Return the (decompressed) content of ``path``; gzip is detected from the first bytes."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise IdxFormatError(
            f"{path}: corrupt gzip stream ({e}); delete it and fetch it again"
        ) from e


def read_idx(path: str | os.PathLike[str], *, ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (plain or gzipped) into a numpy array.

    Args:
        path: the file, e.g. ``train-images-idx3-ubyte.gz``.
        ndim: if given, the number of dimensions the file must have (3 for images, 1 for
            labels); a mismatch raises ``IdxFormatError``.

    Returns:
        An array with the file's shape and element type, converted to native byte order
        (uint8 for MNIST-style files). The array owns its memory and is writable.

    Raises:
        FileNotFoundError: the file does not exist.
        IdxFormatError: the magic number, element type, number of dimensions or data size
            is wrong (a truncated download, an HTML error page saved under the file's name...).
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IdxFormatError(f"{path}: only {len(data)} bytes, too short for an IDX header")
    zero0, zero1, type_code, nd = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0 or type_code not in IDX_DTYPES:
        raise IdxFormatError(
            f"{path}: bad IDX magic number 0x{data[:4].hex()} (expected 0x0000TTDD with type TT "
            f"in {{{', '.join(f'{c:02x}' for c in IDX_DTYPES)}}}); the file is corrupt or not "
            "an IDX file"
        )
    if nd == 0:
        raise IdxFormatError(f"{path}: IDX header declares 0 dimensions")
    if ndim is not None and nd != ndim:
        raise IdxFormatError(f"{path}: expected an IDX file with {ndim} dimensions, got {nd}")
    header = 4 + 4 * nd
    if len(data) < header:
        raise IdxFormatError(f"{path}: truncated IDX header ({len(data)} bytes)")
    shape = struct.unpack(f">{nd}I", data[4:header])
    dtype = IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    if got != expected:
        raise IdxFormatError(
            f"{path}: IDX header says shape {shape} of {dtype.name} ({expected} data bytes) but "
            f"the file holds {got} data bytes; it is truncated or corrupt"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    logger.debug("read %s: shape %s, dtype %s", path, shape, dtype.name)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(
    path: str | os.PathLike[str], array: np.ndarray, *, compress: bool | None = None
) -> None:
    """Write ``array`` as an IDX file (the inverse of :func:`read_idx`).

    Args:
        path: destination file.
        array: an array of one of the IDX element types (uint8, int8, int16, int32, float32,
            float64), at least 1-D, each size < 2**32.
        compress: gzip the file; default: when the name ends with ``.gz``.

    Raises:
        ValueError: the dtype has no IDX code or the array is 0-D.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.ndim == 0 or array.ndim > 255:
        raise InputError(f"IDX arrays need 1 to 255 dimensions, got {array.ndim}")
    native = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    code = native.get(array.dtype.newbyteorder("="))
    if code is None:
        raise InputError(
            f"dtype {array.dtype} has no IDX code; use one of "
            f"{', '.join(dt.name for dt in IDX_DTYPES.values())}"
        )
    payload = (
        bytes([0, 0, code, array.ndim])
        + struct.pack(f">{array.ndim}I", *array.shape)
        + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    )
    if compress is None:
        compress = path.name.endswith(".gz")
    if compress:
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
