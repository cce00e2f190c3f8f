"""Work splitting and the threads shared by the CPU kernels.

A parallel kernel is a serial Numba function that releases the GIL
(``nogil=True``) and takes two last arguments, ``part`` and ``parts``: it
does the items :func:`share` gives that part. :func:`launch` runs the parts
on the calling thread and a pool of Python threads, each thread taking the
next part as it comes free, and returns when all are done. Numba's own
``parallel=True`` runs ``prange`` loops on its threads, but it compiles each
kernel a second time, as a "gufunc" that links and optimises all its helpers
again: the first call of ``roi_align`` on a new machine took 12.3 s that way
and 6.9 s this way (``docs/benchmarks.md``).

:func:`set_threads` sizes the pool for the whole process; the default is
``NUMBA_NUM_THREADS`` (all the cores this process may use), which also caps
it.
"""

from __future__ import annotations

import functools
import itertools
import os
import platform
import threading

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

# Below this many values a kernel runs on the calling thread alone. A launch on the pool costs
# 20 to 40 us here (60 to 70 when its threads are asleep); whole roi_align and roi_pool calls
# took as long on one thread as on two at about 117,000 values and were faster on two from
# 167,000 (docs/benchmarks.md, "Small calls").
GRAIN = 131072

# Parts per thread in a launch: taken in turn as threads come free, so a slowed thread does fewer.
# A part takes at least PART_VALUES values of work: each part costs a call into the kernel from
# Python, and a thread that finds the GIL taken then sleeps, 40 to 70 us before it wakes here, so
# calls of a millisecond or two were faster in one part per thread (docs/benchmarks.md).
PARTS_PER_THREAD = 4
PART_VALUES = 1 << 20

# How many times a pool thread checks for the next launch (and a caller for its pool's parts
# to end) before it sleeps: about 0.3 ms on Cascade Lake, where a pause takes about 140 cycles.
SPINS = 5000

_threads = 0  # 0: not set, NUMBA_NUM_THREADS

_lock = threading.Lock()  # guards _pool
_pool: _Pool | None = None


def _forget_pool() -> None:
    """In a forked child: the parent's pool threads were not copied, and its lock may have been held."""
    global _lock, _pool
    _lock, _pool = threading.Lock(), None


os.register_at_fork(after_in_child=_forget_pool)


def threads() -> int:
    """Threads the kernels run on (:func:`set_threads`; default ``NUMBA_NUM_THREADS``)."""
    return _threads or numba.config.NUMBA_NUM_THREADS


def set_threads(n: int) -> None:
    """Run the kernels on ``n`` threads, from 1 to ``NUMBA_NUM_THREADS``, in every Python thread."""
    global _threads
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n (the number of threads) must be an int, got {type(n).__name__}")
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= limit:
        raise ValueError(f"n (the number of threads) must be between 1 and NUMBA_NUM_THREADS={limit}, got {n}")
    _threads = int(n)


@numba.njit(cache=True, nogil=True, fastmath=False)
def share(n, part, parts):
    """The items ``part`` of ``parts`` does of ``n``: a contiguous run, the runs about equal in count.

    The indices are signed: index an array with one directly in an inner loop
    as ``np.uint64(i)``, or Numba's negative-index check can keep the loop from
    vectorising (``roi_pool.count_outside``).
    """
    return range(n * part // parts, n * (part + 1) // parts)


_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


@intrinsic
def _load_acquire(typingctx, counter):
    """``counter[0]`` (int64), read from memory each time: another thread may have changed it."""

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        return builder.load_atomic(data, "acquire", 8)

    return types.int64(counter), codegen


@intrinsic
def _pause(typingctx):
    """The CPU's spin-wait hint (``pause`` on x86; nothing elsewhere)."""

    def codegen(context, builder, sig, args):
        if _X86:
            hint = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause"
            )
            builder.call(hint, [])
        return context.get_dummy_value()

    return types.void(), codegen


@numba.njit(cache=True, nogil=True)
def _spin(counter, value, equal, spins):
    """Whether ``counter[0] == value`` (``equal``) or ``!= value`` became true within ``spins`` checks."""
    for _ in range(spins):
        if (_load_acquire(counter) == value) == equal:
            return True
        _pause()
    return False


class _Pool:
    """``count`` threads that run the parts of one launch at a time alongside the caller.

    Waking a sleeping thread took 40 to 70 us here (a futex on a VM), as long as a
    small kernel; so a thread that has finished its parts checks for the next launch
    for :data:`SPINS` rounds first, outside the GIL, and only then sleeps (Numba's
    OpenMP threads did the same), and the caller waits for the parts the same way.
    """

    def __init__(self, count: int):
        self.count = count
        self.bell = np.zeros(1, np.int64)  # launches rung so far
        self.ended = np.zeros(1, np.int64)  # threads done with the current launch
        self.job = None
        self.closed = False
        self.ring = threading.Condition()  # a sleeping thread waits here for the bell
        self.settle = threading.Condition()  # a sleeping caller waits here for the threads
        self.turn = threading.Lock()  # one launch at a time
        self.threads = [threading.Thread(target=self._serve, name="roipool", daemon=True) for _ in range(count)]
        for thread in self.threads:
            thread.start()

    def _serve(self) -> None:
        seen = 0
        while True:
            if not _spin(self.bell, seen, False, SPINS):
                with self.ring:
                    while self.bell[0] == seen:
                        self.ring.wait()
            seen = int(self.bell[0])
            if self.closed:
                return
            self.job()
            with self.settle:
                self.ended[0] += 1
                self.settle.notify()

    def run(self, job) -> None:
        """``job()`` on the calling thread and on every pool thread; returns when all have returned."""
        with self.turn:
            self.ended[0] = 0
            self.job = job
            with self.ring:
                self.bell[0] += 1
                self.ring.notify_all()
            try:
                job()
            finally:
                if not _spin(self.ended, self.count, True, SPINS):
                    with self.settle:
                        while self.ended[0] != self.count:
                            self.settle.wait()
                self.job = None

    def close(self) -> None:
        """Let the threads end (after the launch running now, if any)."""
        with self.turn, self.ring:
            self.closed = True
            self.bell[0] += 1
            self.ring.notify_all()


def _workers(count: int) -> _Pool:
    """The pool of ``count`` threads (a new one when the count has changed)."""
    global _pool
    with _lock:
        if _pool is None or _pool.count != count:
            if _pool is not None:
                _pool.close()
            _pool = _Pool(count)
        return _pool


def launch_threads(values: int, tasks: int | None = None) -> int:
    """How many threads :func:`launch` runs a kernel of ``values`` (and ``tasks``, where given) on."""
    count = threads() if values >= GRAIN else 1
    return count if tasks is None else max(1, min(count, tasks))


def launch(kernel, *args, values: int, tasks: int | None = None) -> list:
    """``[kernel(*args, part, parts) for part in range(parts)]``, the parts shared out as threads come free.

    ``parts`` is 1 when ``values`` (about how many array elements the kernel
    reads and writes) is under :data:`GRAIN`: waking a pool thread costs
    about as much as that work. Otherwise it is :func:`threads` times
    :data:`PARTS_PER_THREAD`, or fewer per thread (at least one) where parts
    would have less than :data:`PART_VALUES` values each. The calling thread
    and the pool's each take the next part not yet taken until none is left,
    so a thread that the machine slows down (a shared core) does fewer parts
    instead of holding up the call. ``tasks``, where the caller knows it, is
    how many items the kernel shares out (the ``n`` of its :func:`share`): no
    more threads or parts than that are used. Every part has finished when
    this returns or raises (after an error no new part is started, and the
    first error is raised), so no thread still writes into the caller's
    arrays.
    """
    count = launch_threads(values, tasks)
    if count == 1:
        return [kernel(*args, 0, 1)]
    parts = count * min(PARTS_PER_THREAD, max(1, values // (count * PART_VALUES)))
    if tasks is not None:
        parts = min(parts, tasks)
    results = [None] * parts
    taken = itertools.count()  # next() is atomic: the GIL is held while it runs
    failed = []

    def work():
        while not failed:
            part = next(taken)
            if part >= parts:
                return
            try:
                results[part] = kernel(*args, part, parts)
            except BaseException as error:  # kept for the caller; no new part starts
                failed.append(error)

    _workers(count - 1).run(work)
    if failed:
        raise failed[0]
    return results


class BalancedRuns:
    """A call's geometry (taps, bins) whose RoIs a kernel visits by runs: its ``cost (K,)`` gives
    :attr:`bounds`, computed when first asked for, and :meth:`runs` for a given launch."""

    cost: np.ndarray

    @functools.cached_property
    def bounds(self) -> np.ndarray:
        """Runs of RoIs of about equal cost (:func:`balanced_chunks`), for a launch on several threads."""
        return balanced_chunks(self.cost)

    def runs(self, values: int) -> np.ndarray:
        """:attr:`bounds` for a launch of ``values`` (:func:`launch`), or one run of every RoI where
        that launch takes one thread: it visits the same RoIs in the same order, so the results
        are the same, and the split, a compiled call of 20 to 30 us after an idle spell, is not
        made."""
        if launch_threads(values) == 1:
            return _one_run(len(self.cost))
        return self.bounds


@functools.lru_cache(maxsize=64)
def _one_run(k_total: int) -> np.ndarray:
    """``[0, K]``, kept: a new array is a NumPy call of 20 to 30 us after an idle spell (kernels only read it)."""
    return np.array([0, k_total], np.int64)


def balanced_chunks(cost: np.ndarray, pieces_per_thread: int = 8) -> np.ndarray:
    """Boundaries ``[0, ..., K]`` splitting items into runs of about equal total cost.

    ``cost`` is each item's work estimate. Returns int64 boundaries; run ``i``
    is ``items[b[i]:b[i + 1]]``. Runs are contiguous, so each writes its own
    slice of the output.
    """
    pieces = min(len(cost), threads() * pieces_per_thread)
    if pieces <= 1:
        return np.array([0, len(cost)], np.int64)
    return _chunk_bounds(np.asarray(cost, np.float64), pieces)  # one compiled signature, the same sums


@numba.njit(cache=True, nogil=True)
def _chunk_bounds(cost, pieces):
    """:func:`balanced_chunks` for ``pieces`` runs of float64 ``cost``: run ``i`` ends after the first
    item at which the running total reaches ``i / pieces`` of the whole; runs that would be empty are
    dropped."""
    k_total = cost.shape[0]
    total = np.empty(k_total, np.float64)
    running = 0.0
    for k in range(k_total):
        running += cost[k]
        total[k] = running
    bounds = np.empty(pieces + 1, np.int64)
    bounds[0] = 0
    count = 1
    k = 0
    for i in range(1, pieces):
        target = running * i / pieces
        while k < k_total and total[k] < target:
            k += 1
        if k + 1 != bounds[count - 1]:
            bounds[count] = k + 1
            count += 1
    if k_total != bounds[count - 1]:
        bounds[count] = k_total
        count += 1
    return bounds[:count]


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


#: The ``items`` of a forward that goes RoI by RoI: none, so that ``bounds`` splits the RoIs
#: themselves into runs and every RoI's bins are taken together, in RoI order (rather than an
#: ``(RoI, 0, PH, 0, PW)`` row per RoI: five NumPy calls, 50 to 70 us of a small call after an
#: idle spell). Kernels only read it.
WHOLE_ROIS = np.zeros((0, 5), np.int64)


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
