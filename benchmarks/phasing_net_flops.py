"""FLOPs per sample of the phasing network's configs (XLA's cost analysis of one forward
pass of the core on JAX) and the parameters: the numbers behind the GPU cost estimate in
docs/phasing-network.md.

    KERAS_BACKEND=jax python benchmarks/phasing_net_flops.py training/phasing_net_cpu.toml training/phasing_net_gpu.toml
"""

import phasenet  # noqa: F401  (first: cctbx import order)

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")


def flops(config_path: str) -> dict:
    import jax
    import numpy as np

    from phasenet.reflections import canonical_hkl
    from phasenet.training.config import load_config
    from phasenet.training.models import build_model

    cfg = load_config(config_path)
    r = len(canonical_hkl(cfg.data.max_index))
    model = build_model(cfg, r)
    core = model.get_layer("sign_core")
    x = {k: np.zeros((1, r), "float32") for k in ("intensity", "mask", "phase")}
    weights = [v.value for v in core.trainable_variables]
    others = [v.value for v in core.non_trainable_variables]

    def forward(w, x):
        return core.stateless_call(w, others, x)[0]

    cost = jax.jit(forward).lower(weights, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    f = float(cost.get("flops", float("nan")))
    cycles = cfg.model.cycles
    # training: the unrolled cycles forward (no gradient) + the last forward and backward (~3x)
    return {"config": config_path, "parameters": int(model.count_params()), "forward_flops": f,
            "training_flops_per_sample": f * (cycles - 1) + 3 * f, "cycles": cycles}


if __name__ == "__main__":
    print(json.dumps([flops(p) for p in sys.argv[1:]], indent=1))
