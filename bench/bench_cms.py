from __future__ import annotations

import numpy as np
import pytest

from llmds.cms import CountMinSketch, fingerprint
from llmds_cli.synthetic import zipf_stream


@pytest.fixture
def stream(size):
    return fingerprint(zipf_stream(items=size * 10, keys=size, seed=3))


@pytest.mark.benchmark(group="cms")
def test_cms_batch_update(benchmark, stream):
    def update():
        sketch = CountMinSketch.from_error(0.001, 0.01)
        sketch.update_batch(stream)
        return sketch

    assert benchmark(update).total == len(stream)


@pytest.mark.benchmark(group="cms")
def test_cms_batch_query(benchmark, stream):
    sketch = CountMinSketch.from_error(0.001, 0.01)
    sketch.update_batch(stream)
    keys = np.unique(stream)
    estimates = benchmark(sketch.query_batch, keys)
    assert len(estimates) == len(keys)
