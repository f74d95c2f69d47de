"""Micro-benchmarks (pytest-benchmark), grouped by component, each at a small and a larger size.

`make bench` times them and stores the JSON under results/bench/<run-id>/; `make test` runs
each once with --benchmark-disable so a broken benchmark fails CI without slowing it.
Data is generated here from fixed seeds: nothing is downloaded.
"""

from __future__ import annotations

import pytest

SIZES = {"small": 2_000, "large": 20_000}


@pytest.fixture(params=list(SIZES), ids=list(SIZES))
def size(request) -> int:
    return SIZES[request.param]
