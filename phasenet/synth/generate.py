"""Synthetic crystal structures straight into a phasenet dataset (``phasenet synth``).

Structure ``i`` of a run with seed ``s`` comes from its own random stream
``np.random.default_rng([s, i])``: a space group of the run's list and a target
size drawn once, then a cell of the matching volume in which a molecule grows
from fragment rules (:mod:`phasenet.synth.molecules`) under the group's symmetry,
clear of all its images (:mod:`phasenet.synth.packing`), then squeezed
(``compress_rounds``, :data:`phasenet.synth.options.PACKINGS`); U_iso drawn from a range. Its model is rounded to
the precision the CIF stores (cell 4 decimals, angles 3, coordinates 5, U 5)
*before* structure factors are computed, so ``--cif-dir`` files built with
``phasenet build`` give the same numbers. The dataset is written like a build:
parts of ``chunk_size`` indices in ``OUT.h5.parts/`` (resumable, fingerprinted,
:func:`phasenet.pipeline.parts.run_parts`, as build), through
:func:`phasenet.pipeline.records.compute_record`, so the schema is exactly build's. The
result does not depend on the number of workers; ``shard=(I, N)`` generates only
the indices ``range(*shard_range(n, I, N))``.

Every structure's id is ``synth-s{seed}-{i:08d}.cif#synth-s{seed}-{i:08d}`` (the id
``phasenet build`` gives its CIF file), so a build of the CIF folder with
``--seed`` equal to the synth seed also gets the same train/test split.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


from phasenet.io import hdf5 as dataset
from phasenet.io.cif import ReadFailure, StructureError, check_cell_atoms
from phasenet.reflections import canonical_hkl
from phasenet.pipeline.parts import part_path, write_dataset
from phasenet.pipeline.shards import shard_range
from phasenet.structure import AtomicModel, Structure
from phasenet.util.progress import progress_bar
from phasenet.synth.environment import group_ops
from phasenet.synth.packing import (
    CompressOptions, grow_in_cell, max_cell_volume, random_cell, space_group_spec)
from phasenet.synth.options import SynthOptions

#: Decimals the CIF stores (and the model is rounded to before computing).
CELL_DECIMALS, ANGLE_DECIMALS, XYZ_DECIMALS, U_DECIMALS = 4, 3, 5, 5


#: Squeezing for the hard cases (from the 3rd attempt at a structure): longer relaxation.
HARD_COMPRESS = CompressOptions(press_steps=120, release_steps=240)


def structure_name(seed: int, index: int) -> str:
    return f"synth-s{seed}-{index:08d}"


#: CIF files per subfolder of ``--cif-dir`` (``DIR/00000/``, ``DIR/00001/``, ...).
CIFS_PER_FOLDER = 1000


def cif_path(cif_dir, seed: int, index: int) -> Path:
    """Where ``--cif-dir`` puts structure ``index``: ``DIR/{index // 1000:05d}/NAME.cif``."""
    return Path(cif_dir) / f"{index // CIFS_PER_FOLDER:05d}" / f"{structure_name(seed, index)}.cif"


class GenerationError(RuntimeError):
    pass


def _fmt(x: float, decimals: int) -> str:
    s = f"{x:.{decimals}f}"
    return "0." + "0" * decimals if s.lstrip("-").strip("0.") == "" else s


def _round(x, decimals):
    return np.array([float(_fmt(v, decimals)) for v in np.ravel(x)]).reshape(np.shape(x))


def generate_structure(index: int, options: SynthOptions | None = None) -> Structure:
    """Structure ``index`` of the run (deterministic in (seed, index))."""
    import gemmi

    o = options or SynthOptions()
    rng = np.random.default_rng([o.seed, index])
    mol_opts, pack_opts = o.molecule_options(), o.packing_options()
    # drawn once: retries redraw only the cell and the growth, never the group or size
    spec = space_group_spec(o.space_groups[int(rng.integers(len(o.space_groups)))])
    z = len(group_ops(spec.hm).rot)
    vlo, vhi = o.volume_per_atom
    glo, ghi = o.grow_volume_per_atom
    lo, hi = o.atoms
    v_max_cell = max_cell_volume(spec.system, o.max_edge)
    # the growth cell's volume per atom, within what lets MIN atoms fit the edge limit
    v_fit = v_max_cell / (z * lo)
    if v_fit < glo:
        raise GenerationError(f"{spec.name}: {lo} atoms at {glo:.1f} Å³ each do not fit cells "
                              f"with edges <= {o.max_edge} Å")
    v_target = float(rng.uniform(glo, min(ghi, v_fit)))
    cap = int(v_max_cell / (z * v_target))
    n_target = int(rng.integers(lo, min(hi, cap) + 1))
    volume = z * n_target * v_target
    best = None
    for attempt in range(o.max_attempts):
        cell = random_cell(spec.system, volume, rng, o.max_edge, pack_opts.min_edge,
                           pack_opts.shape_sigma)
        if cell is None:
            continue
        # hard cases (small molecules in groups with many operations jam loose): from the
        # 3rd attempt on, one more grow-and-squeeze round and up to 2 more while too loose,
        # with a longer relaxation
        hard = attempt >= 2 and o.compress_rounds > 0
        packing = grow_in_cell(rng, hi, spec, cell, mol_opts, pack_opts,
                               max_molecules=o.max_molecules,
                               compress=(None if not o.compress_rounds else
                                         dataclasses.replace(HARD_COMPRESS if hard else CompressOptions(),
                                                             max_edge=o.max_edge)),
                               min_volume_per_atom=vlo, rounds=o.compress_rounds + hard,
                               max_volume_per_atom=vhi,
                               extra_rounds=2 if o.compress_rounds >= 2 or hard else 0)
        if packing is not None and packing.molecule.n_heavy >= lo:
            vpa = packing.volume / (z * packing.molecule.n_heavy)
            if vlo <= vpa <= vhi and max(packing.cell[:3]) <= o.max_edge:
                best = packing
                break
        # jammed too early (small cells jam sooner): a slightly larger cell next time
        volume = min(volume * 1.15, z * hi * max(vhi, ghi), v_max_cell)
    if best is None:
        raise GenerationError(f"{spec.name}: no structure with {lo}-{hi} non-H atoms at <= {vhi} Å³ "
                              f"per atom within {o.max_attempts} attempts (max_edge {o.max_edge} Å)")
    packing = best
    mol = packing.molecule
    # displacement parameters: a structure-wide level, per-atom spread, riding H (1.2 U of parent)
    lo, hi = o.u_iso
    base = rng.uniform(lo, hi)
    u = np.clip(base * np.exp(rng.normal(0, 0.15, len(mol))), lo, hi)
    heavy = mol.element != "H"
    parent = {}
    for i, j in mol.bonds:
        if not heavy[i]:
            parent[i] = j
        if not heavy[j]:
            parent[j] = i
    for h, p in parent.items():
        u[h] = min(1.2 * u[p], hi)
    cell = tuple(float(_fmt(v, CELL_DECIMALS if k < 3 else ANGLE_DECIMALS))
                 for k, v in enumerate(packing.cell))
    ops = group_ops(spec.hm)
    triplets = tuple(op.triplet() for op in gemmi.GroupOps([gemmi.Op(t) for t in ops.triplets]))
    sg = spec.gemmi
    counts: dict[str, int] = {}
    labels = []
    for e in mol.element:
        counts[e] = counts.get(e, 0) + 1
        labels.append(f"{e}{counts[e]}")
    n = len(mol)
    atoms = AtomicModel(
        label=np.array(labels).astype(str), element=mol.element.astype(str),
        charge=np.zeros(n, dtype=np.int8), frac=_round(packing.frac, XYZ_DECIMALS),
        occupancy=np.ones(n), u_iso=_round(u, U_DECIMALS), u_aniso=np.full((n, 6), np.nan),
        u_defaulted=np.zeros(n, dtype=bool))
    name = structure_name(o.seed, index)
    return Structure(source=f"{name}.cif", block=name, cell=cell, symops=triplets,
                     space_group=sg.xhm(), sg_number=sg.number, atoms=atoms)


def structure_to_cif(s: Structure, comment: str = "") -> str:
    """CIF text of a generated structure (cell, H-M, Hall, operators, atoms with U_iso)."""
    import gemmi

    from phasenet.pipeline.records import hill_formula

    sg = gemmi.find_spacegroup_by_ops(gemmi.GroupOps([gemmi.Op(t) for t in s.symops]))
    system = sg.crystal_system_str() if sg is not None else "?"
    lines = [f"data_{s.block}"]
    if comment:
        lines.append(f"_audit_creation_method '{comment}'")
    formula = hill_formula(s.atoms.element, s.atoms.occupancy)
    lines += [
        f"_chemical_formula_sum '{formula}'",
        f"_space_group_crystal_system {system}",
        f"_space_group_IT_number {s.sg_number}",
        f"_space_group_name_H-M_alt '{s.space_group}'",
        f"_space_group_name_Hall '{sg.hall if sg is not None else '?'}'",
    ]
    names = ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma")
    for k, (nm, v) in enumerate(zip(names, s.cell)):
        lines.append(f"_cell_{nm} {_fmt(v, CELL_DECIMALS if k < 3 else ANGLE_DECIMALS)}")
    lines += ["", "loop_", "_space_group_symop_operation_xyz"]
    lines += [f"'{t}'" for t in s.symops]
    lines += ["", "loop_", "_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x",
              "_atom_site_fract_y", "_atom_site_fract_z", "_atom_site_U_iso_or_equiv",
              "_atom_site_adp_type", "_atom_site_occupancy"]
    a = s.atoms
    for i in range(len(a)):
        x, y, z = (_fmt(v, XYZ_DECIMALS) for v in a.frac[i])
        lines.append(f"{a.label[i]} {a.element[i]} {x} {y} {z} {_fmt(a.u_iso[i], U_DECIMALS)} Uiso 1")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- datasets


@dataclass
class SynthSummary:
    output: Path
    n_requested: int
    n_structures: int
    failures: list[dict]
    seconds: float
    shard: tuple[int, int] = (0, 1)
    index_range: tuple[int, int] = (0, 0)
    resumed_parts: int = 0
    space_groups: dict = field(default_factory=dict)
    cif_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    def format(self) -> str:
        rate = self.n_structures / self.seconds if self.seconds > 0 else float("inf")
        shard = (f" (shard {self.shard[0]}/{self.shard[1]}: indices {self.index_range[0]}.."
                 f"{self.index_range[1] - 1})") if self.shard[1] > 1 else ""
        lines = [f"synthesised {self.n_structures} of {self.n_requested} structures{shard} into "
                 f"{self.output} in {self.seconds:.1f} s ({rate:.1f} structures/s)"
                 + (f"; {self.resumed_parts} parts reused from an interrupted run"
                    if self.resumed_parts else "")]
        if self.space_groups:
            lines.append("space groups: " + ", ".join(f"{k} {v}" for k, v in self.space_groups.items()))
        if self.cif_dir is not None:
            lines.append(f"CIF files in {self.cif_dir}")
        if self.failures:
            lines.append(f"failed: {len(self.failures)}")
            for f in self.failures[:10]:
                lines.append(f"  {f['source']}: {f['reason']}")
        return "\n".join(lines)


class SynthError(RuntimeError):
    pass


def _part_task(job, report, options: SynthOptions, cif_dir):
    """Generate one slice of indices and write its part (run by :func:`run_parts`)."""
    from phasenet.pipeline.records import compute_record

    hkl = canonical_hkl(options.max_index, options.r2_max)
    records, failures = [], []
    for k, i in enumerate(job.items):
        name = structure_name(options.seed, i)
        if k in job.skip:
            kind, reason = job.skip[k]
            failures.append(ReadFailure(f"{name}.cif", name, reason, kind))
            continue
        report(k)
        try:
            s = generate_structure(i, options)
            check_cell_atoms(len(s.atoms), len(s.symops), options.max_atoms, "atoms generated")
            if cif_dir is not None:
                path = cif_path(cif_dir, options.seed, i)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(structure_to_cif(s, f"phasenet synth (seed {options.seed}, index {i})"))
                os.replace(tmp, path)
            records.append(compute_record(s, hkl, options.normalisation))
        except StructureError as exc:
            failures.append(ReadFailure(f"{name}.cif", name, str(exc), exc.kind))
        except Exception as exc:  # one bad structure never stops the run
            failures.append(ReadFailure(f"{name}.cif", name, f"generation failed: {exc}",
                                        "generation-failed"))
    report(-1)  # writing: no longer timed
    dataset.write_part(job.path, hkl, records, failures, len(job.items), options.compression)
    return len(failures)


def _call_part_task(job, report, options, cif_dir):
    return _part_task(job, report, options, cif_dir)  # looked up at call time


def warm_up() -> None:
    """Compile every numba kernel (or load it from numba's cache) in this process, so
    that forked workers inherit compiled code instead of each compiling it again."""
    from phasenet.synth.kernels import KERNELS
    from phasenet.synth.relax import relax_cell

    if all(f.signatures for f in KERNELS + (relax_cell,)):
        return
    from phasenet.util.numba_cache import announce_compilation

    announce_compilation(KERNELS + (relax_cell,), "the synthetic-structure kernels", "60 s")
    for i in range(4):
        try:
            generate_structure(i, SynthOptions(seed=0, space_groups=("C2/c",), atoms=(6, 12),
                                               compress_rounds=1))
        except Exception:  # only compilation matters here
            pass


def _fingerprint(options: SynthOptions, n_total: int, shard, cif_dir) -> str:
    from phasenet.version import __version__

    h = hashlib.sha256()
    h.update(json.dumps(options.result_options(), sort_keys=True).encode())
    h.update(f"{__version__}|{n_total}|{shard}|{cif_dir}".encode())
    return h.hexdigest()


def synth_dataset(n: int, output, options: SynthOptions | None = None, *, shard=(0, 1),
                  cif_dir=None, overwrite: bool = False, progress: bool | None = None) -> SynthSummary:
    """Generate structures ``range(*shard_range(n, *shard))`` of a run of ``n`` into ``output``."""
    from collections import Counter

    options = options or SynthOptions()
    if n < 1:
        raise SynthError(f"number of structures must be >= 1, got {n}")
    output = Path(output)
    if progress is None:
        progress = sys.stderr.isatty()
    t0 = time.perf_counter()
    start, stop = shard_range(n, *shard)
    if stop <= start:
        raise SynthError(f"shard {shard[0]}/{shard[1]} of {n} structures is empty")
    cif_path = Path(cif_dir) if cif_dir is not None else None
    fp = _fingerprint(options, n, shard, str(cif_path.resolve()) if cif_path else None)
    parts_dir = dataset.prepare_parts(output, {"fingerprint": fp, "n": n, "shard": list(shard)},
                                      state_name="synth.json", overwrite=overwrite, error=SynthError,
                                      what="run")
    if cif_path is not None:
        cif_path.mkdir(parents=True, exist_ok=True)

    # parts are aligned to global indices (never to the worker count or shard), so a
    # resumed run cuts the same parts
    size = options.chunk_size
    slices = [range(a, min(a + size, stop)) for a in range(start, stop, size)]
    if not all(part_path(parts_dir, p).exists() for p in range(len(slices))):
        warm_up()  # compile once here, not in every worker
    synth_attr = json.dumps({
        "seed": options.seed, "n_total": n, "shard_index": shard[0], "shard_count": shard[1],
        "index_start": start, "index_stop": stop,
        "id_format": "synth-s{seed}-{index:08d}.cif#synth-s{seed}-{index:08d}",
        "options": options.result_options()}, sort_keys=True)
    work = functools.partial(_call_part_task, options=options,
                             cif_dir=str(cif_path) if cif_path else None)
    result, resumed = write_dataset(
        slices, work, parts_dir, output,
        merger_options=dict(build_options=options.build_options(), test_fraction=options.test_fraction,
                            seed=options.seed, compression=options.compression,
                            extra_attrs={"synth": synth_attr}),
        workers=options.workers, item_timeout=options.file_timeout,
        progress=progress_bar(stop - start, "synth", "structure", progress))
    import h5py

    with h5py.File(output, "r") as h5:
        sgs = Counter(dataset.decode_strings(h5["structures/space_group"][...]))
    return SynthSummary(output=output, n_requested=stop - start, n_structures=result["n_structures"],
                        failures=result["failures"], seconds=time.perf_counter() - t0,
                        shard=tuple(shard), index_range=(start, stop), resumed_parts=resumed,
                        space_groups=dict(sgs.most_common()), cif_dir=cif_path)
