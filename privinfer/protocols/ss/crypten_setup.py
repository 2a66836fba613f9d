"""CrypTen plumbing for the `ss` protocol: configuration, dealer PRG, timeouts, communicator.

Everything here runs inside a CrypTen process (rank 0 = server, rank 1 = client, rank 2 = dealer); see
`worker.py`. The preprocessing provider is in `tuples.py`, the IR lowering in `lowering.py`.

* `PairCommunicator`: CrypTen's `DistributedCommunicator` with the two-party reveals done as one
  direct exchange (isend + irecv of one concatenated buffer) instead of gloo's ring all-reduce, exact
  byte/round counters per direction, and a *dry* mode that moves no data (for the request-recording
  dry run). The cryptography (what is revealed, when) is CrypTen's, unchanged.
* `XofGenerator`: the dealer<->party randomness, a keyed XOF instead of torch's Mersenne Twister.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist


# --- configuration ------------------------------------------------------------------------------
def configure(crypten, precision_bits: int) -> None:
    """TTP provider, fixed point bits, no CrypTen logging; then freeze cfg into plain attributes.

    CrypTen reads its OmegaConf config on every operation (tens of microseconds each, thousands per
    inference); a frozen namespace tree with the same values answers in nanoseconds.
    """
    from omegaconf import OmegaConf
    cfg = crypten.cfg
    cfg.load_config(None)
    cfg.mpc.provider = "TTP"
    cfg.mpc.protocol = "beaver"
    cfg.mpc.active_security = False
    cfg.encoder.precision_bits = int(precision_bits)
    cfg.communicator.verbose = False
    cfg.debug.debug_mode = False
    cfg.debug.validation_mode = False
    tree = OmegaConf.to_container(cfg.config, resolve=True)
    cfg.config = _frozen(tree)

    def temp_override(override_dict, _cfg=cfg):  # same contract as CrypTenConfig.temp_override
        import contextlib

        @contextlib.contextmanager
        def cm():
            old = _cfg.config
            t = json.loads(json.dumps(_thaw(old)))
            for k, v in override_dict.items():
                node, *rest = k.split(".")
                d = t
                for part in [node, *rest][:-1]:
                    d = d.setdefault(part, {})
                d[[node, *rest][-1]] = v
            _cfg.config = _frozen(t)
            try:
                yield
            finally:
                _cfg.config = old
        return cm()

    object.__setattr__(cfg, "temp_override", temp_override)


def _frozen(tree):
    if isinstance(tree, dict):
        return SimpleNamespace(**{k: _frozen(v) for k, v in tree.items()})
    return tree


def _thaw(ns):
    if isinstance(ns, SimpleNamespace):
        return {k: _thaw(v) for k, v in vars(ns).items()}
    return ns


# --- a cryptographic PRG for the party<->dealer streams --------------------------------------------
KEY_WORDS = 4  # 256-bit keys, sent as four int64 words


class XofGenerator:
    """Deterministic random stream SHAKE-128(key || counter), one XOF call per draw.

    CrypTen's TTP seeds torch generators (MT19937) with 64-bit seeds. Every Beaver opening of a value
    that one party knows (its own weights, its own shares inside A2B) hands it raw outputs of the other
    party's dealer stream, and MT19937's state follows linearly from ~20k such bits; with it, every other
    mask of that stream, hence the other party's inputs. A keyed XOF has no such structure.
    """

    def __init__(self, key: bytes):
        if len(key) < 16:
            raise ValueError("PRG key too short")
        self.key = bytes(key)
        self.counter = 0
        self.device = torch.device("cpu")

    def ring(self, size) -> torch.Tensor:
        shape = tuple(int(v) for v in size)
        n = int(np.prod(shape, dtype=np.int64))
        raw = hashlib.shake_128(self.key + struct.pack("<Q", self.counter)).digest(8 * n) if n else b""
        self.counter += 1
        return torch.from_numpy(np.frombuffer(raw, dtype="<i8").astype(np.int64)).view(shape)


def new_key() -> bytes:
    return os.urandom(8 * KEY_WORDS)


def key_to_tensor(key: bytes) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(key, dtype="<i8").astype(np.int64))


def tensor_to_key(t: torch.Tensor) -> bytes:
    return np.asarray(t.numpy(), dtype="<i8").tobytes()


_PRESET_KEY: list = [None]  # this process's party key agreed with an authenticated dealer, if any


def install_secure_prg(crypten, preset_key: bytes | None = None) -> None:
    """Make CrypTen's TTP code draw from an XofGenerator whenever it is handed one.

    Patches the two random helpers as seen by `crypten.mpc.provider.ttp_provider` (the only user of the
    party<->dealer generators) and the parties' TTPClient key set-up (256-bit keys from the dealer
    instead of one 64-bit seed). Both sides must call this before `crypten.init()`.

    `preset_key`: a key this party already agreed with an authenticated dealer (`auth.py`); then nothing
    is received over gloo (the dealer sends nothing either), only the set-up barrier is kept.
    """
    import crypten.communicator as comm
    import crypten.mpc.provider.ttp_provider as ttp
    _PRESET_KEY[0] = preset_key  # read at key set-up, so it holds even if the patch was installed earlier
    if getattr(ttp, "_privinfer_secure_prg", False):
        return
    orig_ring, orig_kbit = ttp.generate_random_ring_element, ttp.generate_kbit_random_tensor

    def ring(size, ring_size=(2**64), generator=None, **kwargs):
        if isinstance(generator, XofGenerator):
            return generator.ring(size)
        return orig_ring(size, ring_size=ring_size, generator=generator, **kwargs)

    def kbit(size, bitlength=None, generator=None, **kwargs):
        if isinstance(generator, XofGenerator):
            r = generator.ring(size)
            return r if bitlength is None or bitlength >= 64 else r & ((1 << bitlength) - 1)
        return orig_kbit(size, bitlength=bitlength, generator=generator, **kwargs)

    def client_setup_generators(self):
        preset = _PRESET_KEY[0]
        if preset is None:
            key = torch.zeros(KEY_WORDS, dtype=torch.long)
            dist.recv(key, src=comm.get().get_ttp_rank(), group=self.ttp_group)
        dist.barrier(group=self.ttp_group)
        self.generator = XofGenerator(tensor_to_key(key) if preset is None else preset)
        self.generator_cuda = None

    ttp.generate_random_ring_element = ring
    ttp.generate_kbit_random_tensor = kbit
    ttp.TTPClient._TTPClient__TTPClient._setup_generators = client_setup_generators
    ttp._privinfer_secure_prg = True


def patch_timeouts(seconds: float) -> None:
    """Give every torch.distributed group CrypTen creates our timeout (gloo's default is 30 min)."""
    import datetime
    if getattr(dist, "_privinfer_timeout_patched", False):
        return
    td = datetime.timedelta(seconds=float(seconds))
    orig_init, orig_new = dist.init_process_group, dist.new_group

    def init_process_group(*a, **k):
        k.setdefault("timeout", td)
        return orig_init(*a, **k)

    def new_group(*a, **k):
        k.setdefault("timeout", td)
        return orig_new(*a, **k)

    dist.init_process_group = init_process_group
    dist.new_group = new_group
    dist._privinfer_timeout_patched = True


# --- communicator -------------------------------------------------------------------------------
class CommCounters:
    def __init__(self):
        self.bytes_sent = 0
        self.bytes_received = 0
        self.rounds = 0
        self.messages_sent = 0
        self.messages_received = 0

    def as_dict(self) -> dict:
        return dict(vars(self))


def _open_trace(rank: int):
    """`PRIVINFER_COMM_TRACE=DIR` (a debugging aid, `benchmarks/round_trace.py`): this party appends every round
    (kind, post, done, bytes) to DIR/rank<r>-<pid>.tsv, one line per round, unbounded, for as long as the
    process lives: set it for a measurement, never on a long-running server. None when unset, for the dealer,
    or when the file cannot be opened (a warning; the party runs untraced)."""
    trace = os.environ.get("PRIVINFER_COMM_TRACE")
    if not trace or rank >= 2:
        return None
    try:
        os.makedirs(trace, exist_ok=True)
        return open(os.path.join(trace, f"rank{rank}-{os.getpid()}.tsv"), "a", buffering=1)
    except OSError as e:
        import sys
        print(f"privinfer: warning: PRIVINFER_COMM_TRACE={trace!r}: {e}; this party is not traced", file=sys.stderr)
        return None


def install_communicator(crypten) -> "PairCommunicator":
    """Turn the initialized DistributedCommunicator instance into a PairCommunicator."""
    from crypten.communicator import DistributedCommunicator

    inst = DistributedCommunicator.get()

    class PairCommunicator(DistributedCommunicator):
        """Two-party reveals as one direct exchange; exact counters; optional dry mode."""

        def _pair_init(self):
            self.peer = 1 - self.rank
            self.counters = CommCounters()
            self.dry = False
            self.schedule = None  # a list: every round's (post, done, bytes) is appended (ss_cost)
            self._trace = _open_trace(self.rank)

        def _mark(self, kind, t0, nbytes):
            t1 = time.perf_counter()
            if self.schedule is not None:
                self.schedule.append((t0, t1, nbytes))
            if self._trace is not None:
                self._trace.write(f"{kind}\t{t0:.7f}\t{t1:.7f}\t{nbytes}\n")

        def _flat(self, tensors):
            if len(tensors) == 1:
                return tensors[0].reshape(-1).contiguous()
            return torch.cat([t.reshape(-1) for t in tensors])

        def _split(self, flat, like):
            out, pos = [], 0
            for t in like:
                n = t.nelement()
                out.append(flat[pos:pos + n].view(t.shape))
                pos += n
            return out

        @staticmethod
        def _combine(a, b, op):
            return a ^ b if op == dist.ReduceOp.BXOR else a + b

        def all_reduce(self, input, op=dist.ReduceOp.SUM, batched=False):
            tensors = list(input) if batched else [input]
            if self.dry:
                res = [t.clone() for t in tensors]
                return res if batched else res[0]
            mine = self._flat([t.data for t in tensors])
            theirs = torch.empty_like(mine)
            t0 = time.perf_counter()
            s = dist.isend(mine, self.peer, group=self.main_group)
            r = dist.irecv(theirs, self.peer, group=self.main_group)
            s.wait()
            r.wait()
            self._mark("x", t0, mine.nelement() * 8)
            c = self.counters
            c.bytes_sent += mine.nelement() * 8
            c.bytes_received += theirs.nelement() * 8
            c.messages_sent += 1
            c.messages_received += 1
            c.rounds += 1
            res = self._split(self._combine(mine, theirs, op), tensors)
            return res if batched else res[0]

        def reduce(self, input, dst, op=dist.ReduceOp.SUM, batched=False):
            tensors = list(input) if batched else [input]
            if self.dry:
                res = [t.clone() for t in tensors]
                return (res if batched else res[0]) if dst == self.rank else None
            mine = self._flat([t.data for t in tensors])
            c = self.counters
            c.rounds += 1
            t0 = time.perf_counter()
            if dst == self.rank:
                theirs = torch.empty_like(mine)
                dist.recv(theirs, self.peer, group=self.main_group)
                self._mark("r", t0, theirs.nelement() * 8)
                c.bytes_received += theirs.nelement() * 8
                c.messages_received += 1
                res = self._split(self._combine(mine, theirs, op), tensors)
                return res if batched else res[0]
            dist.send(mine, self.peer, group=self.main_group)
            self._mark("s", t0, mine.nelement() * 8)
            c.bytes_sent += mine.nelement() * 8
            c.messages_sent += 1
            return None

    inst.__class__ = PairCommunicator
    inst._pair_init()
    return inst
