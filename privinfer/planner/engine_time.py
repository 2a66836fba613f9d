"""The real `ss` engine run on the whole network, its 2PC rounds traced: what the counted pieces are scaled to.

Why: the planner prices a plan from pieces counted one at a time (`ss_cost.count_pieces`), but a query is the
pieces in sequence, and two of its costs only show there:

* the online seconds (four calibrations minutes apart priced the same network up to 27 % apart in session 8,
  while the bench measured each within ~10 %): `ss_cost.interaction_scale` scales the pieces to the engine's;
* the rounds' loopback waits above the exchange floor (the slack that a link's round trip replaces,
  `cost.Cost.rounds_s`): it is this virtual machine's wake-up delay, and what pieces timed alone wait is not
  what a query's rounds wait, in either direction (session 9: mixed-mnist's counted chain 12-38 ms per run
  against 8.8-21.3 ms per engine session; minionn-mnist's 22-49 against 51 ms). The planner prices every 2PC
  round with the engine's slack per round (`table.engine_slack_per_round`).

The sessions run in a child process started with PRIVINFER_COMM_TRACE (`protocols/ss/crypten_setup.py`): the
party processes come from a fork server that keeps the environment it was started with, so the variable must
be set before the first 2PC process of that Python process. The child runs in a private temporary directory
(0700) that also holds the traces, never in the caller's working directory; a source checkout of this package
goes first on its path, an installed one is found where it is installed.

    python -m privinfer.planner.engine_time GRAPH.npz SAMPLES SESSIONS OUT.json   (the child; internal)
"""
from __future__ import annotations

import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile


def time_engine(graph, samples: int = 8, sessions: int = 2, timeout: float = 300.0) -> dict:
    """`calibrate.time_ss_online` of `graph` in a child process, plus per kept session and query (warm-up
    excluded) its exchange rounds as (late party's wait, bytes): {"online_s", "sessions", "kept", "samples",
    "queries": [[[wait, bytes], ...], ...]}; when the traces cannot be paired, "untraced" (why) instead of
    "queries".
    A child that fails is a `WorkerDied`, one that outlives `timeout` a `TimeoutError_` (its whole process
    group, parties and dealer included, is killed)."""
    import signal
    import site
    from pathlib import Path
    from ..errors import TimeoutError_, WorkerDied
    from ..model.ir import save_graph
    root = str(Path(__file__).resolve().parents[2])  # the directory that holds this `privinfer` package
    # a source checkout goes first on the child's path; an installed package is found where it is installed
    # (site-packages on PYTHONPATH would come before the standard library)
    installed = root in {*site.getsitepackages(), site.getusersitepackages()}
    with tempfile.TemporaryDirectory(prefix="privinfer-engine-", ignore_cleanup_errors=True) as tmp:  # 0700
        path, out, trace = (os.path.join(tmp, n) for n in ("graph.npz", "out.json", "trace"))
        save_graph(graph, path)
        env = {**os.environ, "PRIVINFER_COMM_TRACE": trace,
               "PYTHONPATH": os.pathsep.join(([] if installed else [root])
                                             + [p for p in [os.environ.get("PYTHONPATH")] if p])}
        proc = subprocess.Popen([sys.executable, "-m", "privinfer.planner.engine_time", path, str(samples),
                                 str(sessions), out], env=env, cwd=tmp, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended just now
                pass
            proc.communicate()
            raise TimeoutError_(f"the ss engine timing did not finish in {timeout:.0f} s") from None
        if proc.returncode:
            raise WorkerDied(f"the ss engine timing failed (exit {proc.returncode}): {err.strip()[-500:]}")
        with open(out) as f:
            res = json.load(f)
        attach_traces(res, read_traces(trace, samples + 1))
    return res


def attach_traces(res: dict, per_session: list | None) -> dict:
    """The kept sessions' traced queries into `res["queries"]`, or why there are none into `res["untraced"]`
    (`_time_engine` says it, and every 2PC round is then priced with the counted pieces' slack)."""
    if per_session is None:
        res["untraced"] = "the parties' round traces did not pair into whole queries"
    elif len(per_session) != len(res["sessions"]):
        res["untraced"] = (f"{len(per_session)} traced session(s) for the {len(res['sessions'])} the engine "
                           f"timed")
    else:
        res["queries"] = [q for k in res["kept"] for q in per_session[k]]
    return res


def read_traces(folder: str, queries: int) -> list | None:
    """Per session (in time order), per query after the first, its exchange rounds as [late wait, bytes]: each
    session's two party traces (rank0-PID.tsv, rank1-PID.tsv) paired by start time. None when the files do not
    pair up into whole queries (a trace is a measurement aid: the planner then keeps the counted slack)."""
    def load(rank):
        runs = []
        for f in glob.glob(os.path.join(folder, f"rank{rank}-*.tsv")):
            with open(f) as fh:
                rows = [line.split() for line in fh if line.strip()]
            if rows:
                runs.append([(k, float(a), float(b), int(n)) for k, a, b, n in rows])
        return sorted(runs, key=lambda rows: rows[0][1])
    try:
        r0, r1 = load(0), load(1)
    except (OSError, ValueError):
        return None
    if not r0 or len(r0) != len(r1):
        return None
    out = []
    for a, b in zip(r0, r1):
        if len(a) != len(b) or len(a) % queries or any((x[0] == "x") != (y[0] == "x") for x, y in zip(a, b)):
            return None
        n = len(a) // queries
        out.append([[[min(x[2] - x[1], y[2] - y[1]), max(x[3], y[3])] for x, y in zip(a[i * n:(i + 1) * n],
                                                                                   b[i * n:(i + 1) * n])
                     if x[0] == "x"] for i in range(1, queries)])
    return out


def slack_total(queries: list, floor: float, per_byte: float) -> float | None:
    """The median over queries of the rounds' total slack: each round's late wait above the exchange floor and
    its loopback copy time (`ss_cost.round_slack`'s definition), negative ones as 0."""
    if not queries:
        return None
    return statistics.median(sum(max(0.0, w - floor - per_byte * nb) for w, nb in q) for q in queries)


def _main(argv: list[str]) -> None:  # pragma: no cover - the child process (time_engine drives it end to end)
    from ..model.ir import load_graph
    from .calibrate import SESSION_OUTLIER, time_ss_online
    path, samples, sessions, out = argv[0], int(argv[1]), int(argv[2]), argv[3]
    res = time_ss_online(load_graph(path), samples=samples, sessions=sessions)
    fastest = min(res["sessions"])
    res["kept"] = [i for i, m in enumerate(res["sessions"]) if m <= SESSION_OUTLIER * fastest]
    with open(out, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":  # pragma: no cover
    _main(sys.argv[1:])
