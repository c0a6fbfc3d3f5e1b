#!/usr/bin/env python
"""Throughput of the study's naive pipeline vs ``phasenet.build_dataset`` on real CIFs.

One run, one file set, three timed pipelines (wall clock, imports excluded):

naive       the study's pipeline (BRIEF §4): one file at a time in one process,
            ``iotbx.cif.reader(...).build_crystal_structures()`` → for each structure
            a cctbx miller set of the 4630 canonical reflections →
            ``structure_factors_from_scatterers(algorithm='direct').f_calc()`` →
            intensities as numpy, kept in memory (nothing written). Files iotbx cannot
            read and structures whose structure factors fail are skipped and counted.
            The flex.miller_index of the canonical reflections is built once, outside
            the loop (generous to the naive pipeline).
phasenet-wN ``phasenet.build_dataset(files, out.h5, BuildOptions(workers=N))``: reading
            (gemmi), structure factors, merging of measured reflections, normalisation,
            HDF5 parts and their merge — the whole build — with N = all cores.
phasenet-w1 the same with one worker: the algorithmic gain without the parallel one.
no obs      (``--no-obs-row``, on by default) phasenet with one worker and
            ``read_observations=False``: the naive pipeline reads no measured
            reflections, so this row does the same work as naive.

Each row also gives the CPU time (user + system, of the process and its build workers)
per structure: the work done, which other processes on a shared machine do not
inflate as much as the wall clock.

The file set: the real CIFs under ``--data`` (default ../shared/data/real) that BOTH
pipelines read (at least one structure each), decided by an untimed pre-pass, capped
by ``--limit``. The pre-pass also warms the page cache for every pipeline alike.

Accuracy: for each structure both pipelines computed (matched by source path and data
block), amplitude R = Σ||F_ph| − |F_naive|| / Σ|F_naive| over the reflections that are
not systematically absent (cctbx's flags for iotbx's space group), with |F_ph| the
square root of ``intensity_calc`` read back from the HDF5. The naive structure comes
from iotbx's CIF reading, phasenet's from gemmi's; they may differ (special positions,
ions, H atoms without coordinates, ...), which shows up here as a large R. The R values
are therefore also given by category: same atomic model; iotbx read other sites (cctbx
moves atoms within 0.5 Å of a special position onto it, phasenet's tolerance is 0.05 Å)
or other occupancies; atoms without displacement
parameters (phasenet: U_iso = 0.04 Å², the naive pipeline: U = 0). The naive pipeline
also uses cctbx's default n_gaussian form factors, phasenet the IT92 four-Gaussian fits:
that alone gives R ~5e-4 on the same model (~1e-6 with cctbx's it1992 table).

    .venv/bin/python benchmarks/bench_build.py [--limit 300] [--json bench.json]
"""

from __future__ import annotations

import phasenet  # noqa: F401  (must be the first import: cctbx's C++ runtime first)

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def n_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished, waited-for children
    (build workers): the work done, whatever else shares the cores."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def find_cifs(data: Path) -> list[Path]:
    return sorted(p.resolve() for p in data.rglob("*") if p.is_file() and p.suffix.lower() == ".cif")


@contextlib.contextmanager
def quiet():
    """Swallow what iotbx prints while reading damaged files."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def iotbx_read(path: Path) -> dict:
    import iotbx.cif

    return iotbx.cif.reader(file_path=str(path)).build_crystal_structures()


def prepass(files: list[Path]) -> tuple[list[Path], dict]:
    """Files that both iotbx and phasenet read (>= 1 structure each). Not timed."""
    from phasenet.io.cif import ReadFailure, read_cif

    keep, counts = [], {"files": len(files), "iotbx_unreadable": 0, "phasenet_unreadable": 0,
                        "both_readable": 0}
    for f in files:
        try:
            with quiet():
                ok_naive = bool(iotbx_read(f))
        except Exception:
            ok_naive = False
        ok_ph = any(not isinstance(x, ReadFailure) for x in read_cif(f))
        counts["iotbx_unreadable"] += not ok_naive
        counts["phasenet_unreadable"] += not ok_ph
        if ok_naive and ok_ph:
            keep.append(f)
    counts["both_readable"] = len(keep)
    return keep, counts


class Progress:
    """A line per ~10 % of the files."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.t0, self.next = label, total, time.perf_counter(), 1

    def update(self, done: int, structures: int):
        if self.total and done * 10 >= self.next * self.total:
            while done * 10 >= self.next * self.total:
                self.next += 1
            dt = time.perf_counter() - self.t0
            print(f"  [{self.label}] {done}/{self.total} files ({100 * done // self.total:3d} %), "
                  f"{structures} structures, {dt:.1f} s", flush=True)


def run_naive(files: list[Path], hkl: np.ndarray) -> dict:
    from cctbx import miller
    from cctbx.array_family import flex

    indices = flex.miller_index([tuple(int(v) for v in row) for row in hkl])  # once: generous
    results: dict[tuple[str, str], tuple] = {}  # (I_calc, miller set, xray.structure)
    skipped_files, failed_structures = 0, 0
    reasons: dict[str, int] = {}
    progress = Progress("naive", len(files))
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    for i, path in enumerate(files, 1):
        try:
            with quiet():
                structures = iotbx_read(path)
        except Exception:
            skipped_files += 1
            structures = {}
        for block, xs in structures.items():
            try:
                ms = miller.set(xs.crystal_symmetry(), indices, anomalous_flag=False)
                f_calc = ms.structure_factors_from_scatterers(xs, algorithm="direct").f_calc()
                results[(str(path), block)] = (flex.norm(f_calc.data()).as_numpy_array(), ms, xs)
            except Exception as exc:
                failed_structures += 1
                why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:80]
                reasons[why] = reasons.get(why, 0) + 1
        progress.update(i, len(results))
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds() - c0
    return {"seconds": seconds, "cpu_seconds": cpu, "structures": len(results), "skipped_files": skipped_files,
            "failed_structures": failed_structures, "failure_reasons": reasons, "results": results}


def run_phasenet(files: list[Path], out: Path, workers: int, read_observations: bool = True) -> dict:
    from phasenet import BuildOptions, build_dataset

    label = f"phasenet workers={workers}" + ("" if read_observations else ", no measured data")
    print(f"  [{label}] building {len(files)} files ...", flush=True)
    options = BuildOptions(workers=workers, read_observations=read_observations)
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    summary = build_dataset(list(files), out, options, overwrite=True, progress=False)
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds() - c0
    print(f"  [{label}] {summary.n_structures} structures in {seconds:.1f} s, "
          f"{len(summary.failures)} failures", flush=True)
    return {"seconds": seconds, "cpu_seconds": cpu, "structures": summary.n_structures,
            "failures": len(summary.failures),
            "failures_by_kind": summary.failures_by_kind}


def read_calc(h5path: Path) -> dict[tuple[str, str], dict]:
    """intensity_calc, U-defaulted count and atom sites of each structure, by (source, block)."""
    import h5py

    def s(x):
        return x.decode() if isinstance(x, bytes) else str(x)

    with h5py.File(h5path, "r") as h5:
        src = [s(x) for x in h5["structures/source"][...]]
        blk = [s(x) for x in h5["structures/block"][...]]
        n_def = h5["structures/n_u_defaulted"][...]
        ic = h5["intensity_calc"][...]
        off = h5["atoms/offset"][...]
        frac = h5["atoms/frac"][...]
        occ = h5["atoms/occupancy"][...]
    return {(a, b): {"intensity_calc": ic[i], "n_u_defaulted": int(n_def[i]),
                     "frac": frac[off[i]:off[i + 1]], "occupancy": occ[off[i]:off[i + 1]]}
            for i, (a, b) in enumerate(zip(src, blk))}


def _stats(r: np.ndarray, names=None) -> dict:
    out = {"n": int(len(r)), "median_R": float(np.median(r)) if len(r) else None,
           "max_R": float(r.max()) if len(r) else None}
    if names is not None and len(r):
        out["worst"] = names[int(np.argmax(r))]
    return out


def accuracy(naive: dict, phasenet_calc: dict) -> dict:
    """Amplitude R per structure both computed, overall and by why the models may differ.

    Categories (first that applies):
    default_u    phasenet gave U_iso = 0.04 Å² to atoms without displacement parameters
                 (BuildOptions.default_u); iotbx leaves them at U = 0.
    read_differs iotbx's model differs from gemmi's: cctbx moved atoms onto special
                 positions (its tolerance is 0.5 Å, phasenet's 0.05 Å), read other
                 occupancies, or a different number of atoms.
    same_model   neither: both pipelines compute the same atomic model.
    """
    per = []
    for key, (i_naive, ms, xs) in naive.items():
        ph = phasenet_calc.get(key)
        if ph is None:
            continue
        keep = ~np.asarray(ms.sys_absent_flags().data(), dtype=bool)
        f_n = np.sqrt(np.maximum(i_naive[keep], 0.0))
        f_p = np.sqrt(np.maximum(ph["intensity_calc"][keep].astype(np.float64), 0.0))
        den = f_n.sum()
        r = float(np.abs(f_p - f_n).sum() / den) if den > 0 else float("nan")
        sites = np.array(xs.sites_frac())
        occ = np.array([sc.occupancy for sc in xs.scatterers()])
        if ph["n_u_defaulted"] > 0:
            cat = "default_u"
        elif (sites.shape != ph["frac"].shape or np.abs(sites - ph["frac"]).max(initial=0.0) > 1e-4
              or np.abs(occ - ph["occupancy"]).max(initial=0.0) > 1e-4):
            cat = "read_differs"
        else:
            cat = "same_model"
        per.append((key, r, cat))
    r_all = np.array([r for _, r, _ in per if np.isfinite(r)])
    worst = sorted((p for p in per if np.isfinite(p[1])), key=lambda p: -p[1])[:5]
    out = {
        "compared": len(per),
        "only_naive": sum(k not in phasenet_calc for k in naive),
        "only_phasenet": sum(k not in naive for k in phasenet_calc),
        **_stats(r_all),
        "n_R_above_1pct": int((r_all > 0.01).sum()),
        "n_R_above_10pct": int((r_all > 0.10).sum()),
        "by_category": {c: _stats(np.array([r for _, r, cc in per if cc == c and np.isfinite(r)]),
                                  [f"{Path(k[0]).name}#{k[1]}" for k, r, cc in per if cc == c and np.isfinite(r)])
                        for c in ("same_model", "read_differs", "default_u")},
        "worst": [{"structure": f"{Path(k[0]).name}#{k[1]}", "R": r, "category": c} for k, r, c in worst],
    }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder searched for *.cif (default %(default)s)")
    ap.add_argument("--limit", type=int, default=None, help="at most this many files (default: all usable)")
    ap.add_argument("--workers", type=int, default=n_cores(), help="phasenet workers (default: all cores, %(default)s)")
    ap.add_argument("--no-obs-row", action=argparse.BooleanOptionalAction, default=True,
                    help="also time phasenet workers=1 without reading measured reflections (the naive "
                         "pipeline reads none): like-for-like work (default: on)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    from phasenet.reflections import canonical_hkl

    hkl = canonical_hkl()
    all_files = find_cifs(args.data)
    if not all_files:
        print(f"no *.cif under {args.data}", file=sys.stderr)
        return 2
    print(f"pre-pass (not timed): which of {len(all_files)} CIFs under {args.data} both pipelines read ...",
          flush=True)
    t0 = time.perf_counter()
    files, pre = prepass(all_files)
    if args.limit is not None:
        files = files[:args.limit]
    pre["used"] = len(files)
    print(f"  {pre['both_readable']} readable by both (iotbx unreadable {pre['iotbx_unreadable']}, "
          f"phasenet unreadable {pre['phasenet_unreadable']}); using {len(files)} "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    if not files:
        return 2

    load_before = os.getloadavg()
    rows = []
    print("naive pipeline (iotbx.cif → cctbx direct sum, one file at a time, one process):", flush=True)
    naive = run_naive(files, hkl)
    rows.append(("naive (iotbx + cctbx direct)", naive))
    with tempfile.TemporaryDirectory(prefix="bench_build_") as tmp:
        tmp = Path(tmp)
        ph_n = run_phasenet(files, tmp / "out.h5", args.workers)
        calc = read_calc(tmp / "out.h5")
        rows.append((f"phasenet workers={args.workers}", ph_n))
        if args.workers != 1:
            ph_1 = run_phasenet(files, tmp / "out_w1.h5", 1)
            calc1 = read_calc(tmp / "out_w1.h5")
            rows.append(("phasenet workers=1", ph_1))
            same = calc.keys() == calc1.keys() and all(
                np.array_equal(calc[k]["intensity_calc"], calc1[k]["intensity_calc"], equal_nan=True)
                for k in calc)
        else:
            same = True
        if args.no_obs_row:
            rows.append(("phasenet workers=1, no obs", run_phasenet(files, tmp / "out_noobs.h5", 1, False)))
    acc = accuracy(naive["results"], calc)

    base = naive["structures"] / naive["seconds"]
    print()
    load_after = os.getloadavg()
    print(f"files: {len(files)} real CIFs from {args.data}; cores: {n_cores()}; "
          f"reflections per structure: {len(hkl)}; load average before/after "
          f"{load_before[0]:.2f}/{load_after[0]:.2f} (other processes share the cores)")
    head = (f"{'pipeline':<30} {'structures':>10} {'seconds':>9} {'structures/s':>13} "
            f"{'ms/structure':>13} {'speed-up':>9} {'CPU ms/structure':>17}")
    print(head)
    print("-" * len(head))
    table = []
    for name, r in rows:
        rate = r["structures"] / r["seconds"]
        ms = 1000.0 * r["seconds"] / r["structures"] if r["structures"] else float("nan")
        cpu_ms = 1000.0 * r["cpu_seconds"] / r["structures"] if r["structures"] else float("nan")
        print(f"{name:<30} {r['structures']:>10d} {r['seconds']:>9.2f} {rate:>13.1f} {ms:>13.2f} "
              f"{rate / base:>8.1f}x {cpu_ms:>17.2f}")
        table.append({"pipeline": name, "structures": r["structures"], "seconds": r["seconds"],
                      "structures_per_s": rate, "ms_per_structure": ms, "speedup_vs_naive": rate / base,
                      "cpu_ms_per_structure": cpu_ms,
                      **{k: v for k, v in r.items() if k not in ("results", "seconds", "structures")}})
    print("(CPU ms/structure: user + system time of the pipeline's processes, workers included:"
          " the work done, whatever else shares the cores)")
    print(f"naive skipped: {naive['skipped_files']} unreadable files, {naive['failed_structures']} "
          f"structures whose structure factors failed; phasenet failures: {ph_n['failures']} "
          f"{ph_n['failures_by_kind'] or ''}")
    if naive["failure_reasons"]:
        top = sorted(naive["failure_reasons"].items(), key=lambda kv: -kv[1])[:3]
        print("  naive structure-factor failures: " + "; ".join(f"{n}x {why}" for why, n in top))
    print(f"ACCURACY amplitude R vs naive over non-absent reflections, {acc['compared']} structures: "
          f"median {acc['median_R']:.2e}, max {acc['max_R']:.2e}; R > 1 %: {acc['n_R_above_1pct']}, "
          f"R > 10 %: {acc['n_R_above_10pct']} (naive structure from iotbx's CIF reading, phasenet's "
          f"from gemmi's)")
    names = {"same_model": "same atomic model", "read_differs": "iotbx read other sites/occupancies",
             "default_u": "no ADPs in CIF: phasenet U_iso=0.04, naive U=0"}
    for c, st in acc["by_category"].items():
        if st["n"]:
            print(f"  {names[c]:<48} {st['n']:>4} structures: median R {st['median_R']:.2e}, "
                  f"max {st['max_R']:.2e} ({st['worst']})")
    if acc["worst"] and acc["max_R"] > 0.01:
        print("  largest R: " + ", ".join(f"{w['structure']} {w['R']:.3f} ({w['category']})"
                                          for w in acc["worst"]))
    print(f"phasenet workers={args.workers} and workers=1 give identical intensity_calc: {same}")

    if args.json:
        out = {"data": str(args.data), "cores": n_cores(), "workers": args.workers,
               "reflections": len(hkl), "prepass": pre, "pipelines": table, "accuracy": acc,
               "identical_across_workers": same,
               "load_average_before": load_before, "load_average_after": load_after, "python": platform.python_version(),
               "phasenet_version": phasenet.__version__, "machine": platform.platform(),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
