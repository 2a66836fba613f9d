"""`privinfer zoo ...`: list the networks, (re)train their weights, check shipped weights bit-for-bit.

`main(argv)` is self-contained so the top-level CLI can delegate the `zoo` sub-command to it; it also
runs as `python -m privinfer.zoo`.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time

from .networks import NETWORKS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="privinfer zoo", description="benchmark networks and their weights")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the networks")
    t = sub.add_parser("train", help="train deterministically and write NAME.npz + NAME.json")
    t.add_argument("names", nargs="+", metavar="NAME", help="network names, or 'all'")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--out", default=None, help="directory (default: shipped weights dir, or the cache)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    v = sub.add_parser("verify", help="retrain into a temp dir and compare sha256 with the stored weights")
    v.add_argument("names", nargs="+", metavar="NAME")
    return p


def _names(names: list[str]) -> list[str]:
    return list(NETWORKS) if names == ["all"] else names


def main(argv: list[str] | None = None) -> int:
    from .store import read_meta, train_and_save, weights_path
    args = _parser().parse_args(argv)
    if args.cmd == "list":
        for name, info in NETWORKS.items():
            meta = read_meta(name)
            acc = f"{meta['test_accuracy']:.4f}" if meta else "-"
            kind = "polynomial" if info.polynomial else "relu"
            print(f"{name:<18} {info.dataset:<13} {kind:<13} acc={acc:<7} {info.citation}")
        return 0
    if args.cmd == "train":
        for name in _names(args.names):
            t0 = time.perf_counter()
            meta = train_and_save(name, seed=args.seed, epochs=args.epochs, progress=not args.quiet,
                                  directory=args.out)
            print(f"{name}: test accuracy {meta['test_accuracy']:.4f}, {meta['bytes']} bytes, "
                  f"sha256 {meta['sha256']}, {time.perf_counter() - t0:.1f} s")
        return 0
    status = 0
    for name in _names(args.names):
        path = weights_path(name)
        if path is None:
            print(f"{name}: no stored weights to verify")
            status = 1
            continue
        stored = read_meta(name) or {}
        have = hashlib.sha256(path.read_bytes()).hexdigest()
        with tempfile.TemporaryDirectory() as tmp:
            meta = train_and_save(name, seed=stored.get("seed") or 0, epochs=stored.get("epochs"),
                                  progress=False, directory=tmp)
        same = meta["sha256"] == have
        print(f"{name}: {'identical' if same else 'DIFFERENT'} (stored {have[:16]}, retrained {meta['sha256'][:16]})")
        status |= 0 if same else 1
    return status


if __name__ == "__main__":
    sys.exit(main())
