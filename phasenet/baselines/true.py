"""``true``: the dataset's own phases, the sanity row of every evaluation (R = 1, 0° phase error)."""

from __future__ import annotations

from phasenet.baselines.registry import PhasingMethod


class TruePhases(PhasingMethod):
    name = "true"
    needs = frozenset({"phase_true"})  # reads the answer: a reference, not a phasing method

    def phases(self, problem, seed, options):
        return problem.phase_true.copy(), ""
