"""The CrypTen party of a `hybrid` session: every ss segment of the plan in one process and one group.

Why not `ss.worker.party_main`: that loop runs one whole graph from the client's input to the client's
logits. Here each ss segment starts from additive shares (the client's share input by rank 1, the server's
by rank 0; their sum is the value, nobody sees it) and ends either revealed to the client (the plan's last
segment) or revealed to the client as x + r, where r is a fresh mask input by the server (a shares -> HE
conversion, see `protocols/convert`). Next to a BFV segment the hand-over is mod t instead (`convert/ring.py`):
a segment then starts by lifting the two mod-t shares into CrypTen's ring (`in: modt`) and/or ends by
opening (x + h + r) mod t to the client (`out: modt`), one secure comparison each; a ReLU next to either runs
inside it (one batched comparison for both, `_fuse`). All segments share one CrypTen group, one dealer and one
preprocessing plan per batch size: the dry run walks every segment in order, so the online phase pops the
tuples of segment 1, then 2, ... and set-up is paid once per session, not once per segment.
"""
from __future__ import annotations

import time

from ...errors import ProtocolError, ShapeError
from ...transport import frames
from ..ss.worker import _Party, child_setup, end_child, party_init, report_error, send_msg


def hybrid_party_main(rank: int, rendezvous: str, graph_blob: bytes, opts: dict, conn) -> None:
    child_setup(f"party{rank}")
    try:
        t0 = time.perf_counter()
        crypten, comm, prov = party_init(rank, rendezvous, opts)
        from ...model.ir import Graph, load_graph
        from ..ss.lowering import Executor
        graph = load_graph(graph_blob)
        bits = int(opts["precision_bits"])
        segs = [_spec(s) for s in opts["segments"]]
        exs = []
        for s in segs:
            layers = _fuse(graph, s)
            exs.append(Executor(crypten, Graph(s["shape"], tuple(layers)), rank, bits) if layers else None)
        send_msg(conn, {"ok": "ready", "init_s": time.perf_counter() - t0})
        _HybridParty(crypten, comm, prov, exs, segs, rank, conn, bits).loop()
    except BaseException as e:  # noqa: BLE001 - every failure goes to the parent, typed
        report_error(conn, e)
    finally:
        end_child(conn)


def _fuse(graph, s: dict) -> list:
    """The layers the executor runs between the segment's hand-overs, fusing comparisons where it can:
    ReLU, MaxPool -> MaxPool, ReLU (they commute: the ReLU then compares 4x fewer values); a ReLU right before
    a mod-t opening runs inside it (`ring.relu_reduce_reveal`); one right after a mod-t lift inside the lift
    (`ring.lift_relu`); a lone ReLU between two BFV segments is one comparison in all (`ring.
    lift_relu_reduce_reveal`, head = tail = "whole"). Sets s["shape"], s["head"] and s["tail"]."""
    layers = list(graph.layers[s["start"]:s["stop"]])
    s["shape"], s["out_shape"] = tuple(graph.shapes[s["start"]]), tuple(graph.shapes[s["stop"]])
    for i in range(len(layers) - 1):  # every ReLU right before a MaxPool (they commute)
        if layers[i].kind == "relu" and layers[i + 1].kind == "maxpool2d":
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    s["tail"] = s["head"] = None
    if s["masked"] and s["out"]["kind"] == "modt" and layers and layers[-1].kind == "relu":
        s["tail"], layers = "relu", layers[:-1]
    if s["in"]["kind"] == "modt" and layers and layers[0].kind == "relu":
        s["head"], layers = "relu", layers[1:]
    if s["in"]["kind"] == "modt" and s["tail"] == "relu" and not layers:  # lift, ReLU, opening: all in one
        s["head"] = s["tail"] = "whole"
    if s["tail"] == "relu" and layers and layers[-1].kind == "maxpool2d" \
            and (layers[-1].kernel[0] * layers[-1].kernel[1]) % 2 == 0:  # the pool's last level joins the opening
        s["tail"], s["pool"], layers = "pool_relu", (tuple(layers[-1].kernel), tuple(layers[-1].stride)), layers[:-1]
    return layers


def _spec(s) -> dict:
    """A segment entry: {start, stop, masked, in: {kind: float | modt, t, D}, out: {kind: float | modt, t}}."""
    if isinstance(s, dict):
        return {"start": int(s["start"]), "stop": int(s["stop"]), "masked": bool(s["masked"]),
                "in": dict(s.get("in") or {"kind": "float"}), "out": dict(s.get("out") or {"kind": "float"})}
    a, b, m = s
    return {"start": int(a), "stop": int(b), "masked": bool(m), "in": {"kind": "float"}, "out": {"kind": "float"}}


class _HybridParty(_Party):
    def __init__(self, crypten, comm, prov, exs, segs, rank, conn, bits):
        super().__init__(crypten, comm, prov, next((e for e in exs if e is not None), None), rank, conn)
        self.exs, self.segs, self.next = exs, segs, 0
        self.masked = [s["masked"] for s in segs]
        self.bits = int(bits)

    def _run(self, k: int, batch: int, own, mask):
        import numpy as np
        import torch
        from ..convert import ring
        from ..ss.lowering import Executor, _fixed
        ex = self.exs[k]
        cr = self.crypten
        spec = self.segs[k]
        bits = self.bits
        shape = (batch, *spec["shape"])
        zeros = torch.zeros(shape, dtype=torch.float64)
        if spec["in"]["kind"] == "modt":  # a BFV segment's result: shares mod t, lifted by one comparison
            local = np.zeros(shape, dtype=np.int64) if own is None else np.rint(own).astype(np.int64)
            if local.shape != shape:
                raise ShapeError(f"segment {k}: share shape {local.shape} != {shape}")
            if spec["head"] == "whole":
                r = np.zeros(shape, dtype=np.int64) if mask is None else np.rint(mask).astype(np.int64)
                if self.rank == 0 and r.shape != shape:
                    raise ShapeError(f"segment {k}: mask shape {r.shape} != {shape}")
                z = ring.lift_relu_reduce_reveal(self.rank, local, spec["in"]["t"], spec["in"]["D"],
                                                 r if self.rank == 0 else None, spec["out"]["t"])
                return None if z is None else z.to(torch.float64)
            lift = ring.lift_relu if spec["head"] == "relu" else ring.lift
            h = lift(self.rank, local, spec["in"]["t"], spec["in"]["D"], bits)
        else:
            mine = zeros if own is None else _fixed(own, bits)
            if tuple(mine.shape) != tuple(zeros.shape):
                raise ShapeError(f"segment {k}: share shape {tuple(mine.shape)} != {tuple(zeros.shape)}")
            h = cr.cryptensor(mine if self.rank == 1 else zeros, src=1) + cr.cryptensor(mine if self.rank == 0 else zeros, src=0)
        if ex is not None:
            h = ex.forward(h)
        if self.masked[k] and spec["out"]["kind"] == "modt":  # into a BFV segment: (x + h + r) mod t
            out_shape = (batch, *spec["out_shape"])
            r = np.zeros(out_shape, dtype=np.int64) if (self.rank != 0 or mask is None) else np.rint(mask).astype(np.int64)
            if r.shape != out_shape:
                raise ShapeError(f"segment {k}: mask shape {r.shape} != {out_shape}")
            mine = r if self.rank == 0 else None
            if spec["tail"] == "pool_relu":
                z = ring.pool_relu_reduce_reveal(self.rank, h, *spec["pool"], mine, spec["out"]["t"])
            elif spec["tail"] == "relu":
                z = ring.relu_reduce_reveal(self.rank, h, mine, spec["out"]["t"])
            else:
                z = ring.reduce_reveal(self.rank, h, mine, spec["out"]["t"])
            return None if z is None else z.to(torch.float64)
        if self.masked[k]:
            out_zeros = torch.zeros(tuple(h.size()), dtype=torch.float64)
            r = _fixed(mask, bits) if (self.rank == 0 and mask is not None) else out_zeros
            if tuple(r.shape) != tuple(out_zeros.shape):
                raise ShapeError(f"segment {k}: mask shape {tuple(r.shape)} != {tuple(out_zeros.shape)}")
            h = h + cr.cryptensor(r, src=0)
        return Executor.reveal_to_client(h)

    def _dry_run(self, batch: int) -> list:
        def forward():
            for k in range(len(self.exs)):
                self._run(k, batch, None, None)
        return self._record(forward)

    def cmd_segment(self, msg, payloads) -> None:
        """Run ss segment k on this party's share (and, rank 0, the mask for the next HE segment)."""
        from ..ss.tuples import TupleMismatchError
        k, batch = int(msg["k"]), int(msg["batch"])
        if k != self.next:
            raise ProtocolError(f"ss segment {k} requested, segment {self.next} is next")
        own = frames.decode_tensor(payloads[0]) if payloads else None
        mask = frames.decode_tensor(payloads[1]) if len(payloads) > 1 else None
        before = self.comm.counters.as_dict()
        c0, t0 = time.process_time(), time.perf_counter()
        out = self._run(k, batch, own, mask)
        dt = time.perf_counter() - t0
        self.next = (k + 1) % len(self.exs)
        if self.next == 0 and self.prov.remaining():
            raise TupleMismatchError(f"{self.prov.remaining()} preprocessed tuples left unused")
        after = self.comm.counters.as_dict()
        header = {"ok": "segment", "s": dt, "cpu_s": time.process_time() - c0,
                  "comm": {key: after[key] - before[key] for key in after}}
        if self.rank == 1:
            send_msg(self.conn, header, frames.encode_tensor(out.numpy()))
        else:
            send_msg(self.conn, header)
