"""Loopline's benchmark suite: seeded data, side-by-side ratios, ``bench/results.md`` and ``results.json``.

Run it with ``python -m bench.run`` (``--quick`` for a ~2 minute smoke run, ``--sizes`` to choose row counts).
"""
