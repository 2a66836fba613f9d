"""`privinfer serve | query | dealer | zoo | bench`. Errors are one clear line, exit code 2."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from .errors import PrivinferError


def _parse_options(pairs: list[str]) -> dict:
    """`-o key=value` pairs; values are read as JSON when they parse (numbers, true, lists), else strings."""
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise PrivinferError(f"option {p!r} must look like key=value")
        k, v = p.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def load_model_arg(spec: str):
    """A zoo name or a privinfer graph file (.npz written by privinfer.model.save_graph)."""
    if spec.endswith(".npz") or Path(spec).exists():
        from .model.ir import load_graph
        return load_graph(spec)
    from . import zoo
    return zoo.load_model(spec)


def load_input(path: str, shape: tuple[int, ...]) -> np.ndarray:
    """An .npy array (no pickle) or an image resized to the model's input, scaled to [0, 1]."""
    p = Path(path)
    if not p.exists():
        raise PrivinferError(f"input file {path} does not exist")
    if p.suffix == ".npy":
        try:
            return np.load(p, allow_pickle=False).astype(np.float64)
        except ValueError as e:
            raise PrivinferError(f"cannot read {path}: {e}") from None
    from PIL import Image, UnidentifiedImageError
    try:
        img = Image.open(p)
    except (UnidentifiedImageError, OSError) as e:
        raise PrivinferError(f"cannot read image {path}: {e}") from None
    c, h, w = shape
    img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float64) / 255.0
    return arr[None] if c == 1 else arr.transpose(2, 0, 1)


def _dealer_options(a) -> dict:
    """`--dealer` / `--dealer-secret` are the `ss` options dealer / server_secret, spelled as flags."""
    out = {}
    if a.dealer is not None:
        out["dealer"] = a.dealer
    if a.dealer_secret is not None:
        out["server_secret"] = a.dealer_secret
    if out and a.protocol not in ("ss", "hybrid"):
        raise PrivinferError("--dealer and --dealer-secret apply to --protocol ss and hybrid only")
    if getattr(a, "plan", None) is not None:
        if a.protocol != "hybrid":
            raise PrivinferError("--plan applies to --protocol hybrid only")
        out["plan"] = a.plan
    return out


def cmd_serve(a) -> None:
    from .server import Server
    srv = Server(load_model_arg(a.model), a.protocol, a.host, a.port, timeout=a.timeout,
                 max_sessions=a.max_sessions, max_batch=a.max_batch, **{**_parse_options(a.option), **_dealer_options(a)})
    print(f"privinfer: serving {a.model} with protocol {a.protocol!r} on {srv.host}:{srv.port}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        srv.shutdown()


def cmd_query(a) -> None:
    from .session import connect
    with connect(a.host, a.port, a.protocol, timeout=a.timeout, **_parse_options(a.option)) as s:
        x = load_input(a.input, s.input_shape)
        logits = s.infer(x)
        batch = logits.reshape(-1, logits.shape[-1])
        for row in batch:
            print(f"class {int(np.argmax(row))}  logits {np.array2string(row, precision=3, max_line_width=200)}")
        q = s.stats.last
        print(f"latency {q.latency_s:.3f} s, {q.bytes_client_to_server:,} B up, {q.bytes_server_to_client:,} B down, "
              f"{q.rounds} rounds, setup {s.stats.setup_bytes:,} B; privacy {s.stats.privacy}")


def cmd_zoo(a) -> None:
    from .zoo.cli import main as zoo_main
    rc = zoo_main([x for x in a.zoo_args if x != "--"] or ["--help"])
    if rc:
        raise SystemExit(rc)


def cmd_bench(a) -> None:
    import contextlib
    with contextlib.ExitStack() as stack:
        base = _parse_options(a.option)
        if a.dealer is not None:
            if a.protocol not in ("ss", "hybrid"):
                raise PrivinferError("--dealer applies to --protocol ss and hybrid only")
            if a.dealer == "loopback":  # an authenticated third-party dealer, on this host
                from .protocols.ss_dealer import loopback_dealer
                base.update(stack.enter_context(loopback_dealer()))
            else:
                base["dealer"] = a.dealer
        _bench(a, base)


def _bench(a, base: dict) -> None:
    from .bench import format_table, run_bench, write_records
    records = []
    for eps in a.epsilon or [None]:
        for model in a.model:
            graph, opts = None, dict(base)
            if a.protocol == "noisy":  # ARDEN setting: split after the first conv block, noise-aware server
                from .protocols.noisy_train import train_noisy
                m = train_noisy(model, a.split, "digits", 1.0 if eps is None else eps, bottleneck=a.bottleneck or None)
                graph, opts = m.graph, {**m.session_options(), **base}
            elif eps is not None:
                opts["epsilon"] = eps
            for network in a.network:
                for batch in a.batch:
                    records.append(run_bench(a.protocol, model, batch=batch, samples=a.samples, network=network,
                                             options=opts, graph=graph))
    print(format_table(records))
    if a.json:
        write_records(records, a.json)
        print(f"wrote {a.json}")


def cmd_dealer(a) -> None:
    if a.new_secret:
        from .protocols.ss_auth import new_secret_file
        try:
            kid = new_secret_file(a.new_secret)
        except FileExistsError:
            raise PrivinferError(f"{a.new_secret} exists; a secret file is never overwritten") from None
        print(f"wrote a 256-bit dealer secret to {a.new_secret} (mode 0600, key id {kid}); give it to ONE "
              f"party out of band", flush=True)
        return
    from .protocols.ss_dealer import run_dealer
    print(f"privinfer: dealer (CrypTen TTP) for protocol 'ss' on {a.host}:{a.port}", flush=True)
    run_dealer(a.host, a.port, mpc_timeout=a.mpc_timeout, gloo_ifname=a.gloo_ifname,
               server_secrets=a.server_secret or [], client_secrets=a.client_secret or [])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="privinfer", description="private neural-network inference")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="serve a model under one protocol")
    s.add_argument("--model", required=True, help="zoo name or .npz graph file")
    s.add_argument("--protocol", default="plain")
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
    s.add_argument("-o", "--option", action="append", help="protocol option key=value (repeatable)")
    s.set_defaults(func=cmd_serve)

    q = sub.add_parser("query", help="classify an input on a running server")
    q.add_argument("--host", default="127.0.0.1")
    q.add_argument("--port", type=int, default=7700)
    q.add_argument("--protocol", default="plain")
    q.add_argument("--input", required=True, help=".npy array or an image (.png/.jpg)")
    q.add_argument("--timeout", type=float, default=120.0)
    q.add_argument("-o", "--option", action="append", help="client option key=value (repeatable)")
    q.set_defaults(func=cmd_query)

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

    b = sub.add_parser("bench", help="measure a protocol; writes records as JSON")
    b.add_argument("--protocol", default="plain")
    b.add_argument("--model", nargs="+", default=["minionn-mnist"])
    b.add_argument("--batch", type=int, nargs="+", default=[1])
    b.add_argument("--samples", type=int, default=10)
    b.add_argument("--network", nargs="+", default=["loopback"],
                   help="loopback, lan, wan, mobile (emulated: needs root)")
    b.add_argument("--epsilon", nargs="+", help="noisy: per-query epsilon values (a number or inf)")
    b.add_argument("--split", type=int, default=3, help="noisy: client runs layers [0, split)")
    b.add_argument("--bottleneck", type=int, default=10, help="noisy: learned client-side feature width (0: none)")
    b.add_argument("--dealer", default=None,
                   help="ss: local (default: the server's own), loopback (an authenticated `privinfer dealer` on "
                        "127.0.0.1 with fresh secrets), or HOST:PORT (with -o server_secret=F -o client_secret=F)")
    b.add_argument("--json", help="output path")
    b.add_argument("-o", "--option", action="append", help="protocol option key=value (repeatable)")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["zoo"]:  # the zoo has its own parser (list | train | verify)
        argv = ["zoo", "--", *argv[1:]]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="privinfer %(levelname)s: %(message)s")
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
