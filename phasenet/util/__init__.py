"""Small helpers shared by several commands: forked workers with time-outs, progress bars."""
