#!/usr/bin/env python
"""Peak memory of ``phasenet.build_dataset`` does not grow with the number of structures.

For each size N (default 200, 1600 and 3200) a folder of N CIF files is made by repeating
one fixed base set of ``--base`` files (default 200) under new names, so every size
draws structures from exactly the same distribution and only N changes. The base set
is either the first real CIFs phasenet reads under ``--data`` (with their paired
.hkl/.fcf files, so measured-data merging is exercised too) or random structures from
``phasenet.pipeline.demo.write_random_cifs`` (``--source random``).

Each build runs in a fresh subprocess (``BuildOptions(workers=N)``, all cores by
default). Reported per size:

import      ru_maxrss of the building process after ``import phasenet``, MiB (baseline)
parent      ru_maxrss of the building process (RUSAGE_SELF) after the build, MiB
worker      largest ru_maxrss among its worker processes (RUSAGE_CHILDREN), MiB; the
            workers are forked, so this includes pages shared with the parent
tree PSS    peak of the summed proportional set size (/proc/PID/smaps_rollup) of the
            building process and all its descendants, sampled every ``--interval`` s
            (PSS splits pages shared between forked workers, so the sum does not
            count them twice)

The orchestrating process (this script without ``--child``/``--setup``) imports no
cctbx or gemmi: Linux carries a process's RSS high-water mark across fork and exec into
the started program's ru_maxrss, so a heavy orchestrator would put a floor under the
numbers it measures. Choosing or generating the base set and each build run in
subprocesses, which import phasenet first (cctbx import order).

A worker holds one part of min(chunk_size, ceil(N/16)) files at a time, so memory may
grow with the part size up to N = 16 x chunk_size (1024 files by default) and must be
flat beyond; ``--chunk-size 13`` gives 200 and 1600 files equal parts. The last lines
compare the smallest with the largest build and, where part sizes differ, the builds
with the largest build's part size.

    .venv/bin/python benchmarks/bench_memory.py [--sizes 200 1600 3200] [--source real|random]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
PAIRED_SUFFIXES = (".hkl", ".fcf", ".HKL", ".FCF")


def n_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- child
def child(folder: str, output: str, workers: int, chunk_size: int) -> None:
    """Build one dataset and print its resource usage as JSON (runs in a subprocess)."""
    import phasenet  # noqa: F401  (first: cctbx's C++ runtime before gemmi)
    from phasenet import BuildOptions, build_dataset

    after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    options = BuildOptions(workers=workers, chunk_size=chunk_size)
    summary = build_dataset([folder], output, options, overwrite=True, progress=False)
    seconds = time.perf_counter() - t0
    print(json.dumps({
        "structures": summary.n_structures, "files": summary.n_inputs, "failures": len(summary.failures),
        "seconds": seconds, "maxrss_after_import_kib": after_import,
        "maxrss_self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "maxrss_children_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        "output_bytes": os.path.getsize(output),
    }))


# --------------------------------------------------------------------------- sampling
def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out += [int(x) for x in fh.read().split()]
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def _pss_kib(pid: int) -> int:
    """PSS (or RSS where smaps_rollup is missing) of one process, KiB; 0 if it is gone."""
    for path, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            with open(path) as fh:
                for line in fh:
                    if line.startswith(key):
                        return int(line.split()[1])
        except OSError:
            continue
    return 0


def measure(folder: Path, output: Path, workers: int, chunk_size: int, interval: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", str(folder), str(output), str(workers),
           str(chunk_size)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_tree, peak_procs = 0, 0
    while proc.poll() is None:
        pids = _tree(proc.pid)
        peak_tree = max(peak_tree, sum(_pss_kib(p) for p in pids))
        peak_procs = max(peak_procs, len(pids))
        time.sleep(interval)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"build subprocess failed ({proc.returncode}):\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_tree_pss_kib"] = peak_tree
    result["peak_processes"] = peak_procs
    return result


# --------------------------------------------------------------------------- inputs
def setup(source: str, data: str, n: int, folder: str) -> None:
    """Put the base set into ``folder`` and print what it is (runs in a subprocess)."""
    import phasenet  # noqa: F401  (first: cctbx's C++ runtime before gemmi)

    folder = Path(folder)
    folder.mkdir(parents=True)
    if source == "real":
        base = base_real(Path(data), n)
        for f in base:
            _place(f, folder / f.name)
            for suf in PAIRED_SUFFIXES:
                if f.with_suffix(suf).exists():
                    _place(f.with_suffix(suf), folder / (f.stem + suf))
        what = f"{len(base)} real CIFs from {data}"
    else:
        from phasenet.pipeline.demo import write_random_cifs

        base = write_random_cifs(folder, n, seed=0)
        what = f"{len(base)} random structures (phasenet.pipeline.demo.write_random_cifs, seed 0)"
    print(json.dumps({"what": what, "version": phasenet.__version__}))


def base_real(data: Path, n: int) -> list[Path]:
    """The first ``n`` CIFs (sorted) in which phasenet reads at least one structure."""
    from phasenet.io.cif import ReadFailure, read_cif

    out = []
    for f in sorted(p for p in data.rglob("*.cif") if p.is_file()):
        if any(not isinstance(x, ReadFailure) for x in read_cif(f, read_observations=False)):
            out.append(f)
            if len(out) == n:
                break
    return out


def _place(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def make_folder(base: list[Path], n: int, folder: Path) -> None:
    """``n`` CIFs cycling through ``base`` under new names (paired reflection files follow)."""
    folder.mkdir(parents=True)
    for i in range(n):
        src = base[i % len(base)]
        stem = f"r{i // len(base):03d}_{src.stem}"
        _place(src, folder / (stem + src.suffix))
        for suf in PAIRED_SUFFIXES:
            pair = src.with_suffix(suf)
            if pair.exists():
                _place(pair, folder / (stem + suf))


def main(argv=None) -> int:
    if argv is None and len(sys.argv) == 6 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return 0
    if argv is None and len(sys.argv) == 6 and sys.argv[1] == "--setup":
        setup(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 1600, 3200],
                    help="files per build (default 200 1600 3200). A build holds one part of "
                         "min(chunk_size, ceil(files/16)) files per worker, so with the default "
                         "chunk size 64 the part size stops growing at 1024 files")
    ap.add_argument("--chunk-size", type=int, default=64,
                    help="BuildOptions.chunk_size (default 64, the build's default; 13 makes the "
                         "parts of 200 files as big as those of larger builds)")
    ap.add_argument("--source", choices=["real", "random"], default="real",
                    help="base set: real CIFs under --data, or random structures (default %(default)s)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="real CIFs (default %(default)s)")
    ap.add_argument("--base", type=int, default=200, help="files in the base set that is repeated (default 200)")
    ap.add_argument("--workers", type=int, default=n_cores(), help="build workers (default: all cores, %(default)s)")
    ap.add_argument("--interval", type=float, default=0.05, help="PSS sampling interval, s (default 0.05)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        tmp = Path(tmp)
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--setup", args.source,
                               str(args.data), str(args.base), str(tmp / "base")],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 2
        setup_info = json.loads(done.stdout.strip().splitlines()[-1])
        what = setup_info["what"]
        base = sorted((tmp / "base").glob("*.cif"))
        if not base:
            print("no base files", file=sys.stderr)
            return 2
        print(f"base set: {what}; workers: {args.workers}; cores: {n_cores()}", flush=True)
        results = []
        for n in args.sizes:
            folder = tmp / f"in_{n}"
            make_folder(base, n, folder)
            print(f"  building {n} files ...", flush=True)
            r = measure(folder, tmp / f"out_{n}.h5", args.workers, args.chunk_size, args.interval)
            r["size"] = n
            r["load_average_after"] = os.getloadavg()
            r["files_per_part"] = min(args.chunk_size, max(1, -(-n // 16)))  # as build.py cuts
            results.append(r)
            print(f"  {n} files: {r['structures']} structures in {r['seconds']:.1f} s, "
                  f"peak tree PSS {r['peak_tree_pss_kib'] / 1024:.0f} MiB", flush=True)
            shutil.rmtree(folder)
            (tmp / f"out_{n}.h5").unlink(missing_ok=True)

    mib = 1.0 / 1024
    print()
    head = (f"{'files':>6} {'per part':>8} {'structures':>10} {'seconds':>8} {'import MiB':>11} "
            f"{'parent MiB':>11} {'worker MiB':>11} {'tree PSS MiB':>13} {'HDF5 MiB':>9}")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['size']:>6d} {r['files_per_part']:>8d} {r['structures']:>10d} {r['seconds']:>8.1f} "
              f"{r['maxrss_after_import_kib'] * mib:>11.0f} {r['maxrss_self_kib'] * mib:>11.0f} "
              f"{r['maxrss_children_kib'] * mib:>11.0f} {r['peak_tree_pss_kib'] * mib:>13.0f} "
              f"{r['output_bytes'] / 2**20:>9.1f}")
    def compare(lo, hi, what):
        g = {k: hi[k] / lo[k] if lo[k] else float("nan")
             for k in ("maxrss_self_kib", "maxrss_children_kib", "peak_tree_pss_kib")}
        ratio = hi["structures"] / lo["structures"] if lo["structures"] else float("nan")
        print(f"{what}: structures x{ratio:.1f} -> parent peak x{g['maxrss_self_kib']:.2f}, worker peak "
              f"x{g['maxrss_children_kib']:.2f}, tree PSS peak x{g['peak_tree_pss_kib']:.2f}")
        return {"from": lo["size"], "to": hi["size"], "structures_ratio": ratio, **g}

    growth = [compare(results[0], results[-1], f"{results[0]['size']} -> {results[-1]['size']} files")]
    same = [r for r in results if r["files_per_part"] == results[-1]["files_per_part"]]
    if len(same) >= 2 and same[0] is not results[0]:
        growth.append(compare(same[0], same[-1], f"{same[0]['size']} -> {same[-1]['size']} files "
                              f"(same part size, {same[0]['files_per_part']} files)"))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"base": what, "workers": args.workers, "cores": n_cores(),
                                         "chunk_size": args.chunk_size,
                                         "results": results, "growth": growth,
                                         "phasenet_version": setup_info["version"]}, indent=2))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
