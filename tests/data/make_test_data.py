"""Make the small CIF and hkl files of tests/data (deterministic; re-run to regenerate).

    python tests/data/make_test_data.py            # rewrites tests/data/*.cif, *.hkl
    python tests/data/make_test_data.py --out DIR  # writes them into DIR instead

Independent of phasenet on purpose: atoms are placed with numpy's seeded generator
(``numpy.random.default_rng``, whose stream numpy keeps stable), symmetry and
intensities come from cctbx (direct summation with the IT92 form factors), and the
files are written from plain text templates. The tests read them back with phasenet
and compare with cctbx/iotbx's own reading. See README.md for what each file is for.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cctbx import adptbx, crystal, miller, sgtbx, uctbx, xray
from cctbx.array_family import flex

HERE = Path(__file__).resolve().parent
MIN_DISTANCE = 1.4  # Å between any two atoms of the crystal (images included)


@dataclass
class Atom:
    label: str
    type_symbol: str  # as written in the CIF: 'C', 'Na1+', 'O2-'
    site: tuple[float, float, float]
    u_iso: float | None = None  # isotropic U, or
    u_cif: tuple[float, ...] | None = None  # U11 U22 U33 U12 U13 U23 (CIF convention)
    occupancy: float = 1.0


@dataclass
class Model:
    block: str
    symbol: str  # cctbx space-group symbol
    cell: tuple[float, ...]
    atoms: list[Atom] = field(default_factory=list)
    old_tags: bool = False  # _symmetry_* tags instead of _space_group_*

    @property
    def symmetry(self) -> crystal.symmetry:
        return crystal.symmetry(unit_cell=self.cell, space_group_symbol=self.symbol)


# ------------------------------------------------------------------ placing atoms


def _images(cs: crystal.symmetry, site) -> np.ndarray:
    return np.array([op * site for op in cs.space_group().all_ops()])


def _min_distance(cs, site, others) -> float:
    """Shortest distance (Å) from ``site`` to its own other images and to every image of
    ``others`` (lattice translations included)."""
    orth = np.array(cs.unit_cell().orthogonalization_matrix()).reshape(3, 3)
    own = _images(cs, site)[1:]
    pts = [own] + [_images(cs, o) for o in others]
    pts = np.concatenate([p for p in pts if len(p)]) if any(len(p) for p in pts) else np.zeros((0, 3))
    if not len(pts):
        return math.inf
    d = pts - np.asarray(site)
    d -= np.round(d)
    return float(np.sqrt(((d @ orth.T) ** 2).sum(axis=1)).min())


def _random_u_cif(uc: uctbx.unit_cell, rng, u_mean: float) -> tuple[float, ...]:
    """A positive-definite U (CIF convention) with eigenvalues around ``u_mean``, in a
    random orientation."""
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    u = q @ np.diag(rng.uniform(0.6, 1.4, 3) * u_mean) @ q.T
    u_cart = (u[0, 0], u[1, 1], u[2, 2], u[0, 1], u[0, 2], u[1, 2])
    return adptbx.u_star_as_u_cif(uc, adptbx.u_cart_as_u_star(uc, u_cart))


def _round_site(site) -> tuple[float, float, float]:
    return tuple(round(float(v) % 1.0, 5) for v in site)


def place_general(model: Model, elements, rng, aniso: bool = False, u_mean: float = 0.025):
    """Add atoms of the given type symbols at random general positions, at least
    MIN_DISTANCE from every atom already there and from their own images."""
    cs = model.symmetry
    counts: dict[str, int] = {}
    for symbol in elements:
        element = symbol.rstrip("+-0123456789")
        counts[element] = counts.get(element, 0) + 1
        for _ in range(10_000):
            site = _round_site(rng.random(3))
            if _min_distance(cs, site, [a.site for a in model.atoms]) >= MIN_DISTANCE:
                break
        else:
            raise RuntimeError(f"{model.block}: no room for another {symbol}")
        u_iso = 0.05 if element == "H" else round(float(rng.uniform(0.6, 1.4) * u_mean), 5)
        u_cif = None
        if aniso and element != "H":
            u_cif = tuple(round(v, 5) for v in _random_u_cif(cs.unit_cell(), rng, u_mean))
        model.atoms.append(Atom(f"{element}{counts[element]}", symbol, site, u_iso, u_cif))


def place_special(model: Model, label, symbol, site, rng, u_mean=0.02):
    """An atom exactly on a special position, with a random U that obeys the site
    symmetry (cctbx's average over the site-symmetry group)."""
    cs = model.symmetry
    ss = cs.special_position_settings(min_distance_sym_equiv=0.05).site_symmetry(site)
    assert ss.multiplicity() < cs.space_group().order_z(), f"{site} is not special"
    uc = cs.unit_cell()
    u_star = ss.average_u_star(adptbx.u_cif_as_u_star(uc, _random_u_cif(uc, rng, u_mean)))
    u_cif = tuple(round(v, 5) for v in adptbx.u_star_as_u_cif(uc, u_star))
    model.atoms.append(Atom(label, symbol, tuple(float(v) for v in site), None, u_cif))


# ------------------------------------------------------------------ cctbx model


def xray_structure(model: Model) -> xray.structure:
    """The model as written (rounded values) as a cctbx structure with IT92 form factors."""
    cs = model.symmetry
    uc = cs.unit_cell()
    scatterers = flex.xray_scatterer()
    for a in model.atoms:
        kw = dict(label=a.label, site=a.site, occupancy=a.occupancy, scattering_type=a.type_symbol)
        kw["u"] = adptbx.u_cif_as_u_star(uc, a.u_cif) if a.u_cif else a.u_iso
        scatterers.append(xray.scatterer(**kw))
    xs = xray.structure(cs.special_position_settings(min_distance_sym_equiv=0.05), scatterers=scatterers)
    xs.scattering_type_registry(table="it1992")
    return xs


def intensities(model: Model, d_min: float, rng, equivalents: float = 0.0):
    """(hkl (n, 3), I, sigma(I)) on a scale whose strongest I is about 9000: every unique
    reflection to d_min, plus a random fraction ``equivalents`` of symmetry mates (other
    members of their Laue class) as a diffractometer would measure them; Gaussian noise
    of sigma = 0.02 I + 2."""
    xs = xray_structure(model)
    unique = miller.build_set(xs.crystal_symmetry(), anomalous_flag=False, d_min=d_min)
    indices = list(unique.indices())
    if equivalents:
        p1 = unique.expand_to_p1()
        extra = [h for h in p1.indices() if rng.random() < equivalents]
        indices += [tuple(-v for v in h) if rng.random() < 0.5 else h for h in extra]
    ms = miller.set(xs.crystal_symmetry(), flex.miller_index(indices), anomalous_flag=False)
    f = ms.structure_factors_from_scatterers(xs, algorithm="direct").f_calc()
    i_calc = np.array(f.intensities().data())
    i_calc *= 9000.0 / i_calc.max()
    sigma = 0.02 * i_calc + 2.0
    i_obs = i_calc + rng.normal(size=len(i_calc)) * sigma
    return np.array(indices, dtype=int), i_obs, sigma


# ------------------------------------------------------------------ writing


def hklf4_text(hkl, i, sigma) -> str:
    rows = [f"{h:4d}{k:4d}{l:4d}{a:8.2f}{s:8.2f}" for (h, k, l), a, s in zip(hkl.tolist(), i, sigma)]
    return "\n".join(rows + ["   0   0   0    0.00    0.00"]) + "\n"


def cif_block(model: Model, note: str, hkl_text: str | None = None,
              drop: tuple[str, ...] = (), symops: list[str] | None = None) -> str:
    sgi = sgtbx.space_group_info(model.symbol)
    ops = symops or [op.as_xyz() for op in sgi.group().all_ops()]
    a, b, c, al, be, ga = model.cell
    lines = [f"data_{model.block}", f"_audit_creation_method '{note}'"]
    for tag, v in zip(("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma"),
                      (a, b, c, al, be, ga)):
        if f"_cell_{tag}" not in drop:
            lines.append(f"_cell_{tag} {v:.4f}")
    if model.old_tags:
        lines += [f"_symmetry_space_group_name_H-M '{sgi.type().lookup_symbol()}'",
                  f"_symmetry_Int_Tables_number {sgi.type().number()}",
                  "loop_", "_symmetry_equiv_pos_as_xyz"]
    else:
        lines += [f"_space_group_name_H-M_alt '{sgi.type().lookup_symbol()}'",
                  f"_space_group_IT_number {sgi.type().number()}",
                  "loop_", "_space_group_symop_operation_xyz"]
    lines += [f"'{op}'" for op in ops]
    uc = uctbx.unit_cell(model.cell)
    lines += ["loop_", "_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x",
              "_atom_site_fract_y", "_atom_site_fract_z", "_atom_site_U_iso_or_equiv",
              "_atom_site_adp_type", "_atom_site_occupancy"]
    for at in model.atoms:
        if at.u_cif:
            u_eq, adp = adptbx.u_star_as_u_iso(uc, adptbx.u_cif_as_u_star(uc, at.u_cif)), "Uani"
        else:
            u_eq, adp = at.u_iso, "Uiso"
        x, y, z = at.site
        lines.append(f"{at.label} {at.type_symbol} {x:.5f} {y:.5f} {z:.5f} {u_eq:.5f} {adp} {at.occupancy:g}")
    aniso = [at for at in model.atoms if at.u_cif]
    if aniso:
        lines += ["loop_", "_atom_site_aniso_label"] + [
            f"_atom_site_aniso_U_{ij}" for ij in ("11", "22", "33", "12", "13", "23")]
        lines += [at.label + " " + " ".join(f"{v:.5f}" for v in at.u_cif) for at in aniso]
    if hkl_text is not None:
        lines += ["_shelx_hkl_file", ";", hkl_text.rstrip("\n"), ";"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the files


def models() -> dict[str, Model]:
    """The structures, each from its own seed (adding one does not change the others)."""
    out = {}
    rng = np.random.default_rng(101)
    m = Model("p-1_organic", "P -1", (7.312, 8.127, 9.436, 78.21, 83.54, 71.93))
    place_general(m, ["C"] * 8 + ["N"] * 2 + ["O"] * 2 + ["H"] * 6, rng)
    out["p-1_organic"] = m

    rng = np.random.default_rng(102)
    m = Model("p21n_aniso", "P 1 21/n 1", (6.521, 11.473, 8.932, 90, 104.31, 90))
    place_general(m, ["S"] + ["C"] * 6 + ["O"] * 2 + ["N"] + ["H"] * 4, rng, aniso=True)
    out["p21n_aniso"] = m

    rng = np.random.default_rng(103)
    m = Model("ionic_pnma", "P n m a", (11.214, 8.106, 6.327, 90, 90, 90))
    place_general(m, ["Na1+", "Mg2+", "Cl1-", "O2-", "O2-", "K1+"], rng, u_mean=0.015)
    out["ionic_pnma"] = m

    rng = np.random.default_rng(104)
    m = Model("c2c_special", "C 1 2/c 1", (12.503, 7.211, 10.842, 90, 97.45, 90))
    place_special(m, "Fe1", "Fe3+", (0.0, 0.0, 0.0), rng)  # inversion centre (4a)
    place_special(m, "Na1", "Na1+", (0.0, 0.31270, 0.25), rng)  # 2-fold axis (4e)
    place_general(m, ["O2-"] * 3 + ["C", "N"], rng, aniso=True)
    out["c2c_special"] = m

    rng = np.random.default_rng(105)
    m = Model("a_p212121", "P 21 21 21", (6.013, 8.744, 10.391, 90, 90, 90))
    place_general(m, ["C"] * 5 + ["O"] * 2 + ["H"] * 3, rng)
    out["a_p212121"] = m

    rng = np.random.default_rng(106)
    m = Model("b_r-3", "R -3 :H", (10.112, 10.112, 7.046, 90, 90, 120), old_tags=True)
    place_general(m, ["Si", "O", "O", "Ca"], rng, aniso=True)
    m.atoms[-1].occupancy = 0.5  # a half-occupied site
    out["b_r-3"] = m
    return out


def write_all(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    ms = models()
    note = "tests/data/make_test_data.py"
    written = []

    def put(name, text):
        p = out_dir / name
        p.write_text(text)
        written.append(p)

    hkl, i, s = intensities(ms["p-1_organic"], 0.9, np.random.default_rng(201))
    put("p-1_organic.cif", cif_block(ms["p-1_organic"], note, hkl_text=hklf4_text(hkl, i, s)))
    hkl, i, s = intensities(ms["p21n_aniso"], 0.9, np.random.default_rng(202), equivalents=0.3)
    put("p21n_aniso.cif", cif_block(ms["p21n_aniso"], note))
    put("p21n_aniso.hkl", hklf4_text(hkl, i, s))
    put("ionic_pnma.cif", cif_block(ms["ionic_pnma"], note))
    put("c2c_special.cif", cif_block(ms["c2c_special"], note))
    put("two_blocks.cif", cif_block(ms["a_p212121"], note) + "\n" + cif_block(ms["b_r-3"], note))
    # damaged copies of p-1_organic (without its reflections)
    damaged = ms["p-1_organic"]
    damaged.block = "no_cell"
    put("damaged_no_cell.cif", cif_block(damaged, note, drop=("_cell_length_b",)))
    damaged.block = "bad_symmetry"
    # P2/m's operators with the mirror's translation wrong: not a group
    put("damaged_bad_symmetry.cif", cif_block(
        damaged, note, symops=["x,y,z", "-x,y,-z", "-x,-y,-z", "x+1/3,-y,z"]))
    return written


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE, help="folder to write into (default: tests/data)")
    args = ap.parse_args(argv)
    for p in write_all(args.out):
        print(f"{p} ({p.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
