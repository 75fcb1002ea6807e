"""pyromv and MultiVae side by side: same data, same networks, one run.

``python -m benchmarks.side_by_side --multivae-python /path/to/multivae-venv/bin/python``

See :mod:`benchmarks.side_by_side.__main__` and ``docs/performance.md``.
"""
