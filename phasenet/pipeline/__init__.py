"""phasenet.pipeline."""
