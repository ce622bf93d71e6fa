"""Simulation-only pieces: the driver of `fedocr fl simulate` and the local-only / centralized baselines."""
