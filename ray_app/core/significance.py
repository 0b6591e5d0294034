"""Calibrated significance of persistence pairs (DESIGN 2.7).

What ``sigma`` means
--------------------
``sigma`` is a *per-job* (look-elsewhere corrected) Gaussian-equivalent significance: on a
catalogue with no stream, the probability that a job reports *any* given pair with
significance >= s is about ``P(Z > s)`` for a standard normal Z (2.9e-7 per job at the
default s = 5; measured rates are in benchmarks/RESULTS.md).

How it is computed
------------------
1. **Null catalogues.** The job's stars are copied with their kinematic features (proper
   motions and parallax, jointly) permuted among stars of the same position cell (10 deg in
   the runner, ``recovery.local_permutation``) while positions stay; this destroys any stream
   (a stream is coherent in position *and* motion) and keeps both marginals and the field's
   large-scale kinematic gradients (the solar reflex changes across a long footprint).
   Copies are subsampled to at most ``NULL_MAX_STARS`` stars,
   so the cost does not grow with the job (persistence in log-density units is scale free:
   its distribution does not depend on the star count).
2. **Finite pairs.** The persistences of the null copies' finite pairs are fitted with an
   exponential tail above their 75 % quantile ``u``: ``lambda = median(excess) / ln 2``.
   Per peak, ``S(pi) = 0.25 exp(-(pi - u) / lambda)`` above ``u`` (empirical below).
   A job with ``n`` finite pairs tests ``n`` hypotheses: ``p = 1 - (1 - S)^n`` and
   ``sigma = Phi^-1(1 - p)``.
3. **Essential classes.** The peak of a whole component never dies; it is scored with its key saddle
   (``recovery.essential_key_saddles``). If the field (a pair whose dying component holds more than
   half the stars, or more than half of those present at its death with a peak the background
   reaches: ``recovery.field_pairs``) dies into it, that saddle is the key saddle, the field pair is
   not a candidate, and the essential class is tested like the finite pair it would have been (one
   of the ``n`` tests). Otherwise the key saddle is the first merge with a component whose peak is
   no denser than the *background ceiling* (the highest density the null copies reach), i.e. where
   it meets the background rather than its own sub-lumps; its effective persistence is compared with
   the null copies' essential classes, scored the same way: ``S_ess(x) = exp(-(x - m) / lambda)``
   beyond the largest null value ``m`` (empirical fraction, floored at 1/(R+1), below it). One test
   per component.

Validated by ``tests/test_significance.py`` (false candidates per stream-free catalogue) and
``benchmarks/quality.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr, ndtri_exp

#: Default ``sigmaThreshold``.
DEFAULT_SIGMA_THRESHOLD = 5.0

#: Null copies are subsampled to at most this many stars.
NULL_MAX_STARS = 20000
#: Number of shuffled null copies.
NULL_ROUNDS = 8

TAIL_QUANTILE = 0.75
#: Largest sigma reported (p ~ 1e-300); beyond this floating point cannot tell.
MAX_SIGMA = 37.0


@dataclass(frozen=True)
class NullModel:
    """Null distribution of persistence (log-density units) from shuffled copies.

    Attributes
    ----------
    threshold : float
        ``u``, the tail's start (75 % quantile of the null finite persistences).
    scale : float
        ``lambda``, exponential scale of the excess over ``u``.
    sorted_null : ndarray
        Null finite persistences, ascending (empirical part below ``u``).
    essential_null : ndarray
        Effective persistences of the null copies' essential classes, ascending.
    background_ceiling : float
        Highest log-density the background alone reaches (null copies), scaled to the job's
        star count; peaks above it are not background.
    """

    threshold: float
    scale: float
    sorted_null: np.ndarray
    essential_null: np.ndarray
    background_ceiling: float = float("inf")

    def log_survival(self, persistence) -> np.ndarray:
        """Natural log of the per-peak null probability P(pi >= persistence)."""
        pi = np.atleast_1d(np.asarray(persistence, dtype=np.float64))
        tail_frac = 1.0 - TAIL_QUANTILE
        out = np.empty_like(pi)
        above = pi > self.threshold
        out[above] = math.log(tail_frac) - (pi[above] - self.threshold) / self.scale
        below = ~above
        if below.any():
            n = len(self.sorted_null)
            ge = n - np.searchsorted(self.sorted_null, pi[below], side="left")
            out[below] = np.log(np.clip(ge / n, tail_frac, 1.0))
        return out

    def log_survival_essential(self, persistence) -> np.ndarray:
        """Natural log of P(null essential effective persistence >= persistence)."""
        x = np.atleast_1d(np.asarray(persistence, dtype=np.float64))
        ess = self.essential_null
        if len(ess) == 0:
            return self.log_survival(x)
        top = float(ess[-1])
        floor = 1.0 / (len(ess) + 1)
        ge = len(ess) - np.searchsorted(ess, x, side="left")
        emp = np.log(np.clip((ge + 1) / (len(ess) + 1), floor, 1.0))
        tail = math.log(floor) - (x - top) / self.scale
        return np.where(x > top, tail, emp)

    def to_dict(self) -> dict:
        return {"method": "shuffled-kinematics null copies; exponential tail above the 75% "
                          "quantile of null finite persistences",
                "tail_threshold": self.threshold, "tail_scale": self.scale,
                "n_null_pairs": int(len(self.sorted_null)),
                "background_ceiling": self.background_ceiling,
                "essential_null": [float(v) for v in self.essential_null]}


def fit_null(null_persistence, essential_null=(), background_ceiling: float = float("inf")
             ) -> NullModel:
    """Fit the null model to noise persistences (and null essential persistences).

    Raises
    ------
    ValueError
        With fewer than 8 finite persistences (no tail can be estimated).
    """
    pi = np.sort(np.asarray(null_persistence, dtype=np.float64))
    pi = pi[np.isfinite(pi)]
    if len(pi) < 8:
        raise ValueError(f"need at least 8 null persistence pairs to calibrate, got {len(pi)}")
    u = float(np.quantile(pi, TAIL_QUANTILE))
    excess = pi[pi > u] - u
    scale = float(np.median(excess) / math.log(2.0)) if len(excess) else 0.0
    # a degenerate sample (all equal) still needs a positive scale
    scale = max(scale, 1e-3 * max(abs(u), 1.0), 1e-6)
    ess = np.sort(np.asarray(essential_null, dtype=np.float64))
    return NullModel(threshold=u, scale=scale, sorted_null=pi, essential_null=ess[np.isfinite(ess)],
                     background_ceiling=float(background_ceiling))


def job_sigma(log_survival: np.ndarray, n_tests: int) -> np.ndarray:
    """Look-elsewhere corrected sigma from per-peak log survival probabilities.

    ``p = 1 - (1 - S)^n``; ``sigma = Phi^-1(1 - p)``, evaluated in log space so very small
    p-values keep their precision. Clipped to [-MAX_SIGMA, MAX_SIGMA].
    """
    log_s = np.minimum(np.asarray(log_survival, dtype=np.float64), 0.0)
    n = max(int(n_tests), 1)
    s = np.exp(log_s)
    # log(1-(1-S)^n): for small n*S use log(n) + log(S); otherwise the exact expression
    log1m = n * np.log1p(-np.minimum(s, 1 - 1e-16))
    with np.errstate(divide="ignore"):
        log_p = np.where(s * n < 1e-8, math.log(n) + log_s, np.log(-np.expm1(log1m)))
    log_p = np.minimum(log_p, 0.0)
    sigma = -ndtri_exp(log_p)
    return np.clip(sigma, -MAX_SIGMA, MAX_SIGMA)


def expected_false_candidates(sigma_threshold: float) -> float:
    """Nominal expected number of false candidates per stream-free job at a threshold."""
    return float(np.exp(log_ndtr(-float(sigma_threshold))))


def validate_sigma(value) -> float:
    """Return ``sigmaThreshold`` as a float or raise ``ValueError`` naming what is allowed.

    Integers (``3``) are accepted as ``3.0``: never replaced by a default.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(
            f"sigmaThreshold must be a number > 0 (e.g. 4 or 4.5), got {value!r} "
            f"({type(value).__name__})"
        )
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"sigmaThreshold must be a finite number > 0, got {value!r}")
    if v > MAX_SIGMA:
        raise ValueError(f"sigmaThreshold must be <= {MAX_SIGMA}, got {value!r}")
    return v
