"""Tables of docs/honest-baseline.md from ``phasenet evaluate`` reports.

Merges the rows of several reports on the same dataset (e.g. the classical methods and the
models, run separately; the ``true`` and ``random`` rows of the later reports are dropped
as duplicates, they are seeded identically), writes the merged report (evaluation.csv,
summary.csv/md and the plots, through phasenet.evaluation.evaluate.write_report) and
prints the Markdown tables: the common subset of all methods, the common subset without
the heavy-atom method (it applies only to structures with a heavy atom), and per method,
each with solved %, median and mean map CC, random CC on the same rows, the paired
Δ CC vs random (mean ± standard error over the rows), the rows above random, mean phase error.

    python benchmarks/honest_baseline_tables.py OUT_DIR REPORT_DIR [REPORT_DIR ...]
"""

from __future__ import annotations

import phasenet  # noqa: F401  (first: cctbx import order)

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from phasenet.evaluation.evaluate import common_rows, summarise_report, write_report
from phasenet.evaluation.options import EvaluateOptions


def merged_rows(reports: list[Path]) -> pd.DataFrame:
    frames, seen = [], set()
    for rep in reports:
        df = pd.read_csv(rep / "evaluation.csv", keep_default_na=False, na_values=[""])
        df = df[~df.method.isin(seen)]
        seen |= set(df.method.unique())
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    df["reason"] = df["reason"].fillna("")
    return df.sort_values(["index", "method", "d_min"], kind="stable").reset_index(drop=True)


def short(method: str) -> str:
    return Path(method[6:]).name if method.startswith("model:") else method


def table(df: pd.DataFrame) -> str:
    lines = ["| method | d_min (Å) | structures | solved | median map CC | mean map CC | random CC (same rows) "
             "| Δ CC (paired mean ± s.e.) | above random | mean phase error (°) | random phase error (°) |", "|" + "---|" * 11]
    for (method, d), g in df.groupby(["method", "d_min"], sort=True):
        ok = g[g.status == "ok"]
        tried = g[g.status.isin(["ok", "failed", "timeout"])]
        solved = int(ok.solved.astype(str).str.lower().eq("true").sum())
        d_cc = (ok.map_cc - ok.random_map_cc).astype(float)
        se = d_cc.std(ddof=1) / np.sqrt(len(d_cc)) if len(d_cc) > 1 else np.nan
        f = lambda s, spec: format(float(s), spec) if len(ok) and np.isfinite(float(s)) else "—"  # noqa: E731
        lines.append(
            f"| {short(method)} | {d:g} | {len(tried)} | {solved}/{len(tried)} "
            f"({100 * solved / max(len(tried), 1):.0f} %) | {f(ok.map_cc.median(), '.3f')} | {f(ok.map_cc.mean(), '.3f')} | "
            f"{f(ok.random_map_cc.mean(), '.3f')} | {f(d_cc.mean(), '+.3f')} ± {f(se, '.3f')} | "
            f"{int((d_cc > 0).sum())}/{len(ok)} | {f(ok.phase_error.mean(), '.1f')} | "
            f"{f(ok.random_phase_error.mean(), '.1f')} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    out, reports = Path(argv[0]), [Path(a) for a in argv[1:]]
    df = merged_rows(reports)
    out.mkdir(parents=True, exist_ok=True)
    configs = [json.loads((r / "config.json").read_text()) for r in reports]
    write_report(df, summarise_report(df), out, configs[0]["dataset"], EvaluateOptions(), seconds=float("nan"))
    # the merged report's config.json: the reports it was made of, each with its own options
    (out / "config.json").write_text(json.dumps({"merged_from": [str(r) for r in reports],
                                                 "reports": configs}, indent=2, default=str))
    print("## common subset, all methods\n")
    print(table(common_rows(df)))
    print("\n## common subset without patterson\n")
    print(table(common_rows(df[df.method != "patterson"])))
    print("\n## per method\n")
    print(table(df[df.status != "not-applicable"]))


if __name__ == "__main__":
    main(sys.argv[1:])
