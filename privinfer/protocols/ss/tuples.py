"""Correlated randomness for the `ss` protocol: plans (what one inference needs) and the provider.

`PreprocessedTTP` is CrypTen's `TrustedThirdParty` provider with three modes. `record` returns
zero tuples of the right shapes and logs every request (the dry run); `generate` runs CrypTen's own
provider code for a logged plan, with the dealer's answers for party 0 supplied in one batch
instead of one round trip per request; `online` pops the generated tuples in order and refuses to
talk to the dealer (a request that was not preprocessed is an error, never a dealer round trip).

A *plan* is the ordered list of provider requests of one inference, recorded by a dry run: JSON entries
{"f": provider function, "a": arguments (sizes as lists), "k": keyword arguments, "o": shape of the
dealer's tensor for party 0}. Requests depend on shapes only (MPC is data-oblivious), so one plan per
batch size serves every query.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from ...errors import ProtocolError

TUPLE_FUNCS = ("generate_additive_triple", "square", "generate_binary_triple", "wrap_rng", "B2A_rng")
#: provider function -> TTPServer method that makes party 0's share
DEALER_FUNCS = {"generate_additive_triple": "additive", "square": "square", "generate_binary_triple": "binary",
                "wrap_rng": "wraps", "B2A_rng": "B2A"}


class TupleMismatchError(ProtocolError):
    """The online phase asked for correlated randomness that the offline phase did not prepare."""


# --- plans: the ordered list of correlated-randomness requests of one inference -------------------
def _plain(v):
    """JSON form of a request argument (sizes become lists)."""
    if isinstance(v, (torch.Size, tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, torch.device):
        return None
    raise ProtocolError(f"cannot record a CrypTen request argument of type {type(v).__name__}")


def request_key(name: str, args, kwargs) -> str:
    kw = {k: _plain(v) for k, v in kwargs.items() if k != "device"}
    return json.dumps([name, [_plain(a) for a in args], kw], sort_keys=True, separators=(",", ":"))


def _meta(size):
    return torch.empty(tuple(size), dtype=torch.long, device="meta")


def dealer_shape(name: str, args, kwargs) -> list[int]:
    """Shape of the tensor the dealer makes for party 0 (c, r^2, theta_r or r_A)."""
    if name == "generate_additive_triple":
        size0, size1, op = args[0], args[1], args[2]
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items() if k != "device"}
        return list(getattr(torch, op)(_meta(size0), _meta(size1), *args[3:], **kw).shape)
    if name == "generate_binary_triple":
        return list(torch.broadcast_shapes(tuple(args[0]), tuple(args[1])))
    return [int(v) for v in args[0]]


def validate_plan(plan) -> list[dict]:
    """Check a plan received from a peer: known functions, integer shapes, bounded total size."""
    if not isinstance(plan, list) or len(plan) > 1_000_000:
        raise ProtocolError("malformed preprocessing plan")
    total = 0
    for e in plan:
        if not isinstance(e, dict) or e.get("f") not in TUPLE_FUNCS or not isinstance(e.get("a"), list) \
                or not isinstance(e.get("k"), dict) or not isinstance(e.get("o"), list) \
                or not all(isinstance(d, int) and 0 <= d < 1 << 31 for d in e["o"]):
            raise ProtocolError(f"malformed preprocessing plan entry {str(e)[:200]}")
        if e["f"] == "generate_additive_triple" and e["a"][2:3] and e["a"][2] not in (
                "mul", "matmul", "conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d"):
            raise ProtocolError(f"plan asks for an unknown triple op {e['a'][2]!r}")
        total += int(np.prod(e["o"], dtype=np.int64))
    if total > 1 << 28:
        raise ProtocolError(f"preprocessing plan of {total} ring elements exceeds the limit")
    return plan


def plan_digest(plan: list[dict]) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]


def plan_elements(plan: list[dict]) -> int:
    return int(sum(int(np.prod(e["o"], dtype=np.int64)) for e in plan))


def _sizes(name, args):
    """Turn JSON request args back into CrypTen's argument types."""
    if name == "generate_additive_triple":
        return (torch.Size(args[0]), torch.Size(args[1]), *args[2:])
    return tuple(torch.Size(a) if isinstance(a, list) else a for a in args)


# --- provider -----------------------------------------------------------------------------------
def install_provider(crypten) -> "PreprocessedTTP":
    """Replace CrypTen's TTP provider instance by a PreprocessedTTP (rank 0 or 1)."""
    from crypten.mpc.primitives import ArithmeticSharedTensor, BinarySharedTensor
    from crypten.mpc.provider.ttp_provider import TrustedThirdParty, TTPClient

    class PreprocessedTTP(TrustedThirdParty):
        NAME = "TTP"

        def __init__(self):
            super().__init__()
            self.mode = "online"
            self.recorded: list[dict] = []
            self.queue: list = []
            self.pos = 0
            self.dealer_requests = 0  # round trips to the dealer made from the online phase: must stay 0
            self._pending: list[torch.Tensor] = []

        # the five request kinds route through one dispatcher
        def generate_additive_triple(self, size0, size1, op, device=None, *args, **kwargs):
            return self._dispatch("generate_additive_triple", (size0, size1, op, *args), kwargs)

        def square(self, size, device=None):
            return self._dispatch("square", (size,), {})

        def generate_binary_triple(self, size0, size1, device=None):
            return self._dispatch("generate_binary_triple", (size0, size1), {})

        def wrap_rng(self, size, device=None):
            return self._dispatch("wrap_rng", (size,), {})

        def B2A_rng(self, size, device=None):
            return self._dispatch("B2A_rng", (size,), {})

        def _dispatch(self, name, args, kwargs):
            if self.mode == "online":
                key = request_key(name, args, kwargs)
                if self.pos >= len(self.queue):
                    raise TupleMismatchError(f"online phase needs {name}{_short(args)} but the offline phase "
                                             f"prepared only {len(self.queue)} tuples")
                want, tup = self.queue[self.pos]
                if want != key:
                    raise TupleMismatchError(f"online request #{self.pos} is {key[:160]} but the offline phase "
                                             f"prepared {want[:160]}")
                self.queue[self.pos] = None
                self.pos += 1
                return tup
            if self.mode == "record":
                shape = dealer_shape(name, args, kwargs)
                self.recorded.append({"f": name, "a": [_plain(a) for a in args],
                                      "k": {k: _plain(v) for k, v in kwargs.items() if k != "device"},
                                      "o": shape})
                return _zeros_tuple(name, args, shape)
            raise ProtocolError(f"CrypTen asked for {name} outside a preprocessing or online phase")

        # --- offline -----------------------------------------------------------------------------
        def generate(self, plan: list[dict]) -> None:
            """Run CrypTen's own TTP provider code for every request of `plan`, in order.

            Party 1 derives all its shares from the PRG it shares with the dealer (no traffic). Party 0
            derives a and b likewise; its share of c (r², θ_r, r_A) comes from the dealer's batch, which
            `fill` copies into the tensors handed out here, so this can run while the dealer works.
            """
            client = TTPClient.get()
            self._pending = []
            if self.rank == 0:
                def ttp_request(func_name, device, *args, **kwargs):
                    t = torch.zeros(self._shape_iter.__next__(), dtype=torch.long)
                    self._pending.append(t)
                    return t
                self._shape_iter = iter([tuple(e["o"]) for e in plan])
                client.ttp_request = ttp_request
            queue = []
            try:
                for e in plan:
                    args = _sizes(e["f"], e["a"])
                    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in e["k"].items()}
                    if e["f"] != "generate_additive_triple":
                        tup = getattr(TrustedThirdParty, e["f"])(self, *args, **kw)
                    elif self.rank == 1:
                        tup = _party1_triple(client.get_generator(), args[0], args[1], e["o"])
                    else:
                        tup = TrustedThirdParty.generate_additive_triple(self, args[0], args[1], args[2], None,
                                                                         *args[3:], **kw)
                    queue.append((request_key(e["f"], args, kw), tup))
            finally:
                if self.rank == 0:
                    del client.ttp_request  # back to the class method (which would talk to the dealer)
            self.queue, self.pos = queue, 0

        def fill(self, blob: bytes) -> None:
            """Party 0: copy the dealer's batch (int64, concatenated in plan order) into the tuples."""
            need = sum(t.nelement() for t in self._pending) * 8
            if len(blob) != need:
                raise ProtocolError(f"dealer sent {len(blob)} bytes of preprocessing, the plan needs {need}")
            flat = torch.from_numpy(np.frombuffer(blob, dtype="<i8").copy())
            pos = 0
            for t in self._pending:
                n = t.nelement()
                t.view(-1).copy_(flat[pos:pos + n])
                pos += n
            self._pending = []

        def remaining(self) -> int:
            return len(self.queue) - self.pos

    def _party1_triple(gen, size0, size1, size_c):
        """TrustedThirdParty.generate_additive_triple for party 1, minus the product it computes only
        to learn c's size (CrypTen's TODO): the plan knows the size. Same draws, same order."""
        from crypten.mpc.provider import ttp_provider as ttp
        a = ttp.generate_random_ring_element(size0, generator=gen, device=None)
        b = ttp.generate_random_ring_element(size1, generator=gen, device=None)
        c = ttp.generate_random_ring_element(tuple(size_c), generator=gen, device=None)
        return (ArithmeticSharedTensor.from_shares(a, precision=0), ArithmeticSharedTensor.from_shares(b, precision=0),
                ArithmeticSharedTensor.from_shares(c, precision=0))

    def _zeros_tuple(name, args, shape):
        z = lambda s: torch.zeros(tuple(s), dtype=torch.long)  # noqa: E731
        A = lambda s: ArithmeticSharedTensor.from_shares(z(s), precision=0)  # noqa: E731
        B = lambda s: BinarySharedTensor.from_shares(z(s))  # noqa: E731
        if name == "generate_additive_triple":
            return A(args[0]), A(args[1]), A(shape)
        if name == "generate_binary_triple":
            return B(args[0]), B(args[1]), B(shape)
        if name == "B2A_rng":
            return A(shape), B(shape)
        return A(shape), A(shape)  # square, wrap_rng

    prov = PreprocessedTTP()
    inner = TTPClient._TTPClient__TTPClient
    original = inner.ttp_request

    def ttp_request(client_self, *args, **kwargs):  # only reachable outside `generate`: never in our runs
        prov.dealer_requests += 1
        if prov.mode == "online":
            raise TupleMismatchError("the online phase attempted a round trip to the dealer")
        return original(client_self, *args, **kwargs)

    inner.ttp_request = ttp_request
    providers = vars(crypten.mpc)["__SUPPORTED_PROVIDERS"]
    providers["TTP"] = prov
    return prov


def _short(args) -> str:
    return "(" + ", ".join(str(_plain(a)) for a in args)[:120] + ")"
