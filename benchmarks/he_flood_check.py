"""Check circuit-private `he` on a whole test split: the evaluation error against the published estimate, and
argmax agreement after the real flood.

    PYTHONPATH=. python benchmarks/he_flood_check.py cryptonets-mnist [--images 450] [--out check.json]

Why: the flood is sized from `FloodPolicy.evaluation_noise(params)`, an estimate calibrated on the zoo networks
(privacy.py). This runs the server's exact evaluation path in process (`HE(...).compiled` with a server
context holding only the client's public keys), decrypts each result before the flood (the evaluation error in
every logit slot and every masked slot against the plaintext program) and after `rerandomize` with the
policy's flood (argmax agreement). ~1.2 s an image on an idle machine at N=16384.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from privinfer.protocols.he import HE, _KeyedContext, rerandomize
from privinfer.protocols.he.context import CKKSContext
from privinfer.protocols.he.latency import SealBackend, client_vectors
from privinfer.zoo import load_dataset, load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--images", type=int, default=450)
    ap.add_argument("--mode", default="flood")
    ap.add_argument("--out")
    a = ap.parse_args()
    X, _ = load_dataset("digits", "test")
    X = X[: a.images]
    he = HE(load_model(a.model), circuit_privacy=a.mode)
    p, plan, comp = he.latency_params, he.plan, he.compiled
    client = CKKSContext.create(p, plan.rotation_steps)
    server = _KeyedContext(he.ctx)
    server.load_public(client.public_blobs(), plan.rotation_steps)
    pos = plan.output_slots()
    masked = np.ones(p.slots, bool)
    masked[pos] = False
    errs, rest, agree, t0 = [], [], 0, time.time()
    for x in X:
        ref = he.program.run(x)
        cts = [server.ct_from_bytes(client.encrypt(v, 2.0 ** p.input_scale_bits), level=0)
               for v in client_vectors(plan, x)]
        out = comp.evaluate(cts, backend=SealBackend(server))
        dec = client.decrypt_ct(out)
        errs.append(float(np.abs(dec[pos].real - ref).max()))
        rest.append(float(np.abs(dec[masked]).max()))
        rerandomize(server, out, he.policy.flood_std)
        agree += int(np.argmax(client.decrypt_ct(out)[pos].real) == np.argmax(ref))
    est = he.policy.evaluation_noise(p)
    rec = {"model": a.model, "mode": a.mode, "images": len(X), "params": p.describe(),
           "input_scale_bits": p.input_scale_bits, "estimate_log2": float(np.log2(est)),
           "max_logit_error_log2": float(np.log2(max(errs))), "median_logit_error": float(np.median(errs)),
           "max_masked_slot_log2": float(np.log2(max(rest))),
           "estimate_margin_bits": float(np.log2(est / max(max(errs), max(rest)))),
           "argmax_agreement": agree / len(X), "seconds_per_image": (time.time() - t0) / len(X),
           "privacy": he.policy.report(p)}
    print(json.dumps(rec))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rec, f, indent=1)


if __name__ == "__main__":
    main()
