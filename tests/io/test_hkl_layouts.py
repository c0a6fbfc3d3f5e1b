"""Measured-data layouts real files have, recognised by content rather than by name:
small files written here, one per layout, read as a paired file beside a CIF."""

import phasenet  # noqa: F401  (first: cctbx import order)

import numpy as np
import pytest

from phasenet.io.cif import read_cif
from phasenet.io.hkl import (ReflectionError, paired_observations, parse_shelx_hkl,
                             read_reflection_file, reflection_file_layout)
from phasenet.structure import Structure

CIF = """data_tiny
_cell_length_a 6
_cell_length_b 7
_cell_length_c 8
_cell_angle_alpha 90
_cell_angle_beta 95
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1 21/c 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_U_iso_or_equiv
C1 C 0.1 0.2 0.3 0.03
O1 O 0.3 0.1 0.2 0.03
"""

HKL = [(1, 0, 0, 12.5, 0.5), (0, 1, 1, 7.25, 0.25), (-1, 2, 3, 100.0, 2.0)]

FCF_LIST4 = """#
# h,k,l, Fc-squared, Fo-squared, sigma(Fo-squared) and status flag
#
data_tiny
_shelx_refln_list_code          4
_shelx_F_calc_maximum      20.00
loop_
 _refln_index_h
 _refln_index_k
 _refln_index_l
 _refln_F_squared_calc
 _refln_F_squared_meas
 _refln_F_squared_sigma
 _refln_observed_status
   1   0   0      11.90     12.50      0.50 o
   0   1   1       7.00      7.25      0.25 o
  -1   2   3      98.00    100.00      2.00 o
"""


def _shelx(rows, eol="\n", terminator=True):
    lines = [f"{h:4d}{k:4d}{l:4d}{v:8.2f}{s:8.2f}" for h, k, l, v, s in rows]
    if terminator:
        lines.append(f"{0:4d}{0:4d}{0:4d}{0:8.2f}{0:8.2f}")
    return eol.join(lines) + eol


def _paired(tmp_path, name, text, hklf=4):
    cif = tmp_path / "tiny.cif"
    cif.write_text(CIF)
    p = tmp_path / name
    (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
    return paired_observations(cif, hklf)


def _check(obs, kind="F2", rows=HKL):
    assert not isinstance(obs, str), obs
    assert obs.kind == kind
    assert obs.hkl.tolist() == [list(r[:3]) for r in rows]
    assert np.allclose(obs.value, [r[3] for r in rows])
    assert np.allclose(obs.sigma, [r[4] for r in rows])


def test_fcf_saved_as_hkl(tmp_path):
    """SHELX LIST 4 .fcf (F²calc, F²obs, σ) under a .hkl name: F²obs and σ are read."""
    _check(_paired(tmp_path, "tiny.hkl", FCF_LIST4))
    assert reflection_file_layout(FCF_LIST4.encode()) == "cif"


def test_fcf_saved_as_hkl_reaches_the_structure(tmp_path):
    (tmp_path / "tiny.cif").write_text(CIF)
    (tmp_path / "tiny.hkl").write_text(FCF_LIST4)
    (s,) = read_cif(tmp_path / "tiny.cif")
    assert isinstance(s, Structure) and s.observations is not None
    assert s.observations.value.tolist() == [12.5, 7.25, 100.0]


def test_fcf_with_crlf_and_upper_case_tags(tmp_path):
    text = FCF_LIST4.replace("_refln_index", "_REFLN_INDEX").replace("\n", "\r\n")
    _check(_paired(tmp_path, "tiny.fcf", text.encode()))


def test_hkl_text_saved_as_fcf(tmp_path):
    _check(_paired(tmp_path, "tiny.fcf", _shelx(HKL)))


@pytest.mark.parametrize("keys, kind", [
    ("h= k= l= F_exp= F_sigma=", "F"),
    ("H= K= L= F_EXP= F_SIGMA=", "F"),
    ("h = k = l = f_exp = f_sigma =", "F"),
    ("h= k= l= I_exp= I_sigma=", "F2"),
])
def test_tonto_keys_in_any_case_and_spacing(tmp_path, keys, kind):
    rows = "\n".join(f"  {h} {k} {l} {v} {s}" for h, k, l, v, s in HKL)
    text = (f"! a Tonto reflection file\nreflection_data= {{\n   keys= {{ {keys} }}\n"
            f"   data= {{\n{rows}\n! 9 9 9 1.0 1.0 commented out\n   }}\n}}\n")
    _check(_paired(tmp_path, "tiny.hkl", text), kind=kind)
    _check(_paired(tmp_path, "tiny.hkl", text.replace("\n", "\r\n").encode()), kind=kind)


def test_tonto_attached_braces_and_upper_case_marker(tmp_path):
    rows = " ".join(f"{h} {k} {l} {v} {s}\n" for h, k, l, v, s in HKL)
    text = f"REFLECTION_DATA={{keys={{h= k= l= F_exp= F_sigma=}} data={{\n{rows}}}}}\n"
    _check(_paired(tmp_path, "tiny.hkl", text), kind="F")


@pytest.mark.parametrize("variant", ["crlf", "blank-lines", "comments", "no-terminator",
                                     "junk-after-terminator", "free-format", "tabs", "batch"])
def test_shelx_hkl_variants(tmp_path, variant):
    text = _shelx(HKL)
    if variant == "crlf":
        text = _shelx(HKL, eol="\r\n")
    elif variant == "blank-lines":
        text = "\n\n" + text.replace("\n", "\n\n", 1)
    elif variant == "comments":
        text = "# written by hand\n! another comment\n" + text
    elif variant == "no-terminator":
        text = _shelx(HKL, terminator=False)
    elif variant == "junk-after-terminator":
        text += "TITL this is the .ins copied after the data\n   1   2   3 garbage\n"
    elif variant == "free-format":
        text = "".join(f"{h} {k} {l} {v} {s}\n" for h, k, l, v, s in HKL) + "0 0 0 0 0\n"
    elif variant == "tabs":
        text = "".join(f"{h}\t{k}\t{l}\t{v}\t{s}\n" for h, k, l, v, s in HKL)
    elif variant == "batch":
        text = "".join(f"{h:4d}{k:4d}{l:4d}{v:8.2f}{s:8.2f}   1\n" for h, k, l, v, s in HKL)
    _check(_paired(tmp_path, "tiny.hkl", text))


def test_hklf3_paired(tmp_path):
    _check(_paired(tmp_path, "tiny.hkl", _shelx(HKL), hklf=3), kind="F")


def test_unreadable_paired_file_is_a_reason_not_an_error(tmp_path):
    msg = _paired(tmp_path, "tiny.hkl", "this is not a reflection file\n")
    assert isinstance(msg, str) and "tiny.hkl" in msg and "line 1" in msg
    msg = _paired(tmp_path, "tiny.hkl", "data_x\nloop_\n_refln_index_h\n_refln_index_k\n1\n2\n")
    assert isinstance(msg, str) and "no measured _refln_ column" in msg
    with pytest.raises(ReflectionError):
        read_reflection_file(tmp_path / "tiny.hkl")
    with pytest.raises(ReflectionError):
        parse_shelx_hkl("# only a comment\n", 4)
