"""The demo behind ``make demo``: random structures → CIF files → dataset → summary.

Structures come from cctbx's ``random_structure`` (P-1 and P2₁/c, C/N/O atoms,
isotropic U), written as CIF, then built like any other CIF folder. Later issues
add realistic synthetic structures, training and baselines to this job.
"""

from __future__ import annotations

import sys
from pathlib import Path

from phasenet import _cctbx_first  # noqa: F401

DEMO_SPACE_GROUPS = ("P -1", "P 1 21/c 1")


def write_random_cifs(folder: str | Path, n: int, seed: int = 0) -> list[Path]:
    """Write ``n`` random structures (cctbx random_structure) as CIF files."""
    import random

    from cctbx.development import random_structure
    from cctbx import sgtbx

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        random.seed(seed * 100003 + i)
        import scitbx.random as srandom  # cctbx's own RNG drives random_structure too
        srandom.set_random_seed(seed * 100003 + i)
        sg = DEMO_SPACE_GROUPS[i % len(DEMO_SPACE_GROUPS)]
        n_atoms = 6 + (i * 7) % 20
        xs = random_structure.xray_structure(
            space_group_info=sgtbx.space_group_info(sg),
            elements=(["C"] * (n_atoms // 2) + ["N"] * (n_atoms // 4)
                      + ["O"] * (n_atoms - n_atoms // 2 - n_atoms // 4)),
            volume_per_atom=18.0, min_distance=1.2, u_iso=0.03, random_u_iso=True,
            random_u_iso_scale=0.02)
        p = folder / f"random_{i:04d}.cif"
        with open(p, "w") as fh:
            xs.as_cif_simple(out=fh, data_name=f"random_{i:04d}")
        paths.append(p)
    return paths


def run_demo(out: str | Path = "demo-output", n: int = 60, seed: int = 0) -> int:
    from phasenet.build import BuildOptions, build_dataset
    from phasenet.dataset import dataset_info, format_info

    out = Path(out)
    print(f"[demo] writing {n} random structures as CIF into {out / 'cif'}", flush=True)
    write_random_cifs(out / "cif", n, seed)
    h5 = out / "demo.h5"
    print(f"[demo] building {h5}", flush=True)
    summary = build_dataset([out / "cif"], h5, BuildOptions(normalisation="max"), overwrite=True,
                            progress=True)
    print(summary.format())
    print(format_info(dataset_info(h5)))
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(run_demo())
