"""What a `hybrid` session protects, decided from its plan (not from what queries have logged so far).

Why a module of its own: the statement combines every part of a plan (HE segments in BFV or CKKS, the
hand-overs' hiding, ss's dealer, client `plain` segments, a `noisy` release) and is the one place the session's
`guarantee` and `model_private` for hybrid are decided; it kept `hybrid/__init__.py` over 400 lines.
"""
from __future__ import annotations

from ...planner.plan import layer_protocols, plan_string
from ..he.bfv import STAT_BITS


def _bfv(h) -> bool:
    return getattr(h, "scheme", "ckks") == "bfv"


def _prev(segs, i: int) -> str | None:
    return segs[i - 1].protocol if i > 0 else None


def _next(segs, i: int) -> str | None:
    return segs[i + 1].protocol if i + 1 < len(segs) else None


#: plan protocols whose input must be at the client in the clear
NEEDS_CLIENT_PLAINTEXT = ("plain", "noisy")


def _reveals(segs, i: int) -> bool:
    """Segment i ends at the client in the clear: the plan's last segment, or one before plain / noisy."""
    return _next(segs, i) is None or _next(segs, i) in NEEDS_CLIENT_PLAINTEXT


def _noisy_start(segs) -> int | None:
    return next((s.start for s in segs if s.protocol == "noisy"), None)


def hybrid_privacy(c) -> dict:
    """The privacy statement of a hybrid client side `c` (its plan, HE segments, ss and noisy parts)."""
    base = c.ss.privacy() if c.ss is not None else None
    guarantee = base["guarantee"] if base is not None else "cryptographic-input-only"
    # from the plan, not from the conversions logged so far (set-up runs this before any query): a hand-over
    # hides perfectly only when the HE segment next to the ss segment is BFV
    perfect = all(_bfv(h) for i, h in c.he.items() if "ss" in (_prev(c.segs, i), _next(c.segs, i)))
    last = c.he.get(len(c.segs) - 1)
    circuit = min([h.circuit_bits for h in c.he.values() if _bfv(h)] + [float("inf")])
    # weights hidden from the client: perfect masks, every BFV result flooded for >= 40 bits, no CKKS logits
    model_private = perfect and circuit >= STAT_BITS and (last is None or _bfv(last))
    if guarantee == "cryptographic-trusted-dealer" and not model_private:
        guarantee = "cryptographic-input-only"  # the weak CKKS masks do not hide intermediates formally
    revealed = [c.segs[i].stop for i in range(len(c.segs) - 1)
                if c.segs[i].protocol in ("he", "ss") and _reveals(c.segs, i)]
    out = {"protocol": "hybrid", "guarantee": guarantee, "plan": plan_string(c.segs),
           "layer_protocols": layer_protocols(c.segs),
           "input_private": base["input_private"] if base is not None else True, "model_private": model_private,
           "conversions": c.conversions, "not_protected": ["architecture and plan"]}
    if any(_bfv(h) for h in c.he.values()):
        out["he"] = ("BFV for linear-only segments (masks uniform mod t: perfect hiding; results re-randomized and "
                     "noise-flooded, the bits per conversion), CKKS for segments with x²; 128-bit security; "
                     "keys of every HE segment sent once per session")
        out["not_protected"].append("each BFV segment's plaintext modulus t (its bit size follows the segment's "
                                    "value bound)")
        if circuit < STAT_BITS:
            out["not_protected"].append(f"the weights, against a client reading the decryption noise of BFV "
                                        f"results: the flood gives {circuit} statistical bits (worst-case bound)")
    elif c.he:
        out["he"] = "CKKS, 128-bit security, keys of every HE segment sent once per session"
    if not perfect:
        out["not_protected"].append("intermediate activations at CKKS conversions only as well as the stated "
                                    "mask bits hide them (19-20 bits, see protocols/convert)")
    if revealed:  # exact intermediate values at the client: enough chosen inputs solve for the weights
        out["model_private"] = False
        out["not_protected"].append(f"the activations entering layer(s) {revealed} reach the client in the clear "
                                    "(a client or noisy segment follows)")
    plain = [str(s) for s in c.segs if s.protocol == "plain"]
    if plain:
        out["model_private"] = False
        out["client_segments"] = plain
        out["not_protected"].append(f"the weights of client segment(s) {', '.join(plain)}: sent to the client")
    if c.noisy is not None:
        dp = c.noisy.report()
        out.update(guarantee=dp["guarantee"], input_private=dp["input_private"], noisy=dp)
        out["not_protected"].append(f"the input, beyond the DP release at layer {_noisy_start(c.segs)}: the "
                                    "server sees the noisy features and runs the rest in the clear")
    if base is not None:
        out["ss"] = {k: base[k] for k in ("dealer", "statement", "threat_model", "fixed_point_bits", "transport")}
    return out
