"""Which phasing methods ``phasenet solve`` runs, and running one on prepared data.

**The default rule** (:func:`default_methods`, :data:`DEFAULT_RULE`): data that reach
d ≤ :data:`ATOMIC_RESOLUTION` Å are phased by ``charge-flipping`` (it needs atomic
resolution and then works for any structure). Coarser data: ``net`` if it is registered,
plus ``patterson`` if the composition has an element heavier than Z
:data:`HEAVY_Z` (sulfur); when neither applies, ``charge-flipping`` anyway, and
``charge-flipping`` too when the methods the rule chose all leave the data unphased (the
solver adds it: :data:`FALLBACK`).

A method that cannot run on this installation is reported ``not-applicable`` with the
reason (:func:`unavailable`): ``net`` before its trained model is shipped in
``phasenet/resources/models/phasing-net``.

Any registered method can be named (:func:`phasenet.baselines.registry.method_names`);
forked methods are called with ``phases(problem, seed, options)``, batched ones with
``prepare(options)`` and ``phases_batch([problem], options)``, exactly as the evaluation
calls them. A method is handed amplitudes, cell, symmetry and (``needs`` "atoms") the
composition, all in the reference setting; never anything else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from phasenet.solving.prepare import PreparedData

#: Data reaching this resolution (Å) are phased by charge flipping by default.
ATOMIC_RESOLUTION = 1.2
#: An element heavier than this (Z) makes the heavy-atom method a default at lower resolution.
HEAVY_Z = 16
#: The figures of merit every run lists in summary.json
#: (:func:`phasenet.physics.figures_of_merit.figures_of_merit`; None for a run without phases).
FIGURES = ("fom", "triplet_consistency", "skewness", "sharpness", "negativity")
#: The method the solver adds when the default rule's methods all leave the data unphased.
FALLBACK = "charge-flipping"
DEFAULT_RULE = (f"charge-flipping when the data reach d <= {ATOMIC_RESOLUTION} A; otherwise net "
                f"(if registered) plus patterson if the composition has an element with Z > {HEAVY_Z}; "
                f"charge-flipping when neither applies, or when neither phases the data")


def default_methods(prepared: PreparedData) -> tuple[list[str], str]:
    """(methods, why) by :data:`DEFAULT_RULE`."""
    import gemmi

    from phasenet.baselines.registry import method_names

    if prepared.d_min <= ATOMIC_RESOLUTION:
        return ["charge-flipping"], f"data reach {prepared.d_min:.2f} A <= {ATOMIC_RESOLUTION} A"
    out, why = [], []
    if "net" in method_names():
        out.append("net")
        why.append("net is registered")
    comp = prepared.composition or {}
    heavy = [el for el in comp if gemmi.Element(el).atomic_number > HEAVY_Z and comp[el] > 0]
    if heavy:
        out.append("patterson")
        why.append(f"heavy atoms {', '.join(sorted(heavy))}")
    if not out:
        return ["charge-flipping"], (f"data reach only {prepared.d_min:.2f} A, but no net is registered "
                                     "and no heavy atom is known")
    return out, f"data reach only {prepared.d_min:.2f} A; " + "; ".join(why)


def unavailable(name: str) -> str | None:
    """Why the registered method ``name`` cannot run on this installation, else None:
    ``net`` (the shipped model) while ``phasenet/resources/models/phasing-net`` holds no
    finished training run."""
    if name != "net":
        return None
    from phasenet.baselines.network import shipped_model_dir

    folder = shipped_model_dir()
    if (folder / "model.keras").is_file() and (folder / "phasenet_model.json").is_file():
        return None
    return (f"no trained network is shipped yet ({folder} holds no model.keras and "
            "phasenet_model.json); name a trained run with --method net:RUN_DIR")


@dataclass
class MethodRun:
    """One method's outcome: phases on the prepared rows (reference setting), its
    figures of merit, or why it did not apply / failed."""

    method: str
    status: str  # "ok", "not-applicable", "failed"
    phases: np.ndarray | None = None  # (R,) radians, reference setting
    #: (R,) the method's own per-reflection figure of merit (a forked method's details["fom"]),
    #: written as solution.mtz's FOM column; None where the method gives none
    fom_per_reflection: np.ndarray | None = None
    figures: dict = field(default_factory=dict)
    note: str = ""
    seed: int = 0
    starts: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        """The run as summary.json lists it: the figures of merit (:data:`FIGURES` at least)
        are None where the run has none (not applicable, failed) or they are not finite."""
        figures = {k: None for k in FIGURES}
        figures.update({k: (None if not np.isfinite(v) else round(float(v), 4)) for k, v in self.figures.items()})
        return {"method": self.method, "status": self.status, "note": self.note, "seed": self.seed,
                "starts": self.starts, "seconds": round(self.seconds, 3), **figures}


def phasing_problem(prepared: PreparedData):
    """The :class:`~phasenet.evaluation.problem.PhasingProblem` a method sees: the
    reference-setting reflections with I = F², the composition as atoms without
    positions (occupancy = atoms per cell / operators), no answer."""
    from phasenet.evaluation.problem import PhasingProblem
    from phasenet.reflection_data import ReflectionData
    from phasenet.structure import AtomicModel
    from phasenet.symmetry import symmetry

    ch = prepared.setting
    atoms = None
    if prepared.composition:
        n_ops = len(symmetry(ch.symops_reference).rotations)
        els = sorted(prepared.composition)
        n = len(els)
        atoms = AtomicModel(label=np.array(els), element=np.array(els), charge=np.zeros(n, np.int8),
                            frac=np.full((n, 3), np.nan),
                            occupancy=np.array([prepared.composition[e] / n_ops for e in els]),
                            u_iso=np.full(n, np.nan), u_aniso=np.full((n, 6), np.nan),
                            u_defaulted=np.zeros(n, bool))
    refl = ReflectionData(hkl=prepared.hkl_reference, cell=ch.cell_reference, symops=ch.symops_reference,
                          space_group=ch.symbol_reference, intensity_obs=prepared.amplitude**2,
                          phase_calc=np.full(len(prepared.hkl), np.nan))
    return PhasingProblem(id=prepared.source, reflections=refl, atoms=atoms, amplitude_source="obs")


def run_method(name: str, prepared: PreparedData, problem, options, seed: int = 0, starts: int = 1,
               on_start=None) -> MethodRun:
    """Run the registered method ``name`` ``starts`` times (seeds seed, seed+1, ...; a
    batched method once) and keep the start with the highest figure of merit."""
    from phasenet.baselines.registry import BATCHED, NEEDS, NotApplicable, PhasingFailed, get_method
    from phasenet.physics.figures_of_merit import figures_of_merit

    t0 = time.perf_counter()
    why_not = unavailable(name)
    if why_not is not None:
        return MethodRun(name, "not-applicable", note=why_not, seconds=time.perf_counter() - t0)
    method = get_method(name)
    try:
        for need in method.needs:
            if need == "atoms" and problem.atoms is None:
                raise NotApplicable("needs the composition: give --composition (or a CIF formula)")
            if need != "atoms":
                raise NotApplicable(NEEDS.get(need, need))
        method.check(problem, options)
        if method.execution == BATCHED:
            method.prepare(options)
    except NotApplicable as exc:
        return MethodRun(name, "not-applicable", note=str(exc), seconds=time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001  (one method failing does not stop the others)
        return MethodRun(name, "failed", note=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - t0)
    best = None
    n_starts = 1 if method.execution == BATCHED else max(1, int(starts))
    ch = prepared.setting
    for k in range(n_starts):
        if on_start is not None:
            on_start(name, k)
        try:
            if method.execution == BATCHED:
                out = list(method.phases_batch([problem], options))[0]
                if isinstance(out, Exception):  # a batched method's answer for a problem it cannot take
                    raise out
            else:
                out = method.phases(problem, seed + k, options)
        except NotApplicable as exc:
            return MethodRun(name, "not-applicable", note=str(exc), seconds=time.perf_counter() - t0)
        except (PhasingFailed, Exception) as exc:  # noqa: BLE001
            if best is None and k == n_starts - 1:
                return MethodRun(name, "failed", note=f"{type(exc).__name__}: {exc}", seed=seed + k,
                                 starts=k + 1, seconds=time.perf_counter() - t0)
            continue
        phases, note, details = _unpack(out)
        phases = np.asarray(phases, dtype=float)
        if phases.shape != (len(prepared.hkl),):
            return MethodRun(name, "failed", note=f"returned {phases.shape} phases for {len(prepared.hkl)} reflections",
                             seconds=time.perf_counter() - t0)
        fom = details.get("fom") if isinstance(details, dict) else None
        if fom is not None:  # a per-reflection figure of merit (solution.mtz's FOM column)
            fom = np.asarray(fom, dtype=float)
            if fom.shape != phases.shape:
                return MethodRun(name, "failed", note=f"returned {fom.shape} figures of merit for "
                                 f"{len(prepared.hkl)} reflections", seconds=time.perf_counter() - t0)
        figures = figures_of_merit(prepared.hkl_reference, prepared.e, phases, ch.cell_reference,
                                   ch.symops_reference)
        if best is None or figures["fom"] > best.figures["fom"]:
            best = MethodRun(name, "ok", phases=phases, figures=figures, note=note, seed=seed + k,
                             fom_per_reflection=fom)
    best.starts = n_starts
    best.seconds = time.perf_counter() - t0
    return best


def _unpack(out):
    if isinstance(out, dict):  # a method with stages (net): the last is its result
        out = out[list(out)[-1]]
    if isinstance(out, tuple):
        phases = out[0]
        note = str(out[1]) if len(out) > 1 else ""
        details = out[2] if len(out) > 2 else {}
        return phases, note, details
    return out, "", {}
