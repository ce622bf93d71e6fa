"""The run store (SQLite), report.json built from it, and the timing split of a round."""
