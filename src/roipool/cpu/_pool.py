"""Large buffers freed by the caller, kept for the next call: outputs without fresh page faults.

A new 100 MB output costs its kernel the first touch of every page: the
operating system zeroes each page (and, in a VM that hands freed memory back
to its host, the host faults it in again). On the machines measured that
was 4 to 5 ms per 100 MB, and when two threads fault at once on a busy VM,
several times that (``docs/benchmarks.md``). A training loop or a video
pipeline asks for outputs of the same sizes call after call, so the memory
of the last call's output, once the caller drops it, serves the next.

Only buffers of :data:`_simd.HUGE_FROM` (4 MiB) or more pass through here:
smaller ones the C allocator already recycles. A buffer returns to the pool
when the last array or tensor viewing it is gone (:class:`_Lease`), never
before; the pool holds at most :func:`limit` bytes, dropping the longest
unused first. :func:`roipool.set_memory_cache` sets the limit (0 frees all
and keeps none).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import numba
import numpy as np

from .. import _checks
from ._parallel import launch

ENVIRONMENT = "ROIPOOL_MEMORY_CACHE"


def default_limit() -> int:
    """1 GiB, or 1/16 of the machine's memory where that is less; ``$ROIPOOL_MEMORY_CACHE`` (bytes) if set."""
    value = os.environ.get(ENVIRONMENT, "").strip()
    if value:
        try:
            return checked_limit(int(value))
        except ValueError:
            raise ValueError(f"{ENVIRONMENT} must be a whole number of bytes, 0 or more, got {value!r}") from None
    memory = _checks.physical_memory()
    return min(1 << 30, memory // 16) if memory else 256 << 20


def checked_limit(max_bytes) -> int:
    """``max_bytes`` as an int, or ``TypeError``/``ValueError`` naming it."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)):
        raise TypeError(f"max_bytes must be an int (bytes), got {type(max_bytes).__name__}")
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be 0 or more, got {max_bytes}")
    return int(max_bytes)


_lock = threading.Lock()
_kept: OrderedDict[int, np.ndarray] = OrderedDict()  # id -> buffer, least recently kept first
_limit = default_limit()
_held = 0


class _Lease:
    """The owner of a buffer lent out: arrays made from it keep it alive as their base;
    when the last of them goes, the buffer goes back to the pool."""

    __slots__ = ("__array_interface__", "buffer")

    def __init__(self, buffer: np.ndarray):
        self.buffer = buffer
        self.__array_interface__ = buffer.__array_interface__

    def __del__(self):
        try:
            _keep(self.buffer)
        except Exception:  # interpreter shutdown: the module may be half gone
            pass


def limit() -> int:
    """Bytes the pool may hold."""
    return _limit


def held() -> int:
    """Bytes the pool holds now."""
    return _held


def set_limit(max_bytes: int) -> int:
    """Hold at most ``max_bytes`` (dropping the longest unused buffers now); returns the previous limit."""
    global _limit
    max_bytes = checked_limit(max_bytes)
    with _lock:
        previous, _limit = _limit, max_bytes
        dropped = _trim()
    del dropped  # freed outside the lock
    return previous


def lend(nbytes: int, zeros: bool = False) -> np.ndarray:
    """A ``uint8`` array of at least ``nbytes``, uninitialised (or, ``zeros``, zeroed): a kept buffer
    when one fits, else a new one.

    A kept buffer is zeroed here, on roipool's threads: on ``maskrcnn``'s 56 MB
    map gradient that costs a few ms, where the system's fresh zero pages, faulted
    in one by one as ``roi_pool``'s backward scatters its sums across the
    map, cost about 30 (``docs/benchmarks.md``). Its base is a
    :class:`_Lease`, so the buffer comes back to the pool when every view of
    it is gone.
    """
    global _held
    buffer = None
    if _limit:
        with _lock:
            best, best_size = None, 0
            # the smallest kept buffer that holds nbytes and is at most a quarter unused (so sizes
            # that vary a little from call to call, proposals after NMS, still meet, and a buffer
            # never holds more than a third again of what it serves); of equal ones, the last kept
            for key, kept in _kept.items():
                size = kept.size
                if nbytes <= size and 4 * (size - nbytes) <= size:
                    if best is None or size <= best_size:
                        best, best_size = key, size
            if best is not None:
                buffer = _kept.pop(best)
                _held -= buffer.size
    if buffer is None:
        buffer = (np.zeros if zeros else np.empty)(nbytes, np.uint8)
    elif zeros:
        zero_fill(buffer)
    return np.asarray(_Lease(buffer))


def zero_fill(array: np.ndarray) -> None:
    """``array`` (C-contiguous) <- 0, on roipool's threads when it is large."""
    flat = array.reshape(-1).view(np.uint8)
    launch(_zero_part, flat, values=flat.size // 4)


@numba.njit(cache=True, nogil=True)
def _zero_part(buffer, part, parts):
    """Part ``part`` of ``parts`` of ``buffer`` <- 0 (a kept buffer lent zeroed, on every thread)."""
    buffer[buffer.size * part // parts : buffer.size * (part + 1) // parts] = 0


def _keep(buffer: np.ndarray) -> None:
    """Back into the pool (newest last), then drop the oldest beyond the limit.

    Never waits: this runs when an array is freed, on any thread, maybe inside
    the garbage collector while this very thread holds the lock; if the lock
    is held (by that, or by another thread), the buffer is simply freed.
    """
    global _held
    if not _limit or buffer.size > _limit or not _lock.acquire(blocking=False):
        return
    try:
        _kept[id(buffer)] = buffer
        _held += buffer.size
        dropped = _trim()
    finally:
        _lock.release()
    del dropped


def _trim() -> list:
    """Under the lock: take the oldest buffers out until the pool fits its limit; returns them
    for the caller to free once the lock is released."""
    global _held
    dropped = []
    while _held > _limit and _kept:
        _, buffer = _kept.popitem(last=False)
        _held -= buffer.size
        dropped.append(buffer)
    return dropped


def _after_fork() -> None:
    """A forked child starts with an empty pool and a free lock (the parent's may have been held)."""
    global _lock, _kept, _held
    _lock = threading.Lock()
    _kept = OrderedDict()
    _held = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
