"""Reading a user's input file for `privinfer query`, saying in one line every conversion applied.

Why: an image that is silently resized, converted or rescaled is the commonest cause of a wrong class
that looks right. So every step is reported, and what cannot be fixed safely (dark-on-white polarity,
a digit filling the whole frame) is pointed out instead of guessed.

Expected input of the zoo's digit models (and the README's own-model path): one channel, 28x28, values
in [0, 1] with 0 = background and 1 = ink (a light digit on a dark background, as in MNIST), the digit
centred in the middle 20x20 pixels (a 4-pixel empty margin).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import PrivinferError

EXPECTED = ("one channel, 28x28, values in [0, 1] (0 = background, 1 = ink: a light digit on a dark "
            "background, as MNIST), the digit centred in the middle 20x20 pixels")


def load_input(path: str, shape: tuple[int, ...], *, invert: bool = False) -> tuple[np.ndarray, str]:
    """(array, one-line description of every conversion) for an .npy array (no pickle) or an image."""
    p = Path(path)
    if not p.exists():
        raise PrivinferError(f"input file {path} does not exist")
    if p.suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as e:
            raise PrivinferError(f"cannot read {path}: {e}") from None
        steps = [f"{arr.dtype} array {tuple(arr.shape)}", "used as is (no scaling)"]
        arr = arr.astype(np.float64)
        if invert:
            arr = 1.0 - arr
            steps.append("inverted (1 - x)")
        return arr, f"input {p.name}: " + ", ".join(steps)
    from PIL import Image, UnidentifiedImageError
    try:
        img = Image.open(p)
        img.load()
    except (UnidentifiedImageError, OSError) as e:
        raise PrivinferError(f"cannot read image {path}: {e}") from None
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise PrivinferError(f"the model takes {shape}, not an image; give an .npy array")
    c, h, w = shape
    steps = [f"{img.width}x{img.height} {img.mode} image"]
    want = "L" if c == 1 else "RGB"
    if img.mode != want:
        steps.append(f"converted {img.mode} -> {'grayscale' if c == 1 else 'RGB'}")
        img = img.convert(want)
    if img.size != (w, h):
        steps.append(f"resized {img.width}x{img.height} -> {w}x{h} (bilinear)")
        img = img.resize((w, h), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float64) / 255.0
    steps.append("scaled 0-255 -> [0, 1]")
    arr = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    if invert:
        arr = 1.0 - arr
        steps.append("inverted (1 - x)")
    return arr, f"input {p.name}: " + ", ".join(steps)


def layout_warnings(arr: np.ndarray) -> list[str]:
    """Hints for the two layout mistakes a converter cannot safely undo (polarity, framing)."""
    if arr.ndim != 3 or arr.shape[1] < 8 or arr.shape[2] < 8:
        return []
    out = []
    img = arr.mean(0)
    border = np.concatenate([img[:2].ravel(), img[-2:].ravel(), img[:, :2].ravel(), img[:, -2:].ravel()])
    if border.mean() > 0.5:
        out.append("the image looks dark-on-white; the model expects a light digit on a dark background "
                   "(add --invert)")
    elif border.max() > 0.3:
        out.append("the digit reaches the image border; the model expects it centred with an empty margin "
                   "(about 4 of 28 pixels)")
    return out
