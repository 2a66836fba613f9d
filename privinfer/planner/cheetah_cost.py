"""What dealer-free 2PC (`cheetah`, SPU CHEETAH) costs on a network: one measured session per network.

Why measured whole: SPU compiles and runs a whole model, so there are no per-layer pieces to count as for
CrypTen (`ss_cost.py`). `privinfer profile --model M --cheetah` runs M under `cheetah` and stores, keyed by
the graph's digest in the calibration table: the median loopback latency, bytes each way, and the
sequential round trips a link's delay multiplies.

Round trips: SPU reports messages, not rounds, and sends many of them without waiting for an answer, so the
message count overstates the round trips (minionn-mnist: 211 messages, 65 round trips). Where network
emulation runs (`privinfer.netem`: root, iproute2, /dev/net/tun), two sessions through the same emulated
link, one with no delay and one with PROBE_RTT_MS, measure them as the latency difference over the RTT: the
relay's and the namespace's own overheads cancel. Fastest query against fastest query, because a busy
machine only ever adds time. Where emulation cannot run, or the probe gives a figure outside
[1, messages], the message count stands in (an upper bound) and `rounds_source` says why.
"""
from __future__ import annotations

import statistics
from pathlib import Path

from ..errors import ParameterError, PrivinferError
from .calibrate import calibration_path, load_calibration, save_calibration

PROBE_RTT_MS = 50.0


def round_trips(fast: list[float], slow: list[float], rtt_s: float, messages: int) -> tuple[int, str, float]:
    """(round trips, how they were obtained, the raw estimate) from the latencies without and with `rtt_s`."""
    raw = (min(slow) - min(fast)) / rtt_s
    if 0.5 <= raw <= messages + 0.5:
        return max(1, min(messages, round(raw))), f"measured on a {rtt_s * 1e3:g} ms delay line", raw
    return messages, (f"messages sent (an upper bound): the {rtt_s * 1e3:g} ms probe gave {raw:.1f} round trips, "
                      f"outside [1, {messages}]"), raw


def _queries(sess, graph, samples: int) -> tuple[list, list, list, list]:
    import numpy as np
    lo, hi = graph.input_range or (0.0, 1.0)
    rng = np.random.default_rng(0)
    lat, up, down, msgs = [], [], [], []
    for i in range(samples + 1):
        sess.infer(rng.uniform(lo, hi, size=(1, *graph.input_shape)))
        if i:  # the first query warms SPU's compilation cache
            q = sess.stats.last
            lat.append(q.latency_s)
            up.append(q.bytes_client_to_server)
            down.append(q.bytes_server_to_client)
            msgs.append(q.rounds)
    return lat, up, down, msgs


def _probe(graph, samples: int) -> tuple[list, list]:
    """Latencies through the emulated link with no delay and with PROBE_RTT_MS (no bandwidth limit)."""
    import tempfile
    from .. import netem
    from ..model.ir import save_graph
    from ..session import connect
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/model.npz"
        save_graph(graph, path)
        for rtt in (0.0, PROBE_RTT_MS):
            with netem.server_in_namespace(path, "cheetah", {}, netem.NetworkProfile("rtt-probe", None, rtt)) as (h, p):
                with connect(h, p, "cheetah", timeout=600.0) as s:
                    out.append(_queries(s, graph, samples)[0])
    return out[0], out[1]


def time_cheetah(graph, samples: int = 3, name: str = "custom") -> dict:
    """Dealer-free sessions on `graph` (inputs uniform over its published range: MPC cost does not depend on
    the values): median loopback latency, bytes each way, messages and round trips. Measure on an otherwise
    idle machine."""
    from .. import netem
    from ..session import PrivateSession
    with PrivateSession(graph, "cheetah", warn=False) as s:
        lat, up, down, msgs = _queries(s, graph, samples)
    out = {"model": name, "latency_s": float(statistics.median(lat)), "bytes_up": int(statistics.median(up)),
           "bytes_down": int(statistics.median(down)), "messages": int(statistics.median(msgs)),
           "source": f"privinfer profile --cheetah (loopback, median of {samples})", "measured_here": True}
    why = netem.available()
    if why is None:
        try:
            fast, slow = _probe(graph, samples)
        except (PrivinferError, OSError) as e:
            why = f"the delay-line probe failed: {type(e).__name__}: {str(e)[:200]}"
    if why is None:
        out["rounds"], out["rounds_source"], raw = round_trips(fast, slow, PROBE_RTT_MS / 1e3, out["messages"])
        out["rounds_raw"] = round(raw, 2)
    else:
        out["rounds"], out["rounds_source"] = out["messages"], f"messages sent (an upper bound; {why})"
    return out


def add_cheetah(graph, path: str | Path | None = None, name: str = "custom", samples: int = 3) -> Path:
    """Measure `cheetah` on `graph` and store it in this machine's calibration table at `path`."""
    from .table import graph_digest
    p = Path(path) if path is not None else calibration_path()
    if not p.exists():
        raise ParameterError(f"no calibration table at {p}: run `privinfer profile` first (it times the kernels "
                             f"every plan needs; --cheetah adds to that table)")
    table = {k: v for k, v in load_calibration(p).items() if k != "source"}
    table["cheetah"] = {**table.get("cheetah", {}), graph_digest(graph): time_cheetah(graph, samples, name)}
    return save_calibration(table, p)
