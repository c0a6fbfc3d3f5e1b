"""The options of ``phasenet build`` (:class:`BuildOptions`), declared once: defaults,
checks, command-line flags and help; read from a recipe (``datasets/*.toml``) too.

:func:`dataset_option` declares the options every dataset writer shares (build and
synth). Light on purpose: the command line reads it to list the options.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from phasenet.io.cif import DEFAULT_MAX_ATOMS, DEFAULT_U_ISO
from phasenet.options import Options, option
from phasenet.physics.normalisation import METHODS, check_method
from phasenet.reflections import DEFAULT_MAX_INDEX, canonical_hkl


def parse_compression(value):
    """``"none"`` (command line, TOML) -> None."""
    return None if value == "none" else value


def parse_timeout(value):
    """``0`` (or None) -> None: no time limit."""
    return None if value in (None, 0, 0.0) else float(value)


def dataset_option(name: str, unit: str = "files") -> dataclasses.Field:
    """A field of the options every dataset writer shares; ``unit``: what a part holds."""
    if name == "max_index":
        return option(DEFAULT_MAX_INDEX, "--max-index", type=int,
                      help="|h|,|k|,|l| <= this (default %(default)s)")
    if name == "r2_max":
        return option(None, "--r2-max", type=int,
                      help="keep h²+k²+l² < R2 (50 gives the study's 709 reflections; default: no cut)")
    if name == "normalisation":
        return option("linreg", "--normalisation", "--normalization", choices=METHODS,
                      help="model input normalisation (default %(default)s)")
    if name == "test_fraction":
        return option(1.0 / 7.0, "--test-fraction", type=float,  # the study's 1000 of 7000
                      help="fraction of structures in the test split (default 1/7, the study's 1000/7000)")
    if name == "workers":
        return option(None, "--workers", type=int, help="worker processes (default: all cores)")
    if name == "chunk_size":
        return option(64, "--chunk-size", type=int,
                      help=f"{unit} per part, the unit of resumption (default %(default)s)")
    if name == "compression":
        return option("lzf", "--compression", choices=["lzf", "gzip", "none"], parse=parse_compression,
                      help="HDF5 compression (default lzf)")
    if name == "file_timeout":  # how it runs, not what it gives (not recorded)
        return option(300.0, "--file-timeout", type=float, metavar="SECONDS", parse=parse_timeout,
                      help=f"seconds one of the {unit} may take; past it, it is a failure of kind "
                      "timeout (its worker is killed and replaced) and the run goes on "
                      "(0: no limit; default %(default)s)")
    if name == "max_atoms":
        return option(DEFAULT_MAX_ATOMS, "--max-atoms", type=int,
                      help="most atoms in a unit cell (atoms listed x symmetry operators); more is "
                      "a failure of kind too-many-atoms, checked before anything is computed "
                      "(default %(default)s)")
    raise KeyError(name)


def check_dataset_options(o) -> None:
    """The checks of the shared dataset options (``o``: BuildOptions or SynthOptions)."""
    check_method(o.normalisation)
    if not 0.0 <= o.test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {o.test_fraction}")
    if o.chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    if o.compression not in (None, "lzf", "gzip"):
        raise ValueError(f"compression must be lzf, gzip or None, got {o.compression!r}")
    if o.file_timeout is not None and not o.file_timeout > 0:
        raise ValueError(f"file_timeout must be > 0 seconds (or None: no limit), got {o.file_timeout}")
    if o.max_atoms < 1:
        raise ValueError(f"max_atoms must be >= 1, got {o.max_atoms}")
    canonical_hkl(o.max_index, o.r2_max)  # validates both


@dataclass(frozen=True)
class BuildOptions(Options):
    """Everything that decides a build's result (plus how it runs: workers, chunk size)."""

    COMMAND = "build"

    max_index: int = dataset_option("max_index")
    r2_max: int | None = dataset_option("r2_max")
    normalisation: str = dataset_option("normalisation")
    default_u: float = option(DEFAULT_U_ISO, "--default-u", type=float,
                              help="U_iso (Å²) for atoms without displacement parameters (default %(default)s)")
    test_fraction: float = dataset_option("test_fraction")
    seed: int = option(0, "--seed", type=int, help="seed of the train/test split (default %(default)s)")
    read_observations: bool = option(True, "--no-observations", action="store_false",
                                     help="ignore measured reflections")
    compression: str | None = dataset_option("compression")
    workers: int | None = dataset_option("workers")  # None: all cores
    chunk_size: int = dataset_option("chunk_size", unit="files")
    file_timeout: float | None = dataset_option("file_timeout", unit="files")
    max_atoms: int = dataset_option("max_atoms")

    def __post_init__(self):
        check_dataset_options(self)
        if self.default_u <= 0:
            raise ValueError(f"default_u must be > 0 Å², got {self.default_u}")

    def result_options(self) -> dict:
        """The options that decide the result (recorded in the dataset)."""
        d = dataclasses.asdict(self)
        d.pop("workers")
        d.pop("file_timeout")
        return d


#: The keys of a build recipe besides the options (name -> type).
BUILD_RECIPE_KEYS = {"inputs": "tuple[str, ...]", "output": "str"}
