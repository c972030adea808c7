"""Scores of frozen encoders: the linear probe and the Ray-free does-it-learn check."""
