"""``make bench``: the project's benchmarks, each a ratio against a baseline measured in the same process.

Run ``python -m bench`` (all) or ``python -m bench serving training operator gpu``; ``BENCH_QUICK=1``
(or ``--quick``) for a short run. Results land in ``bench/results/<name>.json`` and a table is printed.
Every benchmark alternates its subject with its baseline (A, B, A, B, ...) so that noise from a shared
machine hits both sides; figures are medians, and ratios are subject / baseline.
"""
