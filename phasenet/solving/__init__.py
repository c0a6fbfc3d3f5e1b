"""``phasenet solve``: phase a crystal from its own measured data, without the answer.

One responsibility per module:

- :mod:`~phasenet.solving.errors`: :class:`SolveError` (file, kind, reason);
- :mod:`~phasenet.solving.inputs`: read INPUT (CIF with measured data, SHELX .hkl with
  the cell, symmetry and composition given or read from a .ins/.res, MTZ) into
  :class:`~phasenet.solving.inputs.MeasuredData`;
- :mod:`~phasenet.solving.prepare`: merge equivalents, I → F, checks (too few reflections,
  absences that are not absent, impossible resolution), truncation at d_min, Wilson |E|,
  reindexing to the reference setting;
- :mod:`~phasenet.solving.methods`: the default method rule and running registered methods;
- :mod:`~phasenet.solving.result`: :class:`~phasenet.solving.result.Solution` (phases,
  map, peaks back in the input's setting) and its writers;
- :mod:`~phasenet.solving.solver`: :func:`~phasenet.solving.solver.solve`, the whole run.

The package is called ``solving`` (not ``solve``) so that ``phasenet.solve`` stays the
function: a subpackage of that name would replace it as an attribute of ``phasenet``
as soon as any of its modules was imported.
"""
