"""Peers measured in the same run, and published figures from other hardware, kept apart.

Why: a latency means little without a baseline measured on the same machine under the same load. The
peers are the stock recipes of the libraries privinfer builds on, run by the scripts in `benchmarks/`
(present in a source checkout only; an installed package reports them as unavailable):
* TenSEAL's tutorial-4 recipe on tenseal-mnist (`tenseal_tutorial_baseline.py`), against `he` latency;
* stock CrypTen with its TTP provider, direct cryptensor operations, on minionn-mnist (`ss_bench.py`),
  against `ss` with a local dealer;
* SPU's CHEETAH run directly (`cheetah_bench.py` + `cheetah_direct.py`), against `cheetah`, interleaved;
* Orion 1.0.2 (`orion_peer.py`, in its own `.venv-orion`: `make orion`) on minionn-mnist-he, against `he`
  latency (fast): the CKKS peer for convolutional networks (issue 13).
Published figures come from `benchmarks/published.json` and are never mixed with measurements: each row
is labelled "published, other hardware" with its source.
"""
from __future__ import annotations

import importlib
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from ..errors import PrivinferError

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
PUBLISHED_FIELDS = ("system", "network", "protocol", "metric", "value", "unit", "hardware", "source", "checked")


def _script(name: str):
    """Import benchmarks/NAME.py under its own name, with benchmarks/ on sys.path: CrypTen's parties are
    started with multiprocessing's spawn, whose children re-import the party function's module by name."""
    path = BENCHMARKS / f"{name}.py"
    if not path.exists():
        raise PrivinferError(f"{path} not found (peers run from a source checkout)")
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def _ours(records: list[dict], label_prefix: str, model: str) -> dict | None:
    for r in records:
        if r.get("label", "").startswith(label_prefix) and r["model"] == model and r["network"] == "loopback":
            return r
    return None


def _row(peer: str, model: str, peer_s: float, ours: dict | None, ours_label: str, note: str) -> dict:
    ours_s = ours["latency_s"]["median"] if ours else None
    return {"peer": peer, "model": model, "peer_latency_s": peer_s, "privinfer": ours_label,
            "privinfer_latency_s": ours_s, "ratio": (ours_s / peer_s) if ours_s and peer_s else None, "note": note}


def tenseal_tutorial(records: list[dict], samples: int) -> dict:
    from .. import zoo
    mod = _script("tenseal_tutorial_baseline")
    g = zoo.load_model("tenseal-mnist")
    X, _ = zoo.load_dataset("tenseal-mnist", "test")
    r = mod.run_baseline(g, X[1:1 + samples])
    peer = float(statistics.median(r["latency_serialized_s"]))
    return _row("TenSEAL tutorial 4 (im2col, N=8192, serialized both ways, one process)", "tenseal-mnist", peer,
                _ours(records, "he (latency, flood)", "tenseal-mnist"), "he (latency, flood)",
                "peer: no network, no circuit privacy, all Galois keys")


def crypten_ttp(records: list[dict], samples: int) -> dict:
    from .. import zoo
    mod = _script("ss_bench")
    g = zoo.load_model("minionn-mnist")
    X, _ = zoo.load_dataset("minionn-mnist", "test")
    r = mod.run_baseline(g, X.astype(np.float32), samples)
    return _row("stock CrypTen 0.4.1, TTP provider, cryptensor ops (3 processes)", "minionn-mnist",
                float(r["latency_s"]["median"]), _ours(records, "ss (local dealer)", "minionn-mnist"),
                "ss (local dealer)", f"peer: {r['bytes_rank1']:,} B and {r['rounds_rank1']} rounds at rank 1, all queries")


def spu_direct(records: list[dict], samples: int, model: str = "secureml-mnist") -> dict:
    mod = _script("cheetah_bench")
    r = mod.measure(model, samples)
    row = _row("SPU 0.9.5 CHEETAH, stock brpc links (2 processes)", model, r["spu_direct"]["latency_s"]["median"],
               None, "cheetah (interleaved with the peer)", "both measured in alternation in this step")
    row["privinfer_latency_s"] = r["privinfer"]["latency_s"]["median"]
    row["ratio"] = r["latency_ratio"]
    return row


ORION_PYTHON = BENCHMARKS.parent / ".venv-orion" / "bin" / "python"


def orion(records: list[dict], samples: int, model: str = "minionn-mnist-he", save_keys: bool = False) -> dict:
    """Orion on the same images as ours; the zoo weights and the reference logits travel in an .npz."""
    import subprocess
    import tempfile

    from .. import zoo
    from ..model.reference import run_reference
    if not ORION_PYTHON.exists():
        raise PrivinferError(f"{ORION_PYTHON} not found: run `make orion` to install Orion in its own venv")
    g = zoo.load_model(model)
    X, _ = zoo.load_dataset(model, "test")
    images = X[:samples].astype(np.float32)
    arrays, spec = {}, []
    for i, L in enumerate(g.layers):
        entry = {"kind": L.kind}
        for k, v in vars(L).items():
            if isinstance(v, np.ndarray):
                arrays[f"{k}{i}"] = v
            elif k != "kind":
                entry[k] = list(v) if isinstance(v, tuple) else v
        spec.append(entry)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.npz"
        np.savez(path, layers_json=json.dumps(spec), images=images, ref_logits=run_reference(g, images),
                 fit_images=X[samples:samples + 64].astype(np.float32), **arrays)
        cmd = [str(ORION_PYTHON), str(BENCHMARKS / "orion_peer.py"), str(path)] + (["--save-keys"] if save_keys else [])
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if r.returncode:
        raise PrivinferError(f"orion_peer.py failed: {r.stderr.strip()[-600:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    row = _row("Orion 1.0.2, Lattigo CKKS N=2^14 (one process, no network)", model, out["latency_s"]["median"],
               _ours(records, "he (latency, fast)", f"{model}"), "he (latency, fast)",
               f"peer: compile {out['compile_s']:.0f} s, agreement {out['argmax_agreement']:.3f}, "
               f"H={out['params']['H']}" + (f", keys+diagonals {out['key_and_diag_bytes'] / 2**20:.0f} MB"
                                            if out.get("key_and_diag_bytes") else ""))
    row["peer_detail"] = out
    return row


PEERS = {"tenseal": tenseal_tutorial, "crypten": crypten_ttp, "spu": spu_direct, "orion": orion}


def run_peers(records: list[dict], samples: int = 5, log=print, only: list[str] | None = None) -> list[dict]:
    """Every peer in turn; a peer that cannot run gives a row with its error instead of a figure."""
    rows = []
    for name, fn in PEERS.items():
        if only and name not in only:
            continue
        try:
            row = fn(records, samples)
        except Exception as e:  # a missing library or script must not lose the rest of the matrix
            row = {"peer": name, "error": f"{type(e).__name__}: {e}"}
        rows.append(row)
        if "ratio" in row and row["ratio"] is not None:
            log(f"privinfer {row['privinfer']} / {row['peer']} on {row['model']}: {row['ratio']:.2f}x "
                f"({row['privinfer_latency_s']:.3f} s vs {row['peer_latency_s']:.3f} s)")
        elif "error" in row:
            log(f"peer {name}: not measured ({row['error']})")
    return rows


def load_published(path: str | Path | None = None) -> list[dict]:
    """Rows of `benchmarks/published.json` (schema: PUBLISHED_FIELDS); [] when the file does not exist."""
    path = Path(path) if path is not None else BENCHMARKS / "published.json"
    if not path.exists():
        return []
    rows = json.loads(path.read_text())
    if not isinstance(rows, list):
        raise PrivinferError(f"{path}: a list of objects is expected")
    for i, r in enumerate(rows):
        missing = [f for f in PUBLISHED_FIELDS if f not in r]
        if missing:
            raise PrivinferError(f"{path}: row {i} lacks {missing}")
        if not isinstance(r["checked"], bool):
            raise PrivinferError(f"{path}: row {i}: 'checked' must be true or false")
    return [{**r, "label": "published, other hardware"} for r in rows]
