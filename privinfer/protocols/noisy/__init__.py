"""The `noisy` protocol: split inference with locally differentially private features (ARDEN-style).

Wang et al., KDD'18 ("Not just privacy: improving performance of private deep learning in mobile cloud",
ARDEN); Mao et al. (privacy-preserving split inference). The client runs layers [0, split) of the model
in plaintext, privatizes each sample's feature vector (nullify a secret random fraction, clip to norm C,
add Laplace or Gaussian noise: see `privinfer.privacy.mechanisms`) and sends it; the server runs
layers [split, end) and returns the logits.

    client                                         server
    HELLO {epsilon, mechanism, clip, ...}  ─────▶
                                           ◀─────  WELCOME {split, deployed spec, recommended clip, ...}
                                           ◀─────  BYTES  prefix weights (layers [0, split), .npz, no pickle)
    QUERY {batch}; TENSOR noisy features   ─────▶
                                           ◀─────  TENSOR logits (B, classes)

As a plan of the engine (`protocols/engine.py`): client layers [0, split) (plain@client -> plain@client),
the DP release (plain@client -> noisy@server), server layers [split, end) on the noisy features (post-processing:
still noisy@server), download of the logits (-> plain@client). `hybrid` plans use the same steps.

What is protected (the client's `privacy()` states it per session):
- Input: each sample's release is epsilon-DP (Laplace) or (epsilon, delta)-DP (Gaussian) with respect to
  *any* two inputs (local DP), whatever the prefix weights are (clipping follows the prefix, and epsilon,
  mechanism, delta and nullify are the client's own options; only the clip norm C may come from the
  server, and the guarantee holds for every C). Composition over the session: `privacy.accountant`.
  Nullification: no amplification is claimed. Floating-point caveat: see `privacy.mechanisms`.
- Model: only the suffix stays private. The server sends the prefix weights to the client in setup, so
  model privacy of layers [0, split) (including a learned bottleneck head) is given up.
- The server also learns the batch size and the timing of queries; the logits return in the clear to
  the client (the server sees them too, it computes them).

Server options: `split` (index or layer name, required), `finetune` (False: serve the given weights, e.g.
a graph from `train_noisy`; True: fine-tune at start with `train_noisy` on `dataset` for the server-side
`epsilon`/`mechanism`/`delta`/`clip`/`nullify`, with `bottleneck`/`train_prefix`/`epochs`; the result is
cached), and `clip`, advertised to clients as the recommended C (without it, and unless fine-tuned, the
server recommends the median L1 / L2 norm of the prefix's features on the public `dataset` train split;
`dataset=None` turns that off). Client options: `epsilon` (a number, or
"inf"/None for no noise), `mechanism` ("laplace", "gaussian", "gaussian-classical"), `delta`, `clip`
(default: the server's recommendation), `nullify`, `budget` (total session epsilon; a query that would
exceed it is refused with BudgetExceededError before anything is sent).
"""
from __future__ import annotations

import math
import sys

import numpy as np

from ...errors import PrivinferError, ProtocolError
from ...model.ir import Graph, graph_to_bytes, load_graph
from ...model.reference import run_reference
from ...privacy.accountant import PrivacyAccountant
from ...privacy.mechanisms import MECHANISMS, Privatizer, PrivatizerConfig, epsilon_json, parse_epsilon
from ...transport import Channel
from ..base import ClientSide, Protocol, ServerSide, register
from ..engine import Download, EngineClient, EngineServer, Kind, Layers, Upload

_PRIVACY = ("epsilon", "mechanism", "delta", "clip", "nullify")


def _privacy_config(opts: dict, recommended_clip=None) -> PrivatizerConfig:
    eps = parse_epsilon(opts.get("epsilon"))
    mech = opts.get("mechanism") or "laplace"
    if mech not in MECHANISMS:
        raise PrivinferError(f"mechanism must be one of {MECHANISMS}, got {mech!r}")
    delta = opts.get("delta")
    delta = 0.0 if mech == "laplace" else (1e-5 if delta is None else float(delta))
    clip = opts.get("clip")
    if clip is None and not math.isinf(eps):
        clip = recommended_clip
    if clip is None and not math.isinf(eps):
        raise PrivinferError("noisy: a finite epsilon needs a clip norm C; pass clip= (the server did not "
                             "recommend one)")
    return PrivatizerConfig(eps, mech, clip, float(opts.get("nullify") or 0.0), delta)


def release_steps(graph: Graph, split: int, client: bool, privatize=None) -> list:
    """The DP release of layer `split`'s input and the server's suffix on it: plain@client -> noisy@server ->
    plain@client. The client's `privatize` runs the release (clip, nullify, noise; the accountant records it)."""
    return [Upload(graph.shapes[split], client, Kind.NOISY_SERVER, privatize, what="noisy features"),
            Layers(graph, split, len(graph.layers), Kind.NOISY_SERVER, holder=not client),
            Download(graph.output_shape, client, Kind.NOISY_SERVER)]


class _NoisyServer(EngineServer):
    def __init__(self, proto: "Noisy"):
        self.proto = proto
        self.chain = release_steps(proto.graph, proto.split, client=False)

    def welcome(self) -> dict:
        p = self.proto
        return {"split": p.split, "features_shape": list(p.graph.shapes[p.split]), "deployed": p.graph.spec(),
                "recommended": {**({k: p.train_meta.get(k) for k in _PRIVACY} if p.train_meta else {}),
                                "clip": p.recommended_clip,
                                **{f"clip_{n}": c for n, c in p.recommended_clips.items()}},
                "finetuned": p.train_meta or None,
                "prefix_weights": "sent in setup: model privacy of layers [0, split) is given up"}

    def setup(self, ch: Channel) -> None:
        ch.send_bytes(self.proto.prefix_bytes)



class NoisyRelease:
    """The client's DP release: its configuration, accountant and privatizer (a `noisy` session's, and a
    hybrid plan's noisy segment's). `release(feats)` records the releases, then privatizes."""

    def __init__(self, opts: dict, recommended_clip=None, rng: np.random.Generator | None = None):
        self.config = _privacy_config(opts, recommended_clip)
        self.accountant = PrivacyAccountant(self.config, opts.get("budget"))
        self.privatizer = Privatizer(self.config, rng)

    def release(self, feats: np.ndarray) -> np.ndarray:
        self.accountant.record(int(feats.shape[0]))
        return self.privatizer(feats).astype(np.float32)

    def report(self) -> dict:
        cfg = self.config
        guarantee = (
            f"each sample's released feature vector is {'epsilon' if cfg.mechanism == 'laplace' else '(epsilon, delta)'}"
            f"-DP w.r.t. any two inputs (local DP), for any prefix weights; the session total composes over "
            f"all released samples" if cfg.noisy else "none: features are sent without noise")
        return {"input_private": cfg.noisy, "epsilon": epsilon_json(cfg.epsilon), **self.accountant.report(),
                "guarantee": "differential-privacy" if cfg.noisy else "none", "statement": guarantee,
                "neighbouring": "any two inputs (local DP)",
                "norm": cfg.norm, "clip": cfg.clip, "sensitivity": cfg.sensitivity, "noise_scale": cfg.scale,
                "nullify": cfg.nullify, "nullification_amplification": "none claimed",
                "noise_source": self.privatizer.source.kind,
                "caveat": "guarantee for real arithmetic; float sampling not hardened (Mironov 2012)"}


class _NoisyClient(EngineClient):
    def __init__(self, welcome: dict, graph: Graph, rng: np.random.Generator | None = None, **opts):
        try:
            self.split = int(welcome["split"])
            self.deployed = Graph.from_spec(welcome["deployed"])
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"noisy: malformed WELCOME ({e!r})") from None
        if self.deployed.input_shape != tuple(graph.input_shape) or not 0 < self.split < len(self.deployed):
            raise ProtocolError("noisy: the server's deployed model does not match its public architecture")
        recommended = welcome.get("recommended") or {}
        mech = opts.get("mechanism") or "laplace"
        rec = recommended.get("clip_l1" if mech == "laplace" else "clip_l2", recommended.get("clip"))
        self.server_trained_for = {k: recommended.get(k) for k in ("epsilon", "mechanism", "nullify")
                                   if recommended.get(k) is not None} or None
        self.dp = NoisyRelease(opts, rec, rng)
        self.config, self.accountant, self.privatizer = self.dp.config, self.dp.accountant, self.dp.privatizer
        self.prefix: Graph | None = None

    def setup(self, ch: Channel) -> None:
        prefix = load_graph(ch.recv_bytes())
        want = self.deployed.slice(0, self.split)
        if prefix.spec() != want.spec():
            raise ProtocolError("noisy: the prefix weights do not match the announced architecture")
        self.prefix = prefix
        self.chain = [Layers(prefix, 0, self.split, Kind.PLAIN_CLIENT, holder=True),
                      *release_steps(self.deployed, self.split, client=True, privatize=self.release)]

    def query_meta(self, x: np.ndarray) -> dict:
        self.accountant.check(int(x.shape[0]))  # refuse before anything is sent
        return {"batch": int(x.shape[0])}

    def privatize(self, x: np.ndarray) -> np.ndarray:
        """Run the prefix and privatize: what leaves the client. Records the releases first."""
        if self.prefix is None:
            raise PrivinferError("noisy: setup has not run")
        return self.release(run_reference(self.prefix, x))

    def release(self, feats: np.ndarray) -> np.ndarray:
        """The DP release of the prefix's features (what leaves the client). Records the releases first."""
        return self.dp.release(feats)

    def privacy(self) -> dict:
        k = self.split
        return {
            "protocol": "noisy", **self.dp.report(),
            "server_finetuned_for": self.server_trained_for,
            "split": k, "client_layers": list(self.deployed.names[:k]),
            "model_private": "suffix only", "model_privacy": f"layers [0, {k}) weights are sent to the client",
        }


@register
class Noisy(Protocol):
    name = "noisy"
    summary = "split inference: client runs the prefix, sends clipped + nullified + DP-noised features"
    server_options = {"split": None, "finetune": False, "dataset": "digits", "epochs": None, "bottleneck": None,
                      "train_prefix": False, "epsilon": None, "mechanism": "laplace", "delta": None,
                      "clip": None, "nullify": 0.0}
    client_options = {"epsilon": 1.0, "mechanism": "laplace", "delta": None, "clip": None, "nullify": 0.0,
                      "budget": None}

    def __init__(self, graph: Graph, **options):
        super().__init__(graph, **options)
        o = self.options
        if o["split"] is None:
            raise PrivinferError("protocol 'noisy' needs split= (a layer index or name: the client runs "
                                 f"layers [0, split)); layers: {list(graph.names)}")
        k = graph.index(o["split"])
        if not 0 < k < len(graph):
            raise PrivinferError(f"noisy: split must leave layers on both sides (1..{len(graph) - 1}), got {o['split']!r}")
        self.train_meta: dict = {}
        self.recommended_clip = None if o["clip"] is None else float(o["clip"])
        from .train import public_clips, train_noisy
        if o["finetune"]:
            if o["epsilon"] is None:
                raise PrivinferError("noisy: finetune=True needs the server-side epsilon= to fine-tune for")
            m = train_noisy(graph, k, o["dataset"], o["epsilon"], mechanism=o["mechanism"] or "laplace",
                            delta=o["delta"] or 0.0, clip=o["clip"], nullify=o["nullify"] or 0.0,
                            bottleneck=o["bottleneck"], train_prefix=bool(o["train_prefix"]), epochs=o["epochs"],
                            progress=sys.stderr.isatty())  # a bar on a terminal (serve), silent in logs
            self.graph, k, self.recommended_clip, self.train_meta = m.graph, m.split, m.clip, m.meta
        elif o["bottleneck"] is not None:
            raise PrivinferError("noisy: bottleneck= only applies with finetune=True (or use train_noisy)")
        self.split = k
        self.prefix_bytes = graph_to_bytes(self.graph.slice(0, k))
        # clip recommendations per norm: the configured/trained C, else the median on public data
        self.recommended_clips: dict = {}
        if self.recommended_clip is not None:
            norm = "l2" if self.train_meta.get("mechanism", "laplace") != "laplace" else "l1"
            self.recommended_clips = ({norm: self.recommended_clip} if self.train_meta else
                                      {"l1": self.recommended_clip, "l2": self.recommended_clip})
        if len(self.recommended_clips) < 2 and o["dataset"]:
            self.recommended_clips = {**public_clips(self.graph, k, o["dataset"]), **self.recommended_clips}

    def server_side(self, client_options: dict) -> ServerSide:
        return _NoisyServer(self)

    @classmethod
    def validate_client_options(cls, options: dict) -> dict:
        opts = super().validate_client_options(options)
        parse_epsilon(opts.get("epsilon"))
        if opts.get("mechanism") not in MECHANISMS:
            raise PrivinferError(f"mechanism must be one of {MECHANISMS}, got {opts.get('mechanism')!r}")
        for name in ("delta", "clip", "nullify", "budget"):
            v = opts.get(name)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
                raise PrivinferError(f"noisy: {name} must be a number, got {v!r}")
        return opts

    @classmethod
    def client_side(cls, welcome: dict, graph, **client_options) -> ClientSide:
        return _NoisyClient(welcome, graph, **client_options)


def client_for_test(welcome: dict, graph: Graph, rng: np.random.Generator, **options) -> ClientSide:
    """A client side with an injected (seeded) generator: tests only, never for real queries."""
    return _NoisyClient(welcome, graph, rng=rng, **Noisy.validate_client_options(options))


from .train import NoisyModel, train_noisy  # noqa: E402  (public API of the protocol module)

__all__ = ["Noisy", "NoisyModel", "NoisyRelease", "train_noisy", "client_for_test", "release_steps"]
