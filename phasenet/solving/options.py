"""The options of ``phasenet solve`` (:class:`SolveOptions`), declared once: defaults,
checks, command-line flags and help. Light: imports only the standard library and
phasenet.options (the command line reads it to list the options)."""

from __future__ import annotations

from dataclasses import dataclass

from phasenet.options import Options, OptionsError, option


@dataclass(frozen=True)
class SolveOptions(Options):
    COMMAND = "solve"

    methods: tuple[str, ...] = option(
        (), "--method", action="append", metavar="METHOD",
        help="repeatable, a registered phasing method (charge-flipping, patterson, net, net:RUN_DIR, "
        "model:RUN_DIR); each is run and the best by figure of merit kept (default: the rule in "
        "docs/commands/solve.md: charge-flipping to d <= 1.2 A, else net and/or patterson)")
    d_min: float | None = option(None, "--d-min", type=float, metavar="D",
                                 help="truncate the data at D Angstrom first (default: all)")
    seed: int = option(0, "--seed", type=int, help="seed of the first start (default %(default)s)")
    starts: int = option(1, "--starts", type=int,
                         help="starts per method (seeds seed, seed+1, ...), best by figure of merit kept "
                         "(default %(default)s)")
    cell: str | None = option(None, "--cell", metavar="'A B C AL BE GA'",
                              help="unit cell (SHELX .hkl input; overrides a file's)")
    space_group: str | None = option(None, "--space-group", metavar="SG",
                                     help="space group: H-M or Hall symbol or number (SHELX .hkl input; "
                                     "overrides a file's)")
    composition: str | None = option(None, "--composition", metavar="FORMULA",
                                     help="formula unit, e.g. 'C12 H10 N2 O'; times --z per cell")
    z: float | None = option(None, "--z", type=float,
                             help="formula units per cell (default: the number of general positions)")
    ins: str | None = option(None, "--ins", metavar="FILE",
                             help="SHELX .ins/.res giving CELL, LATT/SYMM, SFAC/UNIT for a .hkl input")
    hklf: int = option(4, "--hklf", type=int, choices=[3, 4],
                       help="SHELX .hkl: 4 intensities, 3 amplitudes (default %(default)s)")
    mtz_column: str | None = option(None, "--mtz-column", metavar="LABEL",
                                    help="MTZ: intensity (J) or amplitude (F) column (default: the first J, else F)")
    mtz_sigma: str | None = option(None, "--mtz-sigma", metavar="LABEL",
                                   help="MTZ: its sigma column (default: the Q column after it)")
    overwrite: bool = option(False, "--overwrite", action="store_true",
                             help="replace an existing, non-empty OUT_DIR")

    def __post_init__(self):
        if self.d_min is not None and not self.d_min > 0:
            raise OptionsError(f"d_min must be positive, got {self.d_min}")
        if self.starts < 1:
            raise OptionsError(f"starts must be >= 1, got {self.starts}")
        if len(set(self.methods)) != len(self.methods):
            raise OptionsError(f"methods repeated: {list(self.methods)}")

    def solve_kwargs(self) -> dict:
        """Keyword arguments of :func:`phasenet.solving.solver.solve_to`."""
        out = {f: getattr(self, f) for f in ("d_min", "seed", "starts", "cell", "space_group", "composition",
                                            "z", "ins", "hklf", "mtz_column", "mtz_sigma", "overwrite")}
        out["methods"] = list(self.methods) or None
        return out
