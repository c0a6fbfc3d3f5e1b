"""``random``: random signs (0/π) for structures with an inversion centre at the origin,
uniformly random phases otherwise (seeded): what a method must beat."""

from __future__ import annotations

import numpy as np

from phasenet.baselines.registry import PhasingMethod


def random_phases(problem, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if problem.centric_origin:
        return np.pi * rng.integers(0, 2, len(problem))
    return rng.uniform(-np.pi, np.pi, len(problem))


class RandomPhases(PhasingMethod):
    name = "random"

    def phases(self, problem, seed, options):
        return random_phases(problem, seed), ""
