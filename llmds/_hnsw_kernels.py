"""Compiled (numba) kernels of the HNSW index in :mod:`llmds.hnsw`.

Malkov & Yashunin, "Efficient and robust approximate nearest neighbor search using Hierarchical
Navigable Small World graphs", IEEE TPAMI 42(4), 2018. The phases are named after the paper:
``_greedy_descent`` (Algorithm 5's zoom-in with ef = 1 on the upper layers), ``_search_layer``
(Algorithm 2), ``_select_neighbours_heuristic`` (Algorithm 4) and ``insert_batch``
(Algorithm 1).

Graph layout (owned and grown by :class:`llmds.hnsw.HNSWIndex`, never resized here):

- ``vectors``      float32 (capacity, dim): one row per slot (cosine rows are unit length).
- ``links0``       int32 (capacity, 1 + M0): layer-0 lists. Column 0 holds the number of
                   links, columns 1.. the neighbour slots (hnswlib's layout: the count shares a
                   cache line with the first links).
- ``upper_links``  int32 (rows, 1 + M): the lists of layers 1.. of every node, packed the same
                   way; a node of level L owns the L rows ``upper_offset[node] ..
                   upper_offset[node] + L - 1`` (layer l is row ``upper_offset[node] + l - 1``).
- ``state``        int64 [entry slot, top level, visited generation, distance computations];
                   the entry slot is -1 while the graph is empty.
- ``visited``      int32 (capacity,) tags; a node is visited in the current search when its tag
                   equals ``state[GENERATION]``. Bumping the generation clears the set in O(1)
                   instead of allocating a set per search.
- ``cand_keys`` / ``cand_nodes``: float32 / int32 (capacity,) storage for the candidate heap.
                   A node enters the candidate heap at most once per search (it is marked
                   visited first), so ``capacity`` entries always suffice.

All kernels are single-threaded and deterministic: the same inputs give the same graph.
Hot loops address vectors and link lists as (matrix, row) pairs instead of taking row views:
in numba every view is a reference-counted object, and the atomic increments and decrements
around each distance computation cost more than the distance itself at d = 128.

Inputs are validated (shape, dtype, finiteness) before the search and insert kernels see them,
in numpy or in :func:`squared_norm`, which is compiled without fastmath. That is why the other
kernels may use ``fastmath`` to reassociate sums: they never have to detect NaN or infinity,
and the flags that would assume their absence ('nnan', 'ninf') are left off anyway.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

# 'reassoc' lets LLVM vectorise the float32 reductions of the distance loops (SIMD), 'contract'
# allows fused multiply-add. NaN/Inf assumptions ('nnan', 'ninf') are deliberately excluded.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

METRIC_L2 = 0  # squared Euclidean distance
METRIC_IP = 1  # 1 - <a, b> (cosine is this on unit-length vectors)

# Positions in the ``state`` array.
ENTRY, TOP, GENERATION, DISTANCES = 0, 1, 2, 3

_GENERATION_LIMIT = 2**31 - 2


@intrinsic
def _prefetch(typingctx, matrix, row, column):
    """Hint the CPU to start loading ``matrix[row, column]`` into cache (LLVM llvm.prefetch).

    Graph search jumps to unpredictable rows; issuing the loads for all of a node's unvisited
    neighbours before computing any distance overlaps their memory latency (hnswlib uses
    _mm_prefetch likewise). Measured one query per call: about 7% faster at 100k x 128, where
    the vectors outgrow the L3 cache, and neutral at 10k; prefetching only each row's first
    cache line was slower in both cases.
    """
    signature = types.void(matrix, row, column)

    def codegen(context, builder, sig, args):
        matrix_type = sig.args[0]
        array = context.make_array(matrix_type)(context, builder, args[0])
        indices = [context.cast(builder, value, value_type, types.intp)
                   for value, value_type in zip(args[1:], sig.args[1:])]
        pointer = cgutils.get_item_pointer2(
            context, builder, array.data, cgutils.unpack_tuple(builder, array.shape),
            cgutils.unpack_tuple(builder, array.strides), matrix_type.layout, indices)
        byte_pointer = builder.bitcast(pointer, ir.IntType(8).as_pointer())
        int32 = ir.IntType(32)
        prefetch_type = ir.FunctionType(ir.VoidType(), [byte_pointer.type, int32, int32, int32])
        # The intrinsic is mangled by pointer type: opaque "ptr" on current LLVM, "i8*" before.
        suffix = "p0" if str(byte_pointer.type) == "ptr" else "p0i8"
        prefetch = cgutils.get_or_insert_function(builder.module, prefetch_type,
                                                  f"llvm.prefetch.{suffix}")
        # read access, maximal temporal locality, data cache
        builder.call(prefetch, [byte_pointer, int32(0), int32(3), int32(1)])
        return context.get_dummy_value()

    return signature, codegen


# float32 values per 64-byte cache line
_LINE = 16


@njit(cache=True, inline="always")
def _prefetch_unvisited(links, row, vectors, visited, tag):
    """Prefetch every cache line of the vectors of the not-yet-visited nodes in ``links[row]``."""
    for j in range(1, links[row, 0] + 1):
        neighbour = links[row, j]
        if visited[neighbour] != tag:
            for column in range(0, vectors.shape[1], _LINE):
                _prefetch(vectors, neighbour, column)


@njit(cache=True)
def squared_norm(vector):
    """Sum of squares of a float32 vector, in float32, for the caller's input check.

    Compiled without fastmath so that NaN and infinity propagate exactly: the result is finite
    iff every entry is finite and the squares do not overflow float32 (the same condition the
    distance kernels need). As cheap per call as numpy's dot, which warns on overflow.
    """
    total = np.float32(0.0)
    for value in vector:
        total += value * value
    return total


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _distance(a, a_row, b, b_row, metric):
    """Distance between ``a[a_row]`` and ``b[b_row]``: squared L2, or 1 - inner product.

    Accumulated in float32, like hnswlib; 'reassoc' lets LLVM vectorise the loop.
    """
    total = np.float32(0.0)
    if metric == METRIC_L2:
        for i in range(a.shape[1]):
            diff = a[a_row, i] - b[b_row, i]
            total += diff * diff
        return total
    for i in range(a.shape[1]):
        total += a[a_row, i] * b[b_row, i]
    return np.float32(1.0) - total


@njit(cache=True, inline="always")
def _heap_push(keys, values, size, key, value):
    """Push onto a binary min-heap kept in ``keys``/``values``; return the new size.

    A max-heap is the same heap fed negated keys, so one implementation serves both.
    """
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if keys[parent] <= key:
            break
        keys[i] = keys[parent]
        values[i] = values[parent]
        i = parent
    keys[i] = key
    values[i] = value
    return size + 1


@njit(cache=True, inline="always")
def _heap_pop(keys, values, size):
    """Remove the top (smallest key) of a binary min-heap; return the new size."""
    size -= 1
    key = keys[size]
    value = values[size]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and keys[child + 1] < keys[child]:
            child += 1
        if keys[child] >= key:
            break
        keys[i] = keys[child]
        values[i] = values[child]
        i = child
    keys[i] = key
    values[i] = value
    return size


@njit(cache=True)
def _new_generation(visited, state):
    """Start a new visited set; wipe the tags only when the counter would overflow."""
    current = state[GENERATION] + 1
    if current > _GENERATION_LIMIT:
        visited[:] = 0
        current = 1
    state[GENERATION] = current
    return np.int32(current)


@njit(cache=True, inline="always")
def _layer_links(layer, links0, upper_links):
    """The link matrix holding ``layer``'s lists (see :func:`_link_row` for the row)."""
    return links0 if layer == 0 else upper_links


@njit(cache=True, inline="always")
def _link_row(node, layer, upper_offset):
    """Row of ``node``'s list on ``layer`` in :func:`_layer_links`: [count, neighbours...]."""
    return node if layer == 0 else upper_offset[node] + layer - 1


@njit(cache=True, fastmath=FASTMATH)
def _greedy_descent(queries, query_row, node, node_distance, from_layer, to_layer, vectors,
                    upper_links, upper_offset, metric, state):
    """Greedy walk (ef = 1) on the upper layers from ``from_layer`` down to, but excluding,
    ``to_layer`` (>= 0, so layer 0 is never walked here)."""
    computed = 0
    for layer in range(from_layer, to_layer, -1):
        improved = True
        while improved:
            improved = False
            row = upper_offset[node] + layer - 1
            for j in range(1, upper_links[row, 0] + 1):
                neighbour = upper_links[row, j]
                distance = _distance(queries, query_row, vectors, neighbour, metric)
                computed += 1
                if distance < node_distance:
                    node_distance = distance
                    node = neighbour
                    improved = True
    state[DISTANCES] += computed
    return node, node_distance


@njit(cache=True, fastmath=FASTMATH)
def _search_layer(queries, query_row, entry, entry_distance, ef, layer, vectors, links0,
                  upper_links, upper_offset, visited, cand_keys, cand_nodes, result_keys,
                  result_nodes, eligible, restrict, metric, state):
    """Algorithm 2: ef-bounded best-first search of one layer from ``entry``.

    Results go to the max-heap ``result_keys`` (negated distances) / ``result_nodes``; the
    number of results is returned. With ``restrict`` only nodes whose ``eligible`` flag is set
    (live and allowed by the filter) become results, while every node still routes, so deleted
    or filtered-out nodes never disconnect the graph. While fewer than ``ef`` eligible nodes have
    been found the search keeps expanding, as hnswlib does under deletions and filters.
    """
    links = _layer_links(layer, links0, upper_links)
    tag = _new_generation(visited, state)
    visited[entry] = tag
    n_candidates = _heap_push(cand_keys, cand_nodes, 0, entry_distance, entry)
    n_results = 0
    worst = np.float32(np.inf)
    if not restrict or eligible[entry]:
        n_results = _heap_push(result_keys, result_nodes, 0, -entry_distance, entry)
        worst = entry_distance
    computed = 0
    while n_candidates > 0:
        if cand_keys[0] > worst and n_results >= ef:
            break
        row = _link_row(cand_nodes[0], layer, upper_offset)
        n_candidates = _heap_pop(cand_keys, cand_nodes, n_candidates)
        _prefetch_unvisited(links, row, vectors, visited, tag)
        for j in range(1, links[row, 0] + 1):
            neighbour = links[row, j]
            if visited[neighbour] == tag:
                continue
            visited[neighbour] = tag
            distance = _distance(queries, query_row, vectors, neighbour, metric)
            computed += 1
            if n_results < ef or distance < worst:
                n_candidates = _heap_push(cand_keys, cand_nodes, n_candidates, distance, neighbour)
                if not restrict or eligible[neighbour]:
                    n_results = _heap_push(result_keys, result_nodes, n_results, -distance,
                                           neighbour)
                    if n_results > ef:
                        n_results = _heap_pop(result_keys, result_nodes, n_results)
                    worst = -result_keys[0]
    state[DISTANCES] += computed
    return n_results


@njit(cache=True)
def _drain_ascending(result_keys, result_nodes, n_results, out_distances, out_nodes):
    """Empty the result max-heap into ``out_*`` sorted by ascending distance."""
    for position in range(n_results - 1, -1, -1):
        out_distances[position] = -result_keys[0]
        out_nodes[position] = result_nodes[0]
        n_results = _heap_pop(result_keys, result_nodes, n_results)


@njit(cache=True, fastmath=FASTMATH)
def _select_neighbours_heuristic(distances, nodes, n, max_neighbours, vectors, metric, state):
    """Algorithm 4 (without extending or keeping pruned candidates, as in hnswlib).

    ``distances``/``nodes`` hold ``n`` candidates sorted by ascending distance to the base
    element. A candidate is kept when it is closer to the base than to every neighbour kept so
    far, which spreads the links in different directions and keeps the graph navigable on
    clustered data. The kept candidates are compacted, in order, to the front of the arrays
    (safe in place: the write position never passes the read position); their number is
    returned.
    """
    if n <= max_neighbours:
        return n
    kept = 0
    computed = 0
    for i in range(n):
        if kept >= max_neighbours:
            break
        candidate = nodes[i]
        good = True
        for j in range(kept):
            computed += 1
            if _distance(vectors, candidate, vectors, nodes[j], metric) < distances[i]:
                good = False
                break
        if good:
            distances[kept] = distances[i]
            nodes[kept] = candidate
            kept += 1
    state[DISTANCES] += computed
    return kept


@njit(cache=True, fastmath=FASTMATH)
def _connect_back(neighbour, new_node, new_distance, layer, vectors, links0, upper_links,
                  upper_offset, scratch_distances, scratch_nodes, metric, state):
    """Add ``new_node`` to the list of ``neighbour`` on ``layer``, shrinking it when full.

    An overfull list is re-selected with the heuristic (Algorithm 4) over its old members plus
    the new node, all measured from ``neighbour``.
    """
    links = _layer_links(layer, links0, upper_links)
    row = _link_row(neighbour, layer, upper_offset)
    count = links[row, 0]
    width = links.shape[1] - 1
    if count < width:
        links[row, count + 1] = new_node
        links[row, 0] = count + 1
        return
    # Insertion sort by distance to ``neighbour``: at most M0 + 1 items.
    for j in range(count + 1):
        if j < count:
            node = links[row, j + 1]
            distance = _distance(vectors, neighbour, vectors, node, metric)
        else:
            node = new_node
            distance = new_distance
        position = j
        while position > 0 and scratch_distances[position - 1] > distance:
            scratch_distances[position] = scratch_distances[position - 1]
            scratch_nodes[position] = scratch_nodes[position - 1]
            position -= 1
        scratch_distances[position] = distance
        scratch_nodes[position] = node
    state[DISTANCES] += count
    kept = _select_neighbours_heuristic(scratch_distances, scratch_nodes, count + 1, width,
                                        vectors, metric, state)
    for j in range(kept):
        links[row, j + 1] = scratch_nodes[j]
    links[row, 0] = kept


@njit(cache=True, fastmath=FASTMATH)
def insert_batch(first_slot, count, node_levels, vectors, links0, upper_links, upper_offset,
                 state, visited, cand_keys, cand_nodes, M, ef_construction, metric):
    """Algorithm 1 for slots ``first_slot .. first_slot + count - 1``, one after another.

    The vectors, levels and upper-row offsets of the new slots must already be written and
    their link counts zeroed. New nodes select M neighbours on every layer (as in the paper and
    hnswlib); a neighbour's list may hold up to M on upper layers and M0 on layer 0 before the
    heuristic shrinks it. Search during construction does not exclude deleted nodes: they keep
    routing, so linking to them keeps the graph connected.
    """
    width = max(ef_construction, links0.shape[1]) + 1
    result_keys = np.empty(width, dtype=np.float32)
    result_nodes = np.empty(width, dtype=np.int32)
    found_distances = np.empty(width, dtype=np.float32)
    found_nodes = np.empty(width, dtype=np.int32)
    no_filter = np.empty(0, dtype=np.uint8)
    for slot in range(first_slot, first_slot + count):
        level = node_levels[slot]
        if state[ENTRY] < 0:
            state[ENTRY] = slot
            state[TOP] = level
            continue
        top = state[TOP]
        entry = state[ENTRY]
        entry_distance = _distance(vectors, slot, vectors, entry, metric)
        state[DISTANCES] += 1
        entry, entry_distance = _greedy_descent(vectors, slot, entry, entry_distance, top, level,
                                                vectors, upper_links, upper_offset, metric, state)
        for layer in range(min(level, top), -1, -1):
            n_found = _search_layer(vectors, slot, entry, entry_distance, ef_construction, layer,
                                    vectors, links0, upper_links, upper_offset, visited,
                                    cand_keys, cand_nodes, result_keys, result_nodes, no_filter,
                                    False, metric, state)
            _drain_ascending(result_keys, result_nodes, n_found, found_distances, found_nodes)
            # The closest element found enters the next layer down (as in hnswlib).
            entry = found_nodes[0]
            entry_distance = found_distances[0]
            kept = _select_neighbours_heuristic(found_distances, found_nodes, n_found, M, vectors,
                                                metric, state)
            links = _layer_links(layer, links0, upper_links)
            row = _link_row(slot, layer, upper_offset)
            for j in range(kept):
                links[row, j + 1] = found_nodes[j]
            links[row, 0] = kept
            for j in range(kept):
                # result_* are free until the next layer's search: reuse them as scratch.
                _connect_back(found_nodes[j], slot, found_distances[j], layer, vectors, links0,
                              upper_links, upper_offset, result_keys, result_nodes, metric, state)
        if level > top:
            state[ENTRY] = slot
            state[TOP] = level


@njit(cache=True, fastmath=FASTMATH)
def _exact_top(queries, query_row, want, vectors, eligible, n_slots, result_keys, result_nodes,
               metric, state):
    """Exact top-``want`` over all eligible slots (into the result max-heap); return the count.

    Used when graph search cannot reach ``want`` eligible nodes (e.g. a selective filter or
    many deletions cut them off), so a search never returns fewer results than exist.
    """
    n_results = 0
    computed = 0
    for slot in range(n_slots):
        if not eligible[slot]:
            continue
        distance = _distance(queries, query_row, vectors, slot, metric)
        computed += 1
        if n_results < want:
            n_results = _heap_push(result_keys, result_nodes, n_results, -distance, slot)
        elif distance < -result_keys[0]:
            n_results = _heap_pop(result_keys, result_nodes, n_results)
            n_results = _heap_push(result_keys, result_nodes, n_results, -distance, slot)
    state[DISTANCES] += computed
    return n_results


@njit(cache=True, fastmath=FASTMATH)
def _search_into(queries, query_row, k, ef, n_slots, vectors, links0, upper_links, upper_offset,
                 ids, eligible, state, visited, cand_keys, cand_nodes, result_keys, result_nodes,
                 metric, out_ids, out_distances, out_row):
    """Algorithm 5 for ``queries[query_row]``: fill row ``out_row`` of ``out_ids`` /
    ``out_distances``, whose width ``want`` is min(k, number of eligible nodes), nearest first."""
    want = out_ids.shape[1]
    entry = state[ENTRY]
    entry_distance = _distance(queries, query_row, vectors, entry, metric)
    state[DISTANCES] += 1
    entry, entry_distance = _greedy_descent(queries, query_row, entry, entry_distance, state[TOP],
                                            0, vectors, upper_links, upper_offset, metric, state)
    n_found = _search_layer(queries, query_row, entry, entry_distance, max(ef, k), 0, vectors,
                            links0, upper_links, upper_offset, visited, cand_keys, cand_nodes,
                            result_keys, result_nodes, eligible, True, metric, state)
    if n_found < want:
        n_found = _exact_top(queries, query_row, want, vectors, eligible, n_slots, result_keys,
                             result_nodes, metric, state)
    while n_found > want:
        n_found = _heap_pop(result_keys, result_nodes, n_found)
    for position in range(want - 1, -1, -1):
        out_distances[out_row, position] = -result_keys[0]
        out_ids[out_row, position] = ids[result_nodes[0]]
        n_found = _heap_pop(result_keys, result_nodes, n_found)


@njit(cache=True, fastmath=FASTMATH)
def search_batch(queries, k, ef, n_slots, vectors, links0, upper_links, upper_offset, ids,
                 eligible, state, visited, cand_keys, cand_nodes, metric, out_ids, out_distances):
    """Search every row of ``queries`` (n, dim) into ``out_ids``/``out_distances`` (n, want).

    Outputs are allocated by the caller: allocating and returning arrays from numba costs more
    than ``np.empty`` in Python, and per-query overhead matters at tens of microseconds per
    search. Every row is complete because :func:`_search_into` falls back to an exact scan when
    the graph search comes up short.
    """
    width = max(ef, k) + 1
    result_keys = np.empty(width, dtype=np.float32)
    result_nodes = np.empty(width, dtype=np.int32)
    for i in range(queries.shape[0]):
        _search_into(queries, i, k, ef, n_slots, vectors, links0, upper_links, upper_offset, ids,
                     eligible, state, visited, cand_keys, cand_nodes, result_keys, result_nodes,
                     metric, out_ids, out_distances, i)


@njit(cache=True, fastmath=FASTMATH)
def search_one(query, k, ef, n_slots, vectors, links0, upper_links, upper_offset, ids, eligible,
               state, visited, cand_keys, cand_nodes, metric, out_ids, out_distances):
    """:func:`search_batch` for one 1-D query into 1-D outputs; reshaping here rather than in
    Python saves a measurable share of a single search's fixed cost."""
    search_batch(query.reshape(1, query.shape[0]), k, ef, n_slots, vectors, links0, upper_links,
                 upper_offset, ids, eligible, state, visited, cand_keys, cand_nodes, metric,
                 out_ids.reshape(1, out_ids.shape[0]),
                 out_distances.reshape(1, out_distances.shape[0]))
