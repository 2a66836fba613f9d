"""The `plain` baseline: the client sends its input in the clear and the server answers the logits.

No privacy at all. It is the reference every private protocol is measured against (same channel,
same framing, same server), so its latency and bytes are the floor.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..model.reference import run_reference
from ..transport import Channel
from .base import ClientSide, Protocol, ServerSide, register


class _PlainServer(ServerSide):
    def __init__(self, graph):
        self.graph = graph

    def query(self, ch: Channel, meta: dict) -> None:
        x = ch.recv_tensor()
        if x.shape[1:] != tuple(self.graph.input_shape) or x.shape[0] != meta["batch"]:
            raise ShapeError(f"input shape {x.shape} does not match (batch={meta['batch']}, "
                             f"{', '.join(map(str, self.graph.input_shape))})")
        ch.send_tensor(run_reference(self.graph, x).astype(np.float64))


class _PlainClient(ClientSide):
    def query(self, ch: Channel, x: np.ndarray) -> np.ndarray:
        ch.send_tensor(x.astype(np.float32))
        return ch.recv_tensor()

    def privacy(self) -> dict:
        return {"guarantee": "none", "input_private": False, "model_private": True, "note": "no protection: input sent in clear"}


@register
class Plain(Protocol):
    name = "plain"
    summary = "no privacy; the client's input travels in the clear (baseline)"

    def server_side(self, client_options: dict) -> ServerSide:
        return _PlainServer(self.graph)

    @classmethod
    def client_side(cls, welcome: dict, graph, **client_options) -> ClientSide:
        return _PlainClient()
