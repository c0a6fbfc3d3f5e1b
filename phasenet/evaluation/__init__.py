"""phasenet.evaluation."""
