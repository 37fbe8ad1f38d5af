"""The ``tracewriter`` command line, kept apart from the library it drives.

``main`` (the console script ``tracewriter``) parses and dispatches in ``_main``; the read
commands fetch plain data in ``_query`` and draw it in ``_render``; ``_demo`` is the simulated
RAG service of ``tracewriter demo``. The library never imports this package, and only the
drawing needs the ``cli`` extra (``rich``).
"""

from tracewriter.cli._main import main

__all__ = ["main"]
