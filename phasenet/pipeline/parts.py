"""The resumable, parallel part-writer shared by ``phasenet build`` and ``phasenet synth``.

A run's items (CIF files, structure indices) are cut into fixed slices; each slice
becomes one part file ``OUT.h5.parts/part-NNNNNN.h5``, written by a worker under a
temporary name and renamed when complete (:func:`phasenet.io.hdf5.write_part`), so a
part exists whole or not at all. While the workers compute, the parent appends each
part, in order, to the output (:class:`phasenet.io.hdf5.PartMerger`) as soon as it and
all parts before it exist. A run started again with the same arguments reuses the
finished parts (the fingerprint check is :func:`phasenet.io.hdf5.prepare_parts`).

**Per-item time limit.** Each worker is a process of its own that tells the parent
which item of its slice it is working on. An item that runs past ``item_timeout``
seconds (a file gemmi parses for ever inside C code, where no signal handler can
interrupt it) gets its worker killed and replaced; the slice is handed out again with
that item marked as a failure of kind ``timeout`` (the items before it are computed
again: a slice is written as one part). A worker that dies (segmentation fault, killed
by the kernel's out-of-memory killer) is treated the same way, with kind
``worker-crash``. So one bad item costs only itself (and one recomputed slice),
never the run.

Without a time limit and with one worker, the slices are computed in this process.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Callable, Sequence

#: failure kinds given to items the part-writer had to give up on
TIMEOUT, WORKER_CRASH = "timeout", "worker-crash"
#: a slice whose worker died this many times without having started an item is an error
MAX_SILENT_CRASHES = 3


@dataclass
class PartJob:
    """One slice: the part to write and the items that go into it, in order.

    ``skip`` maps an item's position in ``items`` to the (kind, reason) of the failure
    to record for it instead of computing it (items a previous attempt timed out on)."""

    index: int
    items: tuple
    path: Path
    skip: dict = field(default_factory=dict)


def part_path(parts_dir: Path, index: int) -> Path:
    return Path(parts_dir) / f"part-{index:06d}.h5"


class PartWriterError(RuntimeError):
    pass


#: ``work(job, report) -> number of failures``: computes the job's items (calling
#: ``report(k)`` as item k starts), writes ``job.path`` (one failure per skipped item)
Work = Callable[[PartJob, Callable[[int], None]], int]


def run_parts(slices: Sequence[Sequence], work: Work, parts_dir: Path, merger, *,
              workers: int | None = None, item_timeout: float | None = None,
              on_part: Callable[[int, int], None] | None = None) -> int:
    """Write the missing parts of ``slices`` with ``work`` and append every part, in
    order, with ``merger.append(path)``; returns the number of parts reused.

    ``on_part(n_items, n_failures)`` is called as each part is finished (also for the
    reused ones, with ``n_failures`` 0). ``workers``: processes (None: all cores).
    ``item_timeout``: seconds one item may take (None: no limit); see the module
    docstring. The caller's merger is neither finished nor aborted here.
    """
    jobs = [PartJob(i, tuple(s), part_path(parts_dir, i)) for i, s in enumerate(slices)]
    done = [job.path.exists() for job in jobs]
    todo = [job for job, d in zip(jobs, done) if not d]
    resumed = len(jobs) - len(todo)
    if on_part is not None:
        for job, d in zip(jobs, done):
            if d:
                on_part(len(job.items), 0)
    merged = 0

    def finished(index: int, n_failures: int) -> None:
        nonlocal merged
        done[index] = True
        if on_part is not None:
            on_part(len(jobs[index].items), n_failures)
        while merged < len(jobs) and done[merged]:
            merger.append(jobs[merged].path)
            merged += 1

    n_workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    if item_timeout is not None and item_timeout <= 0:
        raise ValueError(f"item_timeout must be > 0 seconds, got {item_timeout}")
    while merged < len(jobs) and done[merged]:  # parts of an interrupted run
        merger.append(jobs[merged].path)
        merged += 1
    if not todo:
        return resumed
    if n_workers == 1 and item_timeout is None:
        for job in todo:
            finished(job.index, work(job, _no_report))
        return resumed
    _Pool(work, n_workers, item_timeout).run(todo, finished)
    return resumed


def write_dataset(slices: Sequence[Sequence], work: Work, parts_dir: Path, output: Path, *,
                  merger_options: dict, workers: int | None = None,
                  item_timeout: float | None = None, progress=None) -> tuple[dict, int]:
    """The whole resumable write of a dataset: ``run_parts`` into a
    :class:`phasenet.io.hdf5.PartMerger` of ``output`` (``merger_options``: its keyword
    arguments), finished on success and aborted on any error (nothing half-written looks
    complete), then the parts folder removed. ``progress``: a bar with ``update`` and
    ``set_postfix`` (closed here). Returns (the merger's result, parts reused)."""
    import shutil

    from phasenet.io.hdf5 import PartMerger

    n_failed = 0

    def on_part(n_items: int, n_failures: int) -> None:
        nonlocal n_failed
        n_failed += n_failures
        if progress is not None:
            progress.update(n_items)
            if n_failures:
                progress.set_postfix(failed=n_failed)

    merger = None
    try:
        merger = PartMerger(output, **merger_options)
        resumed = run_parts(slices, work, parts_dir, merger, workers=workers,
                            item_timeout=item_timeout, on_part=on_part)
        result = merger.finish()
    except BaseException:
        if merger is not None:
            merger.abort()
        raise
    finally:
        if progress is not None:
            progress.close()
    shutil.rmtree(parts_dir, ignore_errors=True)
    return result, resumed


def _no_report(k: int) -> None:
    pass


# ----------------------------------------------------------------------- worker side


def _serve(conn, work: Work) -> None:
    """A worker: compute the jobs the parent sends until it sends None or goes away."""
    _die_with_parent()

    def report(k: int) -> None:
        conn.send(("item", k))

    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        try:
            n_failures = work(job, report)
            conn.send(("done", job.index, n_failures))
        except BaseException as exc:  # handed to the parent, which raises it
            import traceback

            text = traceback.format_exc()
            try:
                conn.send(("error", job.index, exc, text))
            except Exception:  # an exception that does not pickle
                try:
                    conn.send(("error", job.index, None, text))
                except Exception:
                    pass
            return


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the parent dies (even by SIGKILL), so a
    killed run leaves no worker writing parts behind it."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl
            os._exit(1)
    except Exception:  # best effort
        pass


# ----------------------------------------------------------------------- parent side


class _Worker:
    def __init__(self, ctx, work: Work):
        parent_conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child_conn, work), daemon=True)
        self.proc.start()
        child_conn.close()
        self.conn = parent_conn
        self.job: PartJob | None = None
        self.item: int | None = None
        self.since = 0.0

    def give(self, job: PartJob) -> None:
        self.job, self.item, self.since = job, None, time.monotonic()
        self.conn.send(job)

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except Exception:
                self.proc.kill()
        self.proc.join(timeout=None if kill else 5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


class _Pool:
    """Worker processes the parent can kill and replace one at a time (a
    ``multiprocessing.Pool`` cannot: a stuck task there blocks the pool for ever)."""

    def __init__(self, work: Work, n_workers: int, item_timeout: float | None):
        self.work, self.n, self.timeout = work, n_workers, item_timeout
        self.ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        self.silent_crashes: collections.Counter = collections.Counter()

    def run(self, todo: list[PartJob], finished: Callable[[int, int], None]) -> None:
        pending = collections.deque(todo)
        workers: list[_Worker] = []
        try:
            while pending or any(w.job is not None for w in workers):
                while len(workers) < self.n and len(workers) < len(pending) + sum(
                        w.job is not None for w in workers):
                    workers.append(_Worker(self.ctx, self.work))
                for w in workers:
                    if w.job is None and pending:
                        w.give(pending.popleft())
                busy = [w for w in workers if w.job is not None]
                wait_for = None
                if self.timeout is not None:
                    now = time.monotonic()
                    wait_for = max(0.0, min(w.since + self.timeout for w in busy) - now) + 0.01
                ready = wait([w.conn for w in busy], timeout=wait_for)
                for w in busy:
                    if w.conn in ready:
                        self._receive(w, workers, pending, finished)
                if self.timeout is not None:
                    now = time.monotonic()
                    for w in list(workers):
                        if (w.job is not None and w.item is not None and w.item >= 0
                                and now - w.since > self.timeout):
                            self._give_up(w, workers, pending, TIMEOUT,
                                          f"no result within {self.timeout:g} s (file timeout); "
                                          "its worker was stopped")
        finally:
            for w in workers:
                w.stop(kill=True)

    def _receive(self, w: _Worker, workers, pending, finished) -> None:
        try:
            while w.conn.poll():
                msg = w.conn.recv()
                if msg[0] == "item":
                    w.item, w.since = msg[1], time.monotonic()
                elif msg[0] == "done":
                    job, w.job, w.item = w.job, None, None
                    finished(job.index, msg[2])
                    return
                else:  # "error": the worker's exception, raised here
                    _, index, exc, text = msg
                    if isinstance(exc, BaseException):
                        raise exc
                    raise PartWriterError(f"part {index} failed in its worker:\n{text}")
        except (EOFError, OSError):
            w.proc.join(timeout=5)
            code = w.proc.exitcode
            how = (f"killed by signal {-code}" if code is not None and code < 0
                   else f"exit status {code}")
            self._give_up(w, workers, pending, WORKER_CRASH,
                          f"its worker process died ({how}; out of memory?)")

    def _give_up(self, w: _Worker, workers, pending, kind: str, reason: str) -> None:
        """Kill ``w``, and hand its slice out again with its current item skipped."""
        job, item = w.job, w.item
        w.stop(kill=True)
        workers.remove(w)
        if item is None or item < 0:  # died between items (writing the part?): retry
            self.silent_crashes[job.index] += 1
            if self.silent_crashes[job.index] >= MAX_SILENT_CRASHES:
                raise PartWriterError(f"part {job.index}: its worker died {MAX_SILENT_CRASHES} "
                                      f"times outside any item ({reason})")
            pending.appendleft(job)
            return
        skip = dict(job.skip)
        skip[item] = (kind, reason)
        pending.appendleft(PartJob(job.index, job.items, job.path, skip))
