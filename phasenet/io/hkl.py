"""Measured reflections: embedded SHELX hkl, ``_refln_`` loops, paired .hkl/.fcf files.

Returns :class:`phasenet.structure.Observations` (unmerged, as in the file), or
raises :class:`ReflectionError` with a reason; merging onto the canonical grid
happens in :mod:`phasenet.physics.merging`.

Layouts understood:
- SHELX HKLF 4 (h k l F² σ) and HKLF 3 (h k l F σ), fixed format 3I4,2F8.2 with a
  whitespace-separated fallback; reading stops at the 0 0 0 terminator. The HKLF
  code comes from the embedded .res (``HKLF n``), else 4.
- ``_refln_index_h/k/l`` loops with ``_refln_F_squared_meas``,
  ``_refln_intensity_meas`` or ``_refln_F_meas`` (and matching sigmas).
- Tonto ``reflection_data= { keys= { h= k= l= f_exp= f_sigma= } data= {...}}`` (keys
  in any case, ``F_exp=`` as well as ``f_exp=``; ``!`` comments).

A paired reflection file is recognised by its content, not its name
(:func:`read_reflection_file`): a SHELX ``.fcf`` (a CIF with a ``_refln_`` loop) saved as
``.hkl``, a Tonto file, or SHELX hkl text under either name. Everywhere: CRLF line
ends, blank lines, and (in hkl text) comment lines starting with ``#`` or ``!``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

import gemmi

from phasenet.structure import Observations


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


def parse_shelx_hkl(text: str | bytes, hklf: int = 4, origin: str = "SHELX hkl") -> Observations:
    """Parse SHELX hkl text (HKLF 3 or 4; str, or bytes as in the file). Stops at the
    0 0 0 line."""
    if hklf not in (3, 4):
        raise ReflectionError(f"HKLF {hklf} is not supported (only 3 and 4)")
    fast = _fixed_format_fast(text)
    if fast is None and isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if fast is not None:
        a = fast
        kind = "F2" if hklf == 4 else "F"
        if not len(a):
            raise ReflectionError(f"{origin}: no reflections")
        return Observations(hkl=a[:, :3].astype(np.int32), value=a[:, 3], sigma=a[:, 4],
                            kind=kind, origin=origin)
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip()[:1] in ("#", "!"):
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


_SPACE, _MINUS, _PLUS, _DOT, _ZERO = 32, 45, 43, 46, 48


def _fixed_format_fast(text: str | bytes) -> np.ndarray | None:
    """Vectorised 3I4,2F8 parse (rows h k l value sigma up to the 0 0 0 line), or None
    to fall back to the line-by-line parser (which reports the offending line).

    The first 28 characters of the lines become a (28, lines) byte matrix without a
    Python loop over lines (a plain reshape when the lines have equal lengths, as
    SHELX writes them); the right-aligned fields are decoded with byte comparisons, a
    decimal exactly as float() reads it (an integer mantissa of at most 8 digits divided
    by a power of ten: one rounding). Lines after the terminator are never decoded.
    """
    if isinstance(text, bytes):
        raw = text
    else:
        try:
            raw = text.encode("ascii")
        except UnicodeEncodeError:
            return None
    buf = np.frombuffer(raw, dtype=np.uint8)
    if not len(buf):
        return None
    nl = np.flatnonzero(buf == 10)
    starts = np.concatenate([[0], nl + 1])
    ends = np.concatenate([nl, [len(buf)]])
    ends = ends - ((ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13))  # CR LF
    # blank lines (spaces, tabs, form feeds only) are skipped, as str.strip() does
    filled = np.ones(len(starts), dtype=bool)
    short = np.flatnonzero(ends - starts < 12)  # a line with h k l is at least 12 long
    for i in short:
        filled[i] = bool(raw[starts[i]:ends[i]].strip())
    starts, ends = starts[filled], ends[filled]
    if not len(starts):
        return None
    m = _uniform_block(buf, starts, ends)
    if m is None:  # lines of different lengths before the terminator: gather them
        padded = np.concatenate([buf, np.full(28, _SPACE, dtype=np.uint8)])
        idx = starts[None, :] + np.arange(28)[:, None]
        m = np.where(np.arange(28)[:, None] < (ends - starts)[None, :], padded[idx],
                     np.uint8(_SPACE))
    hkl = np.empty((m.shape[1], 3), dtype=np.int64)
    ok = np.ones(m.shape[1], dtype=bool)
    for j in range(3):
        hkl[:, j], valid, _ = _decode_field(m[4 * j:4 * j + 4], integer=True)
        ok &= valid
    end = np.flatnonzero(ok & (hkl == 0).all(axis=1))
    n = int(end[0]) if len(end) else m.shape[1]
    if not ok[:n].all():
        return None
    m, hkl = m[:, :n], hkl[:n]
    value, v_ok, _ = _decode_field(m[12:20])
    sigma, s_ok, s_blank = _decode_field(m[20:28])
    if v_ok.all() and (s_ok | s_blank).all():
        sigma[s_blank] = np.nan
    else:  # exponents, left-aligned numbers ...: numpy's conversion of the two fields
        rec = np.frombuffer(np.ascontiguousarray(m[12:28].T).tobytes(),
                            dtype=np.dtype([("v", "S8"), ("s", "S8")]))
        try:
            value = rec["v"].astype(np.float64)
            sigma = np.where(s_blank, b"nan", rec["s"]).astype(np.float64)
        except ValueError:
            return None
    out = np.column_stack([hkl.astype(np.float64), value, sigma])
    if not np.isfinite(out[:, 3]).all():
        return None
    return out


def _uniform_block(buf, starts, ends) -> np.ndarray | None:
    """(28, k) bytes of the first k lines when they are consecutive, of one length
    (>= 28) and include a line starting '   0   0   0' (or are all the lines)."""
    length = ends - starts
    n_line = int(length[0])
    if n_line < 28:
        return None
    step = int(starts[1] - starts[0]) if len(starts) > 1 else n_line + 1
    same = (length == n_line) & (starts == starts[0] + step * np.arange(len(starts)))
    k = int(np.argmin(same)) if not same.all() else len(starts)
    if k < len(starts):  # the terminator must be among the uniform lines
        lo = int(starts[0]) - 1
        at = buf[max(lo, 0):int(starts[k])].tobytes().find(b"\n   0   0   0")
        if at < 0 and not (lo < 0 and buf[:12].tobytes() == b"   0   0   0"):
            return None
    block = buf[starts[0]:starts[0] + step * k]
    if len(block) < step * k:  # last line without its newline
        block = np.concatenate([block, np.full(step * k - len(block), _SPACE, np.uint8)])
    return np.ascontiguousarray(block.reshape(k, step)[:, :28].T)


def _decode_field(f: np.ndarray, integer: bool = False):
    """A right-aligned fixed-width number per column of the byte matrix ``f`` (width
    x rows): (value, valid, blank). Valid: spaces, an optional sign, digits with at most
    one point (none in an integer), at least one digit, ending in the last position."""
    w, n = f.shape
    total = np.zeros(n)  # positional value, a point counting as a zero digit
    left = np.zeros(n)  # the part left of the point (one power of ten too many)
    seen_ink = np.zeros(n, dtype=bool)
    seen_dot = np.zeros(n, dtype=bool)
    valid = np.ones(n, dtype=bool)
    any_digit = np.zeros(n, dtype=bool)
    minus = np.zeros(n, dtype=bool)
    n_dot = np.zeros(n, dtype=np.int8)
    decimals = np.zeros(n, dtype=np.int8)
    for c in range(w):
        row = f[c]
        digit = (row >= _ZERO) & (row <= _ZERO + 9)
        dot = row == _DOT
        space = row == _SPACE
        sign = (row == _MINUS) | (row == _PLUS)
        # spaces, then an optional sign, then digits and points to the end
        valid &= digit | dot | ((space | sign) & ~seen_ink)
        seen_ink |= ~space
        any_digit |= digit
        minus |= row == _MINUS
        n_dot += dot
        decimals += digit & seen_dot
        seen_dot |= dot
        v = np.where(digit, row - np.uint8(_ZERO), np.uint8(0)) * (10.0 ** (w - 1 - c))
        total += v
        left += v * ~seen_dot
    blank = ~seen_ink
    valid &= any_digit & (n_dot <= (0 if integer else 1))
    mant = total - left + left / 10.0  # left is a multiple of 10 where a point follows
    if integer:
        return np.where(minus, -total, total).astype(np.int64), valid, blank
    mant = np.where(seen_dot, mant, total)
    value = mant / _POW10[decimals]  # exact integer / exact power of ten: one rounding
    return np.where(minus, -value, value), valid, blank


_POW10 = 10.0 ** np.arange(9)


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
        has_sigma = len(block.find_loop(sigma_tag)) > 0
        fast = _refln_fast(block, value_tag, sigma_tag if has_sigma else None)
        if fast is not None:
            hkl, value, sigma = fast
            return _observations_array(hkl, value, sigma, kind, origin)
        tags = ["_refln_index_h", "_refln_index_k", "_refln_index_l", value_tag]
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


def _refln_fast(block, value_tag: str, sigma_tag: str | None):
    """(hkl, value, sigma) of a ``_refln_`` loop through gemmi's ReflnBlock (C++), rows
    with '?' or '.' values dropped; None whenever the row-by-row reader must decide
    (indices that are not plain integers, non-numeric values, columns in other loops)."""
    tags = ["_refln_index_h", "_refln_index_k", "_refln_index_l", value_tag]
    if sigma_tag is not None:
        tags.append(sigma_tag)
    item = block.find_loop_item("_refln_index_h")
    if item is None or item.loop is None or any(t not in item.loop.tags for t in tags):
        return None
    values = block.find_loop(value_tag)
    try:
        # gemmi moves the block's contents into the ReflnBlock: give it a copy of the loop
        doc = gemmi.cif.Document()
        copy = doc.add_new_block("refln")
        copy.add_item(item)
        rb = gemmi.hkl_cif_as_refln_block(copy)
        hkl = np.asarray(rb.make_miller_array(), dtype=np.int32)
        value = np.asarray(rb.make_float_array(value_tag[len("_refln_"):]), dtype=np.float64)
        sigma = (np.asarray(rb.make_float_array(sigma_tag[len("_refln_"):]), dtype=np.float64)
                 if sigma_tag is not None else np.full(len(value), np.nan))
    except Exception:  # indices that are not integers, ...: the row-by-row reader says why
        return None
    if len(hkl) != len(value) or len(sigma) != len(value):
        return None
    missing = np.flatnonzero(~np.isfinite(value))
    if len(missing):
        if any(values[int(i)] not in ("?", ".") for i in missing):
            return None
        keep = np.isfinite(value)
        hkl, value, sigma = hkl[keep], value[keep], sigma[keep]
    return hkl, value, sigma


def _observations_array(hkl, value, sigma, kind: str, origin: str) -> Observations:
    if not len(value):
        raise ReflectionError(f"{origin}: no reflections")
    return Observations(hkl=np.ascontiguousarray(hkl, dtype=np.int32), value=value, sigma=sigma,
                        kind=kind, origin=origin)


def observations_from_block(block, source: str = "", hkl_text: str | bytes | None = None
                            ) -> Observations | None:
    """Measured reflections embedded in a CIF block, or None if there are none.

    ``hkl_text``: the block's ``_shelx_hkl_file`` text when the caller took it out of the
    file before parsing it (see :func:`phasenet.io.cif.read_cif`)."""
    if hkl_text is None:
        value = block.find_value("_shelx_hkl_file")
        hkl_text = gemmi.cif.as_string(value) if value else None
    if hkl_text and hkl_text.strip():
        return parse_shelx_hkl(hkl_text, hklf_code(block), "_shelx_hkl_file")
    return _refln_loop(block, "_refln loop")


_TONTO_KEYS = re.compile(r"keys\s*=\s*\{([^}]*)\}", re.IGNORECASE)
_TONTO_DATA = re.compile(r"data\s*=", re.IGNORECASE)
_TONTO_MARK = re.compile(r"reflection_data\s*=", re.IGNORECASE)


def parse_tonto(text: str, origin: str) -> Observations:
    """A Tonto reflection file: ``keys= { h= k= l= f_exp= f_sigma= }`` (or ``i_exp=``,
    ``i_sigma=``; any case, ``=`` attached or not), then ``data= { rows }``."""
    text = "\n".join(line.split("!", 1)[0] for line in text.splitlines())  # comments
    m = _TONTO_KEYS.search(text)
    if not m:
        raise ReflectionError(f"{origin}: tonto reflection file without keys")
    keys = [k.strip().rstrip("=").strip().lower() for k in m.group(1).replace("=", "= ").split()]
    keys = [k for k in keys if k]
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
    d = _TONTO_DATA.search(body)
    rows = []
    for line in body[d.end() if d else 0:].splitlines():
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


_CIF_START = re.compile(rb"^\s*(?:#[^\n]*\n\s*)*(?:data_|global_)", re.IGNORECASE)
_REFLN_TAG = re.compile(rb"^\s*_refln[_.]index_h\b", re.IGNORECASE | re.MULTILINE)


def reflection_file_layout(raw: bytes) -> str:
    """What a reflection file is, from its first bytes: ``"cif"`` (a SHELX .fcf or any
    CIF with a ``_refln_`` loop), ``"tonto"`` or ``"shelx"`` (hkl text)."""
    head = raw[:65536]
    if _CIF_START.match(head) or _REFLN_TAG.search(head):
        return "cif"
    if _TONTO_MARK.search(head.decode("latin-1")):
        return "tonto"
    return "shelx"


def read_reflection_file(path: Path, hklf: int = 4) -> Observations:
    """Measured reflections from ``path``, whatever its name says: see
    :func:`reflection_file_layout`."""
    raw = Path(path).read_bytes()
    origin = f"paired {Path(path).name}"
    layout = reflection_file_layout(raw)
    if layout == "cif":
        try:
            doc = gemmi.cif.read_string(raw)
        except Exception as exc:
            raise ReflectionError(f"{origin} is not readable CIF ({_first_line(exc)})") from None
        for block in doc:
            obs = _refln_loop(block, origin)
            if obs is not None:
                return obs
        raise ReflectionError(f"{origin} has no measured _refln_ column")
    text = raw.decode("utf-8", errors="replace")
    if layout == "tonto":
        return parse_tonto(text, origin)
    return parse_shelx_hkl(raw if raw.isascii() else text, hklf, origin)


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def read_hkl_file(path: Path, hklf: int = 4) -> Observations:
    """A paired ``.hkl`` (SHELX, Tonto, or a .fcf saved under that name)."""
    return read_reflection_file(path, hklf)


def read_fcf_file(path: Path) -> Observations:
    """A paired ``.fcf`` (a CIF; hkl text under that name is read as such)."""
    return read_reflection_file(path, 4)


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
