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


def row_sweep(first_row, first_col, rows, cols, batch, height: int, strip: int) -> tuple[np.ndarray, np.ndarray]:
    """``(items, bounds)``: the bins of every RoI as ``items (M, 5)`` int64 rows ``(RoI, ph, ph + 1,
    pw_lo, pw_hi)``, pieces of bin rows, and ``bounds`` splitting them into runs of about equal cost.

    The map is cut into strips of ``strip`` columns; a bin belongs to the strip of
    ``first_col (K, PW)``, the first map column it reads, and a piece is a run of
    a bin row's bins in one strip. Pieces are ordered by image, then strip, then
    ``first_row (K, PH)``, the first map row its bin row reads (ties in RoI order,
    then left to right; rows clipped to ``[0, height)``, columns below 0 taken as 0). A bin's cost is
    ``rows (K, PH) * cols (K, PW) + 1``: the rows and columns (or taps) it reads,
    plus its output. ``batch`` must hold valid image indices.

    A forward that takes its bins in this order (the channels-last ones, and
    ``roi_pool``'s NCHW ones) sweeps down each strip of each image:
    the few map rows of a strip being read stay in cache (``_machine.sweep_strip``
    sizes the strips) and serve every RoI that crosses them, instead of being
    fetched again for each RoI (``_machine.sweeps_map_rows`` says when that pays).
    """
    items, cost = _pieces_in_order(
        np.asarray(first_row, np.int64), np.asarray(first_col, np.int64), np.asarray(rows, np.float64),
        np.asarray(cols, np.float64), np.asarray(batch, np.int64), height, max(int(strip), 1),
    )  # fmt: skip
    return items, balanced_chunks(cost)


def sweep_band(rows, cols) -> float:
    """The rows (or row taps) a bin row reads, averaged over the bins weighted by their
    ``rows (K, PH) * cols (K, PW)``: about how many map rows the sweep of :func:`row_sweep`
    keeps in use (``_machine.sweep_strip`` sizes its strips from it)."""
    rows = np.asarray(rows, np.float64)
    per_row = rows * np.asarray(cols, np.float64).sum(axis=1, keepdims=True)  # the work of each bin row
    return float((rows * per_row).sum() / per_row.sum()) if per_row.sum() > 0 else 0.0


def whole_rois(k_total: int, pooled_h: int, pooled_w: int) -> np.ndarray:
    """``items (K, 5)``: each RoI's bins together, ``(RoI, 0, PH, 0, PW)``, in RoI order."""
    items = np.zeros((k_total, 5), np.int64)
    items[:, 0] = np.arange(k_total)
    items[:, 2] = pooled_h
    items[:, 4] = pooled_w
    return items


@numba.njit(cache=True, nogil=True)
def _pieces_in_order(first_row, first_col, rows, cols, batch, height, strip):
    """``(items, cost)`` of :func:`row_sweep`, sorted by a counting sort on the key (image, strip,
    first row): stable, in time linear in the pieces and the number of keys."""
    k_total, pooled_h = first_row.shape
    pooled_w = first_col.shape[1]
    last = max(height - 1, 0)
    # a RoI's bin rows are all cut at the same columns: piece i of RoI k is bins
    # [cut[k, i], cut[k, i + 1]) of strip piece_strip[k, i], reading piece_cols[k, i] columns
    cut = np.zeros((k_total, pooled_w + 1), np.int64)
    piece_strip = np.zeros((k_total, pooled_w), np.int64)
    piece_cols = np.zeros((k_total, pooled_w), np.float64)
    pieces = np.zeros(k_total, np.int64)
    strips = 1
    for k in range(k_total):
        n = 0
        for pw in range(pooled_w):
            at = max(first_col[k, pw], 0) // strip
            if pw == 0 or at != piece_strip[k, n - 1]:
                cut[k, n] = pw
                piece_strip[k, n] = at
                n += 1
                strips = max(strips, at + 1)
            piece_cols[k, n - 1] += cols[k, pw]
        cut[k, n] = pooled_w
        pieces[k] = n
    images = batch.max() + 1 if k_total else 1
    slot = np.zeros(images * strips * (last + 1) + 1, np.int64)
    for k in range(k_total):  # count the pieces of each key ...
        for ph in range(pooled_h):
            row = min(max(first_row[k, ph], 0), last)
            for i in range(pieces[k]):
                slot[(batch[k] * strips + piece_strip[k, i]) * (last + 1) + row + 1] += 1
    for key in range(slot.size - 1):
        slot[key + 1] += slot[key]
    items = np.empty((slot[-1], 5), np.int64)
    cost = np.empty(slot[-1], np.float64)
    for k in range(k_total):  # ... then place each piece in its key's next slot
        for ph in range(pooled_h):
            row = min(max(first_row[k, ph], 0), last)
            for i in range(pieces[k]):
                key = (batch[k] * strips + piece_strip[k, i]) * (last + 1) + row
                j = slot[key]
                slot[key] += 1
                items[j, 0], items[j, 1], items[j, 2], items[j, 3], items[j, 4] = k, ph, ph + 1, cut[k, i], cut[k, i + 1]  # fmt: skip
                cost[j] = rows[k, ph] * piece_cols[k, i] + cut[k, i + 1] - cut[k, i]
    return items, cost
