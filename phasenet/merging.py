"""Put measured reflections on the canonical grid.

Symmetry equivalents (the Laue group of the space group, Friedel mates included)
are merged by their mean (weighted by 1/σ² when every σ is positive), then every
grid reflection takes the merged value of its equivalence class. Reflections
that were not measured stay NaN, never zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from phasenet.reflections import laue_asu_keys, reciprocal_metric
from phasenet.structure import Observations


@dataclass(frozen=True)
class MergedObservations:
    intensity: np.ndarray  # (R,) NaN where not measured
    sigma: np.ndarray  # (R,) NaN where not measured or unknown
    n_measured: int  # reflections read from the file
    n_unique: int  # symmetry-unique reflections after merging
    n_on_grid: int  # grid reflections that received a value


def merge_onto_grid(obs: Observations, rotations: np.ndarray, grid_hkl: np.ndarray,
                    cell=None) -> MergedObservations:
    """Merge ``obs`` and spread it over ``grid_hkl``; ``cell`` (gemmi.UnitCell) lets
    reflections beyond the grid's resolution be dropped early (same result, faster)."""
    i_obs, s_obs = obs.intensities()
    hkl = np.asarray(obs.hkl)
    if cell is not None:  # equivalents share |s|: drop what cannot reach the grid
        gstar = reciprocal_metric(cell)
        s2 = np.einsum("ni,ij,nj->n", hkl.astype(float), gstar, hkl.astype(float))
        g2 = np.einsum("ni,ij,nj->n", grid_hkl.astype(float), gstar, grid_hkl.astype(float))
        near = s2 <= g2.max() * (1 + 1e-6)
        hkl, i_obs, s_obs = hkl[near], i_obs[near], s_obs[near]
    if len(hkl) == 0:
        nan = np.full(len(grid_hkl), np.nan)
        return MergedObservations(nan, nan.copy(), len(obs.hkl), 0, 0)
    # symmetry keys once per distinct index, not per measurement
    uhkl, back = np.unique(hkl, axis=0, return_inverse=True)
    keys = laue_asu_keys(uhkl, rotations)[back.ravel()]
    uniq, inverse = np.unique(keys, return_inverse=True)
    good_sigma = np.isfinite(s_obs) & (s_obs > 0)
    if good_sigma.all():
        w = 1.0 / s_obs**2
        wsum = np.bincount(inverse, weights=w, minlength=len(uniq))
        mean = np.bincount(inverse, weights=w * i_obs, minlength=len(uniq)) / wsum
        sig = 1.0 / np.sqrt(wsum)
    else:
        cnt = np.bincount(inverse, minlength=len(uniq)).astype(float)
        mean = np.bincount(inverse, weights=i_obs, minlength=len(uniq)) / cnt
        sig = np.full(len(uniq), np.nan)
    grid_keys = laue_asu_keys(grid_hkl, rotations)
    pos = np.searchsorted(uniq, grid_keys)
    pos = np.clip(pos, 0, len(uniq) - 1)
    found = uniq[pos] == grid_keys
    intensity = np.where(found, mean[pos], np.nan)
    sigma = np.where(found, sig[pos], np.nan)
    return MergedObservations(intensity, sigma, len(obs.hkl), len(uniq), int(found.sum()))
