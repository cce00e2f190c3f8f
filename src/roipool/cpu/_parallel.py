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
