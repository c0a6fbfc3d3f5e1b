"""Phasing methods as plug-ins: the protocol a method follows and the registry of their names.

A phasing method turns the amplitudes of a :class:`~phasenet.evaluation.problem.PhasingProblem`
into phases. Each method is one module (``phasenet/baselines/random.py``, ...) with a class
that follows :class:`PhasingMethod`, and one line in the table at the end of this module
that registers its name. ``phasenet evaluate --method NAME`` and
:func:`phasenet.evaluation.evaluate.evaluate_dataset` find methods here, by name.

Names are registered lazily, as ``"module:attribute"`` strings that are imported on first
use (:func:`get_method`), so listing the methods (:func:`method_names`, the command line's
checks) imports no smtbx, Keras or TensorFlow. A *family* (``model:RUN_DIR``) is a prefix
whose factory takes the text after the colon.

How to add a method, with a worked example: ``docs/adding-a-phasing-method.md``.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Callable, ClassVar, Protocol, Union

if TYPE_CHECKING:
    import numpy as np

    from phasenet.evaluation.evaluate import EvaluateOptions
    from phasenet.evaluation.problem import PhasingProblem

#: How the evaluation runs a method. ``FORKED``: one task per (structure, d_min), each in a
#: forked worker process killed after ``EvaluateOptions.timeout`` (``workers`` at a time).
#: ``BATCHED``: in the main process, all structures in one call (TensorFlow/JAX and fork do
#: not mix; a network predicts a batch at once).
FORKED = "forked"
BATCHED = "batched"

#: What a method may read of a problem besides hkl, amplitude, cell and symmetry, and the
#: reason given when that part is missing. A method sees only what it needs
#: (:func:`problem_for`): true phases NaN, atoms None (or with ``"atoms"``, the
#: composition only: positions and displacements NaN, occupancies as atoms in the cell /
#: number of operators, so that special positions count with their multiplicity). The
#: dataset's stored ``intensity`` (the study's model input, scaled against the calculated
#: intensities by default) is never shown to a method, nor ``intensity_calc`` when the
#: amplitudes are measured ones.
NEEDS = {
    "atoms": "no composition (atomic model) stored",
    "phase_true": "no true phases stored",
}


class NotApplicable(Exception):
    """The method does not apply to this structure (the message says why)."""


class PhasingFailed(Exception):
    """The method cannot phase; the message alone is the row's reason (no exception type)."""


class UnknownMethod(ValueError):
    """A name that no registered phasing method answers to (the message lists the registered ones)."""


class PhasingMethod(Protocol):
    """What the evaluation needs of a phasing method.

    Subclass it to inherit the defaults (``needs`` empty, ``execution`` forked, ``check``
    accepting every problem). ``options`` is the whole
    :class:`~phasenet.evaluation.evaluate.EvaluateOptions`; a method reads its own part
    (``options.charge_flipping``, ``options.heavy_atom``).
    """

    #: the registered name, as in ``--method NAME`` and the ``method`` column of the rows
    name: str
    #: parts of the problem the method reads beyond amplitudes, cell and symmetry, keys of
    #: :data:`NEEDS`: ``"atoms"`` (the composition; never the positions), ``"phase_true"``
    #: (only the ``true`` sanity row)
    needs: ClassVar[frozenset[str]] = frozenset()
    #: :data:`FORKED` or :data:`BATCHED`
    execution: ClassVar[str] = FORKED

    def check(self, problem: PhasingProblem, options: EvaluateOptions) -> None:
        """Raise :class:`NotApplicable` (with the reason) where the method does not apply."""

    def phases(self, problem: PhasingProblem, seed: int, options: EvaluateOptions) -> tuple:
        """Forked methods: (phases in radians on ``problem.hkl``, a note for the row's reason),
        or (phases, note, details): ``details`` (a dict) goes to :meth:`score_details`.

        ``problem`` is already truncated to the task's d_min; ``seed`` is the task's own
        (:func:`phasenet.evaluation.evaluate.task_seed`). Raise :class:`NotApplicable` where
        the method turns out not to apply; any other exception makes the row ``failed``.
        """
        raise NotImplementedError(f"{type(self).__name__} ({self.execution}) has no phases()")

    def score_details(self, problem: PhasingProblem, details: dict) -> dict:
        """Forked methods (optional): extra row columns scored against the truth, from the
        ``details`` that :meth:`phases` returned. ``problem`` is the full one (true positions
        included), as the evaluation scores it; e.g. the heavy-atom method's ``heavy_found``."""
        return {}

    def prepare(self, options: EvaluateOptions) -> None:
        """Batched methods: once per evaluation, before any problem (load a model, ...).

        Raise :class:`NotApplicable` to make all rows not applicable, anything else to fail them.
        """

    def phases_batch(self, problems: list[PhasingProblem], options: EvaluateOptions) -> list:
        """Batched methods: the phases of N problems, all truncated to one d_min exactly as a
        forked method's (the same reflections, nothing beyond d_min), one entry per problem:
        an array of ``len(problem)`` phases (NaN where the method gives none: those count
        against it) or a tuple (phases, note for the row's reason)."""
        raise NotImplementedError(f"{type(self).__name__} ({self.execution}) has no phases_batch()")


Factory = Union[str, Callable[..., PhasingMethod]]

_methods: dict[str, Factory] = {}  # name -> factory() -> method
_families: dict[str, tuple[str, Factory]] = {}  # prefix -> (ARGUMENT placeholder, factory(argument) -> method)


def register_method(name: str, factory: Factory, *, argument: str | None = None, replace: bool = False) -> None:
    """Make ``name`` a phasing method.

    ``factory`` is a callable returning the method (usually its class), or a
    ``"module:attribute"`` string naming one, imported only when the method is first used.
    With ``argument`` (e.g. ``"RUN_DIR"``), ``name`` is a family: ``name:ARG`` is the method
    ``factory(ARG)``. A name may be both a method and a family (``net`` and ``net:RUN_DIR``).
    A name registered already (as the same kind) raises ValueError unless ``replace``.
    """
    if not isinstance(name, str) or not name or any(c.isspace() for c in name) or ":" in name:
        raise ValueError(f"phasing method name must be non-empty text without spaces or ':', got {name!r}")
    if isinstance(factory, str) and (factory.count(":") != 1 or not all(factory.split(":"))):
        raise ValueError(f"phasing method {name!r}: factory must be 'module:attribute' or a callable, "
                         f"got {factory!r}")
    if not isinstance(factory, str) and not callable(factory):
        raise ValueError(f"phasing method {name!r}: factory must be 'module:attribute' or a callable, "
                         f"got {factory!r}")
    table = _methods if argument is None else _families
    if not replace and name in table:
        raise ValueError(f"phasing method {name!r} is registered already (pass replace=True to replace it)")
    table.pop(name, None)
    if argument is None:
        _methods[name] = factory
    else:
        _families[name] = (argument, factory)


def unregister_method(name: str) -> None:
    """Forget a method or family (as registered: ``"model"`` for ``model:RUN_DIR``)."""
    if _methods.pop(name, None) is None and _families.pop(name, None) is None:
        raise UnknownMethod(_unknown(name))


def method_names() -> tuple[str, ...]:
    """The registered names in registration order, families as ``prefix:ARGUMENT``. Imports nothing."""
    return tuple(list(_methods) + [f"{p}:{arg}" for p, (arg, _) in _families.items()])


def _unknown(name) -> str:
    return f"Unknown phasing method {name!r}; registered methods: {', '.join(method_names())}"


def _lookup(name: str) -> tuple[Factory, tuple]:
    """(factory, its arguments) for a method name, without importing anything."""
    if not isinstance(name, str):
        raise UnknownMethod(_unknown(name))
    if name in _methods:
        return _methods[name], ()
    prefix, colon, arg = name.partition(":")
    if colon and prefix in _families:
        placeholder = _families[prefix][0]
        if not arg.strip():
            raise UnknownMethod(f"Phasing method {name!r} needs a {placeholder}: {prefix}:{placeholder}")
        return _families[prefix][1], (arg,)
    raise UnknownMethod(_unknown(name))


def check_method_name(name: str) -> None:
    """Raise :class:`UnknownMethod` (listing the registered names) unless ``name`` is registered.
    Imports nothing."""
    _lookup(name)


def _load(name: str, spec: str):
    module, _, attribute = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"phasing method {name!r}: cannot load {spec} ({type(exc).__name__}: {exc})") from exc


def get_method(name: str) -> PhasingMethod:
    """The method registered as ``name`` (its module imported now); UnknownMethod otherwise."""
    factory, args = _lookup(name)
    if isinstance(factory, str):
        factory = _load(name, factory)
    method = factory(*args)
    if getattr(method, "name", None) != name:
        raise ValueError(f"phasing method registered as {name!r} calls itself {getattr(method, 'name', None)!r}")
    if getattr(method, "execution", None) not in (FORKED, BATCHED):
        raise ValueError(f"phasing method {name!r}: execution must be {FORKED!r} or {BATCHED!r}, "
                         f"got {getattr(method, 'execution', None)!r}")
    unknown = set(getattr(method, "needs", ())) - set(NEEDS)
    if unknown:
        raise ValueError(f"phasing method {name!r} needs {sorted(unknown)}; known needs: {', '.join(NEEDS)}")
    return method


def problem_for(method: PhasingMethod, problem: PhasingProblem, options: EvaluateOptions) -> PhasingProblem:
    """``problem`` as ``method`` may see it (see :data:`NEEDS`).

    Raises :class:`NotApplicable` if a part the method needs is missing or ``method.check``
    says so.
    """
    import numpy as np

    needs = method.needs
    for need in needs:
        if getattr(problem, need, None) is None:
            raise NotApplicable(NEEDS[need])
    atoms = problem.atoms
    if "atoms" not in needs:
        atoms = None
    elif atoms is not None:  # the composition: elements, charges, occupancies; never the positions
        # as formula × Z gives it: the occupancy becomes atoms in the cell / operators, so a
        # site on a special position counts with its multiplicity (half, on an inversion
        # centre of P2₁/c); which special position it is stays hidden
        from phasenet.physics.structure_factors import expand_to_unit_cell
        from phasenet.symmetry import symmetry

        try:
            mult = np.bincount(expand_to_unit_cell(problem.structure()).asu_index, minlength=len(atoms))
            occupancy = atoms.occupancy * mult / len(symmetry(problem.symops).rotations)
        except Exception:  # noqa: BLE001  (positions unusable: the rows as listed)
            occupancy = atoms.occupancy
        atoms = dataclasses.replace(atoms, occupancy=occupancy, frac=np.full_like(atoms.frac, np.nan, dtype=float),
                         u_iso=np.full_like(atoms.u_iso, np.nan, dtype=float),
                         u_aniso=np.full_like(atoms.u_aniso, np.nan, dtype=float))
    hidden = {}
    if "phase_true" not in needs:  # the true phases, and the signs derived from them
        hidden.update(phase_calc=np.full(len(problem), np.nan), sign=None)
    hidden.update(intensity=None)  # the dataset's model input (linreg-scaled with the answer)
    if problem.amplitude_source == "obs":  # measured amplitudes: the calculated ones are the answer
        hidden.update(intensity_calc=None)
    seen = dataclasses.replace(problem, atoms=atoms,
                               reflections=dataclasses.replace(problem.reflections, **hidden))
    method.check(seen, options)
    return seen


# ---------------------------------------------------------------------------
# the built-in methods (one line each; modules imported on first use)

register_method("true", "phasenet.baselines.true:TruePhases")
register_method("random", "phasenet.baselines.random:RandomPhases")
register_method("patterson", "phasenet.baselines.patterson:HeavyAtomMethod")
register_method("charge-flipping", "phasenet.baselines.charge_flipping:ChargeFlippingMethod")
register_method("sg-flipping", "phasenet.baselines.polish:SpaceGroupFlippingMethod")
register_method("model", "phasenet.baselines.model:ModelMethod", argument="RUN_DIR")
register_method("net", "phasenet.baselines.network:NetworkMethod")
register_method("net", "phasenet.baselines.network:NetworkMethod", argument="RUN_DIR")
