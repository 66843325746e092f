"""Calibration: one pass over the calibration data, statistics per tensor, range algorithms, on-disk cache."""
