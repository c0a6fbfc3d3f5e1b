"""One evaluation that scores any phasing method against the true structures of a dataset.

Methods (``EvaluateOptions.methods``) are names in the registry of
:mod:`phasenet.baselines.registry` (one module per method; adding one:
``docs/adding-a-phasing-method.md``):

- ``true``: the dataset's own phases (sanity row: R = 1, 0°),
- ``random``: random signs (0/π) for structures with an inversion centre at the
  origin, uniformly random phases otherwise (seeded),
- ``patterson``: the heavy-atom method of :mod:`phasenet.baselines.patterson`
  (not applicable without a heavy atom; the rule is documented there),
- ``charge-flipping``: cctbx charge flipping (:mod:`phasenet.baselines.charge_flipping`),
- ``model:RUN_DIR``: a trained sign network through ``phasenet.training.predict.load_predictor``
  (:mod:`phasenet.baselines.model`; centrosymmetric structures with the inversion centre
  at the origin only).

**The protocol** (``docs/evaluation.md``). Each (structure, method, d_min) is one task and
one row, and every method at a d_min is given the same problem: the reflections with
d ≥ d_min that the amplitude source gives (:meth:`PhasingProblem.truncate`: not
systematically absent; with ``amplitudes="obs"`` the measured ones, weak ones included),
seen through :func:`~phasenet.baselines.registry.problem_for` (no true phases, no stored
model input, no positions). Batched methods (models) get exactly these truncated problems
too, all structures of one d_min in one call; nothing beyond d_min reaches them.

Every row is scored on all the reflections of that problem; a reflection a method leaves
unphased (NaN) counts against it (:func:`~phasenet.evaluation.metrics.score_phases_counting_unphased`),
and ``completeness`` = reflections it phased / reflections of the complete sphere to
d_min, systematic absences excluded. Each row also carries the score of random phases on
the same problem (``random_map_cc``, ``random_phase_error``: the reference, since with
the origin search random phases score well above 0). The summary gives a table on the
structures common to all methods first, then each method on the structures it applies to.

Tasks of forked methods run in forked worker processes (``workers`` at a time) with a hard
``timeout``; a task that raises, crashes or overruns becomes a row with status ``failed``
or ``timeout`` and never stops the run. Batched methods run in the main process after the
workers finish (TensorFlow/JAX and fork do not mix).

Reflections: ``reflections="dataset"`` (default): the dataset's own reflections (h, k, l
in [-10, 10], one of each Friedel pair) with d ≥ d_min: for cells longer than 10·d_min
the box cuts the resolution sphere, which ``completeness`` reports.
``reflections="sphere"``: exact amplitudes recomputed from the stored atomic model on the
complete sphere to d_min (a model on a fixed grid phases those on its grid); it has no
measured amplitudes, so ``amplitudes="obs"`` with it is an error.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


from phasenet.baselines.registry import (BATCHED, FORKED, NotApplicable, PhasingFailed, PhasingMethod,
                                         UnknownMethod, get_method, problem_for)
from phasenet.baselines.random import random_phases
from phasenet.evaluation.maps import atom_recovery
from phasenet.evaluation.metrics import SOLVED_CC, score_phases_counting_unphased
from phasenet.evaluation.options import BASE_METHODS, DEFAULT_D_MIN, EvaluateOptions, EvaluationError
from phasenet.evaluation.problem import DatasetRows, PhasingProblem, problem_from_structure
from phasenet.reflections import sphere_hkl
from phasenet.util.progress import progress_bar
from phasenet.util.workers import start_forked

STATUSES = ("ok", "not-applicable", "failed", "timeout")
ROW_COLUMNS = ["index", "id", "space_group", "centric_origin", "method", "d_min", "status", "reason",
               "n_reflections", "n_phased", "d_min_data", "completeness", "phase_error", "map_cc",
               "sign_accuracy", "solved", "atom_recovery", "heavy_found", "random_phase_error",
               "random_map_cc", "origin_shift", "inverted", "seconds"]
#: the ``subset`` column of the summary: structures common to all methods, then each method alone
SUBSETS = ("common", "per-method")


@dataclass
class EvaluationResult:
    rows: "pd.DataFrame"  # noqa: F821
    summary: "pd.DataFrame"  # noqa: F821
    files: dict
    n_problems: int  # rows with status failed or timeout

    @property
    def ok(self) -> bool:
        return self.n_problems == 0


# ---------------------------------------------------------------------------
# one task


def task_seed(seed: int, index: int, method: str, d_min: float) -> int:
    key = [int(seed), int(index), int(round(d_min * 1000))] + [ord(c) for c in method]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def sphere_count(cell, symops, d_min: float) -> int:
    """Reflections of the complete sphere to ``d_min`` (one of each Friedel pair), systematic
    absences excluded: the denominator of ``completeness``."""
    from phasenet.symmetry import symmetry

    hkl = sphere_hkl(cell, d_min)
    return int((~symmetry(symops).systematic_absences(hkl)).sum()) if len(hkl) else 0


def completeness(n_phased: int, problem: PhasingProblem, d_min: float) -> float:
    """Reflections phased / the complete sphere to d_min without systematic absences."""
    try:
        n_sphere = sphere_count(problem.cell, problem.symops, d_min)
    except (ValueError, MemoryError):
        return float("nan")
    return float(min(1.0, n_phased / n_sphere)) if n_sphere else float("nan")


def score_row(problem: PhasingProblem, phases: np.ndarray, options: EvaluateOptions) -> dict:
    """The metric columns for phases on a (truncated) problem; NaN phases (unphased
    reflections) count against the method."""
    score, aligned = score_phases_counting_unphased(problem.hkl, problem.amplitude, problem.phase_true,
                                                    phases, problem.symops, solved_cc=options.solved_cc)
    row = score.as_dict()
    del row["n_reflections"]  # the row counts every reflection given (weak ones too)
    row["atom_recovery"] = float("nan")
    if options.atom_recovery and problem.atoms is not None and len(problem):
        atoms = problem.non_h_cell_positions()
        if len(atoms):
            phased = np.isfinite(aligned)  # a map without the unphased terms
            row["atom_recovery"] = atom_recovery(problem.hkl[phased], problem.amplitude[phased], aligned[phased],
                                                 problem.cell, atoms, d_min=problem.d_min)
    return row


def random_reference(problem: PhasingProblem, seed: int, options: EvaluateOptions) -> dict:
    """Random phases (the ``random`` method, seeded as its own task) scored on ``problem``:
    the reference every row is shown beside."""
    score, _ = score_phases_counting_unphased(problem.hkl, problem.amplitude, problem.phase_true,
                                              random_phases(problem, seed), problem.symops,
                                              solved_cc=options.solved_cc)
    return {"random_phase_error": score.phase_error, "random_map_cc": score.map_cc}


def truncated(problem: PhasingProblem, d_min: float, options: EvaluateOptions) -> PhasingProblem:
    """The problem every method gets at ``d_min``: the given reflections with d ≥ d_min
    (of the dataset, or of the complete sphere recomputed from the atoms)."""
    if options.reflections == "sphere":
        return problem_from_structure(problem.structure(), d_min).truncate(None)
    return problem.truncate(d_min)


def scored_problem(problem: PhasingProblem, index: int, d_min: float, options: EvaluateOptions,
                   row: dict) -> PhasingProblem:
    """Truncate ``problem`` for one row and fill the row's data columns (reflections,
    resolution, the random reference); NotApplicable below 10 reflections."""
    p = truncated(problem, d_min, options)
    row.update(n_reflections=len(p), d_min_data=p.d_min)
    if len(p) < 10:
        raise NotApplicable(f"only {len(p)} reflections with d >= {d_min} Å")
    row.update(random_reference(p, task_seed(options.seed, index, "random", d_min), options))
    return p


def finish_row(row: dict, p: PhasingProblem, phases, d_min: float, options: EvaluateOptions) -> None:
    """Score ``phases`` (NaN: unphased) on ``p`` into ``row``."""
    phases = np.asarray(phases, dtype=float)
    if phases.shape != (len(p),):
        raise ValueError(f"{row['method']} returned {phases.shape} phases for {len(p)} reflections")
    n_phased = int(np.isfinite(phases).sum())
    row.update(n_phased=n_phased, completeness=completeness(n_phased, p, d_min))
    row.update(score_row(p, phases, options))


def run_task(problem: PhasingProblem, method: str | PhasingMethod, d_min: float, seed: int,
             options: EvaluateOptions, index: int = 0) -> dict:
    """One row of a forked method (a registered name or the method): truncate, phase, score.
    Never raises for method failures (they become the row)."""
    t0 = time.perf_counter()
    row = {"method": method if isinstance(method, str) else method.name, "d_min": d_min}
    try:
        if isinstance(method, str):
            method = get_method(method)
        if method.execution != FORKED:
            raise ValueError(f"{method.name} is a {method.execution} method: it phases all structures at once")
        p = scored_problem(problem, index, d_min, options, row)
        phases, note, *details = method.phases(problem_for(method, p, options), seed, options)
        finish_row(row, p, phases, d_min, options)
        if details and details[0] and hasattr(method, "score_details"):  # extra columns (heavy_found)
            row.update(method.score_details(p, details[0]))
        row.update(status="ok", reason=note)
    except NotApplicable as exc:
        row.update(status="not-applicable", reason=str(exc))
    except PhasingFailed as exc:
        row.update(status="failed", reason=str(exc))
    except Exception as exc:  # noqa: BLE001  (a failing structure is a row, not a crash)
        row.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
    row["seconds"] = time.perf_counter() - t0
    return row


# ---------------------------------------------------------------------------
# batched methods (models)


def batched_rows(rows_src: DatasetRows, indices, method: PhasingMethod, d_mins, options: EvaluateOptions
                 ) -> list[dict]:
    """Rows of a batched method for all structures and d_min values.

    ``method.prepare`` runs once (not applicable or failed: every row says so); then, for
    each d_min, every structure is truncated exactly as for a forked method
    (:func:`scored_problem`), shown to the method through ``problem_for``, and all
    applicable structures are phased in one ``phases_batch`` call. Nothing beyond d_min
    and nothing of the true structure (phases, positions, the stored model input) reaches
    the method; the rows are scored as every other method's. A method whose results are
    dicts ``{stage: phases}`` (``net``: network, starts, polish) gives a row per stage: the
    last under the method's own name, the others as ``NAME/STAGE``.
    """
    name = method.name
    out = []

    def fail_all(which, d, status, reason):
        for i in which:
            out.append({"index": i, "method": name, "d_min": d, "status": status, "reason": reason})

    try:
        method.prepare(options)
    except Exception as exc:  # noqa: BLE001
        status = ("not-applicable" if isinstance(exc, NotApplicable) else "failed")
        reason = str(exc) if isinstance(exc, (NotApplicable, PhasingFailed)) else f"{type(exc).__name__}: {exc}"
        for d in d_mins:
            fail_all(indices, d, status, reason)
        return out
    full = {}
    for i in indices:
        try:
            full[i] = rows_src.problem(i)
        except Exception as exc:  # noqa: BLE001
            for d in d_mins:
                fail_all([i], d, "failed", f"reading structure: {type(exc).__name__}: {exc}")
    for d in d_mins:
        rows, scored, seen = {}, {}, {}
        for i in full:
            t0 = time.perf_counter()
            row = rows[i] = {"index": i, "method": name, "d_min": d}
            try:
                scored[i] = scored_problem(full[i], i, d, options, row)
                seen[i] = problem_for(method, scored[i], options)
            except NotApplicable as exc:
                row.update(status="not-applicable", reason=str(exc))
            except Exception as exc:  # noqa: BLE001
                row.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
            row["seconds"] = time.perf_counter() - t0
        applicable = [i for i in full if i in seen]
        if applicable:
            t0 = time.perf_counter()
            try:
                results = list(method.phases_batch([seen[i] for i in applicable], options))
                if len(results) != len(applicable):
                    raise ValueError(f"phases_batch returned {len(results)} results for {len(applicable)} problems")
            except Exception as exc:  # noqa: BLE001
                results = [exc] * len(applicable)
            per_structure = (time.perf_counter() - t0) / len(applicable)
            for i, res in zip(applicable, results):
                if isinstance(res, dict):  # a method with stages: a row per stage
                    stages = list(res)
                    for k, stage in enumerate(stages):
                        stage_name = name if k == len(stages) - 1 else f"{name}/{stage}"
                        row = rows[i] if k == len(stages) - 1 else {**rows[i], "method": stage_name}
                        _finish_batched(row, scored[i], res[stage], d, options, per_structure)
                        if k < len(stages) - 1:
                            rows[(i, stage)] = row
                else:
                    _finish_batched(rows[i], scored[i], res, d, options, per_structure)
        out.extend(rows.values())
    return out


def _finish_batched(row: dict, p: PhasingProblem, res, d: float, options: EvaluateOptions,
                    per_structure: float) -> None:
    """Score one result of ``phases_batch`` (phases, (phases, note) or an exception) into ``row``."""
    t1 = time.perf_counter()
    try:
        if isinstance(res, Exception):
            raise res
        phases, note = res if isinstance(res, tuple) else (res, "")
        finish_row(row, p, phases, d, options)
        row.update(status="ok", reason=note)
    except NotApplicable as exc:
        row.update(status="not-applicable", reason=str(exc))
    except PhasingFailed as exc:
        row.update(status="failed", reason=str(exc))
    except Exception as exc:  # noqa: BLE001
        row.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
    row["seconds"] = row.get("seconds", 0.0) + per_structure + time.perf_counter() - t1


# ---------------------------------------------------------------------------
# the run


def warm_up(symops_list) -> None:
    """Import lazily-imported modules and fill the per-space-group caches once in this
    process, so that forked workers inherit them instead of each redoing the work."""
    import scipy.ndimage  # noqa: F401
    import scipy.optimize  # noqa: F401
    from smtbx.ab_initio import charge_flipping  # noqa: F401

    from phasenet.symmetry import ORIGIN_GRID, symmetry

    for ops in set(symops_list):
        try:
            sym = symmetry(ops)
            n = ORIGIN_GRID * (2 if len(sym.continuous_origin_directions()) else 1)
            for inverted in (False, True):
                sym.origin_shift_mask(inverted, n)
                sym.origin_shift_mask(inverted, ORIGIN_GRID)
        except Exception:  # noqa: BLE001  (a bad structure fails in its own task)
            pass


def select_structures(rows_src: DatasetRows, options: EvaluateOptions) -> list[int]:
    idx = np.arange(len(rows_src))
    if options.split is not None:
        idx = idx[rows_src.dataset.split_mask(options.split)]
    if options.limit is not None:
        idx = idx[: options.limit]
    return [int(i) for i in idx]


def run_forked_tasks(tasks, get_problem, options: EvaluateOptions, progress=None, on_row=None,
                     methods: dict | None = None) -> list[dict]:
    """Run (index, method name, d_min) tasks in forked workers with the hard timeout.
    ``methods``: name -> method, resolved here (in this process) where not given."""
    from multiprocessing.connection import wait

    methods = dict(methods or {})

    pending = list(tasks)
    running = {}  # conn -> (proc, task, t0)
    rows = []
    remaining = {}
    for i, _, _ in pending:
        remaining[i] = remaining.get(i, 0) + 1
    cache: dict[int, PhasingProblem] = {}

    def finish(task, row):
        i = task[0]
        row["index"] = i
        rows.append(row)
        remaining[i] -= 1
        if remaining[i] == 0:
            cache.pop(i, None)
        if progress is not None:
            progress.update(1)
        if on_row is not None:
            on_row(row)

    try:
        while pending or running:
            while pending and len(running) < options.workers:
                task = pending.pop(0)
                i, method, d = task
                try:
                    if i not in cache:
                        cache[i] = get_problem(i)
                except Exception as exc:  # noqa: BLE001
                    finish(task, {"method": method, "d_min": d, "status": "failed",
                                  "reason": f"reading structure: {type(exc).__name__}: {exc}"})
                    continue
                if method not in methods:
                    methods[method] = get_method(method)
                proc, conn = start_forked(run_task, cache[i], methods[method], d,
                                          task_seed(options.seed, i, method, d), options, i)
                running[conn] = (proc, task, time.perf_counter())
            if not running:
                continue
            ready = wait(list(running), timeout=0.2)
            now = time.perf_counter()
            for conn in list(running):
                proc, task, t0 = running[conn]
                row = None
                if conn in ready:
                    try:
                        status, value = conn.recv()
                        row = value if status == "ok" else {
                            "method": task[1], "d_min": task[2], "status": "failed",
                            "reason": f"{value[0]}: {value[1]}"}
                    except (EOFError, OSError):
                        proc.join(2)
                        row = {"method": task[1], "d_min": task[2], "status": "failed",
                               "reason": f"worker died (exit code {proc.exitcode})"}
                elif now - t0 > options.timeout:
                    proc.kill()
                    row = {"method": task[1], "d_min": task[2], "status": "timeout",
                           "reason": f"no result after {options.timeout:g} s (worker killed)",
                           "seconds": now - t0}
                if row is not None:
                    if proc.is_alive() and row["status"] != "timeout":
                        proc.join(2)
                    if proc.is_alive():
                        proc.kill()
                    proc.join(2)
                    conn.close()
                    del running[conn]
                    finish(task, row)
    finally:
        for conn, (proc, _, _) in running.items():
            proc.kill()
            proc.join(2)
            conn.close()
    return rows


def evaluate_dataset(path, output_dir, options: EvaluateOptions | None = None, progress: bool | None = None
                     ) -> EvaluationResult:
    """Score every method on the selected structures at every d_min; write CSV, Markdown, PNGs."""
    import pandas as pd

    options = options or EvaluateOptions()
    from phasenet.io.hdf5 import DatasetError

    try:
        src = DatasetRows(path, options.amplitudes)
    except (DatasetError, OSError) as exc:
        raise EvaluationError(str(exc)) from None
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        src.close()
        raise EvaluationError(f"{out}: cannot create the report folder ({exc})") from None
    t_start = time.perf_counter()
    with src:
        indices = select_structures(src, options)
        if not indices:
            raise EvaluationError(f"{path}: no structures selected (split={options.split!r}, limit={options.limit})")
        d_mins = tuple(sorted(set(float(d) for d in options.d_min)))
        try:
            methods = {m: get_method(m) for m in options.methods}
        except (UnknownMethod, ImportError, ValueError) as exc:
            raise EvaluationError(str(exc)) from None
        forked = [m for m in options.methods if methods[m].execution == FORKED]
        batched = [m for m in options.methods if methods[m].execution == BATCHED]
        tasks = [(i, m, d) for i in indices for m in forked for d in d_mins]
        n_model = len(batched) * len(indices) * len(d_mins)
        show = progress if progress is not None else None
        bar = progress_bar(len(tasks) + n_model, "evaluate", "task", enabled=True if show is None else bool(show))
        warm_up([src.dataset.symops(i) for i in indices])
        with bar:
            rows = run_forked_tasks(tasks, src.problem, options, progress=bar, methods=methods)
            for m in batched:
                new = batched_rows(src, indices, methods[m], d_mins, options)
                rows.extend(new)
                bar.update(len(new))
        meta = {i: (src.ids[i], src.space_groups[i]) for i in indices}
        centric = {}
        for i in indices:
            from phasenet.symmetry import symmetry
            centric[i] = symmetry(src.dataset.symops(i)).has_origin_inversion
    for r in rows:
        r["id"], r["space_group"] = meta[r["index"]]
        r["centric_origin"] = centric[r["index"]]
    df = pd.DataFrame(rows)
    for c in ROW_COLUMNS:
        if c not in df:
            df[c] = np.nan
    df = df[ROW_COLUMNS].sort_values(["index", "method", "d_min"], kind="stable").reset_index(drop=True)
    df["reason"] = df["reason"].fillna("")
    summary = summarise_report(df)
    files = write_report(df, summary, out, path, options, seconds=time.perf_counter() - t_start)
    n_problems = int(df.status.isin(["failed", "timeout"]).sum())
    return EvaluationResult(rows=df, summary=summary, files=files, n_problems=n_problems)


# ---------------------------------------------------------------------------
# report


def summarise(df, subset: str = "per-method") -> "pd.DataFrame":  # noqa: F821
    """One row per (method, d_min). Success rate = solved / (ok + failed + timeout):
    a method that fails or runs out of time has not solved the structure; structures
    where it does not apply are left out. Metrics are means over ok rows, each beside the
    mean of the random reference on the same rows (``random_map_cc_mean``,
    ``delta_map_cc`` = map CC − random's)."""
    import pandas as pd

    def mean(g, col):
        return g[col].astype(float).mean() if len(g) and col in g else np.nan

    out = []
    for (method, d), g in df.groupby(["method", "d_min"], sort=True):
        ok = g[g.status == "ok"]
        tried = g[g.status.isin(["ok", "failed", "timeout"])]
        solved = ok["solved"].astype(bool).sum() if len(ok) else 0
        r = {
            "subset": subset, "method": method, "d_min": d, "n": len(g), "ok": len(ok),
            "not_applicable": int((g.status == "not-applicable").sum()),
            "failed": int((g.status == "failed").sum()), "timeout": int((g.status == "timeout").sum()),
            "success_rate": solved / len(tried) if len(tried) else np.nan,
            "phase_error_mean": mean(ok, "phase_error"),
            "phase_error_median": ok.phase_error.astype(float).median() if len(ok) else np.nan,
            "map_cc_mean": mean(ok, "map_cc"),
            "random_map_cc_mean": mean(ok, "random_map_cc"),
            "random_phase_error_mean": mean(ok, "random_phase_error"),
            "sign_accuracy_mean": mean(ok, "sign_accuracy"),
            "atom_recovery_mean": mean(ok, "atom_recovery"),
            "completeness_mean": mean(ok, "completeness"),
            "seconds_mean": g.seconds.astype(float).mean(),
        }
        r["delta_map_cc"] = r["map_cc_mean"] - r["random_map_cc_mean"]
        out.append(r)
    return pd.DataFrame(out)


def common_rows(df) -> "pd.DataFrame":  # noqa: F821
    """The rows of the structures every method applies to, per d_min: (structure, d_min)
    pairs where no method's row is not-applicable (failed and timeout rows stay: the method
    applied and did not succeed)."""
    methods = df.method.unique()
    key = ["index", "d_min"]
    applies = df[df.status != "not-applicable"].groupby(key).method.nunique()
    keep = applies[applies == len(methods)].index
    return df.set_index(key).loc[lambda x: x.index.isin(keep)].reset_index()


def summarise_report(df) -> "pd.DataFrame":  # noqa: F821
    """The summary of a report: the common subset first (``subset`` "common"), then each
    method on the structures it applies to ("per-method")."""
    import pandas as pd

    common = summarise(common_rows(df), "common") if len(df) else summarise(df, "common")
    per = summarise(df, "per-method")
    return pd.concat([common, per], ignore_index=True)


def _fmt(v, spec):
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def _table(summary) -> list[str]:
    head = ("| method | d_min (Å) | structures | ok | n/a | failed | timeout | success | "
            "map CC | random CC | Δ CC vs random | phase error mean / median (°) | random phase error (°) | "
            "sign acc. | atoms found | completeness | s/task |")
    lines = [head, "|" + "---|" * 17]
    for r in summary.itertuples():
        lines.append(
            f"| {r.method} | {r.d_min:g} | {r.n} | {r.ok} | {r.not_applicable} | {r.failed} | {r.timeout} | "
            f"{_fmt(r.success_rate * 100 if np.isfinite(r.success_rate) else np.nan, '.0f')}% | "
            f"{_fmt(r.map_cc_mean, '.3f')} | {_fmt(getattr(r, 'random_map_cc_mean', np.nan), '.3f')} | "
            f"{_fmt(getattr(r, 'delta_map_cc', np.nan), '+.3f')} | "
            f"{_fmt(r.phase_error_mean, '.1f')} / {_fmt(r.phase_error_median, '.1f')} | "
            f"{_fmt(getattr(r, 'random_phase_error_mean', np.nan), '.1f')} | "
            f"{_fmt(r.sign_accuracy_mean, '.3f')} | "
            f"{_fmt(r.atom_recovery_mean, '.2f')} | {_fmt(r.completeness_mean, '.2f')} | "
            f"{_fmt(r.seconds_mean, '.2f')} |")
    return lines


PROTOCOL_NOTE = (
    "Every method at a d_min is given the same reflections (d ≥ d_min; systematic absences and, with "
    "measured amplitudes, unmeasured reflections left out) and scored on all of them: a reflection a "
    "method leaves unphased counts against it (no contribution to the map CC, 90° of phase error, ½ of "
    "sign accuracy). Completeness = reflections phased / the complete sphere to d_min without systematic "
    "absences. Random CC / phase error: random phases scored on the same rows (with the origin search, "
    "random phases score well above CC 0 and below 90°: that, not 0 or 90°, is the reference). "
    "Protocol: docs/evaluation.md.")


def summary_markdown(summary, title: str = "", notes: list[str] | None = None) -> str:
    """The summary as Markdown: the common-subset table first, then the per-method one (a
    summary without a ``subset`` column: one table)."""
    lines = [f"# {title}" if title else "", ""]
    if "subset" in summary:
        common = summary[summary.subset == "common"]
        per = summary[summary.subset == "per-method"]
        lines += ["## Common subset: the structures every method applies to", ""]
        if len(common):
            lines += _table(common)
        else:
            lines.append("No structure is common to all methods at any d_min.")
        lines += ["", "## Per method: each on the structures it applies to", ""] + _table(per)
    else:
        lines += _table(summary)
    lines += ["", f"Solved: map CC ≥ {SOLVED_CC} at the best permissible origin. Success = solved / "
              "(ok + failed + timeout); not-applicable rows are left out. Metrics are means over ok rows.",
              "", PROTOCOL_NOTE]
    for note in notes or []:
        lines += ["", note]
    return "\n".join(lines).lstrip("\n") + "\n"


def plot_vs_dmin(summary, column: str, path, ylabel: str, title: str, percent: bool = False,
                 reference: str | None = None):
    """One panel per subset (common, per method) if the summary has both; ``reference``: a
    column drawn dashed beside each method (the random reference)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = ([(s, summary[summary.subset == s]) for s in SUBSETS] if "subset" in summary
             else [("", summary)])
    fig, axes = plt.subplots(1, len(parts), figsize=(6 * len(parts), 4.2), squeeze=False)
    for ax, (subset, part) in zip(axes[0], parts):
        for method, g in part.groupby("method", sort=True):
            g = g.sort_values("d_min")
            y = g[column].astype(float) * (100 if percent else 1)
            line, = ax.plot(g.d_min, y, marker="o", label=method)
            if reference and reference in g and method != "random":
                ax.plot(g.d_min, g[reference].astype(float), ls="--", lw=0.8, color=line.get_color())
        ax.set_xlabel("d_min (Å)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}" + (f"\n({'structures common to all methods' if subset == 'common' else 'each method on its own structures'})"
                                   if subset else ""), fontsize=9)
        ax.grid(alpha=0.3)
        if len(part):
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def model_notes(df) -> list[str]:
    """Notes of the model rows worth a line in the report (e.g. the input a stored-input
    model was given instead of its training input), once per method."""
    notes = []
    for method, g in df[df.method.str.startswith("model:")].groupby("method"):
        reasons = sorted(set(r for r in g[g.status == "ok"].reason if r))
        if reasons:
            notes.append(f"{method}: " + "; ".join(reasons))
    return notes


def write_report(df, summary, out: Path, dataset, options: EvaluateOptions, seconds: float) -> dict:
    from phasenet.version import __version__

    files = {
        "rows": out / "evaluation.csv",
        "summary": out / "summary.md",
        "summary_csv": out / "summary.csv",
        "phase_error_plot": out / "phase_error_vs_dmin.png",
        "map_cc_plot": out / "map_cc_vs_dmin.png",
        "success_plot": out / "success_rate_vs_dmin.png",
        "config": out / "config.json",
    }
    df.to_csv(files["rows"], index=False)
    summary.to_csv(files["summary_csv"], index=False)
    files["summary"].write_text(summary_markdown(summary, f"Evaluation of {Path(str(dataset)).name}",
                                                 notes=model_notes(df)))
    plot_vs_dmin(summary, "phase_error_mean", files["phase_error_plot"], "mean phase error (°)",
                 "|F|-weighted phase error at the best origin (dashed: random on the same rows)",
                 reference="random_phase_error_mean")
    plot_vs_dmin(summary, "map_cc_mean", files["map_cc_plot"], "map CC",
                 "map CC at the best origin (dashed: random on the same rows)", reference="random_map_cc_mean")
    plot_vs_dmin(summary, "success_rate", files["success_plot"], "solved (%)",
                 f"success rate (map CC ≥ {SOLVED_CC})", percent=True)
    import cctbx  # noqa: F401

    config = {"dataset": str(dataset), "options": options.as_dict(), "seconds": seconds,
              "phasenet_version": __version__, "n_rows": len(df),
              "status_counts": {k: int(v) for k, v in df.status.value_counts().items()}}
    files["config"].write_text(json.dumps(config, indent=2, default=str))
    return {k: str(v) for k, v in files.items()}
