"""The fixed vocabulary of `stats.privacy["guarantee"]`.

Why one table: a user (and the README's protocol table) must be able to compare sessions by one word, and a
session must never present a weaker mode under a stronger name. Every protocol's `ClientSide.privacy()` sets
`guarantee` to one of these keys; `PrivateSession` refuses a privacy dict without a known one, so a new mode
cannot silently invent its own wording. The values are the one-line meaning that the README repeats.
"""
from __future__ import annotations

from ..errors import PrivinferError

GUARANTEES: dict[str, str] = {
    "cryptographic":
        "input and weights hidden cryptographically from a semi-honest peer; only the two parties take part",
    "cryptographic-input-only":
        "the input is hidden cryptographically; the weights are not formally hidden from the client",
    "cryptographic-trusted-dealer":
        "input and weights hidden cryptographically if the authenticated third-party dealer colludes with neither",
    "cryptographic-server-dealer":
        "the dealer is the server's own: no input privacy against the server operator",
    "differential-privacy":
        "the server sees only differentially private features of the input (a statistical, not a cryptographic,"
        " guarantee)",
    "none": "no privacy: the input reaches the server in the clear",
}


def check_guarantee(privacy: dict) -> str:
    """Return `privacy["guarantee"]`, or raise if it is missing or not one of `GUARANTEES`."""
    g = privacy.get("guarantee")
    if g not in GUARANTEES:
        raise PrivinferError(f"privacy report has guarantee {g!r}; it must be one of {sorted(GUARANTEES)}")
    return g
