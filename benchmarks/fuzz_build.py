#!/usr/bin/env python
"""Damaged CIF files by the thousand, and ``phasenet build`` on them (issue 15).

Writes N seeded mutations of real CIF files into a folder, then (unless ``--no-build``)
runs ``phasenet build`` on that folder as a child process and reports its wall time,
peak memory (the largest resident set of the build and of any one worker, from
``getrusage``, as ``/usr/bin/time -v`` reports "Maximum resident set size"), exit
status, and whether every input is in the dataset or in its failures with a reason::

    python benchmarks/fuzz_build.py --n 3000 --out /tmp/fuzz --workers 2

Mutations (``MUTATIONS``; variant i of a run with seed s uses ``default_rng([s, i])``):
truncation, binary noise, garbage numbers, impossible cells and angles, broken
loops, spliced files, duplicated lines, a repeated atom row (up to 20 000 times), an
enormous atom loop (rows copied with shifted coordinates), a megabyte-long line.
``tests/io/test_fuzz.py`` reads a few hundred of them with ``read_cif``.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "real" / "cif"

_NUMBER = re.compile(rb"(?<![\w.])-?\d+(?:\.\d+)?(?:\(\d+\))?(?![\w.])")
_GARBAGE = [b"1e308", b"-1e308", b"nan", b"inf", b"-0.0", b"99999999999", b"-7", b"0",
            b"1.2.3", b"?", b".", b"1e-320", b"12(", b"0x1F", b"\xc3\xa9"]


def _lines(raw: bytes) -> list[bytes]:
    return raw.split(b"\n")


def truncate(raw, rng):
    return raw[:int(rng.integers(0, max(1, len(raw))))]


def binary_noise(raw, rng):
    b = bytearray(raw)
    n = int(rng.integers(1, 64))
    for at in rng.integers(0, max(1, len(b)), n):
        if at < len(b):
            b[at] = int(rng.integers(0, 256))
    if rng.uniform() < 0.3:  # a block of noise
        at = int(rng.integers(0, max(1, len(b))))
        b[at:at] = rng.integers(0, 256, int(rng.integers(16, 4096))).astype(np.uint8).tobytes()
    return bytes(b)


def garbage_numbers(raw, rng):
    p = rng.uniform(0.01, 0.3)

    def sub(m):
        return _GARBAGE[int(rng.integers(len(_GARBAGE)))] if rng.uniform() < p else m.group(0)

    return _NUMBER.sub(sub, raw)


def impossible_cell(raw, rng):
    vals = {b"_cell_length_a": [b"0", b"-5.2", b"1e6", b"0.001", b"?"],
            b"_cell_length_b": [b"0", b"-1", b"1e-9", b"1e300"],
            b"_cell_length_c": [b"0", b"3", b"1e5"],
            b"_cell_angle_alpha": [b"0", b"180", b"200", b"-90", b"359.9"],
            b"_cell_angle_beta": [b"0", b"180", b"179.99", b"1e3", b"nan"],
            b"_cell_angle_gamma": [b"0", b"120.5", b"240", b"1"]}
    out = []
    for line in _lines(raw):
        key = line.strip().split(b" ")[0] if line.strip() else b""
        if key in vals and rng.uniform() < 0.6:
            choices = vals[key]
            line = key + b" " + choices[int(rng.integers(len(choices)))]
        out.append(line)
    return b"\n".join(out)


def broken_loop(raw, rng):
    lines = _lines(raw)
    loops = [i for i, line in enumerate(lines) if line.strip().lower() == b"loop_"]
    if not loops:
        return truncate(raw, rng)
    i = loops[int(rng.integers(len(loops)))]
    what = int(rng.integers(4))
    if what == 0:  # the loop_ keyword removed
        del lines[i]
    elif what == 1:  # a tag removed: every row one value short
        tags = [j for j in range(i + 1, min(i + 40, len(lines))) if lines[j].strip().startswith(b"_")]
        if tags:
            del lines[tags[int(rng.integers(len(tags)))]]
    elif what == 2:  # values dropped from rows
        for j in range(i + 1, min(i + 200, len(lines))):
            parts = lines[j].split()
            if parts and not parts[0].startswith(b"_") and rng.uniform() < 0.3:
                lines[j] = b" ".join(parts[:-1])
    else:  # rows cut in the middle
        for j in range(i + 1, min(i + 200, len(lines))):
            if rng.uniform() < 0.2:
                lines[j] = lines[j][:len(lines[j]) // 2]
    return b"\n".join(lines)


def splice(raw, rng, other: bytes):
    return raw[:int(rng.integers(0, len(raw) + 1))] + other[int(rng.integers(0, len(other) + 1)):]


def duplicate_lines(raw, rng):
    lines = _lines(raw)
    out = []
    for line in lines:
        out.append(line)
        if rng.uniform() < 0.05:
            out += [line] * int(rng.integers(1, 4))
    return b"\n".join(out)


def _atom_rows(lines):
    """Indices of the rows of the first loop with _atom_site_fract_x."""
    for i, line in enumerate(lines):
        if line.strip().lower() == b"loop_":
            j = i + 1
            tags = []
            while j < len(lines) and lines[j].strip().startswith(b"_"):
                tags.append(lines[j].strip().lower())
                j += 1
            if b"_atom_site_fract_x" in tags:
                k = j
                while (k < len(lines) and lines[k].strip() and not lines[k].strip().startswith(b"_")
                       and lines[k].strip().lower() != b"loop_" and not lines[k].startswith(b";")):
                    k += 1
                return tags, list(range(j, k))
    return [], []


def repeated_atom_row(raw, rng, max_repeats: int = 20_000):
    lines = _lines(raw)
    _, rows = _atom_rows(lines)
    if not rows:
        return duplicate_lines(raw, rng)
    n = int(rng.choice([100, 1000, 6000, max_repeats]))
    at = rows[0]
    return b"\n".join(lines[:at] + [lines[at]] * n + lines[at:])


def enormous_atom_loop(raw, rng, max_rows: int = 20_000):
    """The atom rows copied with shifted coordinates: many distinct atoms."""
    lines = _lines(raw)
    tags, rows = _atom_rows(lines)
    if not rows or any(t not in tags for t in (b"_atom_site_fract_x", b"_atom_site_fract_y",
                                               b"_atom_site_fract_z")):
        return duplicate_lines(raw, rng)
    cols = [tags.index(t) for t in (b"_atom_site_fract_x", b"_atom_site_fract_y",
                                    b"_atom_site_fract_z")]
    n = int(rng.integers(1000, max_rows))
    new = []
    for c in range(n):
        parts = lines[rows[c % len(rows)]].split()
        if len(parts) != len(tags):
            continue
        for col in cols:
            parts[col] = f"{rng.uniform():.5f}".encode()
        parts[0] = parts[0] + f"_{c}".encode()
        new.append(b" ".join(parts))
    return b"\n".join(lines[:rows[-1] + 1] + new + lines[rows[-1] + 1:])


def megabyte_line(raw, rng):
    lines = _lines(raw)
    at = int(rng.integers(0, len(lines) + 1))
    kind = int(rng.integers(3))
    size = int(rng.integers(1 << 20, 2 << 20))
    if kind == 0:
        line = b"x" * size
    elif kind == 1:  # one enormous value of a tag
        line = b"_chemical_name_systematic " + b"A" * size
    else:  # numbers without a line end
        line = b" ".join(b"%d" % v for v in rng.integers(0, 1000, size // 4))
    return b"\n".join(lines[:at] + [line] + lines[at:])


MUTATIONS = {
    "truncate": truncate, "binary-noise": binary_noise, "garbage-numbers": garbage_numbers,
    "impossible-cell": impossible_cell, "broken-loop": broken_loop, "splice": splice,
    "duplicate-lines": duplicate_lines, "repeated-atom-row": repeated_atom_row,
    "enormous-atom-loop": enormous_atom_loop, "megabyte-line": megabyte_line,
}


def source_files(data: Path, max_bytes: int = 400_000) -> list[Path]:
    """The real CIFs used as seeds (sorted; large ones with embedded reflections left out)."""
    return sorted(p for p in Path(data).glob("*.cif") if p.stat().st_size <= max_bytes)


def make_variant(sources: list[Path], seed: int, index: int, kinds=None,
                 max_repeats: int = 20_000) -> tuple[str, bytes, str]:
    """(mutation name, damaged bytes, name of the source file) of variant ``index``."""
    rng = np.random.default_rng([seed, index])
    kinds = list(kinds or MUTATIONS)
    kind = kinds[index % len(kinds)]
    src = sources[int(rng.integers(len(sources)))]
    raw = src.read_bytes()
    if kind == "splice":
        out = splice(raw, rng, sources[int(rng.integers(len(sources)))].read_bytes())
    elif kind == "repeated-atom-row":
        out = repeated_atom_row(raw, rng, max_repeats)
    elif kind == "enormous-atom-loop":
        out = enormous_atom_loop(raw, rng, max_repeats)
    else:
        out = MUTATIONS[kind](raw, rng)
    return kind, out, src.name


def write_variants(folder: Path, n: int, seed: int = 0, data: Path = DEFAULT_DATA,
                   max_repeats: int = 20_000) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    sources = source_files(data)
    index = {}
    for i in range(n):
        kind, raw, src = make_variant(sources, seed, i, max_repeats=max_repeats)
        name = f"fuzz-{i:05d}-{kind}.cif"
        (folder / name).write_bytes(raw)
        index[name] = {"mutation": kind, "source": src, "bytes": len(raw)}
    (folder.parent / f"{folder.name}-index.json").write_text(json.dumps(index, indent=1))
    return index


def _tree_rss_kb(pid: int) -> int:
    """Resident memory (kB) of ``pid`` and its descendants now (Linux /proc; 0 elsewhere)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="damaged files (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of real CIFs")
    ap.add_argument("--out", type=Path, default=Path("/tmp/phasenet-fuzz"), help="work folder")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--file-timeout", type=float, default=60.0)
    ap.add_argument("--max-repeats", type=int, default=20_000)
    ap.add_argument("--no-build", action="store_true", help="only write the files")
    args = ap.parse_args(argv)
    cifs = args.out / "cif"
    t0 = time.perf_counter()
    index = write_variants(cifs, args.n, args.seed, args.data, args.max_repeats)
    total = sum(v["bytes"] for v in index.values())
    print(f"wrote {len(index)} damaged files ({total / 1e6:.0f} MB) into {cifs} "
          f"in {time.perf_counter() - t0:.0f} s")
    if args.no_build:
        return 0
    out = args.out / "fuzz.h5"
    cmd = [sys.executable, "-m", "phasenet.cli", "build", str(cifs), "-o", str(out), "--overwrite",
           "--quiet", "--workers", str(args.workers), "--file-timeout", str(args.file_timeout)]
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_total = 0
    import threading

    out_text: dict[str, str] = {}
    reader = threading.Thread(target=lambda: out_text.update(zip(("stdout", "stderr"), proc.communicate())))
    reader.start()
    while reader.is_alive():
        peak_total = max(peak_total, _tree_rss_kb(proc.pid))
        reader.join(timeout=0.25)
    wall = time.perf_counter() - t0
    proc.stdout, proc.stderr = out_text.get("stdout", ""), out_text.get("stderr", "")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # largest process (kB)
    import h5py

    with h5py.File(out, "r") as h5:
        n_structures = int(h5.attrs["n_structures"])
        failures = json.loads(h5.attrs["failures"])
        sources = {s.decode() if isinstance(s, bytes) else s for s in h5["structures/source"][...]}
    failed = {f["source"] for f in failures}
    missing = [n for n in index if str(cifs / n) not in sources | failed]
    no_reason = [f for f in failures if not f.get("reason") or not f.get("kind")]
    kinds: dict[str, int] = {}
    for f in failures:
        kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
    report = {
        "command": " ".join(cmd), "exit_status": proc.returncode, "wall_s": round(wall, 1),
        "peak_rss_one_process_mb": round(peak_kb / 1024),
        "peak_rss_all_processes_mb": round(peak_total / 1024), "load_average_before": load,
        "load_average_after": Path("/proc/loadavg").read_text().split()[:3] if load else [],
        "n_files": len(index), "n_structures": n_structures, "n_failures": len(failures),
        "failures_by_kind": dict(sorted(kinds.items())), "inputs_missing": len(missing),
        "failures_without_reason": len(no_reason), "traceback": "Traceback" in proc.stderr + proc.stdout,
    }
    print(json.dumps(report, indent=1))
    print(proc.stdout[-2000:])
    if proc.stderr.strip():
        print("stderr:", proc.stderr[-2000:])
    return 0 if proc.returncode in (0, 1) and not missing and not no_reason else 1


if __name__ == "__main__":
    sys.exit(main())
