"""Re-randomizing and flooding an HE result before it leaves the server (the `he` protocol's last step).

Why apart: the `he` connection (`sides.py`), its steps (`steps.py`), the HE -> shares conversion and the
planner's cost model all re-randomize a result, and none of them should need the protocol class for it. See
the package docstring for what the flood buys (`privacy.py` sizes it).
"""
from __future__ import annotations

import numpy as np

from ...privacy.mechanisms import NoiseSource
from .context import CKKSContext


def os_normal(n: int, std: float) -> np.ndarray:
    """n Gaussian samples of `std` from the OS CSPRNG (the DP mechanisms' `NoiseSource`): the flood must not
    come from a PRNG whose state its outputs could reveal (numpy's PCG64 state can be recovered from outputs)."""
    return NoiseSource().normal(std, n)


def rerandomize(ctx: CKKSContext, ct, flood_std: float, rng: np.random.Generator | None = None):
    """Add a fresh encryption of zero and complex Gaussian noise of `flood_std` (value units) to every slot
    (from the OS CSPRNG; `rng` only for reproducible tests)."""
    import tenseal.sealapi as seal
    zero = seal.Ciphertext()
    ctx.encryptor.encrypt_zero(ct.parms_id(), zero)
    zero.scale = ct.scale
    ctx.evaluator.add_inplace(ct, zero)
    if flood_std > 0:
        level = ctx.parms_ids.index(ct.parms_id())
        if rng is not None:
            noise = rng.normal(0.0, flood_std, ctx.slots) + 1j * rng.normal(0.0, flood_std, ctx.slots)
        else:
            noise = os_normal(ctx.slots, flood_std) + 1j * os_normal(ctx.slots, flood_std)
        ctx.evaluator.add_plain_inplace(ct, ctx.encode(noise, ct.scale, level))
    return ct


class _TenSEALView:
    """What `rerandomize` needs, over a TenSEAL context (the batch engine's context type)."""

    def __init__(self, tsctx):
        import tenseal.sealapi as seal
        self.seal = tsctx.seal_context().data
        self.evaluator = seal.Evaluator(self.seal)
        self.encoder = seal.CKKSEncoder(self.seal)
        self.encryptor = seal.Encryptor(self.seal, tsctx.public_key().data)
        self.slots = self.encoder.slot_count()
        self.parms_ids = []
        cd = self.seal.first_context_data()
        while cd is not None:
            self.parms_ids.append(cd.parms_id())
            cd = cd.next_context_data()

    encode = CKKSContext.encode

    def ct_from_bytes(self, data, what="ciphertext"):
        import tenseal.sealapi as seal
        from .context import load_into
        return load_into(seal.Ciphertext(), self.seal, data, what)

    ct_to_bytes = CKKSContext.ct_to_bytes

