"""phasenet.io."""
