"""One evaluation that scores any phasing method against the true structures of a dataset.

Methods (``EvaluateOptions.methods``):

- ``true``: the dataset's own phases (sanity row: R = 1, 0°),
- ``random``: random signs (0/π) for structures with an inversion centre at the
  origin, uniformly random phases otherwise (seeded),
- ``patterson``: the heavy-atom method of :mod:`phasenet.baselines.patterson`
  (not applicable without a heavy atom; the rule is documented there),
- ``charge-flipping``: cctbx charge flipping (:mod:`phasenet.baselines.charge_flipping`),
- ``model:RUN_DIR``: a trained sign network through ``phasenet.training.predict.load_predictor``
  (centrosymmetric structures with the inversion centre at the origin only).

Each (structure, method, d_min) is one task and one row. Non-model tasks run in
forked worker processes (``workers`` at a time) with a hard ``timeout``; a task that
raises, crashes or overruns becomes a row with status ``failed`` or ``timeout``
and never stops the run. Model predictions run in the main process, in batches,
after the workers finish (TensorFlow/JAX and fork do not mix).

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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np


from phasenet.baselines.charge_flipping import charge_flip, start_forked
from phasenet.evaluation.metrics import SOLVED_CC, atom_recovery, score_phases
from phasenet.evaluation.options import BASE_METHODS, EvaluateOptions, EvaluationError
from phasenet.baselines.patterson import NotApplicable, heavy_atom_phases
from phasenet.evaluation.problem import DatasetRows, PhasingProblem, problem_from_structure, sphere_hkl

STATUSES = ("ok", "not-applicable", "failed", "timeout")
ROW_COLUMNS = ["index", "id", "space_group", "centric_origin", "method", "d_min", "status", "reason",
               "n_reflections", "d_min_data", "completeness", "phase_error", "map_cc", "sign_accuracy",
               "solved", "atom_recovery", "origin_shift", "inverted", "seconds"]


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


def random_phases(problem: PhasingProblem, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if problem.centric_origin:
        return np.pi * rng.integers(0, 2, len(problem))
    return rng.uniform(-np.pi, np.pi, len(problem))


def method_phases(problem: PhasingProblem, method: str, seed: int, options: EvaluateOptions):
    """(phases, note) of a non-model method on a truncated problem; raises NotApplicable."""
    if method == "true":
        return problem.phase_true.copy(), ""
    if method == "random":
        return random_phases(problem, seed), ""
    if method == "patterson":
        if problem.atoms is None:
            raise NotApplicable("no composition (atomic model) stored")
        phases, sol = heavy_atom_phases(problem.hkl, problem.amplitude, problem.cell, problem.symops,
                                        problem.atoms, options.heavy_atom)
        return phases, f"{len(sol.frac)} {sol.element} placed (Σ Z² share {sol.plan.ratio:.2f})"
    if method == "charge-flipping":
        r = charge_flip(problem.hkl, problem.amplitude, problem.cell, problem.symops,
                        options.charge_flipping, seed=seed)
        phases = np.where(np.isfinite(r.phases), r.phases, 0.0)
        return phases, f"{r.message}, {r.n_iterations} cycles"
    raise ValueError(f"not a base method: {method}")


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


def run_task(problem: PhasingProblem, method: str, d_min: float, seed: int, options: EvaluateOptions) -> dict:
    """One row: truncate, phase, score. Never raises for method failures (they become the row)."""
    t0 = time.perf_counter()
    row = {"method": method, "d_min": d_min}
    try:
        p = truncated(problem, d_min, options)
        row.update(n_reflections=len(p), d_min_data=p.d_min, completeness=_completeness(p, d_min))
        if len(p) < 10:
            raise NotApplicable(f"only {len(p)} reflections with d >= {d_min} Å")
        phases, note = method_phases(p, method, seed, options)
        row.update(score_row(p, phases, options))
        row.update(status="ok", reason=note)
    except NotApplicable as exc:
        row.update(status="not-applicable", reason=str(exc))
    except Exception as exc:  # noqa: BLE001  (a failing structure is a row, not a crash)
        row.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
    row["seconds"] = time.perf_counter() - t0
    return row


# ---------------------------------------------------------------------------
# model methods


def load_model(run_dir: str):
    """``phasenet.training.predict.load_predictor(run_dir)``, imported only now."""
    import importlib

    try:
        predict = importlib.import_module("phasenet.training.predict")  # written by the training work
    except ImportError as exc:
        raise RuntimeError(f"model methods need phasenet.training.predict (from the training work), "
                           f"which is not available: {exc}") from None
    return predict.load_predictor(run_dir)


def model_rows(rows_src: DatasetRows, indices, method: str, d_mins, options: EvaluateOptions) -> list[dict]:
    """Rows of a ``model:RUN_DIR`` method for all structures and d_min values."""
    run_dir = method.split(":", 1)[1]
    out = []

    def fail_all(reason, status="failed"):
        for i in indices:
            for d in d_mins:
                out.append({"index": i, "method": method, "d_min": d, "status": status, "reason": reason})
        return out

    if options.reflections != "dataset":
        return fail_all("model methods need the dataset's reflections (reflections='dataset')",
                        "not-applicable")
    t0 = time.perf_counter()
    try:
        predictor = load_model(run_dir)
        want = np.asarray(predictor.hkl, dtype=np.int64)
    except Exception as exc:  # noqa: BLE001
        return fail_all(f"{type(exc).__name__}: {exc}")
    from phasenet.reflections import lookup

    pos = lookup(rows_src.hkl, want)
    if (pos < 0).any():
        return fail_all(f"the model expects {int((pos < 0).sum())} reflections that the dataset lacks "
                        f"(e.g. {want[pos < 0][0].tolist()})")
    centric = [i for i in indices if rows_src.problem(i).centric_origin]
    for i in indices:
        if i not in centric:
            for d in d_mins:
                out.append({"index": i, "method": method, "d_min": d, "status": "not-applicable",
                            "reason": "no inversion centre at the origin: the model predicts signs"})
    if not centric:
        return out
    problems = {i: rows_src.problem(i) for i in centric}
    x = np.stack([problems[i].intensity[pos] for i in centric]).astype(np.float32)
    cells = np.stack([np.asarray(problems[i].cell, dtype=np.float32) for i in centric])
    try:
        prob = np.asarray(predictor.predict_sign_probability(x, cells))
        if prob.shape != x.shape:
            raise ValueError(f"predict_sign_probability returned shape {prob.shape}, expected {x.shape}")
    except Exception as exc:  # noqa: BLE001
        for i in centric:
            for d in d_mins:
                out.append({"index": i, "method": method, "d_min": d, "status": "failed",
                            "reason": f"{type(exc).__name__}: {exc}"})
        return out
    per_structure = (time.perf_counter() - t0) / len(centric)
    for i, p_row in zip(centric, prob):
        prob_full = np.full(len(rows_src.hkl), np.nan)
        prob_full[pos] = p_row
        for d in d_mins:
            t1 = time.perf_counter()
            row = {"index": i, "method": method, "d_min": d}
            try:
                p = problems[i]
                keep = np.isfinite(prob_full)
                sub = replace(p, hkl=p.hkl[keep], amplitude=p.amplitude[keep], phase_true=p.phase_true[keep],
                              intensity=None)
                sub = sub.truncate(d)
                phases = np.where(prob_full[keep][_kept_mask(p, keep, d)] > 0.5, 0.0, np.pi)
                row.update(n_reflections=len(sub), d_min_data=sub.d_min, completeness=_completeness(sub, d))
                row.update(score_row(sub, phases, options))
                row.update(status="ok", reason="")
            except Exception as exc:  # noqa: BLE001
                row.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
            row["seconds"] = per_structure / len(d_mins) + time.perf_counter() - t1
            out.append(row)
    return out


def _kept_mask(p: PhasingProblem, keep: np.ndarray, d_min: float) -> np.ndarray:
    """Which of the ``keep`` reflections survive :meth:`PhasingProblem.truncate` at d_min."""
    from phasenet.evaluation.metrics import resolution_mask

    return (p.amplitude[keep] > 0) & resolution_mask(p.hkl[keep], p.cell, d_min)


# ---------------------------------------------------------------------------
# the run


def warm_up(symops_list) -> None:
    """Import lazily-imported modules and fill the per-space-group caches once in this
    process, so that forked workers inherit them instead of each redoing the work."""
    import scipy.ndimage  # noqa: F401
    import scipy.optimize  # noqa: F401
    from smtbx.ab_initio import charge_flipping  # noqa: F401

    from phasenet.evaluation.metrics import ORIGIN_GRID, _allowed_mask, continuous_origin_directions

    for ops in set(symops_list):
        try:
            n = ORIGIN_GRID * (2 if len(continuous_origin_directions(ops)) else 1)
            for inverted in (False, True):
                _allowed_mask(ops, inverted, n)
                _allowed_mask(ops, inverted, ORIGIN_GRID)
        except Exception:  # noqa: BLE001  (a bad structure fails in its own task)
            pass


def select_structures(rows_src: DatasetRows, options: EvaluateOptions) -> list[int]:
    idx = np.arange(len(rows_src))
    if options.split is not None:
        split = rows_src.h5["structures/split"][:]
        split = np.array([s.decode() if isinstance(s, bytes) else s for s in split])
        idx = idx[split == options.split]
    if options.limit is not None:
        idx = idx[: options.limit]
    return [int(i) for i in idx]


def _progress(total, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="evaluate", unit="task", disable=not enabled, smoothing=0.1)


def run_forked_tasks(tasks, get_problem, options: EvaluateOptions, progress=None, on_row=None) -> list[dict]:
    """Run (index, method, d_min) tasks in forked workers with the hard timeout."""
    from multiprocessing.connection import wait

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
                proc, conn = start_forked(run_task, cache[i], method, d,
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
        base = [m for m in options.methods if m in BASE_METHODS]
        models = [m for m in options.methods if m.startswith("model:")]
        tasks = [(i, m, d) for i in indices for m in base for d in d_mins]
        n_model = len(models) * len(indices) * len(d_mins)
        show = progress if progress is not None else None
        bar = _progress(len(tasks) + n_model, enabled=True if show is None else bool(show))
        warm_up([tuple(x for x in src.symops[i].split(";") if x.strip()) for i in indices])
        with bar:
            rows = run_forked_tasks(tasks, src.problem, options, progress=bar)
            for m in models:
                new = model_rows(src, indices, m, d_mins, options)
                rows.extend(new)
                bar.update(len(new))
        meta = {i: (src.ids[i], src.space_groups[i]) for i in indices}
        centric = {}
        for i in indices:
            from phasenet.physics.structure_factors import SymmetryOps
            ops = tuple(s for s in src.symops[i].split(";") if s.strip())
            centric[i] = SymmetryOps.from_triplets(ops).has_origin_inversion
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
    import phasenet

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
              "phasenet_version": phasenet.__version__, "n_rows": len(df),
              "status_counts": {k: int(v) for k, v in df.status.value_counts().items()}}
    files["config"].write_text(json.dumps(config, indent=2, default=str))
    return {k: str(v) for k, v in files.items()}
