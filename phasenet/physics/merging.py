"""Put measured reflections on the canonical grid.

Symmetry equivalents (the Laue group of the space group, Friedel mates included)
are merged by their mean (weighted by 1/σ² when every σ is positive), then every
grid reflection takes the merged value of its equivalence class. Reflections
that were not measured stay NaN, never zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from phasenet.reflections import laue_asu_keys, reciprocal_s2
from phasenet.structure import Observations


@dataclass(frozen=True)
class MergedObservations:
    intensity: np.ndarray  # (R,) NaN where not measured
    sigma: np.ndarray  # (R,) NaN where not measured or unknown
    n_measured: int  # reflections read from the file
    n_unique: int  # symmetry-unique reflections after merging
    n_on_grid: int  # grid reflections that received a value


@lru_cache(maxsize=256)
def _grid_classes_cached(rot_bytes: bytes, m: int, grid_bytes: bytes, n: int):
    rotations = np.frombuffer(rot_bytes, dtype=np.int64).reshape(m, 3, 3)
    grid = np.frombuffer(grid_bytes, dtype=np.int64).reshape(n, 3)
    classes, grid_class = np.unique(laue_asu_keys(grid, rotations), return_inverse=True)
    return classes, grid_class.ravel()


def _grid_classes(rotations: np.ndarray, grid_hkl: np.ndarray):
    """(sorted Laue keys of the grid's classes, class index of each grid reflection)."""
    rot = np.unique(np.ascontiguousarray(rotations, dtype=np.int64).reshape(-1, 9), axis=0)
    grid = np.ascontiguousarray(grid_hkl, dtype=np.int64)
    return _grid_classes_cached(rot.tobytes(), len(rot), grid.tobytes(), len(grid))


def merge_onto_grid(obs: Observations, rotations: np.ndarray, grid_hkl: np.ndarray,
                    cell=None) -> MergedObservations:
    """Merge ``obs`` and spread it over ``grid_hkl``; ``cell`` (gemmi.UnitCell) lets
    reflections beyond the grid's resolution be dropped early (same result, faster)."""
    i_obs, s_obs = obs.intensities()
    hkl = np.asarray(obs.hkl)
    if cell is not None:  # equivalents share |s|: drop what cannot reach the grid
        near = reciprocal_s2(hkl, cell) <= reciprocal_s2(grid_hkl, cell).max() * (1 + 1e-6)
        hkl, i_obs, s_obs = hkl[near], i_obs[near], s_obs[near]
    if len(hkl) == 0:
        nan = np.full(len(grid_hkl), np.nan)
        return MergedObservations(nan, nan.copy(), len(obs.hkl), 0, 0)
    keys = laue_asu_keys(hkl, rotations)
    classes, grid_class = _grid_classes(rotations, grid_hkl)
    # only classes with a member on the grid matter; the others are counted, not merged
    pos = np.minimum(np.searchsorted(classes, keys), len(classes) - 1)
    on_grid = classes[pos] == keys
    n_unique = int(len(np.unique(pos[on_grid])) + len(np.unique(keys[~on_grid])))
    pos, i_g, s_g = pos[on_grid], i_obs[on_grid], s_obs[on_grid]
    k = len(classes)
    if np.all(np.isfinite(s_obs) & (s_obs > 0)):
        w = 1.0 / s_g**2
        wsum = np.bincount(pos, weights=w, minlength=k)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.bincount(pos, weights=w * i_g, minlength=k) / wsum
            sig = 1.0 / np.sqrt(wsum)
    else:
        cnt = np.bincount(pos, minlength=k).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.bincount(pos, weights=i_g, minlength=k) / cnt
        sig = np.full(k, np.nan)
    measured = np.bincount(pos, minlength=k) > 0
    found = measured[grid_class]
    intensity = np.where(found, mean[grid_class], np.nan)
    sigma = np.where(found, sig[grid_class], np.nan)
    return MergedObservations(intensity, sigma, len(obs.hkl), n_unique, int(found.sum()))
