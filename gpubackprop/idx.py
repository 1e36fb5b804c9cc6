"""IDX files (the MNIST format), raw or gzip-compressed, read as untrusted input.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the
number of dimensions), one big-endian uint32 per dimension, then the data.
Everything the header claims is checked before anything of that size is
allocated:

* the data's size in bytes (elements x item size) against a byte budget,
  ``MAX_BYTES`` by default (1 GiB: MNIST's largest file is 47 MB), which a
  caller may raise with ``read_idx(path, max_bytes=...)``;
* for a raw file, against the file's real size;
* for a gzip file, against the most its compressed bytes can expand to
  (deflate expands at most 1032:1), and the data are then read in chunks,
  so memory grows with what actually decompresses.

Only regular files are read: a FIFO, a device or a folder is refused before
anything is read from it (the file is opened without blocking and checked).
"""
import gzip
import os
import stat
import struct
import zlib

import numpy as np

#: the default byte budget of read_idx: the largest data it allocates
MAX_BYTES = 1 << 30
#: deflate's largest expansion ratio (RFC 1951: 258 bytes per 2-bit code + slack)
_DEFLATE_MAX_RATIO = 1032

# IDX type codes (third byte of the magic number) -> big-endian dtypes.
TYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
# What a corrupt gzip stream can raise (BadGzipFile is an OSError).
_GZIP_ERRORS = (OSError, EOFError, zlib.error)


def _error(path, problem):
    return ValueError(f"cannot read IDX file {os.fspath(path)!r}: {problem}")


def _read_exactly(stream, n, path, what):
    data = stream.read(n)
    if len(data) != n:
        raise _error(path, f"truncated: file ends inside the {what} "
                           f"({len(data)} of {n} bytes)")
    return data


def _parse_header(stream, path, max_bytes, as_dtype=None):
    """Read the magic number and the dimensions.

    Returns (dtype, shape, data_bytes, header_bytes): data_bytes is the size of
    the data the header announces, header_bytes the size of the header itself.
    The data's size (with as_dtype, the larger of it and the size of the data
    converted to that dtype) must be at most max_bytes.
    """
    magic = _read_exactly(stream, 4, path, "4-byte magic number")
    if magic[0] != 0 or magic[1] != 0:
        raise _error(path, f"bad magic number {magic.hex()}: an IDX file starts "
                           f"with two zero bytes")
    code, ndim = magic[2], magic[3]
    if code not in TYPES:
        known = ", ".join(f"0x{c:02X}" for c in TYPES)
        raise _error(path, f"unknown data type code 0x{code:02X} (known: {known})")
    if not 1 <= ndim <= 4:
        raise _error(path, f"{ndim} dimensions; expected 1 to 4")
    shape = struct.unpack(f">{ndim}I", _read_exactly(stream, 4 * ndim, path, "dimension sizes"))
    dtype = TYPES[code]
    n_elements = 1
    for size in shape:
        n_elements *= size
    n_bytes = n_elements * dtype.itemsize
    claim = f"header claims shape {shape} of {dtype.name} = {n_bytes} bytes"
    if as_dtype is not None:
        n_result = max(n_bytes, n_elements * np.dtype(as_dtype).itemsize)
        claim += f", {n_result} bytes as {np.dtype(as_dtype).name}"
    else:
        n_result = n_bytes
    if n_result > max_bytes:
        raise _error(path, f"{claim}, more than the limit of {max_bytes} bytes "
                           f"(max_bytes; raise it for a larger file you trust)")
    return dtype, shape, n_bytes, 4 + 4 * ndim


def _size_mismatch(path, shape, dtype, expected, actual, at_least=False):
    """The error for a data size (`actual` bytes, or more with at_least) != the header's."""
    problem = "truncated" if actual < expected else "trailing bytes"
    holds = f"more than {expected}" if at_least else str(actual)
    return _error(path, f"{problem}: header claims shape {shape} of {dtype.name} "
                        f"= {expected} data bytes, the file holds {holds}")


def _read_raw(stream, path, shape, dtype, expected, header_bytes):
    """The data bytes of an uncompressed file, checked against its size first."""
    actual = os.fstat(stream.fileno()).st_size - header_bytes
    if actual != expected:
        raise _size_mismatch(path, shape, dtype, expected, actual)
    payload = bytearray(expected)
    if stream.readinto(payload) != expected:
        raise _error(path, "truncated while reading (file changed?)")
    return payload


def _read_gz(stream, path, shape, dtype, expected, compressed_bytes):
    """The data bytes of a gzip stream, read in chunks up to expected + 1 bytes.

    A header claiming more than the compressed file can expand to is refused
    at once; memory grows with what actually decompresses.
    """
    most = _DEFLATE_MAX_RATIO * compressed_bytes
    if expected > most:
        raise _error(path, f"truncated: header claims shape {shape} of {dtype.name} = "
                           f"{expected} data bytes, but {compressed_bytes} gzip bytes "
                           f"expand to at most {most}")
    payload = bytearray()
    while len(payload) <= expected:
        chunk = stream.read(min(_CHUNK, expected + 1 - len(payload)))
        if not chunk:
            break
        payload += chunk
    if len(payload) != expected:
        raise _size_mismatch(path, shape, dtype, expected, len(payload),
                             at_least=len(payload) > expected)
    return payload


def _to_array(payload, dtype, shape):
    """A writable native-endian array over the payload bytes (no copy)."""
    if not payload:
        return np.empty(shape, dtype=dtype.newbyteorder("="))
    array = np.frombuffer(payload, dtype=dtype).reshape(shape)
    if not dtype.isnative:
        array = array.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return array


def open_regular(path, what="file"):
    """A binary stream on `path`, which must be a regular file: it is opened
    without blocking (a FIFO would wait for a writer forever) and checked
    with fstat before anything is read.  FileNotFoundError if missing,
    ValueError naming the path for a FIFO, device, socket or folder."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)"
                    if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode)
                    or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                    else "not a regular file")
            raise ValueError(f"cannot read {what} {os.fspath(path)!r}: it is {kind}; "
                             "only regular files are read")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_budget(max_bytes):
    """max_bytes: an integer >= 1 (the byte budget of one IDX file)."""
    from .checks import positive_int

    return positive_int("max_bytes", max_bytes)


def read_idx(path, max_bytes=MAX_BYTES):
    """Read an IDX file (the MNIST format), raw or gzip-compressed, into an array.

    Compression is recognised by the gzip magic bytes, whatever the file name.
    The result has the shape stored in the header and the dtype of its type
    code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), converted to native byte order; it is writable.

    The file is treated as untrusted: a bad magic number, an unknown type
    code, 0 or more than 4 dimensions, data larger than `max_bytes` (default
    MAX_BYTES, 1 GiB), a size that does not match the data present,
    truncation or a corrupt gzip stream all raise ``ValueError`` naming the
    file, as does a path that is not a regular file (a FIFO, a folder).  The
    header is checked against the real (or largest possible decompressed)
    size before anything of the claimed size is allocated.  A missing file
    raises ``FileNotFoundError``.
    """
    return read(path, check_budget(max_bytes))


def read(path, max_bytes, as_dtype=None):
    """read_idx(path, max_bytes), the budget also counting the bytes of the
    data converted to `as_dtype` (what the caller will build) when given."""
    with open_regular(path, "IDX file") as stream:
        compressed = stream.read(2) == _GZIP_MAGIC
        stream.seek(0)
        if not compressed:
            try:
                dtype, shape, expected, header_bytes = _parse_header(stream, path,
                                                                     max_bytes, as_dtype)
            except ValueError as exc:
                if os.fsdecode(path).endswith(".gz"):
                    raise ValueError(f"{exc} (the name ends in .gz but the file is "
                                     f"not gzip-compressed)") from None
                raise
            payload = _read_raw(stream, path, shape, dtype, expected, header_bytes)
            return _to_array(payload, dtype, shape)
        size = os.fstat(stream.fileno()).st_size
        try:
            with gzip.GzipFile(fileobj=stream, mode="rb") as unzipped:
                dtype, shape, expected, _ = _parse_header(unzipped, path, max_bytes, as_dtype)
                payload = _read_gz(unzipped, path, shape, dtype, expected, size)
        except _GZIP_ERRORS as exc:
            raise _error(path, f"corrupt gzip data ({type(exc).__name__}: {exc})") from None
    return _to_array(payload, dtype, shape)
