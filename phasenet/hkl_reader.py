"""Measured reflections: embedded SHELX hkl, ``_refln_`` loops, paired .hkl/.fcf files.

Returns :class:`phasenet.structure.Observations` (unmerged, as in the file), or
raises :class:`ReflectionError` with a reason; merging onto the canonical grid
happens in :mod:`phasenet.merging`.

Layouts understood:
- SHELX HKLF 4 (h k l F² σ) and HKLF 3 (h k l F σ), fixed format 3I4,2F8.2 with a
  whitespace-separated fallback; reading stops at the 0 0 0 terminator. The HKLF
  code comes from the embedded .res (``HKLF n``), else 4.
- ``_refln_index_h/k/l`` loops with ``_refln_F_squared_meas``,
  ``_refln_intensity_meas`` or ``_refln_F_meas`` (and matching sigmas).
- Tonto ``reflection_data= { keys= { h= k= l= f_exp= f_sigma= } data= {...}}``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from phasenet import _cctbx_first  # noqa: F401
import gemmi  # noqa: E402

from phasenet.structure import Observations  # noqa: E402


class ReflectionError(ValueError):
    """Measured reflections that exist but cannot be read."""


_HKLF_RE = re.compile(r"^\s*HKLF\s+(-?\d+)", re.IGNORECASE | re.MULTILINE)


def hklf_code(block) -> int:
    """The HKLF code from the block's embedded SHELX instructions, else 4.

    ``_refine_ls_structure_factor_coef`` is not used: it describes the refinement,
    not the reflection file (Tonto's glyala CIF says F beside an F² file).
    """
    res = block.find_value("_shelx_res_file") or block.find_value("_iucr_refine_instructions_details")
    if res:
        m = _HKLF_RE.search(gemmi.cif.as_string(res))
        if m:
            return abs(int(m.group(1)))
    return 4


def parse_shelx_hkl(text: str, hklf: int = 4, origin: str = "SHELX hkl") -> Observations:
    """Parse SHELX hkl text (HKLF 3 or 4). Stops at the 0 0 0 line."""
    if hklf not in (3, 4):
        raise ReflectionError(f"HKLF {hklf} is not supported (only 3 and 4)")
    fast = _fixed_format_fast(text)
    if fast is not None:
        a = fast
        kind = "F2" if hklf == 4 else "F"
        if not len(a):
            raise ReflectionError(f"{origin}: no reflections")
        return Observations(hkl=a[:, :3].astype(np.int32), value=a[:, 3], sigma=a[:, 4],
                            kind=kind, origin=origin)
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row = _fixed_row(line)
        if row is None:
            row = _free_row(line)
        if row is None:
            raise ReflectionError(f"{origin}: line {lineno} is not 'h k l value sigma': {line.strip()[:40]!r}")
        if row[0] == row[1] == row[2] == 0:
            break
        rows.append(row)
    return _observations(rows, "F2" if hklf == 4 else "F", origin)


_FIXED = np.dtype([("h", "S4"), ("k", "S4"), ("l", "S4"), ("v", "S8"), ("s", "S8")])


def _fixed_format_fast(text: str) -> np.ndarray | None:
    """Vectorised 3I4,2F8 parse (rows h k l value sigma), or None to fall back."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return None
    try:
        buf = "".join(ln[:28].ljust(28) for ln in lines).encode("ascii")
    except UnicodeEncodeError:
        return None
    rec = np.frombuffer(buf, dtype=_FIXED)
    try:
        hkl = np.stack([rec["h"].astype(np.int64), rec["k"].astype(np.int64),
                        rec["l"].astype(np.int64)], axis=1)
        value = rec["v"].astype(np.float64)
        blank = np.char.strip(rec["s"]) == b""
        sigma = np.where(blank, b"nan", rec["s"]).astype(np.float64)
    except ValueError:
        return None
    end = np.flatnonzero((hkl == 0).all(axis=1))
    n = end[0] if len(end) else len(hkl)
    out = np.column_stack([hkl[:n].astype(np.float64), value[:n], sigma[:n]])
    if not np.isfinite(out[:, 3]).all():
        return None
    return out


def _fixed_row(line: str):
    try:
        h, k, l = int(line[0:4]), int(line[4:8]), int(line[8:12])
        v = float(line[12:20])
        s = float(line[20:28]) if line[20:28].strip() else np.nan
        return h, k, l, v, s
    except ValueError:
        return None


def _free_row(line: str):
    parts = line.split()
    if len(parts) < 4:
        return None
    try:
        h, k, l = (int(p) for p in parts[:3])
        v = float(parts[3])
        s = float(parts[4]) if len(parts) > 4 else np.nan
        return h, k, l, v, s
    except ValueError:
        return None


def _observations(rows, kind: str, origin: str) -> Observations:
    if not rows:
        raise ReflectionError(f"{origin}: no reflections")
    a = np.array(rows, dtype=np.float64)
    value, sigma = a[:, 3], a[:, 4]
    if not np.isfinite(value).all():
        raise ReflectionError(f"{origin}: non-numeric measured values")
    return Observations(hkl=a[:, :3].astype(np.int32), value=value, sigma=sigma, kind=kind, origin=origin)


_REFLN_COLUMNS = (
    ("_refln_F_squared_meas", "_refln_F_squared_sigma", "F2"),
    ("_refln_intensity_meas", "_refln_intensity_sigma", "F2"),
    ("_refln_F_meas", "_refln_F_sigma", "F"),
)


def _refln_loop(block, origin: str) -> Observations | None:
    if len(block.find_loop("_refln_index_h")) == 0:
        return None
    for value_tag, sigma_tag, kind in _REFLN_COLUMNS:
        if len(block.find_loop(value_tag)) == 0:
            continue
        tags = ["_refln_index_h", "_refln_index_k", "_refln_index_l", value_tag]
        has_sigma = len(block.find_loop(sigma_tag)) > 0
        if has_sigma:
            tags.append(sigma_tag)
        table = block.find(tags)
        rows = []
        for r in table:
            try:
                h, k, l = (int(r[i]) for i in range(3))
            except ValueError:
                raise ReflectionError(f"{origin}: non-integer Miller index in row {list(r)[:3]}") from None
            if r[3] in ("?", "."):
                continue
            try:
                v = gemmi.cif.as_number(r[3])
                s = gemmi.cif.as_number(r[4]) if has_sigma else np.nan
            except Exception:
                raise ReflectionError(f"{origin}: non-numeric {value_tag} {r[3]!r}") from None
            rows.append((h, k, l, v, s))
        return _observations(rows, kind, origin)
    return None


def observations_from_block(block, source: str = "") -> Observations | None:
    """Measured reflections embedded in a CIF block, or None if there are none."""
    hkl_text = block.find_value("_shelx_hkl_file")
    if hkl_text:
        text = gemmi.cif.as_string(hkl_text)
        if text.strip():
            return parse_shelx_hkl(text, hklf_code(block), "_shelx_hkl_file")
    return _refln_loop(block, "_refln loop")


def parse_tonto(text: str, origin: str) -> Observations:
    m = re.search(r"keys=\s*\{([^}]*)\}", text)
    if not m:
        raise ReflectionError(f"{origin}: tonto reflection file without keys")
    keys = [k.strip().rstrip("=") for k in m.group(1).split()]
    try:
        ih, ik, il = keys.index("h"), keys.index("k"), keys.index("l")
    except ValueError:
        raise ReflectionError(f"{origin}: tonto keys lack h, k or l") from None
    if "f_exp" in keys:
        iv, kind = keys.index("f_exp"), "F"
    elif "i_exp" in keys:
        iv, kind = keys.index("i_exp"), "F2"
    else:
        raise ReflectionError(f"{origin}: tonto keys have neither f_exp nor i_exp")
    isig = keys.index("f_sigma") if kind == "F" and "f_sigma" in keys else (
        keys.index("i_sigma") if "i_sigma" in keys else None)
    body = text[m.end():]
    start = body.find("data=")
    rows = []
    for line in body[start + 5 if start >= 0 else 0:].splitlines():
        parts = line.replace("{", " ").replace("}", " ").split()
        if len(parts) < len(keys):
            continue
        try:
            nums = [float(p) for p in parts[: len(keys)]]
        except ValueError:
            continue
        rows.append((int(nums[ih]), int(nums[ik]), int(nums[il]), nums[iv],
                     nums[isig] if isig is not None else np.nan))
    return _observations(rows, kind, origin)


def read_hkl_file(path: Path, hklf: int = 4) -> Observations:
    text = path.read_text(errors="replace")
    origin = f"paired {path.name}"
    if "reflection_data=" in text:
        return parse_tonto(text, origin)
    return parse_shelx_hkl(text, hklf, origin)


def read_fcf_file(path: Path) -> Observations:
    try:
        doc = gemmi.cif.read(str(path))
    except Exception as exc:
        raise ReflectionError(f"paired {path.name} is not readable CIF ({exc})") from None
    for block in doc:
        obs = _refln_loop(block, f"paired {path.name}")
        if obs is not None:
            return obs
    raise ReflectionError(f"paired {path.name} has no measured _refln_ column")


def paired_observations(cif_path: Path, hklf: int = 4) -> Observations | str | None:
    """Observations from ``stem.hkl`` (preferred) or ``stem.fcf`` beside a CIF.

    Returns None when there is no paired file and an error message (str) when there
    is one that cannot be read, so the structure itself still builds.
    """
    for suffix, reader in ((".hkl", lambda p: read_hkl_file(p, hklf)), (".fcf", read_fcf_file)):
        p = cif_path.with_suffix(suffix)
        if p.is_file():
            try:
                return reader(p)
            except (ReflectionError, OSError) as exc:
                return str(exc)
    return None
