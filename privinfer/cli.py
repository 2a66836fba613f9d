"""`privinfer serve | query | compile | dealer | zoo | plan | profile | bench` (bench lives in `cli_bench.py`).
Errors are one clear line, exit code 2."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .errors import PrivinferError
from .inputs import EXPECTED
from .cli_bench import cmd_bench
from .cli_options import parse_options as _parse_options, policy_options as _policy_options
from .protocols.base import BUILTIN, resolve_protocol

PROTOCOLS = sorted(BUILTIN)


def load_model_arg(spec: str):
    """A zoo name or a privinfer graph file (.npz written by `privinfer compile` or save_graph)."""
    if spec.endswith((".pt", ".pth", ".pt2", ".ts")):
        raise PrivinferError(f"{spec} is a torch file, not a privinfer graph; convert it first: privinfer compile "
                             f"{spec} --class your_module:YourNet -o model.npz (then --model model.npz)")
    if spec.endswith(".npz") or Path(spec).exists():
        from .model.ir import load_graph
        return load_graph(spec)
    from . import zoo
    return zoo.load_model(spec, progress=True)  # a network not shipped is trained first: show it


def _protocol_banner(srv) -> str:
    split = getattr(getattr(srv, "protocol", None), "split", None)  # noisy: say exactly where the model is cut
    if isinstance(split, int):
        names = srv.protocol.graph.names
        return (f"; client runs layers [0, {split}) = {', '.join(names[:split])}, "
                f"server runs [{split}, {len(names)})")
    return ""


def _dealer_options(a) -> dict:
    """`--dealer` / `--dealer-secret` are the `ss` options dealer / server_secret, spelled as flags."""
    out = {}
    if a.dealer is not None:
        out["dealer"] = a.dealer
    if a.dealer_secret is not None:
        out["server_secret"] = a.dealer_secret
    if out and a.protocol not in ("ss", "hybrid", "auto"):
        raise PrivinferError("--dealer and --dealer-secret apply to --protocol ss and hybrid only")
    if getattr(a, "plan", None) is not None:
        if a.protocol != "hybrid":
            raise PrivinferError("--plan applies to --protocol hybrid only")
        out["plan"] = a.plan
    return out


def _add_policy_flags(p, network_default="wan", network=True) -> None:
    if network:
        p.add_argument("--network", default=network_default,
                       help="auto: link to plan for: loopback, lan, wan, mobile or RATE:RTT like 50mbit:20ms")
    p.add_argument("--objective", default="latency", choices=["latency", "bytes", "client_seconds"],
                   help="auto: what the plan minimizes (default latency)")
    p.add_argument("--no-model-private", action="store_true",
                   help="auto: allow layers in plaintext on the client (noisy offloading; needs --plan-epsilon)")
    p.add_argument("--plan-epsilon", type=float, default=None, help="auto: allow a DP release with this epsilon")
    p.add_argument("--no-dealer", action="store_true", help="auto: no 2PC dealer (only he and dealer-free cheetah)")
    p.add_argument("--plan-hiding", default="perfect", choices=["perfect", "statistical"],
                   help="auto: conversions between ciphertexts and shares must hide perfectly (BFV, the default) "
                        "or may hide statistically (CKKS, 19-20 bits)")
    p.add_argument("--calibration", default=None, help="auto: calibration JSON (default: privinfer profile's)")


def cmd_serve(a) -> None:
    from .server import Server
    from .session import step
    opts = {**_parse_options(a.option), **_dealer_options(a)}
    if a.executor:
        opts["executor"] = a.executor
    graph = load_model_arg(a.model)
    if a.protocol == "auto":  # plan once here; the server (and every worker) runs the concrete protocol
        from .planner.auto import resolve_auto
        a.protocol, opts, plan = resolve_auto(graph, {**opts, **_policy_options(a)})
        print(plan.explain(), flush=True)
    name = resolve_protocol(a.protocol, opts)[0]
    from .protocols.base import get_protocol
    if "progress" in get_protocol(name).server_options:  # the protocol's own preparation steps (he)
        opts.setdefault("progress", True)
    with step(f"{name}: preparing {a.model} (parameters, weights, fine-tuning)", True):
        if a.workers:  # N worker processes behind this port (privinfer.serving.workers)
            from .serving import Supervisor
            srv = Supervisor(graph, a.protocol, a.host, a.port, workers=a.workers, timeout=a.timeout,
                             max_sessions=a.max_sessions, max_batch=a.max_batch, **opts)
        else:  # 0: one process, one thread per session
            srv = Server(graph, a.protocol, a.host, a.port, timeout=a.timeout, max_sessions=a.max_sessions,
                         max_batch=a.max_batch, **opts)
    rng = graph.input_range
    print(f"privinfer: serving {a.model} with protocol {name!r} on {srv.host}:{srv.port}"
          f"{f' ({a.workers} worker processes)' if a.workers else ''}; input {graph.input_shape} in "
          f"{list(rng) if rng else 'an unpublished range'}{_protocol_banner(srv)}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        srv.shutdown()


def cmd_query(a) -> None:
    from .inputs import layout_warnings, load_input
    from .session import connect
    if not Path(a.input).exists():  # before a (possibly long) key set-up
        raise PrivinferError(f"input file {a.input} does not exist")
    with connect(a.host, a.port, a.protocol, timeout=a.timeout, progress=a.protocol in ("he", "ss") and not a.json,
                 **_parse_options(a.option)) as s:
        x, how = load_input(a.input, s.input_shape, invert=a.invert)
        print(f"privinfer: {how}", file=sys.stderr, flush=True)
        if x.shape == tuple(s.input_shape):
            for w in layout_warnings(x):
                print(f"privinfer: warning: {w}", file=sys.stderr, flush=True)
        logits = s.infer(x)
        batch = logits.reshape(-1, logits.shape[-1])
        if a.json:
            print(json.dumps({"classes": [int(np.argmax(r)) for r in batch], "logits": batch.tolist(),
                              "stats": s.stats.as_dict()}))
            return
        for row in batch:
            print(f"class {int(np.argmax(row))}  logits {np.array2string(row, precision=3, max_line_width=200)}")
        q = s.stats.last
        print(f"latency {q.latency_s:.3f} s, {q.bytes_client_to_server:,} B up, {q.bytes_server_to_client:,} B down, "
              f"{q.rounds} rounds, setup {s.stats.setup_bytes:,} B; privacy {s.stats.privacy}")


def cmd_compile(a) -> None:
    from .convert import compile_file
    g = compile_file(a.model_file, a.output, cls=a.cls, trust=a.trust,
                     input_shape=tuple(a.input_shape) if a.input_shape else None, input_range=tuple(a.input_range))
    print(f"privinfer: wrote {a.output}: {len(g)} layers, input {g.input_shape} in {list(g.input_range)}, "
          f"output {g.output_shape}; serve it with: privinfer serve --model {a.output} --protocol he|ss|noisy|plain")


def cmd_zoo(a) -> None:
    from .zoo.cli import main as zoo_main
    rc = zoo_main([x for x in a.zoo_args if x != "--"] or ["--help"])
    if rc:
        raise SystemExit(rc)


def cmd_plan(a) -> None:
    from .planner.auto import resolve_auto
    graph = load_model_arg(a.model)
    say = (lambda m: print(f"privinfer: {m}", file=sys.stderr, flush=True))
    from .planner import table
    if not table._cache_file(graph).exists():
        say("first plan for this network: counting its 2PC pieces and HE segments (cached afterwards)")
    _, _, plan = resolve_auto(graph, _policy_options(a))
    print(json.dumps(plan.to_json(), indent=2) if a.json else plan.explain())


def cmd_profile(a) -> None:
    from .planner.calibrate import run_profile
    if a.cheetah and not a.model:
        raise PrivinferError("--cheetah measures the networks named by --model: name at least one")
    if a.pin:  # the counting parties (child processes) read it: `affinity.enabled`
        from .affinity import ENV
        os.environ[ENV] = "1"
    path = run_profile(a.output, ss=not a.no_ss)
    print(f"privinfer: wrote the calibration table {path}")
    if a.model:
        from .planner.cheetah_cost import add_cheetah
        from .planner.table import counts
        for m in a.model:
            graph = load_model_arg(m)
            counts(graph, lambda msg: print(f"privinfer: {m}: {msg}", file=sys.stderr, flush=True), refresh=True)
            if a.cheetah:
                print(f"privinfer: {m}: timing a dealer-free (cheetah) session on loopback", file=sys.stderr, flush=True)
                add_cheetah(graph, path, name=str(m))


def cmd_dealer(a) -> None:
    if a.new_secret:
        from .protocols.ss.auth import new_secret_file
        try:
            kid = new_secret_file(a.new_secret)
        except FileExistsError:
            raise PrivinferError(f"{a.new_secret} exists; a secret file is never overwritten") from None
        print(f"wrote a 256-bit dealer secret to {a.new_secret} (mode 0600, key id {kid}); give it to ONE "
              f"party out of band", flush=True)
        return
    from .protocols.ss.dealer import run_dealer
    print(f"privinfer: dealer (CrypTen TTP) for protocol 'ss' on {a.host}:{a.port}", flush=True)
    run_dealer(a.host, a.port, mpc_timeout=a.mpc_timeout, gloo_ifname=a.gloo_ifname,
               server_secrets=a.server_secret or [], client_secrets=a.client_secret or [])


def options_help(names: list[str] | None = None) -> str:
    """Each protocol's -o options with their defaults (imports the protocol modules: only for --help)."""
    from .protocols.base import available_protocols, get_protocol
    rows = ["protocol options (-o key=value; JSON values):"]
    for name in names or available_protocols():
        try:
            cls = get_protocol(name)
        except Exception as e:  # a protocol whose library is missing still gets a line
            rows.append(f"  {name}: unavailable ({e})")
            continue
        fmt = lambda d: ", ".join(f"{k}={json.dumps(v)}" for k, v in d.items()) or "none"  # noqa: E731
        rows.append(f"  {name} ({cls.summary})")
        rows.append(f"      server: {fmt(cls.server_options)}")
        rows.append(f"      client: {fmt(cls.client_options)}")
    return "\n".join(rows)


QUERY_INPUT_HELP = ("an .npy array (used as is) or an image (.png/.jpg), converted to the model's input and "
                    "reported in one line. The zoo's digit models expect: " + EXPECTED)


def build_parser(with_options: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="privinfer", description="private neural-network inference")
    p.add_argument("--version", action="version", version=f"privinfer {__version__}")
    p.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"],
                   help="logging level (default: info for serve, warning otherwise)")
    sub = p.add_subparsers(dest="cmd", required=True)
    raw = argparse.RawDescriptionHelpFormatter
    epilog = options_help() if with_options else "(privinfer serve --help lists each protocol's -o options)"

    s = sub.add_parser("serve", help="serve a model under one protocol", epilog=epilog, formatter_class=raw)
    s.add_argument("--model", required=True, help="zoo name or .npz graph file (see: privinfer compile)")
    s.add_argument("--protocol", required=True,
                   help=f"one of {', '.join(PROTOCOLS)} (plain: no privacy, a baseline), or auto (the planner chooses)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=7700)
    s.add_argument("--timeout", type=float, default=120.0, help="per-read timeout, seconds")
    s.add_argument("--max-sessions", type=int, default=16)
    s.add_argument("--max-batch", type=int, default=8192)
    s.add_argument("--dealer", default=None,
                   help="ss: 'local' (this server runs the dealer: no input privacy against its operator) or "
                        "HOST:PORT of a `privinfer dealer` (needs --dealer-secret); required for ss")
    s.add_argument("--dealer-secret", default=None, help="ss: file with this server's secret for the third-party dealer")
    s.add_argument("--plan", default=None, help="hybrid: protocol per layer, e.g. 'he:0,ss:1-2,he:3,ss:4-'")
    s.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="worker processes behind the port (default: the number of cores; 0: threads in one process)")
    s.add_argument("--executor", default=None,
                   help="he batch packing: where batch groups run: local (default), ray (a running or new local "
                        "Ray), ray://HOST:PORT (Ray client) or HOST:PORT (a Ray cluster's GCS address)")
    s.add_argument("-o", "--option", action="append", help="protocol option key=value (repeatable; listed below)")
    _add_policy_flags(s)
    s.set_defaults(func=cmd_serve)

    pl = sub.add_parser("plan", help="choose a protocol per layer for a network, link and policy (--protocol auto)")
    pl.add_argument("--model", required=True, help="zoo name or .npz graph file")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    _add_policy_flags(pl)
    pl.set_defaults(func=cmd_plan)

    pr = sub.add_parser("profile", help="time this machine's HE and 2PC kernels; write the planner's cost table")
    pr.add_argument("-o", "--output", default=None, help="path (default: <cache>/planner/calibration.json)")
    pr.add_argument("--no-ss", action="store_true", help="HE kernels only (keep the 2PC constants of the defaults)")
    pr.add_argument("--model", nargs="*", default=None,
                    help="also count these networks' plans again (2PC pieces re-timed on this machine; cached)")
    pr.add_argument("--pin", action="store_true",
                    help="count the 2PC pieces with each party on its own core (for `privinfer bench --pin`)")
    pr.add_argument("--cheetah", action="store_true",
                    help="also time a dealer-free (SPU) session on each --model, so that the planner can offer it")
    pr.set_defaults(func=cmd_profile)

    q = sub.add_parser("query", help="classify an input on a running server", epilog=epilog, formatter_class=raw)
    q.add_argument("--host", default="127.0.0.1")
    q.add_argument("--port", type=int, default=7700)
    q.add_argument("--protocol", default="plain", help=f"the server's protocol: {', '.join(PROTOCOLS)} (default plain)")
    q.add_argument("--input", required=True, help=QUERY_INPUT_HELP)
    q.add_argument("--invert", action="store_true", help="use 1 - x (for a dark digit on a light background)")
    q.add_argument("--json", action="store_true", help="print classes, logits and stats as one JSON object")
    q.add_argument("--timeout", type=float, default=120.0)
    q.add_argument("-o", "--option", action="append", help="client option key=value (repeatable; listed below)")
    q.set_defaults(func=cmd_query)

    c = sub.add_parser("compile", help="turn your torch model file into a graph file that serve reads",
                       description="privinfer compile model.pt --class mymodule:Net -o model.npz")
    c.add_argument("model_file", help=".pt state dict (with --class), a TorchScript nn.Sequential, or a whole "
                                      "pickled module (with --trust)")
    c.add_argument("-o", "--output", required=True, help="graph file to write (.npz)")
    c.add_argument("--class", dest="cls", help="module:Class that builds the model (no arguments), for a state dict")
    c.add_argument("--trust", action="store_true", help="unpickle a whole saved module (runs code: own files only)")
    c.add_argument("--input-shape", type=int, nargs="+", help="C H W (needed when the model starts with a conv)")
    c.add_argument("--input-range", type=float, nargs=2, default=[0.0, 1.0], metavar=("LO", "HI"),
                   help="input values the model was trained on, published to clients (default 0 1)")
    c.set_defaults(func=cmd_compile)

    z = sub.add_parser("zoo", help="benchmark networks: zoo list | zoo train NAME|all | zoo verify NAME",
                       add_help=False)
    z.add_argument("zoo_args", nargs=argparse.REMAINDER)
    z.set_defaults(func=cmd_zoo)

    d = sub.add_parser("dealer", help="run the 2PC dealer (CrypTen's trusted third party) as a service")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=7551)
    d.add_argument("--mpc-timeout", type=float, default=60.0, help="seconds a CrypTen operation may stall")
    d.add_argument("--gloo-ifname", default=None, help="network interface for gloo (default: the one used)")
    d.add_argument("--server-secret", action="append",
                   help="file with a model server's pre-shared secret (repeatable); give that file to the server")
    d.add_argument("--client-secret", action="append",
                   help="file with a client's pre-shared secret (repeatable); give it to clients, never to a server")
    d.add_argument("--new-secret", metavar="FILE", help="write a fresh 256-bit secret to FILE and exit")
    d.set_defaults(func=cmd_dealer)

    b = sub.add_parser("bench", help="measure a protocol; writes records as JSON", epilog=epilog, formatter_class=raw)
    b.add_argument("--protocol", default="plain", help=f"one of {', '.join(PROTOCOLS)}, or auto (the planner)")
    b.add_argument("--model", nargs="+", default=None,
                   help="zoo names or .npz files (default minionn-mnist; with --matrix: restrict the zoo networks)")
    b.add_argument("--batch", type=int, nargs="+", default=[1], help="images per query")
    b.add_argument("--samples", type=int, default=10,
                   help="timed queries per row (each of --batch images; one more warms up); default 10")
    b.add_argument("--network", nargs="+", default=["loopback"],
                   help="loopback, lan, wan, mobile (emulated: needs root)")
    b.add_argument("--epsilon", nargs="+", help="noisy: per-query epsilon values (a number or inf)")
    b.add_argument("--split", type=int, default=3, help="noisy: client runs layers [0, split)")
    b.add_argument("--bottleneck", type=int, default=10, help="noisy: learned client-side feature width (0: none)")
    b.add_argument("--dealer", default=None,
                   help="ss: local (default: the server's own), loopback (an authenticated `privinfer dealer` on "
                        "127.0.0.1 with fresh secrets), or HOST:PORT (with -o server_secret=F -o client_secret=F)")
    b.add_argument("--json", help="output path")
    b.add_argument("--matrix", choices=["default", "quick"], default=None,
                   help="run every applicable protocol on every zoo network (quick: a small subset, ~1 minute); "
                        "writes records.json, suite.json, matrix.md and PNG plots into --out")
    b.add_argument("--out", default="bench-matrix", help="--matrix: output folder (default ./bench-matrix)")
    b.add_argument("--only", default=None, help="--matrix: comma-separated protocols or row labels to run")
    b.add_argument("--no-shaping", action="store_true", help="--matrix: no tc-shaped runs (modelled profiles only)")
    b.add_argument("--no-peers", action="store_true", help="--matrix: skip the peers (TenSEAL, CrypTen, SPU)")
    b.add_argument("--replot", action="store_true",
                   help="--matrix: redraw the plots and matrix.md from --out's JSON, measuring nothing")
    b.add_argument("-o", "--option", action="append", help="protocol option key=value (repeatable)")
    b.add_argument("--pin", action="store_true",
                   help="each 2PC party on its own core (steadier under load, slower when idle; calibrate with "
                        "`privinfer profile --pin` to compare with the planner: privinfer/affinity.py)")
    _add_policy_flags(b, network=False)
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["zoo"]:  # the zoo has its own parser (list | train | verify)
        argv = ["zoo", "--", *argv[1:]]
    wants_help = any(x in ("-h", "--help") for x in argv) and argv[:1] != ["zoo"]
    args = build_parser(with_options=wants_help).parse_args(argv)
    level = args.log_level or ("info" if args.cmd == "serve" else "warning")
    logging.basicConfig(level=getattr(logging, level.upper()), format="privinfer %(levelname)s: %(message)s")
    try:
        args.func(args)
    except PrivinferError as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
