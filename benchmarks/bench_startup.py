"""Start-up time: ``python -c "import phasenet"`` and ``python -m phasenet.cli --help``,
best of N runs (wall time of a fresh interpreter each), for one or more source trees.

    python benchmarks/bench_startup.py                       # this checkout
    python benchmarks/bench_startup.py --tree /tmp/old6d5 --tree .   # compare two trees
    python benchmarks/bench_startup.py --runs 7 --json docs/bench_startup.json

Each tree is put first on PYTHONPATH, so a checkout of another commit (``git worktree add
/tmp/old6d5 6d5a046``) is measured with the same interpreter and dependencies. The runs of
the trees are interleaved, so that a machine busy for a while slows them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "import phasenet": ["-c", "import phasenet"],
    "phasenet --help": ["-m", "phasenet.cli", "--help"],
}


def wall(tree: Path, args: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, cwd=tree, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def measure(trees: list[Path], runs: int) -> dict:
    times = {str(t): {name: [] for name in COMMANDS} for t in trees}
    for tree in trees:  # warm the file cache and the .pyc files first
        for args in COMMANDS.values():
            wall(tree, args)
    for _ in range(runs):
        for tree in trees:
            for name, args in COMMANDS.items():
                times[str(tree)][name].append(wall(tree, args))
    return {tree: {name: {"best_s": min(v), "median_s": sorted(v)[len(v) // 2], "runs": len(v)}
                   for name, v in by.items()} for tree, by in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", action="append", type=Path,
                   help="source tree to measure (repeatable; default: this checkout)")
    p.add_argument("--runs", type=int, default=7, help="runs per command and tree (default %(default)s)")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    a = p.parse_args(argv)
    trees = [t.resolve() for t in (a.tree or [Path(__file__).resolve().parents[1]])]
    result = measure(trees, a.runs)
    print(f"best of {a.runs} runs, wall time ({sys.executable})")
    for tree, by in result.items():
        print(tree)
        for name, r in by.items():
            print(f"  {name:18s} best {r['best_s'] * 1000:6.0f} ms   median {r['median_s'] * 1000:6.0f} ms")
    if a.json:
        a.json.write_text(json.dumps({"python": sys.version.split()[0], "runs": a.runs, "trees": result},
                                     indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
