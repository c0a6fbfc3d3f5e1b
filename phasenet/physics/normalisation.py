"""Put intensities on a common scale: the model input of every dataset.

Methods (``METHODS``):

- ``linreg`` (the study's): per structure, least squares I_obs ≈ a·I_calc + b over
  the measured reflections; input = (I_obs − b)/a. It needs the answer (I_calc
  from the atoms), so it can scale training data but never an unknown crystal.
- ``max``, ``mean``, ``median``: input = I / statistic(I) over the available
  reflections.
- ``wilson``: normalised structure factors, input = |E|² = I / (k ε Σf² e^{−2B s²/4}),
  with k and B from a Wilson plot (least squares of ln(⟨I⟩/⟨εΣf²⟩) against
  sin²θ/λ² in shells of equal count), then rescaled so ⟨|E|²⟩ = 1. Needs only the
  composition, so it works for crystals whose structure is unknown.

Structures without measurements normalise their calculated intensities with the
same method; for ``linreg`` that is the identity (a = 1, b = 0: calculated
intensities already are on the scale linreg maps measurements to).

Every method returns :class:`NormalisationResult` with its coefficients, and the
Pearson correlation of I_obs with I_calc whenever there are measurements (the
study's Fig. 1 check).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHODS = ("linreg", "max", "mean", "median", "wilson")


@dataclass(frozen=True)
class NormalisationResult:
    intensity: np.ndarray  # (R,) the model input
    scale: float  # a (linreg), the statistic (max/mean/median), k (wilson)
    offset: float  # b (linreg), else 0
    wilson_b: float  # B (Å²) for wilson, else NaN
    obs_calc_corr: float  # Pearson r of I_obs vs I_calc, NaN without measurements
    n_fit: int  # reflections used in the fit


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown normalisation {method!r}; choose one of {', '.join(METHODS)}")
    return method


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def normalise(method: str, i_calc: np.ndarray, i_obs: np.ndarray | None = None, *,
              stol2: np.ndarray | None = None, sum_f2: np.ndarray | None = None,
              epsilon: np.ndarray | None = None, absent: np.ndarray | None = None,
              n_shells: int = 10) -> NormalisationResult:
    """Normalise one structure's intensities (all arrays are per grid reflection).

    ``i_obs`` NaN marks unmeasured reflections; pass None (or all NaN) when the
    structure has no measurements. ``wilson`` also needs ``stol2`` (sin²θ/λ²),
    ``sum_f2`` (Σ_j f_j² over the unit cell at each reflection) and ``epsilon``.
    """
    check_method(method)
    has_obs = i_obs is not None and np.isfinite(i_obs).any()
    data = i_obs if has_obs else i_calc
    mask = np.isfinite(data)
    if absent is not None:
        mask &= ~absent
    corr = _corr(i_obs[mask], i_calc[mask]) if has_obs else float("nan")
    n = int(mask.sum())
    if n == 0:
        raise ValueError("no reflections to normalise")

    if method == "linreg":
        if not has_obs:
            return NormalisationResult(i_calc.copy(), 1.0, 0.0, float("nan"), corr, n)
        x, y = i_calc[mask], i_obs[mask]
        if n >= 2 and np.ptp(x) > 1e-9 * np.abs(x).max():
            a, b = np.polyfit(x, y, 1)
        else:  # one distinct I_calc (e.g. one measured class): a scale only
            a, b = y.sum() / max(x.sum(), 1e-30), 0.0
        if not np.isfinite(a) or a <= 0:
            raise ValueError(f"linear regression of I_obs on I_calc gave slope {a:.3g}")
        return NormalisationResult((i_obs - b) / a, float(a), float(b), float("nan"), corr, n)

    if method in ("max", "mean", "median"):
        stat = {"max": np.max, "mean": np.mean, "median": np.median}[method](data[mask])
        if not np.isfinite(stat) or stat <= 0:
            raise ValueError(f"{method} of the intensities is {stat:.3g}, cannot normalise")
        return NormalisationResult(data / stat, float(stat), 0.0, float("nan"), corr, n)

    # wilson
    if stol2 is None or sum_f2 is None:
        raise ValueError("wilson normalisation needs stol2 and sum_f2")
    eps = np.ones_like(stol2) if epsilon is None else epsilon
    expected = eps * sum_f2
    k, b_wilson = wilson_fit(data[mask], expected[mask], stol2[mask], n_shells)
    e2 = data / (k * expected * np.exp(-2.0 * b_wilson * stol2))
    m = float(np.mean(e2[mask]))
    e2 = e2 / m
    if absent is not None:
        e2 = np.where(absent, 0.0, e2)
    return NormalisationResult(e2, float(k * m), 0.0, float(b_wilson), corr, n)


def wilson_fit(intensity: np.ndarray, expected: np.ndarray, stol2: np.ndarray,
               n_shells: int = 10) -> tuple[float, float]:
    """(k, B) with ⟨I⟩ = k ⟨εΣf²⟩ exp(−2B sin²θ/λ²), fitted over shells of equal count."""
    order = np.argsort(stol2)
    shells = np.array_split(order, min(n_shells, max(1, len(order) // 20)))
    xs, ys = [], []
    for sh in shells:
        mi, me = np.mean(intensity[sh]), np.mean(expected[sh])
        if mi > 0 and me > 0:
            xs.append(np.mean(stol2[sh]))
            ys.append(np.log(mi / me))
    if len(xs) >= 2 and np.ptp(xs) > 0:
        slope, intercept = np.polyfit(xs, ys, 1)
        return float(np.exp(intercept)), float(-slope / 2.0)
    if xs:
        return float(np.exp(np.mean(ys))), 0.0
    raise ValueError("Wilson plot has no positive shell means")
