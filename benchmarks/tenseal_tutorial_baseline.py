"""Baseline: TenSEAL's own recipe for encrypted MNIST convolution (its tutorial 4), re-implemented from the
public TenSEAL API, on the `tenseal-mnist` zoo weights (Conv 1->4, 7x7, stride 3 -> x² -> FC 256->64 -> x²
-> FC 64->10).

Recipe: CKKS N=8192, coefficient modulus [31, 26, 26, 26, 26, 26, 26, 31], scale 2^26, *all* Galois keys;
the client encodes its image with `ts.im2col_encoding`; the server runs `conv2d_im2col` per output channel,
packs the channels with `CKKSVector.pack_vectors`, squares, multiplies by the FC matrices with `mm`, squares,
`mm` again; the client decrypts.

`run_baseline(graph, images)` returns per-image timings (seconds) of encrypt + evaluate + decrypt in one
process without serialization (the most favourable setting for the baseline), plus the same with the
ciphertexts serialized and deserialized as a client/server split would need, and the logits.
"""
from __future__ import annotations

import time

import numpy as np
import tenseal as ts

COEFF_BITS = [31, 26, 26, 26, 26, 26, 26, 31]
SCALE = 2.0 ** 26


def make_context() -> ts.Context:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=COEFF_BITS)
    ctx.global_scale = SCALE
    ctx.generate_galois_keys()
    return ctx


class TutorialServer:
    """The server half of the recipe, holding the weights of a tenseal-mnist Graph."""

    #: the recipe's last prime (31 bits at scale 2^26) holds |values| < 16 only; trained zoo logits reach ~90,
    #: so the server divides fc2 by OUT_DIV and the client multiplies back (same operations, same timing)
    OUT_DIV = 16.0

    def __init__(self, graph):
        conv, _, _, fc1, _, fc2 = graph.layers
        if conv.weight.shape[1] != 1 or any(conv.padding):
            raise ValueError("the tutorial recipe handles a single-channel, unpadded first convolution only")
        self.kernels = [k[0].tolist() for k in conv.weight]
        self.conv_bias = conv.bias.tolist()
        self.stride = conv.stride[0]
        self.kernel_shape = conv.weight.shape[2:]
        self.fc1_w, self.fc1_b = fc1.weight.T.tolist(), fc1.bias.tolist()
        self.fc2_w = (fc2.weight.T / self.OUT_DIV).tolist()
        self.fc2_b = (fc2.bias / self.OUT_DIV).tolist()

    def evaluate(self, enc_x: ts.CKKSVector, windows: int) -> ts.CKKSVector:
        channels = [enc_x.conv2d_im2col(k, windows) + b for k, b in zip(self.kernels, self.conv_bias)]
        x = ts.CKKSVector.pack_vectors(channels)
        x.square_()
        x = x.mm(self.fc1_w) + self.fc1_b
        x.square_()
        return x.mm(self.fc2_w) + self.fc2_b


class Baseline:
    """Client context + server weights; `one(image)` times one image (in-process, optionally serialized)."""

    def __init__(self, graph):
        self.ctx = make_context()
        self.server = TutorialServer(graph)
        self.public = ts.context_from(self.ctx.serialize(save_secret_key=False))
        self.setup_bytes = len(self.ctx.serialize(save_secret_key=False))

    def one(self, img, serialize: bool = False) -> tuple[float, np.ndarray]:
        kh, kw = self.server.kernel_shape
        image = np.asarray(img, dtype=np.float64).reshape(28, 28).tolist()
        t0 = time.perf_counter()
        enc_x, windows = ts.im2col_encoding(self.ctx, image, kh, kw, self.server.stride)
        if serialize:
            enc_x = ts.ckks_vector_from(self.public, enc_x.serialize())
        out = self.server.evaluate(enc_x, windows)
        if serialize:
            out = ts.ckks_vector_from(self.ctx, out.serialize())
        y = np.asarray(out.decrypt()) * self.server.OUT_DIV
        return time.perf_counter() - t0, y


def run_baseline(graph, images: np.ndarray, serialize: bool = True) -> dict:
    b = Baseline(graph)
    t_mem, t_ser, logits = [], [], []
    for img in images:
        t, y = b.one(img)
        t_mem.append(t)
        logits.append(y)
        if serialize:
            t_ser.append(b.one(img, serialize=True)[0])
    return {"latency_s": t_mem, "latency_serialized_s": t_ser, "logits": np.stack(logits),
            "setup_bytes": b.setup_bytes}


if __name__ == "__main__":
    from privinfer import zoo
    from privinfer.model import run_reference
    g = zoo.load_model("tenseal-mnist")
    X, y = zoo.load_dataset("tenseal-mnist", "test")
    r = run_baseline(g, X[:5])
    print(f"median {np.median(r['latency_s']):.3f} s/image in-process, "
          f"{np.median(r['latency_serialized_s']):.3f} s with serialization; "
          f"max |err| {np.abs(r['logits'] - run_reference(g, X[:5])).max():.2e}")
