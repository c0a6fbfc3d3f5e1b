"""phasenet.baselines: the phasing methods (one module each) and their registry.

``true``, ``random``, ``patterson`` (the heavy-atom method), ``charge-flipping`` and the
family ``model:RUN_DIR`` are registered in :mod:`phasenet.baselines.registry`; importing
this package imports none of their modules (nor smtbx or Keras).
"""

from phasenet.baselines.registry import (
    BATCHED, FORKED, NEEDS, NotApplicable, PhasingFailed, PhasingMethod, UnknownMethod, check_method_name,
    get_method, method_names, problem_for, register_method, unregister_method)

__all__ = ["BATCHED", "FORKED", "NEEDS", "NotApplicable", "PhasingFailed", "PhasingMethod", "UnknownMethod",
           "check_method_name", "get_method", "method_names", "problem_for", "register_method",
           "unregister_method"]
