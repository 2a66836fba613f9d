"""Regenerate examples/digits/<d>.png: one scikit-learn digits *test* image per class, resampled exactly as
the zoo does (8x8 -> 20x20 bilinear, centred in 28x28, [0, 1]), saved as 8-bit grayscale, and the first
of its class that every zoo MNIST network classifies correctly in plaintext."""
from pathlib import Path

import numpy as np
from PIL import Image

from privinfer import run_reference, zoo

OUT = Path(__file__).resolve().parent / "digits"
X, y = zoo.load_dataset("digits", "test")
graphs = [zoo.load_model(n) for n in ("cryptonets-mnist", "minionn-mnist", "tenseal-mnist", "secureml-mnist",
                                      "deepsecure-mnist")]
for d in range(10):
    for i in np.flatnonzero(y == d):
        x8 = np.round(X[i] * 255).astype(np.uint8)
        if all(run_reference(g, x8[None] / 255.0).argmax() == d for g in graphs):
            Image.fromarray(x8[0]).save(OUT / f"{d}.png", optimize=True)
            break
