"""Runlet benchmarks: `python -m tests.bench.run` (see run.py); not collected by pytest."""
