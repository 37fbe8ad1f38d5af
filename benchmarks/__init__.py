"""The tracewriter benchmark suite (issue 5): ``python -m benchmarks.run`` or ``make bench``.

Measures the writer against what a user would pick instead, in one run on one machine, and
prints every figure with its ratio to a ceiling or a floor measured in the same run: a raw
binary COPY of the same rows, one INSERT per event, the SQLAlchemy ORM design, a bare
``deque.append`` and an OpenTelemetry SDK span. Nothing here gates on absolute times.
"""
