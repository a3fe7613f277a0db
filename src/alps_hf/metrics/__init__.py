"""Segmentation metrics (streaming confusion matrix) and the `evaluate` module built on them."""
