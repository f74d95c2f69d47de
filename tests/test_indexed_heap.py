"""Tests of llmds.indexed_heap: unit cases, and property tests against a sorted reference model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, rule

from llmds.errors import InvalidInputError, LlmdsError
from llmds.indexed_heap import EmptyHeapError, IndexedHeap


class ReferenceQueue:
    """Obviously correct model: a dict, sorted on every query; ties go to the earlier push."""

    def __init__(self, order: str) -> None:
        self.sign = 1 if order == "min" else -1
        self.priorities: dict = {}
        self.pushed_at: dict = {}
        self.clock = 0

    def push(self, key, priority) -> None:
        self.priorities[key] = priority
        self.pushed_at[key] = self.clock
        self.clock += 1

    def update(self, key, priority) -> None:
        self.priorities[key] = priority

    def remove(self, key):
        del self.pushed_at[key]
        return self.priorities.pop(key)

    def ordered(self) -> list:
        return sorted(self.priorities, key=lambda k: (self.sign * self.priorities[k], self.pushed_at[k]))

    def pop(self):
        key = self.ordered()[0]
        return key, self.remove(key)


# Small priority range so that ties (and the FIFO tie-break) are exercised constantly.
priorities = st.integers(min_value=-5, max_value=5) | st.floats(-5, 5, allow_nan=False)
keys = st.integers(min_value=0, max_value=30) | st.text(max_size=2)


def check_heap_shape(heap: IndexedHeap) -> None:
    """Heap order holds at every node and every stored position is the entry's real index."""
    entries = heap._heap
    for index, entry in enumerate(entries):
        assert entry[3] == index
        if index:
            assert not entry < entries[(index - 1) // 2]
    assert len(heap._entries) == len(entries)


# ---------------------------------------------------------------- unit tests


def test_min_and_max_order():
    for order, expected in (("min", [1, 2, 3]), ("max", [3, 2, 1])):
        heap = IndexedHeap(order)
        for key, priority in (("b", 2), ("c", 3), ("a", 1)):
            heap.push(key, priority)
        assert [heap.pop()[1] for _ in range(3)] == expected
        assert heap.order == order


def test_equal_priorities_come_out_in_push_order():
    heap = IndexedHeap()
    for key in range(50):
        heap.push(key, 7)
    assert [heap.pop()[0] for _ in range(50)] == list(range(50))


def test_update_keeps_the_key_place_among_equal_priorities():
    heap = IndexedHeap()
    heap.push("first", 5)
    heap.push("second", 1)
    heap.update("first", 1)  # now tied with "second", but pushed earlier
    assert heap.pop() == ("first", 1)


def test_update_both_directions_and_remove():
    heap = IndexedHeap()
    for key in range(10):
        heap.push(key, key)
    heap.update(9, -1)
    heap.update(0, 100)
    assert heap.peek() == (9, -1)
    assert heap.remove(5) == 5
    assert 5 not in heap and 9 in heap
    assert heap.priority(0) == 100
    assert [heap.pop()[0] for _ in range(len(heap))] == [9, 1, 2, 3, 4, 6, 7, 8, 0]
    assert not heap


def test_push_or_update():
    heap = IndexedHeap("max")
    heap.push_or_update("x", 1)
    heap.push_or_update("x", 10)
    heap.push_or_update("y", 5)
    assert len(heap) == 2
    assert heap.pop() == ("x", 10)


def test_items_and_keys_cover_all_entries():
    heap = IndexedHeap("max")
    for key in range(20):
        heap.push(key, key % 3)
    assert sorted(heap.items()) == [(key, key % 3) for key in range(20)]
    assert sorted(heap.keys()) == list(range(20))


def test_numpy_priorities_become_python_numbers():
    heap = IndexedHeap()
    heap.push("a", np.int64(3))
    heap.push("b", np.float32(1.5))
    assert heap.pop() == ("b", 1.5)
    assert type(heap.priority("a")) is int


def test_clear():
    heap = IndexedHeap()
    heap.push(1, 1)
    heap.clear()
    assert len(heap) == 0 and 1 not in heap
    heap.push(1, 2)  # the key is free again
    assert heap.peek() == (1, 2)


@pytest.mark.parametrize("method", ["pop", "peek"])
def test_empty_heap_raises_a_clear_error(method):
    heap = IndexedHeap()
    with pytest.raises(EmptyHeapError, match="empty"):
        getattr(heap, method)()
    assert issubclass(EmptyHeapError, IndexError) and issubclass(EmptyHeapError, LlmdsError)


def test_bad_input_raises_invalid_input_error():
    with pytest.raises(InvalidInputError, match="order"):
        IndexedHeap("largest")
    heap = IndexedHeap()
    heap.push("a", 1)
    with pytest.raises(InvalidInputError, match="already in the heap"):
        heap.push("a", 2)
    with pytest.raises(InvalidInputError, match="not in the heap"):
        heap.update("missing", 1)
    with pytest.raises(InvalidInputError, match="not in the heap"):
        heap.remove("missing")
    with pytest.raises(InvalidInputError, match="not in the heap"):
        heap.priority("missing")
    with pytest.raises(InvalidInputError, match="NaN"):
        heap.push("b", math.nan)
    with pytest.raises(InvalidInputError, match="NaN"):
        heap.update("a", np.float64("nan"))
    with pytest.raises(InvalidInputError, match="real numbers"):
        heap.push("c", "high")
    with pytest.raises(InvalidInputError, match="hashable"):
        heap.push(["list"], 1)
    with pytest.raises(InvalidInputError, match="hashable"):
        heap.remove(["list"])
    # A failed call leaves the heap unchanged.
    assert list(heap.items()) == [("a", 1)]


# ---------------------------------------------------------------- property tests


@settings(max_examples=60, deadline=None)
@given(
    order=st.sampled_from(["min", "max"]),
    pairs=st.lists(st.tuples(keys, priorities), unique_by=lambda pair: pair[0], max_size=60),
)
def test_popping_everything_matches_a_stable_sort(order, pairs):
    heap = IndexedHeap(order)
    reference = ReferenceQueue(order)
    for key, priority in pairs:
        heap.push(key, priority)
        reference.push(key, priority)
    check_heap_shape(heap)
    expected = [(key, reference.priorities[key]) for key in reference.ordered()]
    assert [heap.pop() for _ in range(len(pairs))] == expected


class IndexedHeapMachine(RuleBasedStateMachine):
    """Random interleavings of every operation, compared with the reference after each step."""

    present = Bundle("present")

    @initialize(order=st.sampled_from(["min", "max"]))
    def start(self, order):
        self.heap = IndexedHeap(order)
        self.reference = ReferenceQueue(order)

    @rule(target=present, key=keys, priority=priorities)
    def push(self, key, priority):
        if key in self.reference.priorities:
            with pytest.raises(InvalidInputError):
                self.heap.push(key, priority)
        else:
            self.heap.push(key, priority)
            self.reference.push(key, priority)
        return key

    @rule(key=present, priority=priorities)
    def update(self, key, priority):
        if key in self.reference.priorities:
            self.heap.update(key, priority)
            self.reference.update(key, priority)
        else:
            with pytest.raises(InvalidInputError):
                self.heap.update(key, priority)

    @rule(key=keys, priority=priorities)
    def push_or_update(self, key, priority):
        if key in self.reference.priorities:
            self.reference.update(key, priority)
        else:
            self.reference.push(key, priority)
        self.heap.push_or_update(key, priority)

    @rule(key=consumes(present))
    def remove(self, key):
        if key in self.reference.priorities:
            assert self.heap.remove(key) == self.reference.remove(key)
        else:
            with pytest.raises(InvalidInputError):
                self.heap.remove(key)

    @rule()
    def pop(self):
        if self.reference.priorities:
            assert self.heap.pop() == self.reference.pop()
        else:
            with pytest.raises(EmptyHeapError):
                self.heap.pop()

    @invariant()
    def agrees_with_reference(self):
        if not hasattr(self, "heap"):
            return
        assert len(self.heap) == len(self.reference.priorities)
        assert bool(self.heap) == bool(self.reference.priorities)
        check_heap_shape(self.heap)
        if self.reference.priorities:
            top = self.reference.ordered()[0]
            assert self.heap.peek() == (top, self.reference.priorities[top])
        for key, priority in self.reference.priorities.items():
            assert key in self.heap
            assert self.heap.priority(key) == priority


IndexedHeapMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestIndexedHeapMachine = IndexedHeapMachine.TestCase
