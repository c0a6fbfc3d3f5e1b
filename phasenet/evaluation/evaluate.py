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

Each (structure, method, d_min) is one task and one row. Tasks of forked methods run in
forked worker processes (``workers`` at a time) with a hard ``timeout``; a task that
raises, crashes or overruns becomes a row with status ``failed`` or ``timeout``
and never stops the run. Batched methods (models) run in the main process, all
structures at once, after the workers finish (TensorFlow/JAX and fork do not mix).

Reflections: ``reflections="dataset"`` (default) scores on the dataset's own
reflections (h, k, l in [-10, 10], one of each Friedel pair) with d ≥ d_min: for
cells longer than 10·d_min the box cuts the resolution sphere, which the
``completeness`` column reports. ``reflections="sphere"`` recomputes exact
amplitudes from the stored atomic model on the complete sphere to d_min (not
for model methods, which need the dataset's reflections).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


from phasenet.baselines.registry import (BATCHED, FORKED, NotApplicable, PhasingFailed, PhasingMethod,
                                         UnknownMethod, get_method, problem_for)
from phasenet.evaluation.maps import atom_recovery
from phasenet.evaluation.metrics import SOLVED_CC, score_phases
from phasenet.evaluation.options import BASE_METHODS, DEFAULT_D_MIN, EvaluateOptions, EvaluationError
from phasenet.evaluation.problem import DatasetRows, PhasingProblem, problem_from_structure
from phasenet.reflections import resolution_mask, sphere_hkl
from phasenet.util.progress import progress_bar
from phasenet.util.workers import start_forked

STATUSES = ("ok", "not-applicable", "failed", "timeout")
ROW_COLUMNS = ["index", "id", "space_group", "centric_origin", "method", "d_min", "status", "reason",
               "n_reflections", "d_min_data", "completeness", "phase_error", "map_cc", "sign_accuracy",
               "solved", "atom_recovery", "heavy_found", "origin_shift", "inverted", "seconds"]


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


def _completeness(problem: PhasingProblem, d_min: float) -> float:
    try:
        n_sphere = len(sphere_hkl(problem.cell, d_min))
    except (ValueError, MemoryError):
        return float("nan")
    return float(min(1.0, len(problem) / n_sphere)) if n_sphere else float("nan")


def score_row(problem: PhasingProblem, phases: np.ndarray, options: EvaluateOptions) -> dict:
    """The metric columns for phases on a (truncated) problem."""
    score, aligned = score_phases(problem.hkl, problem.amplitude, problem.phase_true, phases,
                                  problem.symops, solved_cc=options.solved_cc)
    row = score.as_dict()
    row["atom_recovery"] = float("nan")
    if options.atom_recovery and problem.atoms is not None and len(problem):
        atoms = problem.non_h_cell_positions()
        if len(atoms):
            row["atom_recovery"] = atom_recovery(problem.hkl, problem.amplitude, aligned, problem.cell,
                                                 atoms, d_min=problem.d_min)
    return row


def truncated(problem: PhasingProblem, d_min: float, options: EvaluateOptions) -> PhasingProblem:
    if options.reflections == "sphere":
        return problem_from_structure(problem.structure(), d_min).truncate(None)
    return problem.truncate(d_min)


def run_task(problem: PhasingProblem, method: str | PhasingMethod, d_min: float, seed: int,
             options: EvaluateOptions) -> dict:
    """One row of a forked method (a registered name or the method): truncate, phase, score.
    Never raises for method failures (they become the row)."""
    t0 = time.perf_counter()
    row = {"method": method if isinstance(method, str) else method.name, "d_min": d_min}
    try:
        if isinstance(method, str):
            method = get_method(method)
        if method.execution != FORKED:
            raise ValueError(f"{method.name} is a {method.execution} method: it phases all structures at once")
        p = truncated(problem, d_min, options)
        row.update(n_reflections=len(p), d_min_data=p.d_min, completeness=_completeness(p, d_min))
        if len(p) < 10:
            raise NotApplicable(f"only {len(p)} reflections with d >= {d_min} Å")
        phases, note, *details = method.phases(problem_for(method, p, options), seed, options)
        row.update(score_row(p, phases, options))
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

    ``method.prepare`` runs once (not applicable or failed: every row says so), then the
    method phases every applicable structure in one call on the dataset's reflections, and
    each d_min scores the reflections it phased (finite phases) with d ≥ d_min.
    """
    name = method.name
    out = []

    def rows_for(which, status, reason):
        for i in which:
            for d in d_mins:
                out.append({"index": i, "method": name, "d_min": d, "status": status, "reason": reason})

    t0 = time.perf_counter()
    try:
        method.prepare(rows_src.hkl, options)
    except NotApplicable as exc:
        rows_for(indices, "not-applicable", str(exc))
        return out
    except PhasingFailed as exc:
        rows_for(indices, "failed", str(exc))
        return out
    except Exception as exc:  # noqa: BLE001
        rows_for(indices, "failed", f"{type(exc).__name__}: {exc}")
        return out
    problems, seen = {}, {}  # the full problems (to score against), what the method sees
    for i in indices:
        try:
            p = rows_src.problem(i)
        except Exception as exc:  # noqa: BLE001
            rows_for([i], "failed", f"reading structure: {type(exc).__name__}: {exc}")
            continue
        try:
            seen[i] = problem_for(method, p, options)
        except NotApplicable as exc:
            rows_for([i], "not-applicable", str(exc))
            continue
        except Exception as exc:  # noqa: BLE001
            rows_for([i], "failed", f"{type(exc).__name__}: {exc}")
            continue
        problems[i] = p
    if not problems:
        return out
    applicable = list(problems)
    try:
        phases = np.asarray(method.phases_batch([seen[i] for i in applicable], options), dtype=float)
        expected = (len(applicable), len(rows_src.hkl))
        if phases.shape != expected:
            raise ValueError(f"phases_batch returned shape {phases.shape}, expected {expected}")
    except PhasingFailed as exc:
        rows_for(applicable, "failed", str(exc))
        return out
    except Exception as exc:  # noqa: BLE001
        rows_for(applicable, "failed", f"{type(exc).__name__}: {exc}")
        return out
    per_structure = (time.perf_counter() - t0) / len(applicable)
    for i, phases_full in zip(applicable, phases):
        p = problems[i]
        keep = np.isfinite(phases_full)
        for d in d_mins:
            t1 = time.perf_counter()
            row = {"index": i, "method": name, "d_min": d}
            try:
                sub0 = p.select(keep)
                sub = sub0.truncate(d)
                kept = (sub0.amplitude > 0) & resolution_mask(sub0.hkl, sub0.cell, d)  # as truncate
                if int(kept.sum()) != len(sub):
                    raise AssertionError("truncate kept other reflections than the scored phases")
                row.update(n_reflections=len(sub), d_min_data=sub.d_min, completeness=_completeness(sub, d))
                row.update(score_row(sub, phases_full[keep][kept], options))
                row.update(status="ok", reason="")
            except Exception as exc:  # noqa: BLE001
                row.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
            row["seconds"] = per_structure / len(d_mins) + time.perf_counter() - t1
            out.append(row)
    return out


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
                                          task_seed(options.seed, i, method, d), options)
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
    summary = summarise(df)
    files = write_report(df, summary, out, path, options, seconds=time.perf_counter() - t_start)
    n_problems = int(df.status.isin(["failed", "timeout"]).sum())
    return EvaluationResult(rows=df, summary=summary, files=files, n_problems=n_problems)


# ---------------------------------------------------------------------------
# report


def summarise(df) -> "pd.DataFrame":  # noqa: F821
    """One row per (method, d_min). Success rate = solved / (ok + failed + timeout):
    a method that fails or runs out of time has not solved the structure; structures
    where it does not apply are left out."""
    import pandas as pd

    out = []
    for (method, d), g in df.groupby(["method", "d_min"], sort=True):
        ok = g[g.status == "ok"]
        tried = g[g.status.isin(["ok", "failed", "timeout"])]
        solved = ok["solved"].astype(bool).sum() if len(ok) else 0
        out.append({
            "method": method, "d_min": d, "n": len(g), "ok": len(ok),
            "not_applicable": int((g.status == "not-applicable").sum()),
            "failed": int((g.status == "failed").sum()), "timeout": int((g.status == "timeout").sum()),
            "success_rate": solved / len(tried) if len(tried) else np.nan,
            "phase_error_mean": ok.phase_error.astype(float).mean() if len(ok) else np.nan,
            "phase_error_median": ok.phase_error.astype(float).median() if len(ok) else np.nan,
            "map_cc_mean": ok.map_cc.astype(float).mean() if len(ok) else np.nan,
            "sign_accuracy_mean": ok.sign_accuracy.astype(float).mean() if len(ok) else np.nan,
            "atom_recovery_mean": ok.atom_recovery.astype(float).mean() if len(ok) else np.nan,
            "completeness_mean": ok.completeness.astype(float).mean() if len(ok) else np.nan,
            "seconds_mean": g.seconds.astype(float).mean(),
        })
    return pd.DataFrame(out)


def _fmt(v, spec):
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def summary_markdown(summary, title: str = "") -> str:
    head = ("| method | d_min (Å) | structures | ok | n/a | failed | timeout | success | "
            "phase error mean / median (°) | map CC | sign acc. | atoms found | completeness | s/task |")
    lines = [f"# {title}" if title else "", "", head, "|" + "---|" * 14]
    for r in summary.itertuples():
        lines.append(
            f"| {r.method} | {r.d_min:g} | {r.n} | {r.ok} | {r.not_applicable} | {r.failed} | {r.timeout} | "
            f"{_fmt(r.success_rate * 100 if np.isfinite(r.success_rate) else np.nan, '.0f')}% | "
            f"{_fmt(r.phase_error_mean, '.1f')} / {_fmt(r.phase_error_median, '.1f')} | "
            f"{_fmt(r.map_cc_mean, '.3f')} | {_fmt(r.sign_accuracy_mean, '.3f')} | "
            f"{_fmt(r.atom_recovery_mean, '.2f')} | {_fmt(r.completeness_mean, '.2f')} | "
            f"{_fmt(r.seconds_mean, '.2f')} |")
    lines += ["", f"Solved: map CC ≥ {SOLVED_CC} at the best permissible origin. Success = solved / "
              "(ok + failed + timeout); not-applicable rows are left out. Metrics are means over ok rows."]
    return "\n".join(lines).lstrip("\n") + "\n"


def plot_vs_dmin(summary, column: str, path, ylabel: str, title: str, percent: bool = False):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for method, g in summary.groupby("method", sort=True):
        g = g.sort_values("d_min")
        y = g[column].astype(float) * (100 if percent else 1)
        ax.plot(g.d_min, y, marker="o", label=method)
    ax.set_xlabel("d_min (Å)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(df, summary, out: Path, dataset, options: EvaluateOptions, seconds: float) -> dict:
    from phasenet.version import __version__

    files = {
        "rows": out / "evaluation.csv",
        "summary": out / "summary.md",
        "phase_error_plot": out / "phase_error_vs_dmin.png",
        "success_plot": out / "success_rate_vs_dmin.png",
        "config": out / "config.json",
    }
    df.to_csv(files["rows"], index=False)
    files["summary"].write_text(summary_markdown(summary, f"Evaluation of {Path(str(dataset)).name}"))
    plot_vs_dmin(summary, "phase_error_mean", files["phase_error_plot"], "mean phase error (°)",
                 "|F|-weighted phase error at the best origin (90° = random)")
    plot_vs_dmin(summary, "success_rate", files["success_plot"], "solved (%)",
                 f"success rate (map CC ≥ {SOLVED_CC})", percent=True)
    import cctbx  # noqa: F401

    config = {"dataset": str(dataset), "options": options.as_dict(), "seconds": seconds,
              "phasenet_version": __version__, "n_rows": len(df),
              "status_counts": {k: int(v) for k, v in df.status.value_counts().items()}}
    files["config"].write_text(json.dumps(config, indent=2, default=str))
    return {k: str(v) for k, v in files.items()}
