"""`privinfer bench`: one configuration per record, or the whole matrix (`--matrix`); split from `cli.py`."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from .cli_options import parse_options as _parse_options, policy_options as _policy_options
from .errors import PrivinferError


MAX_BENCH_BYTES = 4 << 30  # the images a run holds at once (samples x batch), float64


def check_bench_args(a) -> None:
    """Refuse arguments that cannot run, before anything is trained or allocated."""
    if a.samples < 1 or min(a.batch) < 1:
        raise PrivinferError("--samples and --batch must be >= 1")
    from . import zoo
    for model in a.model:
        shape = zoo.build_network(model).input_shape if model in zoo.list_networks() else None
        if shape is None:
            continue
        for batch in a.batch:
            need = (a.samples + 1) * batch * int(np.prod(shape)) * 8
            if need > MAX_BENCH_BYTES:
                raise PrivinferError(
                    f"--samples {a.samples} --batch {batch} needs {(a.samples + 1) * batch:,} {model} images "
                    f"({need / 2**30:.1f} GiB, limit {MAX_BENCH_BYTES / 2**30:.0f} GiB): --samples counts timed "
                    f"queries, each of --batch images; e.g. --batch {batch} --samples 3")


def cmd_bench(a) -> None:
    import contextlib
    if getattr(a, "pin", False):  # the parties of every session below (the matrix's too), and any calibration
        from .affinity import ENV
        os.environ[ENV] = "1"
    if a.matrix:
        return _bench_matrix(a)
    a.model = a.model or ["minionn-mnist"]
    check_bench_args(a)
    with contextlib.ExitStack() as stack:
        base = _parse_options(a.option)
        if a.dealer is not None:
            if a.protocol not in ("ss", "hybrid"):
                raise PrivinferError("--dealer applies to --protocol ss and hybrid only")
            if a.dealer == "loopback":  # an authenticated third-party dealer, on this host
                from .protocols.ss.dealer import loopback_dealer
                base.update(stack.enter_context(loopback_dealer()))
            else:
                base["dealer"] = a.dealer
        _bench(a, base)


def _bench_matrix(a) -> None:
    """`--matrix default|quick`: the protocol × zoo network suite (privinfer.benchsuite)."""
    if a.json or a.option or a.epsilon or a.dealer:
        raise PrivinferError("--matrix runs its own table of protocols and options: drop --json/-o/--epsilon/--dealer "
                             "(the records go to --out DIR/records.json)")
    from .benchsuite import run_suite
    if a.replot:  # outputs only, from an earlier run's JSON
        from .benchsuite.runner import rewrite_outputs
        rewrite_outputs(a.out)
        print(f"rewrote {a.out}/matrix.md and its plots")
        return
    suite = run_suite(a.matrix, a.out, only=a.only.split(",") if a.only else None, networks=a.model,
                      shaped=False if a.no_shaping else None, peers=False if a.no_peers else None,
                      command="privinfer " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else None)
    print((Path(a.out) / "matrix.md").read_text())
    if suite["failed"]:
        print(f"{len(suite['failed'])} case(s) failed: see {a.out}/matrix.md", file=sys.stderr)


def _bench(a, base: dict) -> None:
    from .bench import format_table, run_bench, write_records
    records = []
    for eps in a.epsilon or [None]:
        for model in a.model:
            graph, opts = None, dict(base)
            if a.protocol == "noisy":  # ARDEN setting: split after the first conv block, noise-aware server
                from .protocols.noisy.train import train_noisy
                m = train_noisy(model, a.split, "digits", 1.0 if eps is None else eps, bottleneck=a.bottleneck or None)
                graph, opts = m.graph, {**m.session_options(), **base}
            elif eps is not None:
                opts["epsilon"] = eps
            if a.protocol == "auto":  # the planner plans for each --network measured (bench.run_bench)
                opts.update({k: v for k, v in _policy_options(a).items() if k != "network"})
            for network in a.network:
                for batch in a.batch:
                    records.append(run_bench(a.protocol, model, batch=batch, samples=a.samples, network=network,
                                             options=opts, graph=graph, pin=bool(getattr(a, "pin", False))))
    print(format_table(records))
    if a.json:
        write_records(records, a.json)
        print(f"wrote {a.json}")
