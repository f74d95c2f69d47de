"""llmds: the data structures inside LLM serving and retrieval, built to be measured.

The library depends on numpy (and numba for hot loops) only; the toolkit that benchmarks
it lives in :mod:`llmds_cli`. Importing this package is cheap: each structure lives in its
own module and is imported where it is used.
"""

__version__ = "0.1.0"
