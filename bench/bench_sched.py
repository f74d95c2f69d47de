from __future__ import annotations

import heapq
import itertools

import numpy as np
import pytest

from llmds.indexed_heap import IndexedHeap


@pytest.fixture
def priorities(size):
    return np.random.default_rng(4).random(size).tolist()


@pytest.mark.benchmark(group="sched-heap")
def test_indexed_heap_push_pop(benchmark, priorities):
    def run():
        heap = IndexedHeap()
        for key, priority in enumerate(priorities):
            heap.push(key, priority)
        while heap:
            heap.pop()

    benchmark(run)


@pytest.mark.benchmark(group="sched-heap")
def test_indexed_heap_update(benchmark, priorities):
    def run():
        heap = IndexedHeap()
        for key, priority in enumerate(priorities):
            heap.push(key, priority)
        for key, priority in enumerate(reversed(priorities)):
            heap.update(key, priority)
        return len(heap)

    assert benchmark(run) == len(priorities)


@pytest.mark.benchmark(group="sched-heap")
def test_heapq_lazy_update(benchmark, priorities):
    """The baseline: heapq with lazy deletion (stale entries skipped at pop)."""

    def run():
        heap, current, counter = [], {}, itertools.count()
        for key, priority in enumerate(priorities):
            current[key] = priority
            heapq.heappush(heap, (priority, next(counter), key))
        for key, priority in enumerate(reversed(priorities)):
            current[key] = priority
            heapq.heappush(heap, (priority, next(counter), key))
        popped = 0
        while heap:
            priority, _, key = heapq.heappop(heap)
            if current.get(key) == priority:
                del current[key]
                popped += 1
        return popped

    assert benchmark(run) == len(priorities)
