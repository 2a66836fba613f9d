"""The `plain` baseline: the client sends its input in the clear and the server answers the logits.

No privacy at all. It is the reference every private protocol is measured against (same channel,
same framing, same server), so its latency and bytes are the floor. As a plan of the engine
(`engine.py`): upload (plain@client -> plain@server), the server runs every layer, download.
"""
from __future__ import annotations

from .base import ClientSide, Protocol, ServerSide, register
from .engine import Download, EngineClient, EngineServer, Kind, Layers, Upload


def plain_steps(graph, client: bool) -> list:
    """The one-segment plan: input up in the clear, all layers at the server, logits down."""
    n = len(graph.layers)
    return [Upload(graph.input_shape, client), Layers(graph, 0, n, Kind.PLAIN_SERVER, holder=not client),
            Download(graph.output_shape, client)]


class _PlainServer(EngineServer):
    def __init__(self, graph):
        self.graph = graph
        self.chain = plain_steps(graph, client=False)


class _PlainClient(EngineClient):
    def __init__(self, graph):
        self.chain = plain_steps(graph, client=True)

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
        return _PlainClient(graph)
