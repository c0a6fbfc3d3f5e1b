"""How real are the synthetic structures? phasenet synth against the real corpus.

    python benchmarks/synth_realism.py [--n-synth 300] [--real ../shared/data/real]
        [--out docs/synth_realism.png] [--seed 0] [--workers 2] [--json]

For every real structure (CIF files under --real) and N synthetic ones
(``phasenet.synth.generate.generate_structure``: P-1 + P2₁/c by default, plus a
non-centrosymmetric P2₁2₁2₁ set for the Wilson panel) it computes, with
:mod:`phasenet.structure_stats`: bond lengths between non-H atoms, the shortest
intermolecular non-H···non-H contact, the volume per non-H atom and ⟨|E²−1|⟩ of
the calculated intensities on the dataset grid (max index 10). It writes one figure
with four panels (real vs synthetic) to --out and the numbers (counts, means,
quantiles) to the same path with ``.json``; ``--csv`` also writes one row per
structure.

Real structures used: every data block read without failure, one per distinct
(formula, cell) (the corpus holds test variants of the same file), organic
(contains C; only H B C N O F Si P S Cl Se Br I) unless --all-real, molecular
(no periodic bond network) and with 10-40 Å³ per non-H atom (outside are fragments
and partial models). Bond and contact panels also leave out real structures with
partial occupancies or overlapping sites (disorder puts alternative sites at
unphysical distances). Synthetic structures are never filtered.
"""

import phasenet  # noqa: F401  (first: cctbx import order)

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REAL = REPO.parent / "shared" / "data" / "real"
ORGANIC_ELEMENTS = {"H", "D", "B", "C", "N", "O", "F", "Si", "P", "S", "Cl", "Se", "Br", "I"}
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Real structures outside this volume per non-H atom (Å³) are fragments or partial
#: models (test files of the corpus), not crystals; they are counted and left out.
VOLUME_SANE = (10.0, 40.0)


# ------------------------------------------------------------------ per structure


def _stats(structure):
    """Per-structure numbers plus the non-H bond lengths (and their element pairs)."""
    from phasenet.structure_stats import crystal_geometry, wilson_statistic

    g = crystal_geometry(structure)
    row = dict(id=structure.id, space_group=structure.space_group,
               n_atoms_asu=len(structure.atoms), n_non_h_cell=g.n_non_h_cell,
               volume_per_non_h=g.volume_per_non_h, shortest_contact=g.shortest_contact,
               contact_elements="···".join(e for e in g.contact_elements if e),
               shortest_contact_h=g.shortest_contact_h, extended=g.extended,
               n_overlaps=g.n_overlaps, has_h=g.has_h, disordered=g.disordered,
               n_bonds=len(g.bond_length))
    w = wilson_statistic(structure)
    row.update(centrosymmetric=w.centrosymmetric, mean_abs_e2m1=w.mean_abs_e2m1,
               mean_abs_e2m1_all=w.mean_abs_e2m1_all, wilson_b=w.wilson_b)
    pairs = np.array(["-".join(p) for p in g.bond_elements]) if len(g.bond_length) else np.array([], str)
    return row, g.bond_length, pairs


def _elements(structure):
    import gemmi  # after phasenet (cctbx import order)

    return {gemmi.Element(str(e)).name for e in structure.atoms.element}


def _real_task(path):
    """All blocks of one CIF: [(kind, payload)] with kind 'ok', 'read-failure', 'error'."""
    from phasenet.io.cif import read_cif
    from phasenet.pipeline.records import hill_formula
    from phasenet.structure import Structure

    out = []
    try:
        items = read_cif(path)
    except Exception as exc:  # noqa: BLE001  (damaged files are expected)
        return [("read-failure", f"{path}: {exc}")]
    for it in items:
        if not isinstance(it, Structure):
            out.append(("read-failure", str(it)))
            continue
        key = (hill_formula(it.atoms.element, it.atoms.occupancy),
               tuple(round(float(c) / 0.05) for c in it.cell))
        organic = "C" in (els := _elements(it)) and els <= ORGANIC_ELEMENTS
        try:
            row, bonds, pairs = _stats(it)
        except Exception as exc:  # noqa: BLE001
            out.append(("error", f"{it.id}: {type(exc).__name__}: {exc}"))
            continue
        row["organic"] = organic
        out.append(("ok", (key, row, bonds, pairs)))
    return out


def _synth_task(args):
    index, options = args
    from phasenet.synth.generate import generate_structure

    t = time.perf_counter()
    try:
        s = generate_structure(index, options)
    except Exception as exc:  # noqa: BLE001  (the generator may be mid-rewrite)
        return ("error", f"{index}: {type(exc).__name__}: {exc}", time.perf_counter() - t)
    gen = time.perf_counter() - t
    row, bonds, pairs = _stats(s)
    row["generate_s"] = gen
    return ("ok", (row, bonds, pairs), gen)


def _map(fn, tasks, workers):
    if workers <= 1:
        return [fn(t) for t in tasks]
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ctx.Pool(workers) as pool:
        return pool.map(fn, tasks, chunksize=max(1, len(tasks) // (8 * workers)))


# ------------------------------------------------------------------ collections


def collect_real(real_dir: Path, workers: int, all_real: bool):
    files = sorted(real_dir.rglob("*.cif"))
    if not files:
        raise SystemExit(f"no CIF files under {real_dir}")
    counts = dict(files=len(files), blocks_read=0, read_failures=0, stat_errors=0,
                  duplicates=0, non_organic=0, extended_networks=0, implausible_volume=0, used=0)
    rows, bonds, pairs, seen, errors = [], [], [], set(), []
    for result in _map(_real_task, [str(f) for f in files], workers):
        for kind, payload in result:
            if kind == "read-failure":
                counts["read_failures"] += 1
                continue
            counts["blocks_read"] += 1
            if kind == "error":
                counts["stat_errors"] += 1
                errors.append(payload)
                continue
            key, row, b, p = payload
            if key in seen:
                counts["duplicates"] += 1
                continue
            seen.add(key)
            if not (row["organic"] or all_real):
                counts["non_organic"] += 1
                continue
            if row["extended"]:  # graphite, frameworks: not molecular crystals
                counts["extended_networks"] += 1
                continue
            if not VOLUME_SANE[0] <= row["volume_per_non_h"] <= VOLUME_SANE[1]:
                counts["implausible_volume"] += 1  # fragments, partial models
                continue
            rows.append(row)
            # disorder (partial occupancies) or unmodelled disorder (overlapping sites)
            # puts atoms at unphysical distances: no bonds or contacts from those
            row["geometry_ok"] = not row["disordered"] and row["n_overlaps"] == 0
            bonds.append(b if row["geometry_ok"] else b[:0])
            pairs.append(p if row["geometry_ok"] else p[:0])
    counts["used"] = len(rows)
    counts["used_for_geometry"] = sum(r["geometry_ok"] for r in rows)
    counts["first_stat_errors"] = errors[:3]
    return rows, bonds, pairs, counts


def collect_synth(n: int, options, workers: int):
    results = _map(_synth_task, [(i, options) for i in range(n)], workers)
    rows, bonds, pairs, errors = [], [], [], []
    gen_time = 0.0
    for kind, payload, t in results:
        gen_time += t
        if kind == "error":
            errors.append(payload)
            continue
        row, b, p = payload
        rows.append(row)
        bonds.append(b)
        pairs.append(p)
    return rows, bonds, pairs, dict(requested=n, generated=len(rows), failed=len(errors),
                                    first_errors=errors[:3],
                                    generate_s_per_structure=gen_time / max(n, 1))


# ------------------------------------------------------------------ summary


def _describe(x) -> dict:
    x = np.asarray([v for v in x if v is not None and np.isfinite(v)], dtype=float)
    if not len(x):
        return dict(n=0)
    q = np.quantile(x, QUANTILES)
    return dict(n=int(len(x)), mean=float(x.mean()), std=float(x.std()),
                **{f"q{int(p * 100):02d}": float(v) for p, v in zip(QUANTILES, q)})


def _geometry_rows(rows):
    """Rows whose bonds and contacts count: real ones without disorder or overlapping
    sites; every synthetic one (a clash there is the generator's fault and must show)."""
    return [r for r in rows if r.get("geometry_ok", True) and not r["extended"]]


def _non_h_bonds(bonds, pairs):
    b = np.concatenate(bonds) if bonds else np.zeros(0)
    p = np.concatenate(pairs) if pairs else np.zeros(0, str)
    heavy = np.array(["H" not in x.split("-") and "D" not in x.split("-") for x in p], dtype=bool)
    return b, p, heavy


def summarise(rows, bonds, pairs) -> dict:
    b, p, heavy = _non_h_bonds(bonds, pairs)
    geo = _geometry_rows(rows)
    out = dict(
        n_structures=len(rows),
        bond_non_h=_describe(b[heavy]),
        bond_by_pair={k: _describe(b[p == k]) for k in ("C-C", "C-N", "C-O", "C-H", "H-N", "H-O")},
        shortest_contact_non_h=_describe([r["shortest_contact"] for r in geo]),
        shortest_contact_with_h=_describe([r["shortest_contact_h"] for r in geo]),
        volume_per_non_h=_describe([r["volume_per_non_h"] for r in rows]),
        n_non_h_cell=_describe([r["n_non_h_cell"] for r in rows]),
        structures_for_geometry=len(geo),
    )
    for name, centro in (("centrosymmetric", True), ("non_centrosymmetric", False)):
        out[f"e2m1_{name}"] = _describe([r["mean_abs_e2m1"] for r in rows
                                         if r["centrosymmetric"] == centro])
    contacts = np.array([r["shortest_contact"] for r in geo], dtype=float)
    contacts = contacts[np.isfinite(contacts)]
    if len(contacts):
        out["fraction_contact_below"] = {f"{t:.1f}": float((contacts < t).mean())
                                         for t in (2.8, 3.0, 3.2, 3.4)}
    return out


# ------------------------------------------------------------------ figure


def plot(real, synth, synth_nc, summary, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from phasenet.structure_stats import E2M1_ACENTRIC, E2M1_CENTRIC

    colors = dict(real="#1f4e79", synth="#d95f02")
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    (ax_b, ax_c), (ax_v, ax_w) = axes

    def hist(ax, x, bins, label, color, **kw):
        x = np.asarray([v for v in x if np.isfinite(v)], dtype=float)
        if len(x):
            ax.hist(x, bins=bins, density=True, histtype="step", lw=1.6, color=color,
                    label=f"{label} (n={len(x)})", **kw)

    # bonds
    bins = np.arange(0.9, 2.31, 0.01)
    for name, (rows, bonds, pairs) in (("real", real[:3]), ("synth", synth[:3])):
        b, _, heavy = _non_h_bonds(bonds, pairs)
        hist(ax_b, b[heavy], bins, "real" if name == "real" else "synthetic", colors[name])
    ax_b.set(xlabel="bond length, non-H atoms (Å)", ylabel="density",
             title="Bonded distances (covalent radii + 0.4 Å)")
    ax_b.legend(fontsize=8)

    # contacts
    bins = np.arange(1.5, 5.01, 0.1)
    for name, (rows, _, _) in (("real", real[:3]), ("synth", synth[:3])):
        geo = _geometry_rows(rows)
        lab = "real" if name == "real" else "synthetic"
        hist(ax_c, [r["shortest_contact"] for r in geo], bins, f"{lab}, non-H···non-H", colors[name])
        hist(ax_c, [r["shortest_contact_h"] for r in geo], bins, f"{lab}, H included",
             colors[name], ls=":")
    ax_c.set(xlabel="shortest intermolecular contact per structure (Å)", ylabel="density",
             title="Shortest intermolecular contact")
    ax_c.legend(fontsize=8)

    # volume
    bins = np.arange(8, 60.1, 1.0)
    for name, (rows, _, _) in (("real", real[:3]), ("synth", synth[:3])):
        hist(ax_v, [r["volume_per_non_h"] for r in rows], bins,
             "real" if name == "real" else "synthetic", colors[name])
    ax_v.axvspan(17, 19, color="0.85", zorder=0, label="organic crystals 17-19 Å³")
    ax_v.set(xlabel="V_cell / non-H atoms in the cell (Å³)", ylabel="density",
             title="Volume per non-H atom")
    ax_v.legend(fontsize=8)

    # Wilson
    bins = np.arange(0.5, 1.61, 0.02)
    real_rows = real[0]
    groups = [
        ("real centrosymmetric", [r for r in real_rows if r["centrosymmetric"]], colors["real"], "-"),
        ("real non-centrosym.", [r for r in real_rows if not r["centrosymmetric"]], colors["real"], "--"),
        ("synthetic P-1/P2₁/c", [r for r in synth[0] if r["centrosymmetric"]], colors["synth"], "-"),
        ("synthetic P2₁2₁2₁", [r for r in synth_nc[0] if not r["centrosymmetric"]], colors["synth"], "--"),
    ]
    for label, rows, color, ls in groups:
        x = [r["mean_abs_e2m1"] for r in rows]
        m = np.nanmean(x) if len(x) else np.nan
        hist(ax_w, x, bins, f"{label}, mean {m:.3f}", color, ls=ls)
    ax_w.axvline(E2M1_CENTRIC, color="k", lw=1, label=f"theory, centric {E2M1_CENTRIC}")
    ax_w.axvline(E2M1_ACENTRIC, color="k", lw=1, ls="--", label=f"theory, acentric {E2M1_ACENTRIC}")
    ax_w.set(xlabel="⟨|E²−1|⟩ per structure (acentric reflections for non-centrosymmetric)",
             ylabel="density", title="Wilson statistics of calculated intensities")
    ax_w.legend(fontsize=7, loc="upper right")

    fig.suptitle(f"phasenet synth vs real organic crystals ({summary['real']['n_structures']} real, "
                 f"{summary['synth']['n_structures']} + {summary['synth_p212121']['n_structures']} "
                 "synthetic)", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--n-synth", type=int, default=300,
                   help="synthetic structures in the default groups (default %(default)s)")
    p.add_argument("--n-nc", type=int, default=None,
                   help="non-centrosymmetric P212121 structures (default n-synth/3)")
    p.add_argument("--space-group", action="append", default=None,
                   help="synthetic space groups (repeatable; default: synth's P-1 and P21/c)")
    p.add_argument("--real", type=Path, default=DEFAULT_REAL,
                   help="folder searched recursively for real CIF files (default %(default)s)")
    p.add_argument("--all-real", action="store_true",
                   help="also use non-organic real structures (default: organic only)")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "synth_realism.png",
                   help="figure (default %(default)s); the summary goes next to it as .json")
    p.add_argument("--csv", type=Path, default=None, help="also write one row per structure here")
    p.add_argument("--seed", type=int, default=0, help="synth seed (default %(default)s)")
    p.add_argument("--atoms", default=None, help="synth MIN-MAX non-H atoms (default synth's)")
    p.add_argument("--workers", type=int, default=2, help="processes (default %(default)s)")
    p.add_argument("--no-plot", action="store_true", help="numbers only")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = p.parse_args(argv)

    n_nc = a.n_synth // 3 if a.n_nc is None else a.n_nc
    opts = opts_nc = None
    if a.n_synth or n_nc:
        try:
            from phasenet.synth.generate import SynthOptions
        except ImportError as exc:
            raise SystemExit(f"cannot import phasenet.synth.generate ({exc}); --n-synth 0 --n-nc 0 "
                             "measures the real corpus alone") from None
        kw = {}
        if a.atoms:
            lo, hi = (int(x) for x in a.atoms.split("-"))
            kw["atoms"] = (lo, hi)
        if a.space_group:
            kw["space_groups"] = tuple(a.space_group)
        opts = SynthOptions(seed=a.seed, **kw)
        kw.pop("space_groups", None)
        opts_nc = SynthOptions(seed=a.seed, space_groups=("P212121",), **kw)

    log = (lambda *m: None) if a.json else (lambda *m: print(*m, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    real = collect_real(a.real, a.workers, a.all_real)
    t_real = time.perf_counter() - t0
    log(f"real: {real[3]} ({t_real:.1f} s)")
    t0 = time.perf_counter()
    empty = ([], [], [], dict(requested=0, generated=0, failed=0, first_errors=[],
                              generate_s_per_structure=0.0))
    synth = collect_synth(a.n_synth, opts, a.workers) if a.n_synth else empty
    synth_nc = collect_synth(n_nc, opts_nc, a.workers) if n_nc else empty
    t_synth = time.perf_counter() - t0
    log(f"synth: {synth[3]['generated']}/{a.n_synth} + P212121 {synth_nc[3]['generated']}/{n_nc} "
        f"({t_synth:.1f} s)")

    summary = dict(
        real=dict(counts=real[3], **summarise(*real[:3])),
        synth=dict(counts=synth[3], space_groups=list(opts.space_groups) if opts else [],
                   **summarise(*synth[:3])),
        synth_p212121=dict(counts=synth_nc[3], **summarise(*synth_nc[:3])),
        settings=dict(real=str(a.real), n_synth=a.n_synth, n_nc=n_nc, seed=a.seed,
                      all_real=a.all_real, atoms=list(opts.atoms) if opts else None, workers=a.workers,
                      reflections="canonical_hkl(max_index=10)", seconds_real=round(t_real, 1),
                      seconds_synth=round(t_synth, 1), loadavg_1min=os.getloadavg()[0]),
    )
    out_json = a.out.with_suffix(".json")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(summary, indent=1) + "\n")
    if a.csv:
        import pandas as pd

        frames = [pd.DataFrame(rows).assign(set=name) for name, rows in
                  (("real", real[0]), ("synth", synth[0]), ("synth_p212121", synth_nc[0])) if rows]
        pd.concat(frames, ignore_index=True).to_csv(a.csv, index=False)
    if not a.no_plot:
        plot(real, synth, synth_nc, summary, a.out)
        log(f"wrote {a.out} and {out_json}")
    if a.json:
        print(json.dumps(summary, indent=1))
    else:
        print(_table(summary))
    return 0


def _table(s) -> str:
    def f(d, key="q50"):
        return f"{d[key]:.3f}" if d.get("n") else "-"

    lines = [f"{'statistic':44s} {'real':>16s} {'synthetic':>16s}"]
    for label, key in (("non-H bond length (Å), median", "bond_non_h"),
                       ("shortest non-H···non-H contact (Å), median", "shortest_contact_non_h"),
                       ("shortest contact incl. H (Å), median", "shortest_contact_with_h"),
                       ("volume per non-H atom (Å³), median", "volume_per_non_h")):
        lines.append(f"{label:44s} {f(s['real'][key]):>16s} {f(s['synth'][key]):>16s}")
    lines.append(f"{'<|E²-1|> centrosymmetric, mean (0.968)':44s} "
                 f"{f(s['real']['e2m1_centrosymmetric'], 'mean'):>16s} "
                 f"{f(s['synth']['e2m1_centrosymmetric'], 'mean'):>16s}")
    lines.append(f"{'<|E²-1|> non-centrosymmetric, mean (0.736)':44s} "
                 f"{f(s['real']['e2m1_non_centrosymmetric'], 'mean'):>16s} "
                 f"{f(s['synth_p212121']['e2m1_non_centrosymmetric'], 'mean'):>16s}")
    lines.append(f"structures: real {s['real']['n_structures']} "
                 f"(geometry {s['real']['structures_for_geometry']}), synthetic "
                 f"{s['synth']['n_structures']} + P212121 {s['synth_p212121']['n_structures']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
