"""phasenet.physics."""
