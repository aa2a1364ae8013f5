"""Unsupervised anomaly segmentation: DFR and CFA as a reproducible DVC pipeline."""
