"""Measured reflections: parsing (SHELX HKLF 4/3, Tonto, _refln loops), merging of
symmetry equivalents, and agreement of real measured data with calculated intensities."""

import phasenet  # noqa: F401  (first: cctbx import order)

import numpy as np
import pytest

from phasenet.io.cif import read_cif
from phasenet.io.hkl import (ReflectionError, _fixed_row, _free_row, hklf_code,
                                 parse_shelx_hkl, parse_tonto)
from phasenet.physics.merging import merge_onto_grid
from phasenet.pipeline.records import compute_record
from phasenet.reflections import canonical_hkl, laue_asu_keys
from phasenet.structure import Observations, Structure
from phasenet.symmetry import symmetry

HKL = canonical_hkl()

# ------------------------------------------------------------------ parsing


def test_hklf4_fixed_width_run_together():
    text = ("  -1-10  3   12.34    0.56\n"
            "   1   2-13 1234.56   10.00\n"
            " -12 -13 -14    1.00\n"
            "   2   0   0-1234.5    7.50   3\n"  # negative F², batch number column
            "   0   0   0    0.00    0.00\n"
            "this line after the terminator is never read\n")
    obs = parse_shelx_hkl(text, 4)
    assert obs.kind == "F2"
    assert obs.hkl.tolist() == [[-1, -10, 3], [1, 2, -13], [-12, -13, -14], [2, 0, 0]]
    assert obs.value.tolist() == [12.34, 1234.56, 1.0, -1234.5]
    assert obs.sigma[:2].tolist() == [0.56, 10.0] and np.isnan(obs.sigma[2])
    i, s = obs.intensities()
    assert i.tolist() == obs.value.tolist()


def test_hklf3_amplitudes():
    obs = parse_shelx_hkl("   1   0   0   10.00    0.50\n  -2   1   3    3.00    0.25\n", 3)
    assert obs.kind == "F"
    i, s = obs.intensities()
    assert i.tolist() == [100.0, 9.0]
    assert s.tolist() == [10.0, 1.5]  # sigma(F²) = 2 F sigma(F)


def test_free_format_fallback():
    obs = parse_shelx_hkl("1 2 3 100.5 3.2\n-1 0 2 5 1\n0 0 0 0 0\n", 4)
    assert obs.hkl.tolist() == [[1, 2, 3], [-1, 0, 2]]
    assert obs.value.tolist() == [100.5, 5.0]


def test_parse_errors():
    with pytest.raises(ReflectionError, match="HKLF 5"):
        parse_shelx_hkl("   1   0   0   10.00    0.50\n", 5)
    with pytest.raises(ReflectionError, match="line 2"):
        parse_shelx_hkl("   1   0   0   10.00    0.50\nnot a reflection at all\n", 4)
    with pytest.raises(ReflectionError, match="no reflections"):
        parse_shelx_hkl("   0   0   0    0.00    0.00\n", 4)


def test_tonto_format_skips_comments():
    text = """reflection_data= {
        keys= { h= k= l= f_exp= f_sigma= }
        data= {
    0    0    4    67.401    0.736
    1    1    1    66.541    0.747
!    2    2    6    21.452    0.241
   -1    2    3    10.0      0.1
        }
    }
"""
    obs = parse_tonto(text, "tonto test")
    assert obs.kind == "F"
    assert obs.hkl.tolist() == [[0, 0, 4], [1, 1, 1], [-1, 2, 3]]
    assert obs.value.tolist() == [67.401, 66.541, 10.0]


# ------------------------------------------------------------------ merging

P2M_OPS = ("x,y,z", "-x,y,-z", "-x,-y,-z", "x,-y,z")


def _obs(rows, kind="F2"):
    a = np.array(rows, dtype=float)
    return Observations(hkl=a[:, :3].astype(np.int32), value=a[:, 3], sigma=a[:, 4], kind=kind,
                        origin="test")


def test_merging_averages_equivalents():
    rot = symmetry(P2M_OPS).rotations
    grid = canonical_hkl(3)
    obs = _obs([
        (1, 2, 3, 10.0, 1.0),
        (-1, 2, -3, 14.0, 1.0),  # 2-fold equivalent
        (-1, -2, -3, 12.0, 2.0),  # Friedel mate, weight 1/4
        (1, 0, 0, 5.0, 1.0),
    ])
    m = merge_onto_grid(obs, rot, grid)
    want = (10 + 14 + 12 / 4) / (1 + 1 + 1 / 4)
    i123 = {tuple(h): v for h, v in zip(grid.tolist(), m.intensity)}
    # every grid member of the class of (1 2 3) gets the weighted mean
    assert i123[(1, 2, 3)] == pytest.approx(want)
    assert i123[(1, -2, 3)] == pytest.approx(want)  # mirror
    assert np.isnan(i123[(1, 2, -3)])  # a different class in 2/m, not measured
    assert i123[(1, 0, 0)] == 5.0
    assert m.n_measured == 4 and m.n_unique == 2
    assert m.n_on_grid == int(np.isfinite(m.intensity).sum()) == 3
    assert m.sigma[list(map(tuple, grid.tolist())).index((1, 2, 3))] == pytest.approx(
        1 / np.sqrt(2.25))
    # never zero where not measured
    assert not np.any(m.intensity == 0)
    assert np.isnan(m.intensity).sum() == len(grid) - 3


def test_merging_unweighted_without_sigmas():
    rot = symmetry(P2M_OPS).rotations
    obs = _obs([(1, 1, 1, 3.0, np.nan), (-1, 1, -1, 5.0, np.nan)])
    m = merge_onto_grid(obs, rot, canonical_hkl(2))
    assert np.nanmax(m.intensity) == 4.0 and np.isnan(m.sigma).all()


def test_merging_amplitudes_are_squared():
    rot = symmetry(("x,y,z",)).rotations
    m = merge_onto_grid(_obs([(0, 0, 1, 3.0, 0.1)], kind="F"), rot, canonical_hkl(2))
    assert m.intensity[0] == pytest.approx(9.0)


# ------------------------------------------------------------------ real data


#: Files whose measured data belong to their model (manifest data_fits_model_R1 < 0.15),
#: with the manifest's data_kind_hint. Listed here, not read from the manifest at
#: collection time (test_fitting_files_count checks the list against the manifest).
FITTING_FILES = {
    "FinalCif_1979688.cif": "F2", "FinalCif_DK_Zucker2_0m.cif": "F2",
    "FinalCif_alert_example.cif": "F2", "FinalCif_cu_BruecknerJK_153F40_0m.cif": "F2",
    "FinalCif_foobar.cif": "F2", "FinalCif_p21c.cif": "F2", "NoSpherA2_sucrose_2.cif": "F2",
    "NoSpherA2_sucrose_3.cif": "F2", "NoSpherA2_test.cif": "F2",
    "StructureFinder_DK_NTD51a-final.cif": "F2", "StructureFinder_P-1.cif": "F2",
    "StructureFinder_p21c.cif": "F2", "ccdc-bestcsp_MCE-PNA_manual.cif": "F2",
    "ccdc-bestcsp_mce-mecn-100k_a.cif": "F2", "cod-tools_1518592.cif": "F2",
    "cod-tools_2242045.cif": "F2", "gemmi_4003024.cif": "F2", "hikari_NaCl.cif": "F2",
    "tonto_B6H6_grown.cif": "F", "tonto_alanin.cif": "F2", "tonto_glyala.archive.cif": "F2",
    "tonto_molecule.cif": "F",
}


@pytest.mark.real_data
def test_fitting_files_count(manifest):
    assert (manifest.data_fits_model_R1 < 0.15).sum() == 22
    good = manifest[manifest.data_fits_model_R1 < 0.15]
    assert dict(zip(good.file.str.removeprefix("cif/"), good.data_kind_hint)) == FITTING_FILES


@pytest.mark.real_data
@pytest.mark.parametrize("file, kind_hint", sorted(FITTING_FILES.items()))
def test_measured_intensities_match_model(real_cif, file, kind_hint):
    path = real_cif(file)
    items = read_cif(path)
    got = [x for x in items if isinstance(x, Structure)]
    assert got, f"{file}: no structure read: {[str(x) for x in items]}"
    with_obs = [s for s in got if s.observations is not None]
    assert with_obs, f"{file}: no measured reflections attached (notes: {[s.notes for s in got]})"
    for s in with_obs:
        assert s.observations.kind == kind_hint, f"{s.id}: read as {s.observations.kind}"
        rec = compute_record(s, HKL)
        m = rec.merged
        assert m is not None and m.n_on_grid > 0, f"{s.id}: no measured reflection on the grid"
        finite = np.isfinite(rec.intensity_obs)
        assert finite.sum() == m.n_on_grid
        # measured exactly where the Laue class of a grid reflection was measured
        rot = symmetry(s.symops).rotations
        measured_keys = set(laue_asu_keys(s.observations.hkl, rot).tolist())
        expect = np.array([k in measured_keys for k in laue_asu_keys(HKL, rot).tolist()])
        assert np.array_equal(finite, expect), f"{s.id}: NaN pattern differs from the measured set"
        assert not np.any(rec.intensity_obs[~finite] == 0)  # unmeasured: NaN, never 0
        corr = rec.norm.obs_calc_corr
        assert corr > 0.9, (f"{s.id}: corr(I_obs, I_calc) = {corr:.3f} over {m.n_on_grid} grid "
                            f"reflections ({s.observations.origin}, {s.observations.kind})")
        # linreg maps the measurements onto the calculated scale
        assert rec.norm.scale > 0
        expect_input = (rec.intensity_obs[finite] - rec.norm.offset) / rec.norm.scale
        assert rec.intensity[finite] == pytest.approx(expect_input, rel=1e-4, abs=1e-3)


@pytest.mark.real_data
def test_embedded_hklf4(structure_of):
    s = structure_of("FinalCif_p21c.cif")
    o = s.observations
    assert o.origin == "_shelx_hkl_file" and o.kind == "F2"
    assert len(o.hkl) == 42975
    assert np.isfinite(o.sigma).all() and (o.sigma > 0).all()


@pytest.mark.real_data
def test_tonto_hkl_comment_lines(structure_of):
    s = structure_of("tonto_B6H6_grown.cif")
    # the paired Tonto file lists 449 reflections, all but 20 commented out with '!'
    assert len(s.observations.hkl) == 20 and s.observations.kind == "F"


@pytest.mark.real_data
def test_paired_file_supplies_same_cell_blocks(real_cif):
    got = [x for x in read_cif(real_cif("hikari_NaCl.cif")) if isinstance(x, Structure)]
    assert [s.block for s in got] == ["NaCl", "NaCl_olex2_C2/m"]
    assert all(s.observations is not None and s.observations.origin == "paired hikari_NaCl.hkl"
               for s in got)


def _row_by_row(text):
    """Reference parse of SHELX hkl text: one line at a time, fixed columns first."""
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        row = _fixed_row(line) or _free_row(line)
        assert row is not None, line
        if row[0] == row[1] == row[2] == 0:
            break
        rows.append(row)
    return np.array(rows, dtype=float)


@pytest.mark.slow
@pytest.mark.real_data
def test_fast_hkl_parse_equals_row_by_row(manifest, real_data_dir):
    """The vectorised SHELX parser reads every real hkl file (embedded or paired) exactly
    as the line-by-line reader does."""
    import gemmi

    texts = []
    for f in manifest[manifest.has_hkl == "embedded_shelx_hkl"].path:
        for block in gemmi.cif.read(f):
            v = block.find_value("_shelx_hkl_file")
            if v:
                texts.append((f, gemmi.cif.as_string(v), hklf_code(block)))
    for f in sorted((real_data_dir / "cif").glob("*.hkl")):
        text = f.read_text(errors="replace")
        if "reflection_data=" not in text:
            texts.append((str(f), text, 4))
    assert len(texts) >= 20
    for f, text, code in texts:
        obs = parse_shelx_hkl(text, code)
        ref = _row_by_row(text)
        assert obs.hkl.tolist() == ref[:, :3].astype(int).tolist(), f
        assert np.array_equal(obs.value, ref[:, 3]), f
        assert np.array_equal(obs.sigma, ref[:, 4], equal_nan=True), f


# ------------------------------------------------- the vectorised readers' edge cases


@pytest.mark.parametrize("text", [
    # SHELX writes equal lines; text after the terminator (res instructions) is not read
    "   1   0   0 3048.59 145.914   2\n  -1   0   0 -0.0279 0.03389   7\n"
    "   0   0   0    0.00    0.00   0\n\nTITL after the terminator\nCELL 0.71 1 2 3 90 90 90\n",
    # CR LF, blank lines, lines of different lengths, no terminator, no final newline
    "   1   2   3   12.34    0.56\r\n\r\n  -1  10  -3 1234.56   10.00   3\r\n  -2   0   0  -0.5\r\n",
    # full-width fields run together, negative zero, a point at the end, a sign
    "   0   0  -1-0.63875 3541.28   7\n  10  -5-100 1234.5  -0.000\n   3   3   3    123.   +1.50\n",
    # exponents, a trailing space: numpy's conversion of the value columns
    "   1   0   0 1.2E+03  3.0E01\n   2   0   0  10.00     1.00\n   0   0   0    0.00    0.00\n",
])
def test_fast_hkl_parse_edge_cases(text):
    from phasenet.io.hkl import _fixed_format_fast

    fast = _fixed_format_fast(text)
    assert fast is not None
    assert np.array_equal(fast, _row_by_row(text), equal_nan=True)
    obs = parse_shelx_hkl(text, 4)
    assert np.array_equal(obs.value, _row_by_row(text)[:, 3])


@pytest.mark.parametrize("text", [
    "   1   0   0   10.00    0.50\nnot a reflection at all\n",  # junk before the terminator
    "  -1-10   3   12.34    0.56\n",  # an index not right-aligned
    "1 2 3 100.5 3.2\n-1 0 2 5 1\n0 0 0 0 0\n",  # free format
])
def test_fast_hkl_parse_declines(text):
    """What the vectorised parser cannot read exactly it leaves to the line reader."""
    from phasenet.io.hkl import _fixed_format_fast

    assert _fixed_format_fast(text) is None


def _refln_block(rows, value_tag="_refln_F_squared_meas", sigma=True):
    import gemmi

    tags = ["_refln_index_h", "_refln_index_k", "_refln_index_l", value_tag]
    if sigma:
        tags.append(value_tag.replace("_meas", "_sigma"))
    text = "data_t\n_cell_length_a 5\nloop_\n" + "\n".join(tags) + "\n" + "\n".join(rows) + "\n"
    return gemmi.cif.read_string(text).sole_block()


def test_refln_loop_fast_path_equals_row_by_row(monkeypatch):
    from phasenet.io import hkl as hkl_reader

    rows = ["1 2 3 10.5 0.5", "-1 0 2 ? 0.2", "2 0 0 . .", "3 1 1 12.3(4) 1", "0 0 1 7 ?"]
    fast = hkl_reader._refln_loop(_refln_block(rows), "t")
    monkeypatch.setattr(hkl_reader, "_refln_fast", lambda *a, **k: None)
    slow = hkl_reader._refln_loop(_refln_block(rows), "t")
    assert fast.hkl.tolist() == slow.hkl.tolist() == [[1, 2, 3], [3, 1, 1], [0, 0, 1]]
    assert np.array_equal(fast.value, slow.value) and fast.kind == slow.kind == "F2"
    assert np.array_equal(fast.sigma, slow.sigma, equal_nan=True)


@pytest.mark.parametrize("rows,words", [
    (["1 2 3 10.5 0.5", "1 0 0 abc 1"], "non-numeric"),
    (["1 2 3 10.5 0.5", "1. 0 0 3 1"], "non-integer"),
])
def test_refln_loop_errors_come_from_the_row_reader(rows, words):
    from phasenet.io import hkl as hkl_reader

    with pytest.raises(ReflectionError, match=words):
        hkl_reader._refln_loop(_refln_block(rows), "t")


def test_refln_fast_path_leaves_the_block_intact():
    """gemmi's ReflnBlock takes the contents of the block it is given: the reader gives
    it a copy, so the structure's own block stays readable."""
    from phasenet.io import hkl as hkl_reader

    block = _refln_block(["1 2 3 10.5 0.5", "2 0 0 3 1"])
    assert hkl_reader._refln_loop(block, "t") is not None
    assert block.name == "t" and len(block.find_loop("_refln_index_h")) == 2
    assert block.find_value("_cell_length_a") == "5"


def test_merging_classes_off_the_grid_are_counted():
    """Measured classes that never reach the grid still count as unique reflections."""
    rot = symmetry(P2M_OPS).rotations
    obs = _obs([(1, 2, 3, 10.0, 1.0), (-1, 2, -3, 14.0, 1.0), (9, 9, 9, 5.0, 1.0)])
    m = merge_onto_grid(obs, rot, canonical_hkl(3))
    assert m.n_measured == 3 and m.n_unique == 2 and m.n_on_grid == 2
