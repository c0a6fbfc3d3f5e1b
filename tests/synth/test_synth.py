"""Synthetic structures: determinism, schema equality with build, CIF round trip,
geometry, symmetry, resume, shards, density."""

import phasenet  # noqa: F401  (first: cctbx import order)

import json

import gemmi
import numpy as np
import pytest

from phasenet import BuildOptions, build_dataset
from phasenet.cli import EXIT_ERROR, main
from phasenet.pipeline.records import compute_record
from phasenet.reflections import canonical_hkl
from phasenet.synth.generate import SynthOptions, generate_structure, synth_dataset
from phasenet.synth.options import DENSE, PACKINGS
from phasenet.synth.molecules import COVALENT_RADIUS, grow_molecule
from phasenet.synth.environment import PackingOptions
from phasenet.synth.packing import contact_limits
from h5compare import assert_same_arrays, read_h5

#: Small molecules keep the tests fast; dense crystals (grow-and-squeeze rounds) so
#: that compression goes through every test (determinism, geometry, round trip).
FAST = dict(atoms=(6, 16), chunk_size=4, **DENSE)


def _read_all(path):
    data, attrs = read_h5(path)
    return data, attrs["/"]


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    opts = SynthOptions(seed=3, workers=1, **FAST)
    s = synth_dataset(10, d / "one.h5", opts, cif_dir=d / "cif", progress=False)
    return d, opts, s


def test_summary_and_attributes(synth_run):
    d, opts, s = synth_run
    assert s.ok and s.n_structures == 10
    assert "synthesised 10 of 10 structures" in s.format()
    data, attrs = _read_all(d / "one.h5")
    meta = json.loads(attrs["synth"])
    assert (meta["seed"], meta["n_total"], meta["shard_index"], meta["shard_count"]) == (3, 10, 0, 1)
    ids = [x.decode() for x in data["structures/id"]]
    assert ids[0] == "synth-s3-00000000.cif#synth-s3-00000000" and len(set(ids)) == 10
    assert not (d / "one.h5.parts").exists()


def test_same_with_two_workers_and_other_seed_differs(synth_run, tmp_path):
    d, opts, _ = synth_run
    two = SynthOptions(seed=3, workers=2, **FAST)
    synth_dataset(10, tmp_path / "two.h5", two, progress=False)
    a, aa = _read_all(d / "one.h5")
    b, ab = _read_all(tmp_path / "two.h5")
    assert_same_arrays(a, b)
    assert aa["build_options"] == ab["build_options"]
    other = SynthOptions(seed=4, workers=1, **FAST)
    synth_dataset(3, tmp_path / "other.h5", other, progress=False)
    c, _ = _read_all(tmp_path / "other.h5")
    assert not np.array_equal(a["intensity_calc"][:3], c["intensity_calc"])


def test_cif_round_trip_equals_build(synth_run, tmp_path):
    """phasenet build of the --cif-dir gives the same dataset (schema, dtypes, numbers,
    ids and split); only the source column (a path) and the synth attribute differ."""
    d, opts, _ = synth_run
    out = tmp_path / "built.h5"
    summary = build_dataset([d / "cif"], out, BuildOptions(seed=opts.seed, chunk_size=opts.chunk_size,
                                                           workers=1), progress=False)
    assert summary.ok and summary.n_structures == 10
    a, aa = _read_all(d / "one.h5")
    b, ab = _read_all(out)
    # the intensities to 10⁻⁵ of each structure's strongest: the CIF's coordinates are rounded
    # (5 decimals), and the sums' float rounding follows (measured: 4·10⁻⁷)
    assert_same_arrays(a, b, skip={"structures/source"}, close={"intensity": 1e-5, "intensity_calc": 1e-5})
    assert set(aa) == set(ab) | {"synth"}
    for k in ab:
        assert str(aa[k]) == str(ab[k]), k


def _cell_atoms(s):
    """Cartesian positions of every symmetry copy: (Z, n, 3) fractional and orth matrix."""
    ops = gemmi.GroupOps([gemmi.Op(t) for t in s.symops])
    frac = np.array([[np.array(op.apply_to_xyz(list(x))) for x in s.atoms.frac] for op in ops])
    return frac, np.array(gemmi.UnitCell(*s.cell).orth.mat.tolist())


def _worst_contact(frac, m, lim, inter):
    """Smallest distance minus limit over all images; identity pairs only where ``inter``."""
    x0 = frac[0] @ m.T
    worst = np.inf
    grid = np.stack(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    for k in range(len(frac)):
        for n in grid:
            y = (frac[k] + n) @ m.T
            d = np.linalg.norm(x0[:, None] - y[None], axis=2) - lim
            if k == 0 and not n.any():
                d = np.where(inter, d, np.inf)
            worst = min(worst, d.min())
    return worst


def _bonded(s):
    """(n, n) bonds perceived from covalent radii (+0.4 Å) in the asymmetric unit."""
    x0 = s.atoms.frac @ np.array(gemmi.UnitCell(*s.cell).orth.mat.tolist()).T
    r = np.array([COVALENT_RADIUS[e] for e in s.atoms.element])
    d0 = np.linalg.norm(x0[:, None] - x0[None], axis=2)
    return (d0 < r[:, None] + r[None] + 0.4) & ~np.eye(len(r), dtype=bool)


def _molecule_labels(s):
    """Connected molecule of each atom of the asymmetric unit (0 = the first atom's)."""
    bonded = _bonded(s)
    label = -np.ones(len(bonded), dtype=int)
    for start in range(len(bonded)):
        if label[start] >= 0:
            continue
        label[start], stack = label.max() + 1, [start]
        while stack:
            i = stack.pop()
            for j in np.flatnonzero(bonded[i]):
                if label[j] < 0:
                    label[j] = label[start]
                    stack.append(int(j))
    return label


@pytest.mark.parametrize("index", range(8))
def test_geometry(index):
    opts = SynthOptions(seed=1, space_groups=("P-1", "P21/c", "P212121", "P21", "C2/c", "Pbca"), **FAST)
    s = generate_structure(index, opts)
    el = s.atoms.element
    frac, m = _cell_atoms(s)
    x0 = frac[0] @ m.T
    # bonds perceived from covalent radii: every one at a plausible length, one molecule
    r = np.array([COVALENT_RADIUS[e] for e in el])
    d0 = np.linalg.norm(x0[:, None] - x0[None], axis=2)
    bonded = (d0 < r[:, None] + r[None] + 0.4) & ~np.eye(len(el), dtype=bool)
    dist = d0[np.triu(bonded)]
    assert dist.min() > 0.8 and dist.max() < 2.3
    # molecules: connected, each with a non-H atom; at most max_molecules of them, the
    # first (grown until jammed) the largest
    label = _molecule_labels(s)
    sizes = np.bincount(label[el != "H"], minlength=label.max() + 1)
    assert sizes.min() >= 1 and len(sizes) <= opts.max_molecules
    assert sizes[0] == sizes.max()
    # every C has 4 (sp3), 3 (sp2/aromatic) or 2 (nitrile) neighbours
    deg = bonded.sum(axis=1)
    assert set(deg[el == "C"]) <= {2, 3, 4}
    assert set(deg[el == "H"]) == {1}
    # no contact below the van der Waals limit between different molecules (all copies,
    # 5x5x5 cells, other molecules of the asymmetric unit)
    lim = contact_limits(el, PackingOptions())
    worst = _worst_contact(frac, m, lim, label[:, None] != label[None, :])
    assert worst > -2e-3, f"contact {worst:.3f} Å below the limit"
    # cell and density in the configured ranges
    vol = gemmi.UnitCell(*s.cell).volume
    vpa = vol / (len(frac) * (el != "H").sum())
    assert opts.volume_per_atom[0] <= vpa * 1.01 and vpa <= opts.volume_per_atom[1] * 1.01
    assert max(s.cell[:3]) <= opts.max_edge + 1e-3
    assert opts.atoms[0] <= (el != "H").sum() <= opts.atoms[1]
    assert opts.u_iso[0] <= s.atoms.u_iso.min() and s.atoms.u_iso.max() <= opts.u_iso[1]


def test_density_and_draws():
    """Growth only (the "fast" packing): volume per non-H atom in the accepted range
    and far denser than rigid packing (~25-45 Å³); the space group is drawn once per
    structure (retries do not bias it); atom counts spread over the range."""
    from collections import Counter

    opts = SynthOptions(seed=7, **PACKINGS["fast"])
    vpa, n_heavy, groups = [], [], Counter()
    for i in range(24):
        s = generate_structure(i, opts)
        nh = int((s.atoms.element != "H").sum())
        vpa.append(gemmi.UnitCell(*s.cell).volume / (len(s.symops) * nh))
        n_heavy.append(nh)
        groups[s.space_group] += 1
    assert opts.volume_per_atom[0] <= min(vpa) and max(vpa) <= opts.volume_per_atom[1]
    assert np.mean(vpa) < 26.0
    assert min(groups.values()) >= 6 and len(groups) == 2
    assert min(n_heavy) < 16 and max(n_heavy) > 28


def test_dense_crystals():
    """The default ("dense") packing, grow then relax with the cell under pressure,
    reaches the density of real organic crystals: 17-19 Å³ per non-H atom on
    average, every structure within the accepted range, no contact below the limits,
    cells of the right crystal system within the edge limits."""
    opts = SynthOptions(seed=7)
    assert PACKINGS["dense"] == DENSE
    assert all(getattr(opts, k) == v for k, v in DENSE.items())
    vpa = []
    for i in range(16):
        s = generate_structure(i, opts)
        vpa.append(gemmi.UnitCell(*s.cell).volume / (len(s.symops) * int((s.atoms.element != "H").sum())))
        assert max(s.cell[:3]) <= opts.max_edge + 1e-3
        if s.sg_number == 14:  # monoclinic, b unique: alpha = gamma = 90 kept by the relaxation,
            assert s.cell[3] == 90.0 and s.cell[5] == 90.0  # beta >= 90 (the convention)
            assert 90.0 <= s.cell[4] < 135.0
        if i < 6:
            frac, m = _cell_atoms(s)
            lim = contact_limits(s.atoms.element, PackingOptions())
            label = _molecule_labels(s)
            assert _worst_contact(frac, m, lim, label[:, None] != label[None, :]) > -2e-3
    assert opts.volume_per_atom == (15.0, 22.0)
    assert 15.0 <= min(vpa) and max(vpa) <= 22.0
    assert 17.0 <= np.mean(vpa) <= 19.0, np.mean(vpa)


def test_special_positions_are_avoided():
    """A fragment is tested against its own images: nothing sits on an inversion
    centre or a 2-fold axis, even in small cells of groups with many operations."""
    for sg in ("C2/c", "Pbca", "P-1"):
        opts = SynthOptions(seed=11, space_groups=(sg,), atoms=(6, 10), **DENSE)
        for i in range(3):
            s = generate_structure(i, opts)
            frac, m = _cell_atoms(s)
            lim = contact_limits(s.atoms.element, PackingOptions())
            assert _worst_contact(frac, m, lim, np.zeros_like(lim, dtype=bool)) > -2e-3


def test_cif_subfolders(synth_run):
    d, opts, _ = synth_run
    files = sorted((d / "cif").rglob("*.cif"))
    assert len(files) == 10 and {f.parent.name for f in files} == {"00000"}


def test_bond_lengths_of_grown_molecules():
    rng = np.random.default_rng(0)
    mol = grow_molecule(rng, 30)
    d = np.linalg.norm(mol.xyz[mol.bonds[:, 0]] - mol.xyz[mol.bonds[:, 1]], axis=1)
    pairs = {tuple(sorted((mol.element[i], mol.element[j]))) for i, j in mol.bonds}
    assert ("C", "H") in pairs
    ch = [dd for (i, j), dd in zip(mol.bonds, d) if {mol.element[i], mol.element[j]} == {"C", "H"}]
    assert 0.9 < min(ch) and max(ch) < 1.02
    cc = [dd for (i, j), dd in zip(mol.bonds, d) if mol.element[i] == mol.element[j] == "C"]
    assert 1.34 < min(cc) and max(cc) < 1.58


def test_heavy_fraction():
    rng = np.random.default_rng(2)
    from phasenet.synth.molecules import MoleculeOptions
    el = np.concatenate([grow_molecule(rng, 20, MoleculeOptions(heavy_fraction=0.3)).element
                         for _ in range(10)])
    heavy = np.isin(el, ["S", "Cl", "Br", "I", "P", "Cu"]).sum() / (el != "H").sum()
    assert 0.1 < heavy < 0.5
    plain = grow_molecule(rng, 20).element
    assert set(plain) <= {"C", "N", "O", "H"}


def test_symmetry_of_structure_factors():
    hkl = canonical_hkl()
    h, k, l = hkl.T
    for sg, centro in (("P21/c", True), ("P-1", True), ("P212121", False)):
        opts = SynthOptions(seed=5, space_groups=(sg,), **FAST)
        rec = compute_record(generate_structure(0, opts), hkl)
        i = rec.intensity_calc
        if sg == "P21/c":
            assert np.all(i[(k == 0) & (l % 2 == 1)] == 0)  # h0l, l odd
            assert np.all(i[(h == 0) & (l == 0) & (k % 2 == 1)] == 0)  # 0k0, k odd
        if sg == "P212121":
            assert np.all(i[(k == 0) & (l == 0) & (h % 2 == 1)] == 0)
            assert np.all(rec.sign == -1) and not rec.centric_origin
            general = np.angle(np.exp(1j * rec.phase_calc[i > 1e-3 * i.max()]))
            assert np.mean(np.abs(np.abs(general) - np.pi / 2) < np.pi / 2 - 0.1) > 0.5
        if centro:
            assert rec.centric_origin
            p = rec.phase_calc[i > 0]
            assert np.all((p == 0) | (np.abs(p - np.pi) < 1e-6))
            assert set(np.unique(rec.sign[i > 0])) <= {0, 1}


def test_resume_after_interruption(tmp_path, monkeypatch):
    import phasenet.synth.generate as synth

    opts = SynthOptions(seed=2, workers=1, **FAST)
    full = tmp_path / "full.h5"
    synth_dataset(8, full, opts, progress=False)
    calls = {"n": 0}
    real = synth._part_task

    def crash_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "_part_task", crash_second)
    out = tmp_path / "resumed.h5"
    with pytest.raises(KeyboardInterrupt):
        synth_dataset(8, out, opts, progress=False)
    assert not out.exists() and (tmp_path / "resumed.h5.parts" / "part-000000.h5").exists()
    monkeypatch.setattr(synth, "_part_task", real)
    s = synth_dataset(8, out, opts, progress=False)
    assert s.resumed_parts == 1
    a, aa = _read_all(full)
    b, ab = _read_all(out)
    assert_same_arrays(a, b)
    # other options refuse to touch the interrupted parts without --overwrite
    (tmp_path / "x.h5.parts").mkdir()
    (tmp_path / "x.h5.parts" / "synth.json").write_text('{"fingerprint": "other"}')
    with pytest.raises(synth.SynthError, match="interrupted run"):
        synth_dataset(8, tmp_path / "x.h5", opts, progress=False)


def test_shards_concatenate_to_full_run(synth_run, tmp_path):
    d, opts, _ = synth_run
    full, _ = _read_all(d / "one.h5")
    ids, ic = [], []
    for i in range(3):
        out = tmp_path / f"shard{i}.h5"
        s = synth_dataset(10, out, opts, shard=(i, 3), progress=False)
        data, attrs = _read_all(out)
        meta = json.loads(attrs["synth"])
        assert (meta["shard_index"], meta["shard_count"]) == (i, 3)
        assert s.index_range == (meta["index_start"], meta["index_stop"])
        ids += [x.decode() for x in data["structures/id"]]
        ic.append(data["intensity_calc"])
    assert ids == [x.decode() for x in full["structures/id"]]
    assert np.array_equal(np.concatenate(ic), full["intensity_calc"])


def test_cli(tmp_path, capsys):
    out = tmp_path / "c.h5"
    rc = main(["synth", "-n", "3", "-o", str(out), "--atoms", "6-12", "--workers", "1", "--quiet",
               "--space-group", "P212121", "--r2-max", "50", "--seed", "9"])
    assert rc == 0, capsys.readouterr().err
    assert "synthesised 3 of 3 structures" in capsys.readouterr().out
    info = phasenet.dataset_info(out)
    assert info["n_reflections"] == 709 and info["space_groups"] == {"P 21 21 21": 3}
    assert main(["synth", "-n", "3", "-o", str(out), "--atoms", "6-12", "--quiet"]) == EXIT_ERROR
    assert "exists" in capsys.readouterr().err
    assert main(["synth", "-n", "3", "-o", str(tmp_path / "d.h5"), "--atoms", "x"]) == EXIT_ERROR
    assert "--atoms must look like MIN-MAX" in capsys.readouterr().err
    assert main(["synth", "-n", "3", "-o", str(tmp_path / "d.h5"), "--space-group", "P6/mmm"]) == EXIT_ERROR
    assert "not supported by the generator" in capsys.readouterr().err
    fast = tmp_path / "f.h5"
    assert main(["synth", "-n", "2", "-o", str(fast), "--atoms", "6-12", "--workers", "1", "--quiet",
                 "--r2-max", "50", "--packing", "fast"]) == 0
    assert "synthesised 2 of 2 structures" in capsys.readouterr().out
