"""The picture of docs/solving.md: a section of the map ``phasenet solve`` wrote for a real
P2₁/n data set, with its peaks and the published atoms (moved to the solution's origin).

    python benchmarks/solve_example_figure.py [OUT_DIR]   # writes docs/images/solve-section.png
"""

import phasenet  # noqa: F401  (first: cctbx import order)

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CIF = REPO.parent / "shared" / "data" / "real" / "cif" / "ccdc-bestcsp_MCE-PNA_manual.cif"


def main(out_dir="/tmp/solve-example"):
    import gemmi
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from phasenet.evaluation.metrics import score_phases
    from phasenet.physics.structure_factors import structure_factors
    from phasenet.solving.solver import solve_to
    from phasenet.symmetry import symmetry
    from tests.conftest import first_structure

    sol, files = solve_to(CIF, out_dir, overwrite=True)
    s = first_structure(CIF)
    f_true = structure_factors(s, sol.hkl, dtype=np.float64)
    score, _ = score_phases(sol.hkl, sol.amplitude, np.angle(f_true), sol.phases, s.symops)
    rho = np.array(gemmi.read_ccp4_map(files["map.ccp4"]).grid, copy=False)
    peaks = sol.peaks[["x", "y", "z"]].to_numpy()
    # the published non-H atoms, all images, moved to the solution's origin
    sym = symmetry(s.symops)
    true = s.atoms.frac[~np.isin(s.atoms.element, ["H", "D"])]
    imgs = (np.einsum("oij,nj->noi", sym.rotations, true) + sym.translations[None]).reshape(-1, 3)
    if score.inverted:
        imgs = -imgs
    imgs = (imgs + np.array(score.origin_shift)) % 1.0
    z0 = float(peaks[0, 2])  # the section through the strongest peak
    k = int(round(z0 * rho.shape[2])) % rho.shape[2]
    section = rho[:, :, k].T
    near = lambda xyz: np.abs(((xyz[:, 2] - z0 + 0.5) % 1.0) - 0.5) * s.cell[2] < 0.7  # noqa: E731
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    ax.imshow(section, origin="lower", extent=(0, 1, 0, 1), cmap="Greys", aspect=s.cell[1] / s.cell[0])
    p, t = peaks[near(peaks)], imgs[near(imgs)]
    ax.scatter(t[:, 0], t[:, 1], s=90, facecolors="none", edgecolors="tab:red", label="published atoms (±0.7 Å)")
    ax.scatter(p[:, 0], p[:, 1], s=18, c="tab:blue", label="solution peaks (±0.7 Å)")
    ax.set_xlabel("x (fractional)")
    ax.set_ylabel("y (fractional)")
    ax.set_title(f"{CIF.name}: map section z = {z0:.3f}\n"
                 f"charge flipping, map CC {score.map_cc:.2f} at the best origin")
    ax.legend(loc="upper right", fontsize=8)
    out = REPO / "docs" / "images" / "solve-section.png"
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"wrote {out}; map CC {score.map_cc:.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
