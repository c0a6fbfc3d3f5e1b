"""The demo behind ``make demo``, the whole pipeline on an embedded default:

1. ``phasenet synth``: synthetic structures into a dataset, and as CIF files;
2. ``phasenet build`` of those CIFs, checked equal to the synthetic dataset;
3. ``phasenet train training/demo.toml``: a tiny sign network (origin-invariant loss);
4. ``phasenet evaluate``: the model against charge flipping, Patterson (heavy atom),
   random and true phases on test structures at 1.0 and 2.0 Å, with a Markdown
   report and plots, on the honest protocol (docs/evaluation.md: every method given the
   reflections to d_min only, the common subset first, the random reference beside each).

Each step is a function (``step_*``). Training and evaluation run as subprocesses
(Keras must not be imported in a process that later forks workers).
``write_random_cifs`` (cctbx's ``random_structure``) stays for quick tests that need
arbitrary CIF files.
"""

from __future__ import annotations

import sys
from pathlib import Path


DEMO_SPACE_GROUPS = ("P -1", "P 1 21/c 1")
#: Test structures the demo evaluates, and at which resolutions.
DEMO_EVAL_LIMIT = 12
DEMO_D_MIN = (1.0, 2.0)


def demo_files() -> tuple[Path, Path]:
    """The demo's dataset recipe (``datasets/demo.toml``: the synth options, with a few
    heavy atoms for the Patterson baseline) and training config (``training/demo.toml``:
    a tiny sign network, origin-invariant loss), from the checkout or the installed package."""
    from phasenet.resources import resource_path

    return resource_path("datasets", "demo.toml"), resource_path("training", "demo.toml")


def demo_recipe():
    """The demo's dataset recipe, read and checked."""
    from phasenet.options import load_recipe
    from phasenet.synth.options import SYNTH_RECIPE_KEYS, SynthOptions

    return load_recipe(demo_files()[0], SynthOptions, SYNTH_RECIPE_KEYS)


def write_random_cifs(folder: str | Path, n: int, seed: int = 0) -> list[Path]:
    """Write ``n`` random structures (cctbx random_structure) as CIF files."""
    import random

    from cctbx.development import random_structure
    from cctbx import sgtbx

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        random.seed(seed * 100003 + i)
        import scitbx.random as srandom  # cctbx's own RNG drives random_structure too
        srandom.set_random_seed(seed * 100003 + i)
        sg = DEMO_SPACE_GROUPS[i % len(DEMO_SPACE_GROUPS)]
        n_atoms = 6 + (i * 7) % 20
        xs = random_structure.xray_structure(
            space_group_info=sgtbx.space_group_info(sg),
            elements=(["C"] * (n_atoms // 2) + ["N"] * (n_atoms // 4)
                      + ["O"] * (n_atoms - n_atoms // 2 - n_atoms // 4)),
            volume_per_atom=18.0, min_distance=1.2, u_iso=0.03, random_u_iso=True,
            random_u_iso_scale=0.02)
        p = folder / f"random_{i:04d}.cif"
        with open(p, "w") as fh:
            xs.as_cif_simple(out=fh, data_name=f"random_{i:04d}")
        paths.append(p)
    return paths


def step_synth(out: Path, n: int, seed: int):
    """Synthesise ``n`` structures into ``out/synth.h5`` with the options of the demo's
    recipe (and ``seed``), with CIFs in ``out/cif``."""
    from phasenet.synth.generate import SynthOptions, synth_dataset

    recipe = demo_recipe()
    options = SynthOptions.from_dict({**recipe.options, "seed": seed})
    print(f"[demo] synthesising {n} structures (seed {seed}, {recipe.path.name}) into "
          f"{out / 'synth.h5'}, CIF files into {out / 'cif'}", flush=True)
    summary = synth_dataset(n, out / "synth.h5", options, cif_dir=out / "cif", overwrite=True, progress=True)
    print(summary.format(), flush=True)
    return summary


def step_build(out: Path, seed: int):
    """Build ``out/cif`` with phasenet build into ``out/built.h5``."""
    from phasenet.pipeline.build import BuildOptions, build_dataset

    print(f"[demo] building {out / 'built.h5'} from {out / 'cif'}", flush=True)
    summary = build_dataset([out / "cif"], out / "built.h5", BuildOptions(seed=seed, chunk_size=16),
                            overwrite=True, progress=True)
    print(summary.format(), flush=True)
    return summary


def step_compare(a: Path, b: Path) -> bool:
    """True if two datasets hold the same arrays and structure columns (except ``source``):
    the atoms and the structure columns exactly; the intensities to 10⁻³ relative (of each
    structure's strongest reflection: the CIF keeps coordinates to 5 decimals, synth computes
    from the unrounded ones), the phases and signs where the intensity is above that."""
    import h5py
    import numpy as np

    print(f"[demo] comparing {a.name} with {b.name}", flush=True)
    with h5py.File(a, "r") as x, h5py.File(b, "r") as y:
        names = ["hkl"] + [f"structures/{k}" for k in x["structures"] if k != "source"]
        names += [f"atoms/{k}" for k in x["atoms"]]
        bad = [k for k in names if not np.array_equal(x[k][...], y[k][...],
                                                      equal_nan=x[k].dtype.kind == "f")]
        ia, ib = x["intensity_calc"][...], y["intensity_calc"][...]
        scale = np.nanmax(np.abs(ia), axis=1, keepdims=True)
        diff = np.nanmax(np.abs(ia - ib) / scale)
        if not diff <= 1e-3:
            bad.append(f"intensity_calc (max difference {diff:.1e} of the strongest)")
        na, nb = x["intensity"][...], y["intensity"][...]
        if not np.nanmax(np.abs(na - nb) / np.nanmax(np.abs(na), axis=1, keepdims=True)) <= 1e-3:
            bad.append("intensity")
        strong = ia > 1e-3 * scale
        for k in ("phase_calc", "sign"):
            if not np.array_equal(x[k][...][strong], y[k][...][strong]):
                bad.append(k)
    print(f"[demo] synth and build agree on every array (intensities to {diff:.0e} of the strongest)"
          if not bad else f"[demo] MISMATCH in {', '.join(bad)}", flush=True)
    return not bad


def _phasenet(*args: str) -> int:
    """Run a phasenet subcommand in a fresh process (Keras and fork pools don't mix)."""
    import os
    import subprocess

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, "-m", "phasenet.cli", *args]
    print("[demo] $ phasenet " + " ".join(args), flush=True)
    return subprocess.call(cmd, env=env)


def step_train(out: Path, config: Path | None = None) -> bool:
    """Train the tiny sign network of ``training/demo.toml`` on the synthetic dataset."""
    config = config or demo_files()[1]
    run = out / "run"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    print(f"[demo] training {config.name} on {out / 'synth.h5'} into {run}", flush=True)
    return _phasenet("train", str(config), "--data", str(out / "synth.h5"), "--out", str(run)) == 0


def step_evaluate(out: Path, limit: int = DEMO_EVAL_LIMIT, with_model: bool = True) -> bool:
    """Score the trained model against charge flipping, Patterson, random and true phases."""
    methods = ["true", "random", "patterson", "charge-flipping"]
    if with_model:
        methods.append(f"model:{out / 'run'}")
    args = ["evaluate", str(out / "synth.h5"), "-o", str(out / "report"), "--split", "test",
            "--limit", str(limit), "--workers", "2", "--timeout", "120"]
    for m in methods:
        args += ["--method", m]
    for d in DEMO_D_MIN:
        args += ["--d-min", str(d)]
    print(f"[demo] evaluating {len(methods)} methods on {limit} test structures at d_min "
          f"{', '.join(map(str, DEMO_D_MIN))} Å into {out / 'report'} (honest protocol: each method, "
          "the model included, is given only the reflections to d_min; docs/evaluation.md)", flush=True)
    return _phasenet(*args) in (0, 1)   # 1: some tasks failed or timed out, reported in the CSV


#: A file marking a folder as the demo's own (its files there may be replaced).
MARKER = ".phasenet-demo"


def run_demo(out: str | Path = "demo-output", n: int | None = None, seed: int = 0, train: bool = True,
             evaluate: bool = True) -> int:
    """The main job on an embedded default: synthesise, build, check, train, evaluate, report.
    ``n``: structures to synthesise (default: the recipe's, 200)."""
    import time

    from phasenet.io.hdf5 import dataset_info, format_info

    t0 = time.perf_counter()
    out = Path(out)
    # the demo replaces its own files: only in a new folder or one it made before
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        print(f"[demo] {out} is not empty and was not made by the demo: choose another --out "
              f"(nothing was written)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by phasenet demo; its files here are replaced on every run\n")
    synth = step_synth(out, n if n is not None else demo_recipe().get("n"), seed)
    built = step_build(out, seed)
    same = step_compare(out / "synth.h5", out / "built.h5")
    print(format_info(dataset_info(out / "synth.h5")))
    trained = step_train(out) if train else True
    evaluated = step_evaluate(out, with_model=train) if evaluate else True
    ok = synth.ok and built.ok and same and trained and evaluated
    print(f"[demo] done in {time.perf_counter() - t0:.0f} s: " + ("all steps succeeded" if ok else "SOME STEPS FAILED"))
    print(f"[demo] files: {out / 'synth.h5'}, {out / 'cif'}/, {out / 'run'}/ (history.csv, plots, "
          f"model.keras), {out / 'report'}/ (summary.md, evaluation.csv, plots)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run_demo())
