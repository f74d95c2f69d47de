"""Indexed binary heap: a priority queue whose entries can be found, re-prioritised and removed.

A request scheduler needs more than ``heapq``: a waiting request is cancelled (remove by id),
its priority changes (aging, a new output-length prediction), and a request that is already
queued must not be queued twice. The textbook answer is a binary heap plus a map from key to
the entry's position in the heap array (the "indexed priority queue" of Sedgewick & Wayne,
*Algorithms*, 4th ed., section 2.4), which makes ``update`` and ``remove`` O(log n) instead of
the O(n) search, or the unbounded growth of stale entries, that ``heapq`` with lazy deletion
pays.

Ties are broken by insertion order (first in, first out among equal priorities), so a
schedule built on this heap is deterministic: two requests with the same priority come out in
the order they were pushed, whatever the heap's internal layout. ``update`` keeps a key's
place in that order.

Implementation notes (why it looks the way it does): each entry is one small mutable list
``[sort_priority, sequence_number, key, position]`` that lives for as long as the key is in the
heap, so moving an entry never allocates, the key-to-entry dict is written only on push and
remove, and an entry's position is updated in place as it moves. Comparing two entries as
lists compares the priority and then the unique sequence number in C, which is both the FIFO
tie-break and the cheapest comparison Python offers. Because entries compare correctly on
their own, the heap array is also a valid ``heapq`` heap, so ``push`` and ``pop`` let
``heapq``'s C code do the sifting and then repair the positions along the one path that moved
(no comparisons needed); ``update`` and ``remove`` start at an arbitrary position, which
``heapq`` cannot do, and sift in Python. A max-heap stores negated priorities so the same
code serves both orders.
"""

from __future__ import annotations

import numbers
from collections.abc import Hashable, Iterator
from heapq import heappop as _c_heappop
from heapq import heappush as _c_heappush
from typing import Any

from llmds.errors import InvalidInputError, LlmdsError

# Slots of an entry list. Entries compare as lists, so SORT_PRIORITY and SEQUENCE must come
# first; SEQUENCE is unique, so a comparison never reaches KEY (which may not be orderable).
_SORT_PRIORITY, _SEQUENCE, _KEY, _POSITION = 0, 1, 2, 3

_ORDERS = ("min", "max")
_FAST_PRIORITY_TYPES = (int, float)


def _checked_priority(priority: Any) -> int | float:
    """Slow path of priority validation: numpy scalars become Python numbers, NaN and non-numbers fail.

    Converting keeps the sift loops comparing plain Python numbers, which is fast and never
    mixes incomparable types.
    """
    if isinstance(priority, numbers.Integral):
        priority = int(priority)
    elif isinstance(priority, numbers.Real):
        priority = float(priority)
    else:
        raise InvalidInputError(
            f"heap priorities must be real numbers, got {type(priority).__name__} {priority!r}; "
            "convert it to int or float."
        )
    if priority != priority:
        raise InvalidInputError("heap priority is NaN, which has no place in an order; pass a number.")
    return priority


def _unhashable_key_error(key: Any) -> InvalidInputError:
    return InvalidInputError(
        f"heap keys must be hashable (int, str, tuple, ...), got {type(key).__name__}; "
        "use the request's id as the key."
    )


class EmptyHeapError(LlmdsError, IndexError):
    """``pop`` or ``peek`` on an empty heap."""


class IndexedHeap:
    """Binary heap keyed by hashable ids, with O(log n) ``update`` and ``remove``.

    Parameters
    ----------
    order:
        ``"min"`` (default) pops the smallest priority first, as a scheduler ordering by
        arrival time or prompt length wants; ``"max"`` pops the largest first (heavy hitters,
        highest priority class).

    Keys are any hashable value (request ids as ints or strings); priorities are real numbers
    (``int``, ``float`` or numpy scalars; NaN is rejected because it has no place in an order).
    Among equal priorities the key pushed first comes out first.
    """

    __slots__ = ("_order", "_sign", "_heap", "_entries", "_next_sequence")

    def __init__(self, order: str = "min") -> None:
        if order not in _ORDERS:
            raise InvalidInputError(
                f"IndexedHeap order must be 'min' or 'max', got {order!r}; pass order='min' "
                "to pop the smallest priority first or order='max' for the largest."
            )
        self._order = order
        # A max-heap is a min-heap of negated priorities: one pair of sift loops serves both.
        self._sign = 1 if order == "min" else -1
        self._heap: list[list] = []
        self._entries: dict[Hashable, list] = {}
        self._next_sequence = 0

    # ---------------------------------------------------------------- queries

    @property
    def order(self) -> str:
        """``"min"`` or ``"max"``, as given to the constructor."""
        return self._order

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def __contains__(self, key: Hashable) -> bool:
        try:
            return key in self._entries
        except TypeError:
            raise _unhashable_key_error(key) from None

    def __repr__(self) -> str:
        return f"IndexedHeap(order={self._order!r}, size={len(self._heap)})"

    def priority(self, key: Hashable) -> Any:
        """Priority of ``key``; raises :class:`InvalidInputError` if the key is absent."""
        return self._sign * self._entry(key)[_SORT_PRIORITY]

    def peek(self) -> tuple[Hashable, Any]:
        """``(key, priority)`` of the entry ``pop`` would return, without removing it."""
        if not self._heap:
            raise EmptyHeapError("peek() on an empty IndexedHeap; check len(heap) or `if heap:` first.")
        top = self._heap[0]
        return top[_KEY], self._sign * top[_SORT_PRIORITY]

    def items(self) -> Iterator[tuple[Hashable, Any]]:
        """``(key, priority)`` pairs in no particular order (heap layout, not sorted)."""
        sign = self._sign
        for entry in self._heap:
            yield entry[_KEY], sign * entry[_SORT_PRIORITY]

    def keys(self) -> Iterator[Hashable]:
        """Keys in no particular order."""
        return iter(self._entries)

    # ---------------------------------------------------------------- updates
    #
    # push and pop let the C sift loops of the standard library's heapq move the entries (a
    # heap of these entry lists is a valid heapq heap) and then repair the stored positions
    # of the entries that moved, which all lie on one root-to-leaf path: a repair step costs
    # no comparison, so this measured about twice as fast as sifting in Python.

    def push(self, key: Hashable, priority: Any) -> None:
        """Insert ``key`` with ``priority``; a key already present is an error (use ``update``)."""
        entries = self._entries
        try:
            present = key in entries
        except TypeError:
            raise _unhashable_key_error(key) from None
        if present:
            raise InvalidInputError(
                f"key {key!r} is already in the heap; use update(key, priority) to change its "
                "priority or push_or_update(key, priority) to do either."
            )
        if type(priority) not in _FAST_PRIORITY_TYPES or priority != priority:
            priority = _checked_priority(priority)
        if self._sign < 0:
            priority = -priority
        heap = self._heap
        position = len(heap)
        entry = [priority, self._next_sequence, key, position]
        self._next_sequence += 1
        entries[key] = entry
        _c_heappush(heap, entry)
        # heappush shifted the parents on the new entry's path down by one level each.
        moved = heap[position]
        while moved is not entry:
            moved[_POSITION] = position
            position = (position - 1) >> 1
            moved = heap[position]
        entry[_POSITION] = position

    def pop(self) -> tuple[Hashable, Any]:
        """Remove and return the ``(key, priority)`` with the smallest (min) / largest (max) priority."""
        heap = self._heap
        if not heap:
            raise EmptyHeapError("pop() on an empty IndexedHeap; check len(heap) or `if heap:` first.")
        top = _c_heappop(heap)
        # heappop moved each entry on one path up a level (its stored position is the child
        # it came from, the next step of the path) and put the old last entry somewhere on
        # that path (its stored position is now past the end); entries below are unmoved.
        size = len(heap)
        position = 0
        while position < size:
            moved = heap[position]
            came_from = moved[_POSITION]
            if came_from == position:
                break
            moved[_POSITION] = position
            position = came_from
        key = top[_KEY]
        del self._entries[key]
        return key, self._sign * top[_SORT_PRIORITY]

    def update(self, key: Hashable, priority: Any) -> None:
        """Change the priority of ``key`` (up or down) in O(log n); the key must be present.

        The key keeps its place in the insertion order used to break ties.
        """
        try:
            entry = self._entries.get(key)
        except TypeError:
            raise _unhashable_key_error(key) from None
        if entry is None:
            entry = self._entry(key)  # raises the explanatory error
        if type(priority) not in _FAST_PRIORITY_TYPES or priority != priority:
            priority = _checked_priority(priority)
        if self._sign < 0:
            priority = -priority
        old_priority = entry[_SORT_PRIORITY]
        entry[_SORT_PRIORITY] = priority
        if priority < old_priority:
            self._move_toward_root(entry, entry[_POSITION])
        elif priority > old_priority:
            self._move_toward_leaves(entry, entry[_POSITION])

    def push_or_update(self, key: Hashable, priority: Any) -> None:
        """``update`` if ``key`` is present, else ``push``."""
        if key in self:
            self.update(key, priority)
        else:
            self.push(key, priority)

    def remove(self, key: Hashable) -> Any:
        """Remove ``key`` in O(log n) and return its priority; the key must be present."""
        try:
            entry = self._entries.pop(key, None)
        except TypeError:
            raise _unhashable_key_error(key) from None
        if entry is None:
            entry = self._entry(key)  # raises the explanatory error
        heap = self._heap
        last = heap.pop()
        if last is not entry:
            # Fill the hole with the last entry, which may belong above or below the hole.
            position = entry[_POSITION]
            if last < entry:
                self._move_toward_root(last, position)
            else:
                self._move_toward_leaves(last, position)
        return self._sign * entry[_SORT_PRIORITY]

    def clear(self) -> None:
        """Remove every entry."""
        self._heap.clear()
        self._entries.clear()

    # ---------------------------------------------------------------- internals

    def _entry(self, key: Hashable) -> list:
        try:
            return self._entries[key]
        except KeyError:
            raise InvalidInputError(
                f"key {key!r} is not in the heap; check `key in heap` first or use "
                "push_or_update(key, priority)."
            ) from None
        except TypeError:
            raise _unhashable_key_error(key) from None

    def _move_toward_root(self, entry: list, position: int) -> None:
        """Place ``entry`` at ``position`` or above it, shifting larger parents down."""
        heap = self._heap
        while position > 0:
            parent_position = (position - 1) >> 1
            parent = heap[parent_position]
            if entry < parent:
                heap[position] = parent
                parent[_POSITION] = position
                position = parent_position
            else:
                break
        heap[position] = entry
        entry[_POSITION] = position

    def _move_toward_leaves(self, entry: list, position: int) -> None:
        """Place ``entry`` at ``position`` or below it, shifting smaller children up."""
        heap = self._heap
        size = len(heap)
        child_position = 2 * position + 1
        while child_position < size:
            child = heap[child_position]
            right_position = child_position + 1
            if right_position < size:
                right = heap[right_position]
                if right < child:
                    child, child_position = right, right_position
            if child < entry:
                heap[position] = child
                child[_POSITION] = position
                position = child_position
                child_position = 2 * position + 1
            else:
                break
        heap[position] = entry
        entry[_POSITION] = position
