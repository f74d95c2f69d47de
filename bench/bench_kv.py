from __future__ import annotations

import numpy as np
import pytest

from llmds.kv_cache import KVCache


@pytest.fixture
def prompts(size):
    rng = np.random.default_rng(5)
    system = rng.integers(0, 32000, 256).tolist()
    return [system + rng.integers(0, 32000, 256).tolist() for _ in range(max(4, size // 500))]


def _cycle(cache, prompts):
    for i, prompt in enumerate(prompts):
        cache.match_prefix(prompt)
        cache.allocate(i, prompt)
        cache.fork(i, ("child", i))
        cache.append(("child", i), [1, 2, 3, 4])
        cache.free(("child", i))
        cache.free(i)


@pytest.mark.benchmark(group="kv")
def test_kv_lookup_allocate_fork_append_free(benchmark, prompts):
    cache = KVCache(4096, 16)
    benchmark(_cycle, cache, prompts)
    cache.check()
    assert len(cache) == 0


@pytest.mark.benchmark(group="kv")
def test_kv_allocate_free_blocks(benchmark, size):
    cache = KVCache(size, 16, enable_prefix_caching=False)

    def cycle():
        cache.allocate("s", (size // 2) * 16)
        cache.free("s")

    benchmark(cycle)
    assert cache.num_free_blocks == size
