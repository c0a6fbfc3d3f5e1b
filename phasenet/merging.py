"""Put measured reflections on the canonical grid.

Symmetry equivalents (the Laue group of the space group, Friedel mates included)
are merged by their mean (weighted by 1/σ² when every σ is positive), then every
grid reflection takes the merged value of its equivalence class. Reflections
that were not measured stay NaN, never zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from phasenet.reflections import laue_asu_keys
from phasenet.structure import Observations


@dataclass(frozen=True)
class MergedObservations:
    intensity: np.ndarray  # (R,) NaN where not measured
    sigma: np.ndarray  # (R,) NaN where not measured or unknown
    n_measured: int  # reflections read from the file
    n_unique: int  # symmetry-unique reflections after merging
    n_on_grid: int  # grid reflections that received a value


def merge_onto_grid(obs: Observations, rotations: np.ndarray, grid_hkl: np.ndarray) -> MergedObservations:
    i_obs, s_obs = obs.intensities()
    keys = laue_asu_keys(obs.hkl, rotations)
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
    return MergedObservations(intensity, sigma, len(i_obs), len(uniq), int(found.sum()))
