"""The ss side of a hybrid session: the `ss` protocol's set-up, dealer and offline phase, with the hybrid
party loop (`party.py`) in place of the whole-graph one. Only `_spawn` and a per-segment call differ."""
from __future__ import annotations

import numpy as np

from ...errors import ProtocolError, ShapeError
from ...model.ir import graph_to_bytes
from ...transport import frames
from ..ss import _SSClient, _SSServer
from ..ss.worker import ChildProcess
from .party import hybrid_party_main


def _spawn_with(graph, segments):
    def spawn(rank: int, rdv: str, opts: dict) -> ChildProcess:
        return ChildProcess(hybrid_party_main, (rank, rdv, graph_to_bytes(graph), {**opts, "segments": segments}),
                            f"party{rank}")
    return spawn


class SSSegmentsServer(_SSServer):
    def __init__(self, proto, copts: dict, segments: list):
        super().__init__(proto, {**copts, "prefetch": False, "max_chunk": 4096})
        self._spawn = _spawn_with(self.graph, segments)

    def segment(self, k: int, own: np.ndarray, mask: np.ndarray | None, idle=None) -> dict:
        """Run ss segment k; `idle()` (if given) runs in this process while the parties compute."""
        payloads = [frames.encode_tensor(np.ascontiguousarray(own, dtype=np.float64))]
        if mask is not None:
            payloads.append(frames.encode_tensor(np.ascontiguousarray(mask, dtype=np.float64)))
        self.worker.send({"cmd": "segment", "k": k, "batch": int(own.shape[0])}, *payloads)
        if idle is not None:
            idle()
        msg, _ = self.worker.recv(self.timeout + 30.0, "segment")
        self.prepared = None
        return msg


class SSSegmentsClient(_SSClient):
    def __init__(self, welcome: dict, graph, copts: dict, segments: list):
        super().__init__(welcome, graph, {**copts, "prefetch": False, "max_chunk": 4096})
        self._spawn = _spawn_with(graph, segments)

    def segment(self, k: int, own: np.ndarray, out_shape: tuple) -> tuple[np.ndarray, dict]:
        msg, payloads = self.worker.call({"cmd": "segment", "k": k, "batch": int(own.shape[0])},
                                         frames.encode_tensor(np.ascontiguousarray(own, dtype=np.float64)),
                                         timeout=self.timeout + 30.0)
        if not payloads:
            raise ProtocolError(f"ss segment {k} returned no output")
        y = frames.decode_tensor(payloads[0])
        if y.shape != (own.shape[0], *out_shape):
            raise ShapeError(f"ss segment {k} output shape {y.shape} != {(own.shape[0], *out_shape)}")
        return y, msg
