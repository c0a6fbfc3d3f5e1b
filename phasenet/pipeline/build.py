"""Build an HDF5 dataset from CIF files: streaming, parallel, resumable.

The inputs (sorted, de-duplicated) are cut into fixed slices of ``chunk_size``
files. Each slice becomes one part file in ``OUT.h5.parts/`` (written to a temp
name and renamed, so a part either exists whole or not at all). While the workers
compute, the parent appends each part, in order, to ``OUT.h5.tmp`` as soon as it
and all parts before it exist; after the last one ``OUT.h5.tmp`` is renamed to
``OUT.h5`` and the parts are removed. Interrupted at any point (Ctrl-C, SIGKILL,
node failure) and started again with the same arguments, a build reuses the
finished parts (and merges them again), so the result equals an uninterrupted
build. Memory is bounded by one slice per worker, whatever the number of structures.
The orchestration (workers, the per-file time limit, in-order merging) is
:func:`phasenet.pipeline.parts.run_parts`, shared with ``phasenet synth``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


from phasenet.io import hdf5 as dataset
from phasenet.io.cif import ReadFailure, read_cif
from phasenet.pipeline.options import BuildOptions
from phasenet.pipeline.parts import write_dataset
# imported here, not in the workers: forked workers then start with them loaded
from phasenet.pipeline.records import compute_record
from phasenet.reflections import canonical_hkl
from phasenet.util.progress import progress_bar

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

LIST_SUFFIXES = (".txt", ".lst", ".list")
CIF_SUFFIXES = (".cif",)


@dataclass
class BuildSummary:
    output: Path
    n_inputs: int
    n_structures: int
    failures: list[dict]
    seconds: float
    resumed_parts: int = 0
    failures_by_kind: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    def format(self) -> str:
        rate = self.n_structures / self.seconds if self.seconds > 0 else float("inf")
        lines = [f"built {self.n_structures} structures from {self.n_inputs} files into {self.output} "
                 f"in {self.seconds:.1f} s ({rate:.1f} structures/s)"
                 + (f"; {self.resumed_parts} parts reused from an interrupted build" if self.resumed_parts else "")]
        if self.failures:
            lines.append(f"failed: {len(self.failures)} ("
                         + ", ".join(f"{k} {v}" for k, v in sorted(self.failures_by_kind.items())) + ")")
            for f in self.failures[:10]:
                where = f["source"] + (f" [block {f['block']}]" if f["block"] else "")
                lines.append(f"  {where}: {f['reason']}")
            if len(self.failures) > 10:
                lines.append(f"  ... {len(self.failures) - 10} more: phasenet info {self.output}")
        return "\n".join(lines)


class BuildError(RuntimeError):
    pass


def collect_inputs(inputs) -> list[Path]:
    """Files, folders (searched recursively for *.cif) and list files (.txt/.lst/.list)."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.suffix.lower() not in LIST_SUFFIXES and p.is_file():  # the usual case: one stat
            found.append(p)
        elif p.is_dir():
            found += [q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in CIF_SUFFIXES]
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            base = p.parent
            for line in p.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    q = Path(line)
                    found += collect_inputs([q if q.is_absolute() else base / q])
        elif p.exists():
            found.append(p)
        else:
            raise BuildError(f"input not found: {p}")
    seen, out = set(), []
    for p in sorted(found, key=lambda q: str(q)):
        key = _resolved(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _fingerprint(files: list[Path], options: BuildOptions) -> str:
    from phasenet.version import __version__

    h = hashlib.sha256()
    h.update(json.dumps(options.result_options(), sort_keys=True).encode())
    h.update(__version__.encode())
    for f in files:
        h.update(_resolved(f).encode() + b"\0")
    return h.hexdigest()


_RESOLVED: dict[str, str] = {}  # within one build: collect_inputs and the fingerprint


def _resolved(p: Path) -> str:
    key = str(p)
    out = _RESOLVED.get(key)
    if out is None:
        out = _RESOLVED[key] = os.path.realpath(key)
    return out


def process_files(files: list[Path], options: BuildOptions, report=None, skip=None):
    """Read and compute every structure of ``files`` (no I/O besides reading).

    ``report(k)`` is called as file k starts; ``skip`` maps positions in ``files`` to the
    (kind, reason) of a failure recorded instead of reading the file (the part-writer's
    timeouts, :mod:`phasenet.pipeline.parts`)."""
    hkl = canonical_hkl(options.max_index, options.r2_max)
    records, failures = [], []
    for k, path in enumerate(files):
        if skip and k in skip:
            kind, reason = skip[k]
            failures.append(ReadFailure(str(path), "", reason, kind))
            continue
        if report is not None:
            report(k)
        for item in read_cif(path, options.default_u, options.read_observations,
                             max_atoms=options.max_atoms):
            if isinstance(item, ReadFailure):
                failures.append(item)
                continue
            try:
                records.append(compute_record(item, hkl, options.normalisation))
            except Exception as exc:  # one bad structure never stops the batch
                failures.append(ReadFailure(item.source, item.block,
                                            f"structure factors failed: {exc}", "compute-error"))
    return hkl, records, failures


def _part_task(job, report, options: BuildOptions):
    """Compute one slice of files and write its part (run by :func:`run_parts`)."""
    with _one_blas_thread():
        hkl, records, failures = process_files([Path(f) for f in job.items], options,
                                               report, job.skip)
    report(-1)  # writing: no longer timed
    dataset.write_part(job.path, hkl, records, failures, len(job.items), options.compression)
    return len(failures)


def _one_blas_thread():
    """BLAS on one thread while a part is computed: the matrix products are small, and
    with every core busy with a worker, BLAS threads only wait for each other."""
    if threadpool_limits is None:  # pragma: no cover - a dependency; without it, slower
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def build_dataset(inputs, output, options: BuildOptions | None = None, *,
                  overwrite: bool = False, progress: bool | None = None,
                  shard: tuple[int, int] | None = None) -> BuildSummary:
    """Build ``output`` (HDF5) from CIF ``inputs``; see the module docstring.

    ``shard=(I, N)`` builds only shard I of N (a contiguous slice of the sorted inputs,
    :func:`phasenet.pipeline.shards.shard_range`) and records the shard in the root attributes;
    :func:`phasenet.pipeline.shards.merge_shards` joins the N shards into the full dataset.

    Returns a :class:`BuildSummary`; failures of single files or blocks are in
    ``summary.failures`` (and in the dataset), never raised.
    """
    options = options or BuildOptions()
    output = Path(output)
    if progress is None:
        progress = sys.stderr.isatty()
    t0 = time.perf_counter()
    _RESOLVED.clear()
    files = collect_inputs(inputs if isinstance(inputs, (list, tuple)) else [inputs])
    if not files:
        raise BuildError("no input files (folders are searched for *.cif)")
    shard_meta = None
    if shard is not None:
        from phasenet.pipeline.shards import inputs_fingerprint, shard_attrs, shard_range

        lo, hi = shard_range(len(files), *shard)
        shard_meta = shard_attrs(shard[0], shard[1], len(files), inputs_fingerprint(files))
        if lo == hi:
            raise BuildError(f"shard {shard[0]}/{shard[1]} of {len(files)} inputs is empty; "
                             f"use at most {len(files)} shards")
        files = files[lo:hi]
    parts_dir = dataset.prepare_parts(
        output, {"fingerprint": _fingerprint(files, options), "n_files": len(files)},
        state_name="build.json", overwrite=overwrite, error=BuildError, what="build")

    # Slices depend only on the inputs and options (never on the worker count), so a
    # resumed build cuts the same parts. Small builds get >= 16 slices for balance.
    size = min(options.chunk_size, max(1, -(-len(files) // 16)))
    slices = [[str(f) for f in files[i:i + size]] for i in range(0, len(files), size)]

    # One bar in files. Each part is merged into OUT.h5.tmp as soon as it and all parts
    # before it exist, while the workers compute the rest (the merge is not a serial
    # step after the computation); the parts stay until the end, for a resumed build.
    result, resumed = write_dataset(
        slices, functools.partial(_part_task, options=options), parts_dir, output,
        merger_options=dict(build_options=options.result_options(), test_fraction=options.test_fraction,
                            seed=options.seed, compression=options.compression, extra_attrs=shard_meta),
        workers=options.workers, item_timeout=options.file_timeout,
        progress=progress_bar(len(files), "building", "file", progress))
    failures = result["failures"]
    return BuildSummary(output=output, n_inputs=len(files), n_structures=result["n_structures"],
                        failures=failures, seconds=time.perf_counter() - t0, resumed_parts=resumed,
                        failures_by_kind=dict(Counter(f.get("kind", "?") for f in failures)))
