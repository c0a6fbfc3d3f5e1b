"""phasenet.baselines."""
