"""Work splitting and the thread pool shared by the CPU kernels.

The kernels run on Numba's thread pool (``numba.set_num_threads`` sizes it;
``NUMBA_NUM_THREADS`` caps it). Numba's default ``workqueue`` layer must not
be entered from two Python threads at once, so every parallel launch goes
through :data:`launch_lock`; the kernels use every core anyway, so callers
lose no throughput by taking turns.
"""

from __future__ import annotations

import threading

import numba
import numpy as np

launch_lock = threading.Lock()


def balanced_chunks(cost: np.ndarray, pieces_per_thread: int = 8) -> np.ndarray:
    """Boundaries ``[0, ..., K]`` splitting items into runs of about equal total cost.

    ``cost`` is each item's work estimate. Returns int64 boundaries; run ``i``
    is ``items[b[i]:b[i + 1]]``. Runs are contiguous, so each writes its own
    slice of the output.
    """
    k_total = len(cost)
    pieces = max(1, min(k_total, numba.get_num_threads() * pieces_per_thread))
    if pieces <= 1:
        return np.array([0, k_total], np.int64)
    total = np.cumsum(cost, dtype=np.float64)
    targets = total[-1] * np.arange(1, pieces) / pieces
    inner = np.searchsorted(total, targets, side="left") + 1
    bounds = np.concatenate(([0], inner, [k_total])).astype(np.int64)
    return np.unique(bounds)


def row_sweep(first_row, cost, batch, height: int) -> tuple[np.ndarray, np.ndarray]:
    """``(items, bounds)``: the bin rows of every RoI as ``items (K * PH, 3)`` int64 rows
    ``(RoI, ph, ph + 1)``, ordered by image and then by ``first_row (K, PH)``, the first map
    row each reads (ties in RoI order; clipped to ``[0, height)``), and ``bounds`` splitting them
    into runs of about equal ``cost (K, PH)``. ``batch`` must hold valid image indices.

    A forward that takes bin rows in this order (the channels-last ones, and
    ``roi_pool``'s NCHW one without argmax) sweeps down each image: the few
    map rows being read are shared, while in cache, by every RoI that crosses
    them, instead of being fetched again for each RoI
    (``_machine.sweeps_map_rows`` says when that pays).
    """
    k_total, pooled_h = first_row.shape
    # clipped to the map: the counting sort indexes its slots by key, unchecked
    keys = batch.astype(np.int64)[:, None] * height + np.clip(first_row, 0, max(height - 1, 0))
    items, sorted_cost = _counting_sort(keys.reshape(-1), cost.reshape(-1).astype(np.float64), pooled_h)
    return items, balanced_chunks(sorted_cost)


def whole_rois(k_total: int, pooled_h: int) -> np.ndarray:
    """``items (K, 3)``: each RoI's bin rows together, ``(RoI, 0, PH)``, in RoI order."""
    items = np.zeros((k_total, 3), np.int64)
    items[:, 0] = np.arange(k_total)
    items[:, 2] = pooled_h
    return items


@numba.njit(cache=True, nogil=True)
def _counting_sort(keys, cost, pooled_h):
    """Items ``(i // pooled_h, i % pooled_h, i % pooled_h + 1)`` of ``keys[i] >= 0`` in ascending
    key order, stable, and their costs, in time linear in the items and the largest key."""
    pairs = keys.size
    slot = np.zeros(keys.max() + 2 if pairs else 1, np.int64)
    for i in range(pairs):
        slot[keys[i] + 1] += 1
    for key in range(slot.size - 1):
        slot[key + 1] += slot[key]
    items = np.empty((pairs, 3), np.int64)
    sorted_cost = np.empty(pairs, np.float64)
    for i in range(pairs):
        j = slot[keys[i]]
        slot[keys[i]] += 1
        items[j, 0], items[j, 1], items[j, 2] = i // pooled_h, i % pooled_h, i % pooled_h + 1
        sorted_cost[j] = cost[i]
    return items, sorted_cost
