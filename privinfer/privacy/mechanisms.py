"""Local differential-privacy mechanisms for feature vectors: clipping, nullification, Laplace, Gaussian.

The client privatizes each sample's feature vector v = f(x) (f = the model prefix it runs) as

    v  <- v with non-finite entries set to 0
    v  <- v * m           (nullification: a secret, uniformly random subset of round(mu*d) entries set to 0)
    v  <- v * min(1, C / ||v||)          (clip: ||.||_1 for Laplace, ||.||_2 for Gaussian)
    y  =  v + noise       (noise on *every* coordinate, nullified or not)

Sensitivity. Neighbouring inputs are *any* two inputs x, x' (local DP: the server may know everything
except which input the client holds). Both clipped vectors lie in the norm ball of radius C, so
||v - v'|| <= 2C: the L1 sensitivity is 2C (Laplace) and the L2 sensitivity is 2C (Gaussian). This holds
whatever f is -- even a prefix chosen by a malicious server -- because clipping happens after f.

Mechanisms (one sample = one release):
- Laplace: i.i.d. Lap(b) per coordinate with b = 2C / epsilon gives epsilon-DP (Dwork, McSherry, Nissim,
  Smith, TCC 2006; Dwork & Roth 2014, Thm 3.6).
- Gaussian (analytic): N(0, sigma^2) per coordinate with the smallest sigma satisfying the exact condition
  of Balle & Wang, ICML 2018, Thm 8:  Phi(D/(2 sigma) - eps sigma/D) - e^eps Phi(-D/(2 sigma) - eps sigma/D) <= delta,
  D = 2C. Valid for every eps > 0 and tight.
- Gaussian (classical): sigma = D sqrt(2 ln(1.25/delta)) / eps, valid only for 0 < eps < 1 (Dwork & Roth
  2014, Thm A.1); offered as `gaussian-classical` for comparison, refused for eps >= 1.

Nullification uses a mask independent of the input, so for every fixed mask the mechanism is
(eps, delta)-DP and so is the mixture over masks. We claim *no amplification* from it: the guarantee is
exactly the (eps, delta) of the noise mechanism. Nullification is a utility/robustness knob whose
effect on leakage is measured empirically by `privinfer.attacks.inversion`.

Randomness: noise and masks are derived from `os.urandom` (the OS CSPRNG) through explicit inverse-CDF
and Box-Muller transforms, not from a seeded PRNG (numpy's PCG64 seeded from OS entropy is *not* a
cryptographically secure generator). Tests may inject a seeded `numpy.random.Generator`; it then feeds
the same transforms, so the tested code path is the production one.

Caveat (stated, not fixed): the guarantee is for the mechanism over the reals. Floating-point sampling
makes the set of reachable outputs depend on v at fine resolution (Mironov, CCS 2012), and the 53-bit
uniform truncates the noise tails at about 36.7 b. Releasing float32 values coarsens the grid but is not
a proof; Mironov's snapping mechanism is not implemented.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import log_ndtr, ndtr

from ..errors import PrivinferError

MECHANISMS = ("laplace", "gaussian", "gaussian-classical")
_TWO53 = float(2 ** 53)


# --- parameters ------------------------------------------------------------------------------------

def parse_epsilon(eps) -> float:
    """epsilon as a float > 0; None, "inf" and math.inf mean no noise (epsilon = infinity)."""
    if eps is None:
        return math.inf
    if isinstance(eps, str):
        if eps.strip().lower() in ("inf", "infinity", "none"):
            return math.inf
        try:
            eps = float(eps)
        except ValueError:
            raise PrivinferError(f"epsilon must be a positive number or 'inf', got {eps!r}") from None
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise PrivinferError(f"epsilon must be a positive number or 'inf', got {eps!r}") from None
    if math.isnan(e) or e <= 0:
        raise PrivinferError(f"epsilon must be > 0 (or 'inf' for no noise), got {eps!r}")
    return e


def epsilon_json(eps: float):
    """epsilon for JSON records: a float, or the string "inf" (JSON has no infinity)."""
    return "inf" if math.isinf(eps) else float(eps)


# --- clipping --------------------------------------------------------------------------------------

def _rows(v) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    if a.ndim == 0:
        raise PrivinferError("features must have a batch dimension")
    a = a.reshape(a.shape[0], -1)
    return np.where(np.isfinite(a), a, 0.0)


def _naive_norms(a: np.ndarray, norm: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.abs(a).sum(axis=1, keepdims=True) if norm == "l1" else np.sqrt((a * a).sum(axis=1, keepdims=True))


def clip_rows(v, clip: float, norm: str) -> np.ndarray:
    """Scale each row (sample) of a (B, ...) array so its L1 or L2 norm is at most `clip`; returns (B, d).

    Non-finite entries are zeroed first, so the bound holds for any input; norms are computed on the row
    divided by its largest magnitude, so huge rows are scaled, not overflowed.
    """
    a = _rows(v)
    if clip is None or math.isinf(clip):
        return a
    if not clip > 0:
        raise PrivinferError(f"clip must be > 0, got {clip!r}")
    if norm not in ("l1", "l2"):
        raise PrivinferError(f"norm must be 'l1' or 'l2', got {norm!r}")
    if a.shape[1] == 0:
        return a
    m = np.abs(a).max(axis=1, keepdims=True)
    r = a / np.where(m > 0, m, 1.0)
    nr = _naive_norms(r, norm)  # in [1, d] for a non-zero row, 0 for a zero row
    safe = np.where(nr > 0, nr, 1.0)
    big = (nr > 0) & (m > clip / safe)  # ||a|| = m * nr > clip, without forming m * nr
    out = np.where(big, r * (clip / safe), a)
    # float rounding can leave the norm a few ulps above C: shave it so the bound is exact
    n2 = _naive_norms(out, norm)
    over = n2 > clip
    while np.any(over):
        out = np.where(over, out * np.nextafter(clip / np.where(over, n2, 1.0), 0.0), out)
        n2 = _naive_norms(out, norm)
        over = n2 > clip
    return out


# --- the noise source ------------------------------------------------------------------------------

class NoiseSource:
    """Uniform bits from the OS CSPRNG (default) or an injected numpy Generator (tests), and the
    transforms that turn them into Laplace / Gaussian noise and random masks."""

    def __init__(self, rng: np.random.Generator | None = None):
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise PrivinferError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        self.rng = rng

    @property
    def kind(self) -> str:
        return "os.urandom" if self.rng is None else "injected numpy Generator (tests only)"

    def _u64(self, n: int) -> np.ndarray:
        if self.rng is None:
            return np.frombuffer(os.urandom(8 * n), dtype="<u8").astype(np.uint64)
        return self.rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)

    def uniform(self, shape) -> np.ndarray:
        """Uniform on the open interval (0, 1), 53-bit resolution: (k + 1/2) / 2^53."""
        shape = tuple(int(s) for s in np.atleast_1d(shape)) if not isinstance(shape, tuple) else shape
        n = int(np.prod(shape, dtype=np.int64))
        k = (self._u64(n) >> np.uint64(11)).astype(np.float64)
        return ((k + 0.5) / _TWO53).reshape(shape)

    def laplace(self, scale: float, shape) -> np.ndarray:
        """i.i.d. Lap(0, scale) by inverse CDF: -b sgn(u) ln(1 - 2|u|), u uniform on (-1/2, 1/2)."""
        u = self.uniform(shape) - 0.5
        return -scale * np.sign(u) * np.log1p(-2.0 * np.abs(u))

    def normal(self, sigma: float, shape) -> np.ndarray:
        """i.i.d. N(0, sigma^2) by Box-Muller."""
        u1, u2 = self.uniform(shape), self.uniform(shape)
        return sigma * np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)

    def keep_mask(self, batch: int, dim: int, fraction: float) -> np.ndarray:
        """(batch, dim) bool mask with exactly round(fraction*dim) False entries per row, uniformly placed."""
        m = int(round(float(fraction) * dim))
        keep = np.ones((batch, dim), dtype=bool)
        if m <= 0:
            return keep
        keys = self.uniform((batch, dim))
        drop = np.argpartition(keys, m - 1, axis=1)[:, :m] if m < dim else np.tile(np.arange(dim), (batch, 1))
        np.put_along_axis(keep, drop, False, axis=1)
        return keep


# --- calibration -----------------------------------------------------------------------------------

def laplace_scale(epsilon: float, sensitivity: float) -> float:
    """b = Delta_1 / epsilon (epsilon-DP)."""
    return float(sensitivity) / float(epsilon)


def gaussian_delta(sigma: float, epsilon: float, sensitivity: float) -> float:
    """The exact delta(epsilon) of the Gaussian mechanism (Balle & Wang 2018, Thm 8)."""
    if sigma <= 0:
        return 1.0
    a = sensitivity / (2.0 * sigma)
    b = epsilon * sigma / sensitivity
    return float(ndtr(a - b) - math.exp(min(epsilon + float(log_ndtr(-a - b)), 700.0)))


def gaussian_sigma_analytic(epsilon: float, delta: float, sensitivity: float) -> float:
    """Smallest sigma with gaussian_delta(sigma, eps) <= delta (bisection; relative precision 1e-12)."""
    if not (0 < delta < 1):
        raise PrivinferError(f"the Gaussian mechanism needs 0 < delta < 1, got {delta!r}")
    if not epsilon > 0:
        raise PrivinferError(f"epsilon must be > 0, got {epsilon!r}")
    lo, hi = 1e-12 * sensitivity, sensitivity
    while gaussian_delta(hi, epsilon, sensitivity) > delta:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if gaussian_delta(mid, epsilon, sensitivity) > delta:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-12:
            break
    return hi


def gaussian_sigma_classical(epsilon: float, delta: float, sensitivity: float) -> float:
    """sigma = Delta_2 sqrt(2 ln(1.25/delta)) / epsilon; valid for 0 < epsilon < 1 only (Dwork & Roth, Thm A.1)."""
    if not (0 < epsilon < 1):
        raise PrivinferError(f"the classical Gaussian calibration holds only for 0 < epsilon < 1, got {epsilon}; "
                             f"use mechanism='gaussian' (analytic, any epsilon)")
    if not (0 < delta < 1):
        raise PrivinferError(f"the Gaussian mechanism needs 0 < delta < 1, got {delta!r}")
    return sensitivity * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon


# --- the privatizer --------------------------------------------------------------------------------

def _number(v, name: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool):
        raise PrivinferError(f"{name} must be a number, got {v!r}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise PrivinferError(f"{name} must be a number, got {v!r}") from None
    if math.isnan(f):
        raise PrivinferError(f"{name} must be a number, got {v!r}")
    return f


@dataclass(frozen=True)
class PrivatizerConfig:
    """What the client applies to each sample's feature vector (see the module docstring)."""
    epsilon: float = 1.0
    mechanism: str = "laplace"
    clip: float | None = None
    nullify: float = 0.0
    delta: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "epsilon", parse_epsilon(self.epsilon))
        if self.mechanism not in MECHANISMS:
            raise PrivinferError(f"mechanism must be one of {MECHANISMS}, got {self.mechanism!r}")
        nullify, c, d = _number(self.nullify, "nullify"), _number(self.clip, "clip"), _number(self.delta, "delta")
        if not (0.0 <= (nullify or 0.0) < 1.0):
            raise PrivinferError(f"nullify must be a fraction in [0, 1), got {self.nullify!r}")
        object.__setattr__(self, "nullify", float(nullify or 0.0))
        if c is not None:
            if not (c > 0 and math.isfinite(c)):
                raise PrivinferError(f"clip must be a finite number > 0, got {self.clip!r}")
            object.__setattr__(self, "clip", c)
        d = d or 0.0
        if self.mechanism == "laplace":
            if d != 0.0:
                raise PrivinferError("the Laplace mechanism is pure epsilon-DP: delta must be 0")
        elif self.noisy and not (0.0 < d < 1.0):
            raise PrivinferError(f"the Gaussian mechanism needs 0 < delta < 1, got {self.delta!r}")
        object.__setattr__(self, "delta", d)
        if self.noisy and self.clip is None:
            raise PrivinferError("a finite epsilon needs a clip norm C (the sensitivity is 2C)")
        if self.noisy:
            self.scale  # validates (e.g. classical Gaussian with epsilon >= 1)

    @property
    def noisy(self) -> bool:
        return not math.isinf(self.epsilon)

    @property
    def norm(self) -> str:
        return "l1" if self.mechanism == "laplace" else "l2"

    @property
    def sensitivity(self) -> float | None:
        """L1 (Laplace) or L2 (Gaussian) sensitivity of the clipped vector: 2C (any two inputs)."""
        return None if self.clip is None else 2.0 * self.clip

    @property
    def scale(self) -> float:
        """Laplace b or Gaussian sigma per coordinate (0 without noise)."""
        if not self.noisy:
            return 0.0
        if self.mechanism == "laplace":
            return laplace_scale(self.epsilon, self.sensitivity)
        if self.mechanism == "gaussian":
            return gaussian_sigma_analytic(self.epsilon, self.delta, self.sensitivity)
        return gaussian_sigma_classical(self.epsilon, self.delta, self.sensitivity)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["epsilon"] = epsilon_json(self.epsilon)
        return d


class Privatizer:
    """Applies a PrivatizerConfig to (B, ...) feature batches; returns (B, ...) float64 of the same shape."""

    def __init__(self, config: PrivatizerConfig, rng: np.random.Generator | None = None):
        self.config = config
        self.source = NoiseSource(rng)
        self._scale = config.scale

    def __call__(self, features) -> np.ndarray:
        feats = np.asarray(features, dtype=np.float64)
        shape = feats.shape
        cfg = self.config
        v = _rows(feats)
        if cfg.nullify > 0:
            v = v * self.source.keep_mask(v.shape[0], v.shape[1], cfg.nullify)
        v = clip_rows(v, cfg.clip, cfg.norm)
        if cfg.noisy:
            if cfg.mechanism == "laplace":
                v = v + self.source.laplace(self._scale, v.shape)
            else:
                v = v + self.source.normal(self._scale, v.shape)
        return v.reshape(shape)
