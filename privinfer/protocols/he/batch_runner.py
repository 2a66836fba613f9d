"""The batch engine's per-unit SEAL loops, split between this process and the helper process.

Why: the loops that call SEAL once per unit (loading input ciphertexts, each Poly layer's products) hold the
GIL, so `batch.server_evaluate` hands half of every such job to the helper process (`batch_helper`) through
a `Runner`, which owns the lease on the helper and redoes the helper's half here whenever it fails.
`CpuClock` measures the CPU seconds of both processes per phase (the benchmark's figures).
"""
from __future__ import annotations

import time

from ...errors import ParameterError, ProtocolError
from . import batch_helper as bhelp
from . import batch_par as bpar


class CpuClock:
    """CPU seconds per phase, of this process (all threads) and of the helper process."""

    def __init__(self, helper):
        self.helper = helper
        self.p, self.h = time.process_time(), helper.cpu_seconds() if helper else 0.0

    def lap(self, name, timings):
        p, h = time.process_time(), self.helper.cpu_seconds() if self.helper else 0.0
        timings[f"{name}_cpu_s"] = (p - self.p) + (h - self.h)
        self.p, self.h = p, h


class Runner:
    """Runs the per-unit SEAL loops, splitting the units with the helper process when there is one.

    Owns the lease on the helper: on any failure of the helper the lease is dropped (exactly once) and its
    half is redone here; an exception on this side still waits for the helper's reply so that the pipe
    stays in step (or marks the helper broken, so that it is replaced)."""

    MIN_SPLIT = 16  # fewer units than this are not worth a round trip

    def __init__(self, kit, helper, shared):
        self.kit, self.helper, self.shared = kit, helper, shared
        self.key = None
        if helper is not None:
            try:
                self.key = helper.ensure_context(kit)
            except bhelp._HelperFailed:
                self.release()

    def release(self) -> None:
        if self.helper is not None:
            h, self.helper = self.helper, None
            h.unmap_dropped()
            h.lock.release()

    def alloc(self, shape):
        return self.shared.array(shape)

    def _job(self, units: int, header_of, run_range):
        """run_range(lo, hi) here on the first half, the helper on the rest (header_of(mid) describes it).
        Returns (local result, helper reply or None)."""
        mid = units if (self.helper is None or units < self.MIN_SPLIT) else units // 2
        sent = False
        if mid < units:
            try:
                self.helper.send(header_of(mid))
                sent = True
            except bhelp._HelperFailed:
                self.release()
                mid = units
        try:
            local = run_range(0, mid)
        except BaseException:
            if sent:
                try:
                    self.helper.reply()
                except BaseException:
                    self.helper.broken = True
                    self.release()
            raise
        rep = None
        if sent:
            try:
                rep = self.helper.reply()
            except bhelp._HelperFailed:
                self.release()
                run_range(mid, units)
            except ProtocolError:
                raise
            except BaseException:
                self.helper.broken = True
                self.release()
                raise
        return local, rep

    def load(self, piece, X, drops, expect, off=0):
        """Load the ciphertexts of input positions off..off+len(piece)-1 into X."""
        units = len(piece)
        blobs = [None] * off + list(piece)  # load_units indexes by input position

        def header_of(mid):
            for i in range(off + mid, off + units):
                if not isinstance(blobs[i], (bytes, bytearray, memoryview)):
                    raise ProtocolError(f"input ciphertext {i}: expected bytes, got {type(blobs[i]).__name__}")
            paths = [self.shared.file(b) for b in blobs[off + mid:]]
            return {"op": "load", "key": self.key, "X": self.shared.spec(X), "paths": paths, "lo": off + mid,
                    "hi": off + units, "drops": drops, "pid": expect[0], "scale": expect[1]}

        scale, rep = self._job(units, header_of,
                               lambda lo, hi: bpar.load_units(self.kit, blobs, X, off + lo, off + hi, drops,
                                                              expect))
        if rep is not None and rep["scale"] != scale:
            raise ParameterError("helper and parent disagree on the input scale")  # pragma: no cover
        return scale

    def poly(self, X, S, drops, coeffs, poly_rho):
        units = X.shape[1]
        Y = self.alloc((X.shape[0] - drops, units, 3, self.kit.n))

        def header_of(mid):
            return {"op": "poly", "key": self.key, "X": self.shared.spec(X), "Y": self.shared.spec(Y),
                    "lo": mid, "hi": units, "S": S, "drops": drops, "coeffs": list(coeffs), "poly_rho": poly_rho}

        scale, rep = self._job(units, header_of, lambda lo, hi: bpar.poly_units(self.kit, X, Y, lo, hi, S, drops,
                                                                               coeffs, poly_rho))
        if rep is not None and rep["scale"] != scale:
            raise ParameterError("helper and parent disagree on the poly output scale")  # pragma: no cover
        return Y, scale
