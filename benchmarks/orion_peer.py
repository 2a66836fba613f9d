"""Orion (Ebel et al., ASPLOS'25; `orion-fhe` 1.0.2, Lattigo CKKS backend) on a privinfer zoo network: the
CKKS peer of `he` for convolutional networks (issue 13).

Why a script run by another interpreter: Orion's wheel needs torchvision and its own scipy pin, so it lives in
`.venv-orion` (`make orion`; CPU torch 2.13 as in `.venv`). The harness (`privinfer.benchsuite.peers.orion`)
exports the zoo graph's weights and the images to an .npz, runs this script there, and reads one JSON line.

What is timed, per image: encode + encrypt, the encrypted forward pass, decrypt + decode (one process: no
network, no serialization, the same secret key on both "sides"). Set-up: `orion.fit` + `orion.compile`
(packing, plaintext diagonals and the rotation keys Orion generates for them), timed apart. Key bytes: Orion's
keys written to disk with `io_mode: save` when `--save-keys` is given (slow: the file holds every key).
Accuracy: argmax agreement with the plaintext logits that the harness computed with privinfer's reference
executor on the same images.

Parameters (stated in the output): N = 2^14, LogQ = [35] + 12 x [28], LogP = [33, 33] (437 bits <= 438 for
128-bit security at N = 2^14), scale 2^28: twelve levels, enough for this network without bootstrapping (each
convolution, x^2, pooling and FC layer takes one). Hamming weight H (default 192: Orion's default sparse
secret; pass --h 8192 for a dense one). `orion.fit` sees one image at a time: Orion packs the batch of the
fit data into the ciphertext, and a single-image latency is what `he` reports.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time


def _build(on, layers):
    """An Orion module replaying the zoo graph: conv2d / linear / avgpool2d / flatten / x^2."""
    import torch

    class Net(on.Module):
        def __init__(self):
            super().__init__()
            self.ops = []
            for i, L in enumerate(layers):
                kind = L["kind"]
                if kind == "conv2d":
                    w = L["weight"]
                    pad = L["padding"]
                    if pad[0] != pad[1] or pad[2] != pad[3] or pad[0] != pad[2]:
                        raise SystemExit("orion_peer: asymmetric padding is not supported")
                    m = on.Conv2d(w.shape[1], w.shape[0], kernel_size=tuple(w.shape[2:]), stride=tuple(L["stride"]),
                                  padding=int(pad[0]), bias=True)
                    m.weight.data = torch.tensor(w, dtype=torch.float32)
                    m.bias.data = torch.tensor(L["bias"], dtype=torch.float32)
                elif kind == "linear":
                    w = L["weight"]
                    m = on.Linear(w.shape[1], w.shape[0])
                    m.weight.data = torch.tensor(w, dtype=torch.float32)
                    m.bias.data = torch.tensor(L["bias"], dtype=torch.float32)
                elif kind == "avgpool2d":
                    m = on.AvgPool2d(kernel_size=tuple(L["kernel"]), stride=tuple(L["stride"]))
                elif kind == "flatten":
                    m = on.Flatten()
                elif kind == "poly" and [float(c) for c in L["coeffs"]] == [0.0, 0.0, 1.0]:
                    m = on.Quad()
                else:
                    raise SystemExit(f"orion_peer: layer {i} ({kind}) has no Orion counterpart here")
                setattr(self, f"l{i}", m)
                self.ops.append(m)

        def forward(self, x):
            for m in self.ops:
                x = m(x)
            return x

    return Net()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("npz", help="layers_json, images, ref_logits, fit_images (written by the harness)")
    ap.add_argument("--h", type=int, default=192)
    ap.add_argument("--fit", type=int, default=8, help="images for orion.fit's value ranges, one at a time")
    ap.add_argument("--save-keys", action="store_true")
    a = ap.parse_args()
    import numpy as np
    import torch
    import orion
    import orion.nn as on

    torch.set_num_threads(1)
    data = np.load(a.npz, allow_pickle=False)
    spec = json.loads(str(data["layers_json"]))
    layers = []
    for i, L in enumerate(spec):
        L = dict(L)
        for k in ("weight", "bias"):
            if f"{k}{i}" in data:
                L[k] = data[f"{k}{i}"]
        layers.append(L)
    images, ref, fit_x = data["images"], data["ref_logits"], data["fit_images"]
    work = tempfile.mkdtemp(prefix="orion-peer-")
    config = {"ckks_params": {"LogN": 14, "LogQ": [35] + [28] * 12, "LogP": [33, 33], "LogScale": 28,
                              "H": a.h, "RingType": "standard"},
              "orion": {"margin": 2, "embedding_method": "hybrid", "backend": "lattigo", "fuse_modules": True,
                        "debug": False, "io_mode": "save" if a.save_keys else "none",
                        "diags_path": os.path.join(work, "diags.h5") if a.save_keys else "",
                        "keys_path": os.path.join(work, "keys.h5") if a.save_keys else ""}}
    def log(msg):
        print(f"orion_peer: {msg}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    orion.init_scheme(config)
    init_s = time.perf_counter() - t0
    net = _build(on, layers)
    net.eval()
    t0 = time.perf_counter()
    from torch.utils.data import DataLoader, TensorDataset
    fit_set = TensorDataset(torch.tensor(fit_x[:a.fit], dtype=torch.float32), torch.zeros(a.fit))
    orion.fit(net, DataLoader(fit_set, batch_size=1))
    fit_s = time.perf_counter() - t0
    log(f"init {init_s:.1f} s, fit {fit_s:.1f} s; compiling")
    t0 = time.perf_counter()
    level = orion.compile(net)
    compile_s = time.perf_counter() - t0
    log(f"compile {compile_s:.1f} s (input level {level})")
    net.he()
    lat, enc, ev, dec, outs = [], [], [], [], []
    for x in images:
        t0 = time.perf_counter()
        ct = orion.encrypt(orion.encode(torch.tensor(x[None], dtype=torch.float32), level))
        t1 = time.perf_counter()
        out_ct = net(ct)
        t2 = time.perf_counter()
        out = out_ct.decrypt().decode().detach().numpy().reshape(-1)[:ref.shape[1]]
        t3 = time.perf_counter()
        enc.append(t1 - t0)
        ev.append(t2 - t1)
        dec.append(t3 - t2)
        lat.append(t3 - t0)
        outs.append(out)
        log(f"image {len(outs)}: {lat[-1]:.2f} s")
    outs = np.stack(outs)
    key_bytes = None
    if a.save_keys:
        key_bytes = sum(os.path.getsize(os.path.join(work, f)) for f in os.listdir(work))
    print(json.dumps({
        "peer": "Orion 1.0.2 (Lattigo CKKS), one process", "params": config["ckks_params"],
        "init_s": init_s, "fit_s": fit_s, "compile_s": compile_s, "input_level": level,
        "latency_s": {"median": statistics.median(lat), "all": lat},
        "encrypt_s": statistics.median(enc), "eval_s": statistics.median(ev), "decrypt_s": statistics.median(dec),
        "argmax_agreement": float(np.mean(outs.argmax(1) == ref.argmax(1))),
        "max_abs_err": float(np.max(np.abs(outs - ref))), "key_and_diag_bytes": key_bytes,
        "images": int(len(images))}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
