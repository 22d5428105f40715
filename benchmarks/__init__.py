"""Benchmarks: run with ``nox -s bench``; they print figures, they assert nothing."""
