"""normlens benchmarks: ``python -m benchmarks`` runs every comparison side by side (see __main__.py).

The ``bench_*.py`` modules also run alone as scripts (``python benchmarks/bench_probes.py``).
"""
