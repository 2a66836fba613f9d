"""What a 2PC (CrypTen) piece of a plan costs: counted on the real kernels, once per layer shape.

Why a real run: CrypTen's bytes and rounds per layer are deterministic (MPC is data-oblivious) but not simple
(a linear layer opens x - a AND W - b: its weights cost bytes every query; a ReLU is a bit-decomposition
circuit; a ReLU followed by a MaxPool is lowered as MaxPool then ReLU inside one segment). So the planner
runs every piece once, exactly as the `ss` engine lowers it (`ss.lowering.Executor`), between two real CrypTen
parties on loopback, with the dealer's tuples replaced by zero tuples of the right shapes (the provider's
`record` mode: same messages, no dealer) and counts, per piece: bytes each way and rounds (the counting
communicator), dealer elements (the recorded tuple requests), and the online wall time: the median of REPS runs
after one warm-up run, all pieces timed round-robin (`_interleaved`) (CrypTen's first call of a kernel pays one-off costs), since a query's latency is quoted
as a median too; the minimum of 3, used before, came out below the median query on an idle machine. And per
round of every timed run, the late party's wait above the loopback exchange floor (`round_slack`): what a
link's round trip hides rather than adds to (`cost.Cost.slack`).

Pieces: every single layer, plus every ReLU+MaxPool pair (cheaper as one segment). Results are cached on disk
by the graph's architecture digest (`table.py`: `<cache root>/planner/counts/`), so a network is counted once per machine (~10-20 s).
"""
from __future__ import annotations

import functools
import statistics
import time

from ..errors import ProtocolError
from ..model.ir import Graph, graph_to_bytes
from .cost import Cost

REPS = 5
PRECISION_BITS = 16
FLOOR_EXCHANGES = 40  # exchanges timed for the loopback exchange floor (~10 ms) and its cost per byte (~30 ms)
SUSPECT_FLOOR_S = 0.0005  # a loopback one-element exchange slower than this: parties not running at once
FLOOR_LARGE = 1 << 16  # elements of the large exchanges (512 KB: a large round's size, cryptonets' is 682 KB)


def pieces(graph: Graph) -> list[tuple[int, int]]:
    """Single layers and ReLU+MaxPool pairs: the 2PC pieces the search combines."""
    out = [(i, i + 1) for i in range(len(graph))]
    out += [(i, i + 2) for i in range(len(graph) - 1)
            if graph.layers[i].kind == "relu" and graph.layers[i + 1].kind == "maxpool2d"]
    return out


def _counted(graph: Graph) -> list[tuple[int, int]]:
    """The pieces, plus the whole network as one (timed for `interaction_scale`, never a row of its own)."""
    out = pieces(graph)
    return out + ([(0, len(graph))] if (0, len(graph)) not in out else [])


def interaction_scale(counted: list[dict], graph: Graph, whole_s: float | None = None) -> float:
    """Whole-network seconds / the cheapest chain of pieces.

    Why: a piece timed alone keeps its tensors in the CPU's caches; in a query the layers follow one another and
    evict each other's. Measured on the idle machine, minionn-mnist's online phase took 0.195 s where its pieces
    summed to about 0.14 s. Scaling every piece by this network's own ratio keeps each piece's share and makes
    the chain sum to the measured whole. The whole is `whole_s` when given: the real `ss` engine's online time
    of the network less its per-segment overhead (`table.counts` times it beside the pieces). Why the engine
    and not the counting run's own whole-network job: four calibrations minutes apart predicted the same network
    at 14.9-18.9 ms (cryptonets-mnist) and 37.8-50.7 ms (mixed-mnist) (session 8, idle), while the bench measured
    14.5-16.5 and 40-50 ms; and a query is what the engine runs, not what the counting harness runs.
    Without `whole_s`, the counting run's whole; 1 for counts made before the whole was timed; clamped to
    [0.5, 3] against a disturbed run."""
    n = len(graph)
    regular = set(pieces(graph))
    whole = whole_s if whole_s is not None and whole_s > 0 else \
        next((p["s"] for p in counted if tuple(p["piece"]) == (0, n)), None)
    best = [0.0] + [float("inf")] * n
    for i in range(n):
        for p in counted:
            a, b = p["piece"]
            if a == i and (a, b) in regular:
                best[b] = min(best[b], best[i] + p["s"])
    if whole is None or not 0 < best[n] < float("inf"):
        return 1.0
    return min(3.0, max(0.5, whole / best[n]))


def _count_party(rank: int, rendezvous: str, graph_blob: bytes, opts: dict, conn) -> None:
    from ..protocols.ss.worker import child_setup, end_child, party_init, recv_msg, report_error, send_msg
    child_setup(f"count{rank}")
    from ..affinity import enabled, pin_self
    if enabled():  # `privinfer profile --pin`: the placement of `privinfer bench --pin`'s parties (affinity.py)
        pin_self(rank)
    try:
        crypten, comm, prov = party_init(rank, rendezvous, opts)
        from ..model.ir import load_graph
        from ..protocols.ss.lowering import Executor
        from ..protocols.ss.tuples import plan_elements
        graph = load_graph(graph_blob)
        jobs = []
        for a, b in opts.get("pieces", ()):
            jobs.append(({"piece": [a, b]}, _piece_job(crypten, comm, Executor(crypten, graph.slice(a, b), rank,
                                                                                int(opts["precision_bits"])))))
        for kind, shape, t, *extra in opts.get("handovers", ()):  # BFV hand-overs (fused ones: see _run_handover)
            pool, t2 = (extra + [None, None])[:2]
            jobs.append(({"kind": kind, "shape": list(shape)}, functools.partial(
                _run_handover, crypten, comm, rank, kind, tuple(shape), int(t), pool, t2)))
        out = _interleaved(jobs, comm, prov, int(opts["reps"]), plan_elements)
        floor = _exchange_waits(comm, FLOOR_EXCHANGES)
        results = [r for r in out if "piece" in r]
        hand = [r for r in out if "kind" in r]
        send_msg(conn, {"ok": "counts", "pieces": results, "handovers": hand, "floor": floor})
        recv_msg(conn)  # wait for "exit": the peer may still be reading our last message
    except BaseException as e:  # noqa: BLE001 - every failure goes to the parent, typed
        report_error(conn, e)
    finally:
        end_child(conn)


HANDOVER_KINDS = ("lift", "reduce", "lift_relu", "relu_reduce", "pool_relu_reduce", "lift_relu_reduce")


def _run_handover(crypten, comm, rank: int, kind: str, shape: tuple, t: int, pool,
                  t2: int | None = None) -> tuple[float, dict]:
    """One hand-over as `protocols/convert/ring.py` runs it (on zeros). The plain ones: `lift` (shares mod t ->
    CrypTen's ring, after a BFV segment), `reduce` ((x + h + r) mod t opened to the client, before one); the
    fused ones (`hybrid.party._fuse`): a ReLU inside the lift (`lift_relu`) or inside the opening
    (`relu_reduce`), MaxPool's last level and the ReLU inside the opening (`pool_relu_reduce`: `shape` is the
    pool's input, `pool` = (kernel, stride)), or lift, ReLU and opening in one (`lift_relu_reduce`: from
    modulus t into the next segment's t2; t2 = t when not given).
    Returns (seconds, the counters before it): the input sharing before an opening is not the hand-over's."""
    import numpy as np
    import torch
    from ..protocols.convert import ring
    if kind not in HANDOVER_KINDS:
        raise ProtocolError(f"unknown hand-over kind {kind!r}")
    local = np.zeros(shape, dtype=np.int64)
    r = local if rank == 0 else None
    if kind in ("lift", "lift_relu", "lift_relu_reduce"):
        before = comm.counters.as_dict()
        t0 = time.perf_counter()
        if kind == "lift_relu_reduce":
            ring.lift_relu_reduce_reveal(rank, local, t, 1 << 16, r, t if t2 is None else int(t2))
        else:
            (ring.lift if kind == "lift" else ring.lift_relu)(rank, local, t, 1 << 16, PRECISION_BITS)
        return time.perf_counter() - t0, before
    z = torch.zeros(shape, dtype=torch.float64)
    x = crypten.cryptensor(z, src=1) + crypten.cryptensor(z, src=0)
    before = comm.counters.as_dict()
    t0 = time.perf_counter()
    if kind == "reduce":
        ring.reduce_reveal(rank, x, r, t)
    elif kind == "relu_reduce":
        ring.relu_reduce_reveal(rank, x, r, t)
    else:
        kernel, stride = (tuple(v) for v in pool)
        out = (shape[0], shape[1], (shape[2] - kernel[0]) // stride[0] + 1, (shape[3] - kernel[1]) // stride[1] + 1)
        ring.pool_relu_reduce_reveal(rank, x, kernel, stride, np.zeros(out, dtype=np.int64) if rank == 0 else None, t)
    return time.perf_counter() - t0, before


def _piece_job(crypten, comm, ex):
    """One run of a piece as the `ss` engine lowers it, from fresh shares of zeros: (seconds, counters before)."""
    import torch
    zeros = torch.zeros((1, *ex.graph.input_shape), dtype=torch.float64)

    def run():
        h = crypten.cryptensor(zeros, src=1) + crypten.cryptensor(zeros, src=0)
        before = comm.counters.as_dict()
        t0 = time.perf_counter()
        ex.forward(h)
        return time.perf_counter() - t0, before
    return run


def _interleaved(jobs, comm, prov, reps: int, plan_elements) -> list[dict]:
    """Run every job reps + 1 times, round-robin (rep 0 of each is its warm-up): bytes, rounds and dealer
    elements of its last run, and the median of its seconds.

    Why round-robin, not each job's runs in a row: on the shared 2-core machine the load comes in bursts of
    seconds (the same idle command measured minionn-mnist's `ss` at 0.275 s and 0.362 s a quarter of an hour
    apart); a job timed in one burst carried all of it, and pieces timed in different bursts were priced
    against each other (a fused hand-over came out slower than the two comparisons it replaces). Spread over
    the whole counting run, every job sees the same mix of quiet and busy moments."""
    runs: list[list[float]] = [[] for _ in jobs]
    last: list[dict] = [{} for _ in jobs]
    waits: list[list[list]] = [[] for _ in jobs]  # per job, per timed run: each round's [wait, bytes]
    for rep in range(reps + 1):
        for k, (_, fn) in enumerate(jobs):
            prov.mode, prov.recorded = "record", []
            comm.schedule = []
            dt, before = fn()
            after = comm.counters.as_dict()
            runs[k].append(dt)
            n_rounds = after["rounds"] - before["rounds"]  # one schedule entry per counted round, the job's last
            if rep:
                waits[k].append([[t1 - t0, nb] for t0, t1, nb in comm.schedule[len(comm.schedule) - n_rounds:]])
            last[k] = {"bytes_sent": after["bytes_sent"] - before["bytes_sent"],
                       "bytes_received": after["bytes_received"] - before["bytes_received"],
                       "rounds": after["rounds"] - before["rounds"],
                       "dealer_elements": int(plan_elements(list(prov.recorded)))}
    prov.mode, prov.recorded = "online", []
    comm.schedule = None
    return [{**key, "s": statistics.median(r[1:]), **c, "waits": w} for (key, _), r, c, w in zip(jobs, runs, last, waits)]


def _exchange_waits(comm, n: int) -> dict:
    """Each party's wait in `n` exchanges of one element and in `n` of FLOOR_LARGE elements (after one warm-up
    each): this machine's loopback exchange floor and its cost per byte, the parts of a round's wait that a
    link adds to rather than hides (`round_slack`; a link's bytes are priced at its own rate)."""
    import torch
    out = {"large_bytes": 8 * FLOOR_LARGE}
    for key, size in (("small", 1), ("large", FLOOR_LARGE)):
        x = torch.zeros(size, dtype=torch.long)
        comm.all_reduce(x)
        comm.schedule = []
        for _ in range(n):
            comm.all_reduce(x)
        out[key] = [t1 - t0 for t0, t1, _ in comm.schedule]
    comm.schedule = None
    return out


def round_slack(w0: list, w1: list, floor: float, per_byte: float = 0.0) -> list[list[float]]:
    """Per round, one sample per timed run: the late party's wait (the smaller of the two parties' waits: the
    early one also waits for the late one's compute) above the exchange floor and the round's loopback copy
    time (its bytes x `per_byte`: a link pays for its bytes at its own rate, so that part is not slack), in
    seconds. `w0`, `w1`: each party's runs, each a list of [wait, bytes] per round.

    Why: CrypTen's round is a gloo exchange, and gloo sends only to a posted receive (a rendezvous), so on a link
    with round trip RTT the late party waits the floor + RTT (traced: 41 ms on `wan`, 40 ms RTT). On loopback it
    waited w = floor + slack: the wait includes scheduling and wake-up delays, and the link's round trip takes
    their place (traced on `lan`: the late party's wait is the round trip, tight, where loopback's was
    heavy-tailed). So a piece's rounds add max(0, rounds x RTT - their total slack), not rounds x RTT
    (`cost.Cost.rounds_s`)."""
    if len(w0) != len(w1) or any(len(a) != len(b) for a, b in zip(w0, w1)) or \
            any(len(run) != len(w0[0]) for run in w0):
        raise ProtocolError("the counting parties disagree on a piece's rounds")
    if not w0:
        return []
    return [[round(min(a[k][0], b[k][0]) - floor - per_byte * max(a[k][1], b[k][1]), 7) for a, b in zip(w0, w1)]
            for k in range(len(w0[0]))]


def exchange_floor(f0: dict, f1: dict) -> tuple[float, float]:
    """(floor seconds, seconds per byte) from both parties' `_exchange_waits`: the median late-party wait of the
    one-element exchanges, and the large exchanges' median above it per byte ((0, 0) when missing)."""
    def late(key):
        a, b = f0.get(key) or [], f1.get(key) or []
        return statistics.median(min(x, y) for x, y in zip(a, b)) if a and len(a) == len(b) else None
    floor, large = late("small"), late("large")
    if floor is None:
        return 0.0, 0.0
    per_byte = max(0.0, (large - floor) / f0["large_bytes"]) if large is not None and f0.get("large_bytes") else 0.0
    return floor, per_byte


def count_pieces(graph: Graph, reps: int = REPS, timeout: float = 300.0, handovers=None) -> list[dict]:
    """Run every piece between two real CrypTen parties (rank 0 = server, 1 = client) on loopback.
    With `handovers` ([(kind, shape, t), (kind, shape, t, (kernel, stride) or None) or (kind, shape, t, pool,
    t2)]): count those mod-t hand-overs instead (no pieces; kinds: HANDOVER_KINDS; t2: lift_relu_reduce's
    next modulus).

    A counting run whose one-element exchanges waited more than SUSPECT_FLOOR_S is counted once more, and the
    run with the lower floor is kept. Why: the scheduler sometimes places both parties on one core for a whole
    run (README, "Why loopback used to miss"); then every round waits ~1.8 ms instead of ~0.1 ms and every piece
    is slower (session 8, idle: mixed-mnist's counts priced its `ss` at 0.059 s, against 0.038 s in the run
    before and 0.044-0.051 s measured). The floor is a direct probe of that placement."""
    rows = _count_once(graph, reps, timeout, handovers)
    if _floor(rows) > SUSPECT_FLOOR_S:
        import sys
        print(f"privinfer: the 2PC counting parties exchanged slowly (floor {_floor(rows) * 1e3:.2f} ms: likely "
              f"sharing one core); counting once more", file=sys.stderr, flush=True)
        again = _count_once(graph, reps, timeout, handovers)
        rows = min((rows, again), key=_floor)
    return rows


def _floor(rows: list[dict]) -> float:
    return rows[0]["floor_s"] if rows else 0.0


def _count_once(graph: Graph, reps: int, timeout: float, handovers) -> list[dict]:
    """One counting run (`count_pieces`): two fresh party processes and a dealer."""
    from ..protocols.ss.dealer import LocalDealer
    from ..protocols.ss.worker import ChildProcess, warm_up
    from ..transport.ports import free_port
    warm_up()
    rdv = f"tcp://127.0.0.1:{free_port('127.0.0.1')}"
    opts = {"precision_bits": PRECISION_BITS, "mpc_timeout": 60.0, "threads": 1, "gloo_ifname": "lo",
            "pieces": [] if handovers else _counted(graph), "reps": reps, "handovers": list(handovers or ())}
    blob = graph_to_bytes(graph)
    dealer = LocalDealer(rdv, opts)  # CrypTen's group has the dealer as third member; it gets no request
    parties = [ChildProcess(_count_party, (r, rdv, blob, opts), f"count{r}") for r in (0, 1)]
    try:
        res = [p.recv(timeout, "the 2PC counting run")[0] for p in parties]
    finally:
        for p in parties:
            p.close()
        dealer.close()
    return combine_counts(res[0], res[1], bool(handovers))


def combine_counts(res0: dict, res1: dict, handovers: bool = False) -> list[dict]:
    """Both counting parties' reports (rank 0 = server, 1 = client) -> one row per piece (or hand-over): the
    slower party's seconds, bytes each way (what the client sends goes up), rounds, dealer elements, and each
    round's slack from *both* parties' waits against the exchange floor they measured."""
    floor, per_byte = exchange_floor(res0.get("floor") or {}, res1.get("floor") or {})
    rows, names = ("handovers", ("kind", "shape")) if handovers else ("pieces", ("piece",))
    out = []
    for r0, r1 in zip(res0[rows], res1[rows]):
        key = {k: r1[k] for k in names}
        if key != {k: r0[k] for k in names}:
            raise ProtocolError("the counting parties disagree on the pieces")
        out.append({**key, "s": max(r0["s"], r1["s"]), "bytes_up": r1["bytes_sent"],
                    "bytes_down": r1["bytes_received"], "rounds": max(r0["rounds"], r1["rounds"]),
                    "dealer_elements": r0["dealer_elements"], "floor_s": floor, "floor_s_per_byte": per_byte,
                    "slack": round_slack(r0["waits"], r1["waits"], floor, per_byte)})
    return out


def piece_cost(p: dict, cal: dict, scale: float = 1.0, slack_per_round: float | None = None) -> Cost:
    """A counted piece: online seconds (the pair's wall time, times the network's `interaction_scale`), bytes,
    rounds with their slack (the real engine's slack per round, `table.engine_slack_per_round`, where there is
    one; else the counted samples), and its share of the offline phase (dealer elements x seconds per element;
    the fixed part is the plan's `once` cost)."""
    off = offline_share_s(p, cal)
    s = p["s"] * scale
    counted = tuple(tuple(r) for r in p.get("slack", ()))
    # a round counted without samples (none timed) keeps paying a full RTT
    slack = counted if slack_per_round is None else tuple((float(slack_per_round),) if r else () for r in counted)
    return Cost(client_s=s + off, server_s=s + off, bytes_up=p["bytes_up"], bytes_down=p["bytes_down"],
                rounds=p["rounds"], dealer_bytes=8 * p["dealer_elements"], overlap=True, slack=slack)


def offline_share_s(p: dict, cal: dict) -> float:
    """A counted piece's share of the per-query offline phase: its dealer elements x seconds per element (the
    search lets the whole phase overlap an HE prefix: `search.Row.offline_s`)."""
    return p["dealer_elements"] * cal["ss"]["offline_s_per_dealer_element"]


def reveal_cost(n_values: int, cal: dict) -> Cost:
    """Shares -> the client (in the clear, or masked before an HE segment): party 0 sends its share of every
    value, one round; plus the parties' per-call overhead (each ss segment is one call to both processes)."""
    s = cal["ss"]["segment_overhead_s"]
    return Cost(client_s=s, server_s=s, bytes_down=8 * n_values, rounds=1, overlap=True)


def offline_once(cal: dict) -> Cost:
    """The per-query offline phase's fixed part: one dealer batch for the whole plan, agreed over privinfer's
    channel (one round: bench records of `ss` count 1 + the counted 2PC rounds)."""
    s = cal["ss"]["offline_fixed_s"]
    return Cost(client_s=s, server_s=s, rounds=1, overlap=True)
