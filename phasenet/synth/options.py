"""The options of ``phasenet synth`` (:class:`SynthOptions`), declared once: defaults,
checks, command-line flags and help; read from a recipe (``datasets/*.toml``) too.
The packing presets of ``--packing`` are :data:`PACKINGS`.

Imports only light modules (the molecule and packing tables: numpy and gemmi, no numba),
so that the command line can list the options without loading the generator.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from phasenet.options import Options, option
from phasenet.pipeline.options import check_dataset_options, dataset_option
from phasenet.synth.molecules import HEAVY_ELEMENTS, MoleculeOptions
from phasenet.synth.environment import PackingOptions
from phasenet.synth.packing import DEFAULT_SPACE_GROUPS, SPACE_GROUPS, space_group_spec


def parse_atoms(value):
    """``"8-50"`` (command line) -> (8, 50); a list of two integers (TOML) passes."""
    if not isinstance(value, str):
        return value
    try:
        lo, hi = (int(x) for x in value.split("-"))
    except ValueError:
        raise ValueError(f"--atoms must look like MIN-MAX (e.g. 8-50), got {value!r}") from None
    return (lo, hi)


def parse_elements(value):
    """``"Br,I"`` (command line) -> ("Br", "I"); a list (TOML) passes."""
    if not isinstance(value, str):
        return value
    return tuple(e.strip() for e in value.split(",") if e.strip())


@dataclass(frozen=True)
class SynthOptions(Options):
    """Everything that decides a synthetic dataset (plus workers, how it runs)."""

    COMMAND = "synth"

    seed: int = option(0, "--seed", type=int, help="generation and split seed (default %(default)s)")
    space_groups: tuple[str, ...] = option(
        DEFAULT_SPACE_GROUPS, "--space-group", action="append", metavar="SG",
        help=f"space group, repeatable (default P-1 and P21/c; known: {', '.join(SPACE_GROUPS)})")
    # non-H atoms in the asymmetric unit
    atoms: tuple[int, int] = option((8, 50), "--atoms", metavar="MIN-MAX", parse=parse_atoms,
                                    show=lambda v: f"{v[0]}-{v[1]}",
                                    help="non-H atoms in the asymmetric unit (default %(default)s)")
    max_edge: float = option(15.0, "--max-edge", type=float,
                             help="longest cell edge, Å (default %(default)s)")
    u_iso: tuple[float, float] = option((0.005, 0.06), "--u-iso", type=float, nargs=2, metavar=("LO", "HI"),
                                        show=list, help="U_iso range, Å² (default %(default)s)")
    heavy_fraction: float = option(
        0.0, "--heavy-fraction", type=float,
        help="expected fraction of non-H atoms from --heavy-elements (default %(default)s)")
    heavy_elements: tuple[str, ...] = option(HEAVY_ELEMENTS, "--heavy-elements", parse=parse_elements,
                                             show=",".join,
                                             help="comma-separated heavy elements (default %(default)s)")
    # Å³ per non-H atom: squeezing floor (LO), accepted range (LO-HI)
    volume_per_atom: tuple[float, float] = (15.0, 22.0)
    # Å³ per non-H atom of the cell the molecule grows in (drawn uniformly per structure)
    grow_volume_per_atom: tuple[float, float] = (16.0, 30.0)
    # grow-and-squeeze rounds: the grown crystal is squeezed (rigid molecules: the cell
    # relaxed with them under pressure); with 2+ growth goes on in
    # the smaller cell and is squeezed again, ... 0: growth only. Presets: PACKINGS
    # ("dense", the default; "fast").
    compress_rounds: int = 1
    contact_tolerance: float = 0.2  # Å below the sum of van der Waals radii
    h_contact_tolerance: float = 0.3
    max_molecules: int = 4  # molecules in the asymmetric unit (the extra ones fill holes)
    max_attempts: int = 12
    # dataset (as phasenet build)
    max_index: int = dataset_option("max_index")
    r2_max: int | None = dataset_option("r2_max")
    normalisation: str = dataset_option("normalisation")
    test_fraction: float = dataset_option("test_fraction")
    compression: str | None = dataset_option("compression")
    chunk_size: int = dataset_option("chunk_size", unit="structures")
    workers: int | None = dataset_option("workers")
    file_timeout: float | None = dataset_option("file_timeout", unit="structures")
    max_atoms: int = dataset_option("max_atoms")

    def __post_init__(self):
        object.__setattr__(self, "space_groups", tuple(space_group_spec(g).name for g in self.space_groups))
        if not self.space_groups:
            raise ValueError("at least one space group is needed")
        lo, hi = self.atoms
        if not 1 <= lo <= hi:
            raise ValueError(f"atoms must be MIN-MAX with 1 <= MIN <= MAX, got {lo}-{hi}")
        ulo, uhi = self.u_iso
        if not 0 < ulo <= uhi:
            raise ValueError(f"u_iso must be LO HI with 0 < LO <= HI, got {ulo} {uhi}")
        for key in ("volume_per_atom", "grow_volume_per_atom"):
            vlo, vhi = getattr(self, key)
            if not 0 < vlo < vhi:
                raise ValueError(f"{key} must be LO < HI, got {vlo} {vhi}")
        if self.max_edge <= 5.0:
            raise ValueError(f"max_edge must be > 5 Å, got {self.max_edge}")
        if self.compress_rounds < 0:
            raise ValueError(f"compress_rounds must be >= 0, got {self.compress_rounds}")
        if self.max_molecules < 1:
            raise ValueError(f"max_molecules must be >= 1, got {self.max_molecules}")
        check_dataset_options(self)
        self.molecule_options()  # validates heavy options

    def molecule_options(self) -> MoleculeOptions:
        return MoleculeOptions(heavy_fraction=self.heavy_fraction,
                               heavy_elements=tuple(self.heavy_elements))

    def packing_options(self) -> PackingOptions:
        return PackingOptions(contact_tolerance=self.contact_tolerance,
                              h_contact_tolerance=self.h_contact_tolerance)

    def result_options(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("workers")
        d.pop("file_timeout")
        return d

    def build_options(self) -> dict:
        """The equivalent ``phasenet build`` options (recorded as ``build_options``)."""
        from phasenet.pipeline.options import BuildOptions

        return BuildOptions(max_index=self.max_index, r2_max=self.r2_max,
                            normalisation=self.normalisation, test_fraction=self.test_fraction,
                            seed=self.seed, compression=self.compression,
                            chunk_size=self.chunk_size, max_atoms=self.max_atoms).result_options()


#: Packing presets (``phasenet synth --packing``): ``SynthOptions(**PACKINGS[name], ...)``.
#: "dense" (the defaults): grow in a cell of 16-30 Å³ per non-H atom, squeeze once
#: (variable-cell relaxation under pressure), accept 15-22 Å³
#: (mean ~18 Å³, like real organic crystals). "fast": growth only, accept 16-30 Å³
#: (mean ~25 Å³, loose).
DENSE = {"compress_rounds": 1, "volume_per_atom": (15.0, 22.0), "grow_volume_per_atom": (16.0, 30.0)}
FAST = {"compress_rounds": 0, "volume_per_atom": (16.0, 30.0), "grow_volume_per_atom": (16.0, 30.0)}
PACKINGS = {"dense": DENSE, "fast": FAST}

#: The keys of a synth recipe besides the options (name -> type): the number of
#: structures, the output file, a packing preset (instead of its three options) and a
#: folder for CIF copies.
SYNTH_RECIPE_KEYS = {"n": "int", "output": "str", "packing": "str", "cif_dir": "str"}
