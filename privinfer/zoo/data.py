"""Offline data for the zoo: real handwritten digits shipped inside scikit-learn, and the user's own MNIST.

Nothing may be downloaded at run time, so the zoo trains on scikit-learn's `load_digits` (1797 real
8x8 handwritten digits, UCI optdigits) brought into the MNIST layout: each 8x8 image is scaled
bilinearly to 20x20 and centered in a 28x28 canvas, as MNIST centers its digits in a 20x20 box; values
are in [0, 1]. The split is fixed (stratified, seed 0, 25% test) so accuracies are comparable.

There is no CIFAR-10 offline. `digits-rgb32` is a synthetic stand-in with CIFAR's *shape* only (the
digits scaled to 24x24 inside 32x32, copied to 3 channels); accuracies on it say nothing about CIFAR-10.

`load_mnist_idx` reads real MNIST IDX files the user supplies (plain or gzip) with strict header checks;
the parser never unpickles and never trusts a header's size before checking it against the data.
"""
from __future__ import annotations

import functools
import gzip
import io
import os
import struct
import zlib

import numpy as np

from ..errors import ShapeError

DATASETS = ("digits", "digits-rgb32")
TEST_FRACTION = 0.25
SPLIT_SEED = 0

# IDX type byte -> big-endian numpy dtype
IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
MAX_IDX_BYTES = 1 << 31  # refuse headers that declare more than 2 GiB of data


# --- scikit-learn digits ------------------------------------------------------------------------

def _place(images8: np.ndarray, box: int, canvas: int) -> np.ndarray:
    """Scale (N, 8, 8) images to box x box (bilinear) and center them in canvas x canvas, in [0, 1]."""
    import torch
    import torch.nn.functional as F
    x = torch.from_numpy(images8.astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(box, box), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    lo = (canvas - box) // 2
    out = np.zeros((len(images8), 1, canvas, canvas), dtype=np.float32)
    out[:, :, lo:lo + box, lo:lo + box] = x.numpy()
    return out


@functools.lru_cache(maxsize=4)
def _digits(box: int, canvas: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    X = _place(d.images, box, canvas)
    y = d.target.astype(np.int64)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=TEST_FRACTION,
                                           random_state=SPLIT_SEED, stratify=y)
    return X, y, np.sort(idx_train), np.sort(idx_test)


def _split(box: int, canvas: int, split: str):
    X, y, tr, te = _digits(box, canvas)
    if split == "train":
        idx = tr
    elif split == "test":
        idx = te
    elif split == "all":
        idx = np.arange(len(y))
    else:
        raise ShapeError(f"split must be 'train', 'test' or 'all', got {split!r}")
    return X[idx].copy(), y[idx].copy()


def load_digits_28(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(X float32 (N, 1, 28, 28) in [0, 1], y int64): sklearn digits in MNIST layout; 1347 train / 450 test."""
    return _split(20, 28, split)


def load_digits_rgb32(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(X float32 (N, 3, 32, 32), y): the digits as a CIFAR-*shaped* synthetic stand-in. Not CIFAR-10."""
    X, y = _split(24, 32, split)
    return np.repeat(X, 3, axis=1), y


def load_dataset(name: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Data by dataset name ("digits", "digits-rgb32") or by zoo network name (its training set)."""
    from .networks import NETWORKS
    if name in NETWORKS:
        name = NETWORKS[name].dataset
    if name == "digits":
        return load_digits_28(split)
    if name == "digits-rgb32":
        return load_digits_rgb32(split)
    raise ShapeError(f"unknown dataset {name!r}; offline datasets: {', '.join(DATASETS)} "
                     f"(for real MNIST use load_mnist_idx on your own files)")


# --- IDX files ----------------------------------------------------------------------------------

def _open(source):
    """A binary stream over a path, bytes or a file object; gzip is detected by its magic bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        f = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        f = open(source, "rb")
    else:
        f = source
    head = f.read(2)
    f.seek(-len(head), io.SEEK_CUR)
    return gzip.GzipFile(fileobj=f, mode="rb") if head == b"\x1f\x8b" else f, f


def _read_exact(f, n: int, what: str) -> bytes:
    try:
        data = f.read(n)
    except (OSError, EOFError, zlib.error) as e:
        raise ShapeError(f"IDX: corrupt stream while reading {what}: {e}") from None
    if len(data) != n:
        raise ShapeError(f"IDX: truncated {what}: expected {n} bytes, got {len(data)}")
    return data


def read_idx(source) -> np.ndarray:
    """Parse one IDX file (path, bytes or binary file; optionally gzip) into a native-endian array."""
    stream, raw = _open(source)
    try:
        magic = _read_exact(stream, 4, "magic number")
        if magic[0] != 0 or magic[1] != 0:
            raise ShapeError(f"IDX: bad magic {magic.hex()} (must start with two zero bytes)")
        if magic[2] not in IDX_DTYPES:
            raise ShapeError(f"IDX: unknown data type 0x{magic[2]:02x}; known: "
                             + ", ".join(f"0x{k:02x}" for k in IDX_DTYPES))
        ndim = magic[3]
        if ndim == 0:
            raise ShapeError("IDX: zero dimensions")
        dims = struct.unpack(f">{ndim}I", _read_exact(stream, 4 * ndim, "dimensions"))
        dtype = IDX_DTYPES[magic[2]]
        nbytes = int(np.prod(dims, dtype=object)) * dtype.itemsize
        if nbytes > MAX_IDX_BYTES:
            raise ShapeError(f"IDX: header declares {nbytes} bytes (dims {dims}), over the {MAX_IDX_BYTES} limit")
        body = _read_exact(stream, nbytes, f"data for dims {dims}")
        try:
            extra = stream.read(1)
        except (OSError, EOFError, zlib.error) as e:
            raise ShapeError(f"IDX: corrupt stream after the data: {e}") from None
        if extra:
            raise ShapeError(f"IDX: trailing bytes after {nbytes} bytes of data for dims {dims}")
    finally:
        if stream is not raw:
            stream.close()
        if raw is not source:
            raw.close()
    arr = np.frombuffer(body, dtype=dtype).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def write_idx(array: np.ndarray) -> bytes:
    """Serialize an array as IDX bytes (big-endian); the inverse of `read_idx`, used by tests and tools."""
    arr = np.asarray(array)
    codes = {v.newbyteorder("=").str.lstrip("<>|="): k for k, v in IDX_DTYPES.items()}
    code = codes.get(arr.dtype.newbyteorder("=").str.lstrip("<>|="))
    if code is None or arr.ndim == 0 or arr.ndim > 255:
        raise ShapeError(f"IDX cannot hold dtype {arr.dtype} with {arr.ndim} dimensions")
    head = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(IDX_DTYPES[code]).tobytes()


def load_mnist_idx(images_path, labels_path, image_size: tuple[int, int] | None = (28, 28)
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Read MNIST-format IDX images + labels: (X float32 (N, 1, H, W) in [0, 1], y int64 (N,)).

    Images must be unsigned bytes with 3 dimensions (N, H, W), of `image_size` unless that is None;
    labels unsigned bytes with 1 dimension and the same N. Anything else raises ShapeError.
    """
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ShapeError(f"IDX images must be ubyte (N, H, W); got {images.dtype} with shape {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ShapeError(f"IDX labels must be ubyte (N,); got {labels.dtype} with shape {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ShapeError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if image_size is not None and images.shape[1:] != tuple(image_size):
        raise ShapeError(f"IDX images are {images.shape[1]}x{images.shape[2]}, expected "
                         f"{image_size[0]}x{image_size[1]}")
    X = (images.astype(np.float32) / 255.0)[:, None]
    return X, labels.astype(np.int64)
