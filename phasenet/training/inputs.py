"""What a network is shown of one crystal: the same for training, evaluation and solving.

A network defined on a fixed reflection grid (``grid_hkl``: the canonical set of a
dataset, or any list of Friedel representatives in the crystal's own setting) receives,
for each grid reflection,

- ``e2``: |E|² from :func:`phasenet.physics.wilson.normalise_amplitudes` (equal-count
  shells, no composition: it needs nothing but the amplitudes), normalised over *all*
  the reflections the method is given, then placed on the grid;
- ``mask``: 1 where the reflection was given (measured or computed, d ≥ d_min, not
  systematically absent), 0 elsewhere; ``e2`` is 0 there too, so a network can tell
  "absent or not given" from "weak" only through the mask.

Nothing beyond d_min and nothing computed from the true structure enters: the inputs
are the amplitudes a method may see (``amplitude`` NaN where not given) and the cell and
symmetry. Reflections given but not on the grid are counted in ``n_off_grid``; grid
reflections not given in ``n_missing``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from phasenet.physics.wilson import normalise_amplitudes
from phasenet.reflections import friedel_representative, lookup, resolution_mask


@dataclass(frozen=True)
class NetworkInput:
    e2: np.ndarray  # (G,) float32 |E|² on the grid, 0 where not given
    mask: np.ndarray  # (G,) float32 1 where given
    n_given: int  # reflections given (finite amplitude, d >= d_min, not absent)
    n_off_grid: int  # of those, not on the grid
    n_missing: int  # grid reflections not given


def network_input(grid_hkl, hkl, amplitude, cell, sym, *, d_min: float | None = None) -> NetworkInput:
    """The network's view of reflections ``hkl`` with amplitudes ``amplitude`` (NaN: not given).

    ``d_min`` cuts the reflections first (what a method at that resolution may see).
    """
    hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
    amp = np.asarray(amplitude, dtype=float).copy()
    amp[~resolution_mask(hkl, cell, d_min)] = np.nan
    w = normalise_amplitudes(hkl, amp, cell, sym)
    rep, _ = friedel_representative(hkl)
    pos = lookup(np.asarray(grid_hkl), rep)
    given = w.mask
    on = given & (pos >= 0)
    e2 = np.zeros(len(grid_hkl), dtype=np.float32)
    mask = np.zeros(len(grid_hkl), dtype=np.float32)
    e2[pos[on]] = w.e2[on]
    mask[pos[on]] = 1.0
    return NetworkInput(e2, mask, int(given.sum()), int((given & (pos < 0)).sum()),
                        int(len(grid_hkl) - mask.sum()))
