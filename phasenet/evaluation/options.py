"""The options of ``phasenet evaluate`` (:class:`EvaluateOptions`), declared once:
defaults, checks, command-line flags and help; readable from TOML.

Light on purpose (the command line reads it to list the options): the baselines'
own options (charge flipping, heavy-atom Patterson; cctbx) are made when an
``EvaluateOptions`` is, not when this module is imported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from phasenet.baselines.registry import UnknownMethod, check_method_name, method_names
from phasenet.evaluation.metrics import SOLVED_CC
from phasenet.options import Options, flag, option

if TYPE_CHECKING:  # made on first use (cctbx): see default_charge_flipping
    from phasenet.baselines.charge_flipping import ChargeFlippingOptions
    from phasenet.baselines.network import NetworkOptions
    from phasenet.baselines.patterson import HeavyAtomOptions

BASE_METHODS = ("true", "random", "patterson", "charge-flipping")
DEFAULT_D_MIN = (0.8, 1.0, 1.2, 1.5, 2.0)


class EvaluationError(ValueError):
    """Bad input to the evaluation as a whole (dataset, options)."""


def default_charge_flipping():
    from phasenet.baselines.charge_flipping import ChargeFlippingOptions

    return ChargeFlippingOptions()


def default_network():
    from phasenet.baselines.network import NetworkOptions

    return NetworkOptions()


def default_heavy_atom():
    from phasenet.baselines.patterson import HeavyAtomOptions

    return HeavyAtomOptions()


@dataclass(frozen=True)
class EvaluateOptions(Options):
    COMMAND = "evaluate"

    methods: tuple[str, ...] = option(
        BASE_METHODS, "--method", action="append", metavar="METHOD",
        help=f"repeatable, a registered phasing method: {', '.join(method_names())} "
        f"(default: {', '.join(BASE_METHODS)})")
    d_min: tuple[float, ...] = option(
        DEFAULT_D_MIN, "--d-min", action="append", type=float, metavar="Å",
        help=f"repeatable resolution cut (default: {' '.join(map(str, DEFAULT_D_MIN))})")
    # first N structures (after ``split``)
    limit: int | None = option(None, "--limit", type=int, help="first N structures only")
    # 'train' / 'test' / None (all)
    split: str | None = option(None, "--split", choices=["train", "test"], help="only this split")
    workers: int = option(1, "--workers", type=int, help="worker processes (default %(default)s)")
    # seconds per (structure, method, d_min), enforced by killing the worker
    timeout: float = option(300.0, "--timeout", type=float,
                            help="seconds per structure, method and d_min; overruns are killed and "
                            "reported (default %(default)s)")
    seed: int = option(0, "--seed", type=int, help="seed of random phases and charge flipping")
    # 'calc' (exact) or 'obs' (measured, where the dataset has them)
    amplitudes: str = option("calc", "--amplitudes", choices=["calc", "obs"],
                             help="exact (calc) or measured (obs) amplitudes (default %(default)s)")
    reflections: str = option("dataset", "--reflections", choices=["dataset", "sphere"],
                              help="the dataset's reflections, or a complete sphere recomputed from "
                              "the atoms (default %(default)s)")
    atom_recovery: bool = option(True, "--no-atom-recovery", action="store_false",
                                 help="skip the map-peak atom metric (faster)")
    solved_cc: float = SOLVED_CC
    charge_flipping: ChargeFlippingOptions = option(
        default_factory=default_charge_flipping, nested={
            "time_limit": flag("--cf-time-limit", type=float,
                               help="charge flipping: seconds per run (default %(default)s)"),
            "max_attempts": flag("--cf-attempts", type=int,
                                 help="charge flipping: attempts to reach a phase transition "
                                 "(default %(default)s)")})
    heavy_atom: HeavyAtomOptions = option(
        default_factory=default_heavy_atom, nested={
            "recycling.cycles": flag("--ha-recycling-cycles", type=int,
                                     help="heavy-atom method: E-Fourier recycling cycles, 0 = heavy-atom "
                                     "phases as they come (default %(default)s)")})
    network: NetworkOptions = option(
        default_factory=default_network, nested={
            "starts": flag("--net-starts", type=int,
                           help="net: runs per structure, the first from no phases, the others from "
                           "random signs (default %(default)s)"),
            "cycles": flag("--net-cycles", type=int,
                           help="net: recycling cycles per run (default %(default)s)"),
            "polish_starts": flag("--net-polish-starts", type=int,
                                  help="net: the best runs polished by charge flipping, 0 = no polish "
                                  "(default %(default)s)")})

    def __post_init__(self):
        if not self.methods:
            raise EvaluationError("no methods given")
        for m in self.methods:
            try:
                check_method_name(m)
            except UnknownMethod as exc:
                raise EvaluationError(str(exc)) from None
        if len(set(self.methods)) != len(self.methods):
            raise EvaluationError(f"methods repeated: {list(self.methods)}")
        if not self.d_min or any(not (d > 0) for d in self.d_min):
            raise EvaluationError(f"d_min values must be positive, got {list(self.d_min)}")
        if self.limit is not None and self.limit < 1:
            raise EvaluationError(f"limit must be >= 1, got {self.limit}")
        if self.workers < 1:
            raise EvaluationError(f"workers must be >= 1, got {self.workers}")
        if not self.timeout > 0:
            raise EvaluationError(f"timeout must be positive, got {self.timeout}")
        if self.amplitudes not in ("calc", "obs"):
            raise EvaluationError(f"amplitudes must be 'calc' or 'obs', got {self.amplitudes!r}")
        if self.reflections not in ("dataset", "sphere"):
            raise EvaluationError(f"reflections must be 'dataset' or 'sphere', got {self.reflections!r}")
        if self.split not in (None, "train", "test"):
            raise EvaluationError(f"split must be 'train', 'test' or None, got {self.split!r}")
        if self.reflections == "sphere" and self.amplitudes == "obs":
            raise EvaluationError("reflections='sphere' recomputes exact amplitudes from the atoms and has no "
                                  "measured ones: use amplitudes='calc' with it, or reflections='dataset' with "
                                  "amplitudes='obs' (--reflections sphere cannot go with --amplitudes obs)")

    def as_dict(self) -> dict:
        return asdict(self)
