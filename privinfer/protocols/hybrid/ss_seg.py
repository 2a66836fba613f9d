"""The ss side of a hybrid session: the `ss` protocol's set-up, dealer and offline phase, with the hybrid
party loop (`party.py`) in place of the whole-graph one. Only `_spawn` and a per-segment call differ."""
from __future__ import annotations

import threading
import time

import numpy as np

from ...errors import PrivinferError, ProtocolError, ShapeError, TimeoutError_
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

    def _offline_start(self, ch, batch: int) -> None:
        """As `ss`, and the dealer's answer goes to this party as soon as it comes (a thread), not when the
        chain collects the phase: the first HE segment runs in between, so the fill is off the query's path
        (`ss` collects right after starting: it keeps the plain sequence). Until the collect joins the thread,
        the main thread uses neither the dealer's pipe nor the party's."""
        super()._offline_start(ch, batch)
        pending = self._pending
        if pending["dealer_error"] is None:
            pending["early"] = threading.Thread(target=self._early_fill, args=(pending,), daemon=True,
                                                name="pi-hybrid-fill")
            pending["early"].start()

    def _early_fill(self, pending: dict) -> None:
        try:
            blob = self.dealer.finish(self.timeout)
            pending["t_dealer"] = time.perf_counter() - pending["t1"]
        except PrivinferError as e:  # the collect reports it as the dealer's failure
            pending["dealer_error"] = e
            return
        except BaseException as e:  # noqa: BLE001 - raised by the collect
            pending["fatal"] = e
            return
        try:
            self.worker.send({"cmd": "fill"}, blob)  # the party reads it after `generate`
        except BaseException as e:  # noqa: BLE001 - the party's failure, raised by the collect
            pending["fatal"] = e

    def _dealer_answer(self, pending: dict) -> bytes | None:
        early = pending.get("early")
        if early is None:
            return super()._dealer_answer(pending)
        early.join(self.timeout + 1.0)
        if early.is_alive():
            raise TimeoutError_(f"the dealer gave no answer within {self.timeout:.0f} s")
        if "fatal" in pending:
            raise pending["fatal"]
        if pending["dealer_error"] is not None:
            raise pending["dealer_error"]
        return None

    def _fill(self, dealer_blob: bytes | None) -> None:
        if dealer_blob is not None:
            return super()._fill(dealer_blob)
        self.worker.recv(self.timeout, "fill")  # sent by `_early_fill`

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
