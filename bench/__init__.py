"""Benchmarks.  Run each from the repository root as a module, e.g.
``.venv/bin/python -m bench.limiter``: ``outpost`` is the installed package,
``bench`` and ``tests`` (the real-MTA harness) resolve from the current
directory.  See docs/benchmarks.rst."""
