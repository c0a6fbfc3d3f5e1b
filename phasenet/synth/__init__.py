"""Synthetic molecular crystals: molecules, packing, relaxation, datasets."""
