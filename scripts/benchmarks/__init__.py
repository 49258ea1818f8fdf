"""The sections of `scripts/benchmark.py`, one file each, and their shared harness."""
