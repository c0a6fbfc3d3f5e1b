""":func:`solve`: measured data in, a phased map and a starting model out.

Read (:mod:`~phasenet.solving.inputs`), prepare (:mod:`~phasenet.solving.prepare`),
run each method (:mod:`~phasenet.solving.methods`) in the reference setting, keep the
best by the answer-free figure of merit (:data:`phasenet.physics.figures_of_merit.FOM_RULE`),
carry its phases back to the input's setting, and return a
:class:`~phasenet.solving.result.Solution` (its ``write(out_dir)`` writes the files).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from phasenet.solving.errors import SolveError
from phasenet.solving.result import Solution


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"phasenet solve: {text}", file=sys.stderr, flush=True)


def solve(input, *, methods=None, d_min: float | None = None, seed: int = 0, starts: int = 1,
          cell=None, space_group=None, composition=None, z=None, ins=None, hklf: int = 4,
          mtz_column: str | None = None, mtz_sigma: str | None = None, options=None,
          progress: bool = False) -> Solution:
    """Phase the measured data of ``input`` (a CIF with measured data, a SHELX .hkl with
    ``cell``/``space_group``/``composition`` or ``ins``, an MTZ with ``mtz_column``).

    ``methods``: registered phasing method names (default: :func:`~phasenet.solving.methods.default_methods`);
    each runs ``starts`` times (seeds ``seed``, ``seed+1``, ...), the best start and then
    the best method by figure of merit are kept. ``d_min``: truncate the data first.
    ``options``: :class:`~phasenet.evaluation.options.EvaluateOptions` for the methods'
    own settings. ``progress``: report each step on stderr. Raises
    :class:`~phasenet.solving.errors.SolveError` (file and reason) when it cannot solve.
    """
    from phasenet.baselines.registry import UnknownMethod, check_method_name
    from phasenet.evaluation.options import EvaluateOptions
    from phasenet.physics.figures_of_merit import FOM_RULE
    from phasenet.solving.inputs import read_input
    from phasenet.solving.methods import DEFAULT_RULE, FALLBACK, default_methods, phasing_problem, run_method
    from phasenet.solving.prepare import prepare

    t0 = time.perf_counter()
    if methods is not None:
        methods = [methods] if isinstance(methods, str) else list(methods)
        for m in methods:
            try:
                check_method_name(m)
            except UnknownMethod as exc:
                raise SolveError(input, "no-method", str(exc)) from None
    _say(progress, f"reading {input}")
    data = read_input(input, cell=cell, space_group=space_group, composition=composition, z=z, ins=ins,
                      hklf=hklf, mtz_column=mtz_column, mtz_sigma=mtz_sigma)
    _say(progress, f"{len(data.observations.hkl)} reflections read ({data.observations.origin}); merging")
    prepared = prepare(data, d_min=d_min)
    why = "given"
    by_rule = methods is None
    if by_rule:
        methods, why = default_methods(prepared)
    if options is None:
        options = EvaluateOptions(methods=tuple(methods))
    problem = phasing_problem(prepared)
    runs = []
    todo = list(methods)
    while todo:
        name = todo.pop(0)
        _say(progress, f"{name}: {starts} start(s) on {len(prepared.hkl)} reflections to {prepared.d_min:.2f} A")
        run = run_method(name, prepared, problem, options, seed=seed, starts=starts,
                         on_start=lambda m, k: _say(progress and starts > 1, f"{m}: start {k + 1}/{starts}"))
        _say(progress, f"{name}: {run.status}"
             + (f", fom {run.figures['fom']:.3f}" if run.status == "ok" else f": {run.note}"))
        runs.append(run)
        if not todo and by_rule and FALLBACK not in methods and not any(r.status == "ok" for r in runs):
            why += (f"; {FALLBACK} as the fallback: "
                    + ", ".join(f"{r.method} {r.status}" for r in runs))
            methods = list(methods) + [FALLBACK]
            todo.append(FALLBACK)
    ok = [r for r in runs if r.status == "ok"]
    if not ok:
        raise SolveError(input, "no-method", "no method phased the data: "
                         + "; ".join(f"{r.method} {r.status} ({r.note})" for r in runs))
    best = max(ok, key=lambda r: (np.nan_to_num(r.figures["fom"], nan=-np.inf)))
    ch = prepared.setting
    phases = ch.phases_from_reference(prepared.hkl_reference, best.phases)
    summary = {
        "input": str(input), "space_group": prepared.space_group, "cell": list(prepared.cell),
        "setting": {"input": ch.symbol_in, "reference": ch.symbol_reference, "operator": ch.operator,
                    "identity": ch.is_identity},
        "n_reflections": int(len(prepared.hkl)), "d_min": prepared.d_min, "d_min_data": prepared.d_min_data,
        "d_min_requested": d_min, "completeness": prepared.completeness, "counts": prepared.counts,
        "composition": prepared.composition, "methods": list(methods), "methods_why": why,
        "default_rule": DEFAULT_RULE, "method": best.method, "seed": best.seed, "starts": best.starts,
        "fom": best.figures["fom"], "figures": best.figures, "fom_rule": FOM_RULE,
        "runs": [r.as_dict() for r in runs], "notes": list(prepared.notes),
        "seconds": time.perf_counter() - t0,
    }
    return Solution(hkl=prepared.hkl, amplitude=prepared.amplitude, e=prepared.e, phases=np.mod(phases, 2 * np.pi),
                    fom=best.fom_per_reflection, cell=prepared.cell, symops=prepared.symops,
                    space_group=prepared.space_group, composition=prepared.composition,
                    wavelength=prepared.wavelength, method=best.method, runs=summary["runs"], summary=summary)


def solve_to(input, out_dir, overwrite: bool = False, **kwargs) -> tuple[Solution, dict]:
    """:func:`solve`, then write the solution into ``out_dir``: (solution, {file: path})."""
    sol = solve(input, **kwargs)
    _say(kwargs.get("progress", False), f"writing {out_dir}")
    files = sol.write(Path(out_dir), overwrite=overwrite)
    return sol, files
