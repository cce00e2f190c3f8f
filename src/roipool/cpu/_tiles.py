"""Moving a kernel's ``(rows, channels)`` tile to and from the caller's arrays, in either memory format.

The kernels compute a RoI's bins (or an image's cells) for one block of
channels as a tile in L1 or L2: row ``r`` holds the block's channels of bin
(or cell) ``r``, ``stride`` values apart. The caller's array is a flat
C-contiguous buffer holding, for each item (a RoI, or an image), either

- ``(channels, rows)``: NCHW, the contiguous layout; a tile is transposed
  on the way (``_simd.transpose_tile``), or
- ``(rows, channels)``: channels-last (``nhwc``); each tile row is one
  contiguous run of ``cw`` channels, copied as it is.

Nothing here rounds or reorders a value: a tile moved either way holds the
same numbers, so a kernel's results are bit-identical in both formats.
"""

from __future__ import annotations

import numba
import numpy as np

from ._machine import half_conversions
from ._parallel import launch, share, threads
from ._simd import (
    HUGE_FROM,
    VECTOR_BYTES,
    ZERO,
    borrowed,
    copy_to_lines,
    empty_lines,
    move,
    scratch_lines,
    transpose_tile,
    vector_lanes,
    vmove,
)


@numba.njit(nogil=True, inline="always", fastmath=False)
def copy_run(src, s, dst, d, n):
    """``dst[d : d + n] = src[s : s + n]`` a vector at a time (a slice assignment would first
    check the two arrays for overlap, and copy through a temporary if they might); between
    half-precision bits and float32 converted (``_simd.vmove``)."""
    lanes = vector_lanes(src)
    i = 0
    while i + lanes <= n:
        vmove(src, s + i, dst, d + i)
        i += lanes
    for j in range(i, n):
        move(src, s + j, dst, d + j)


@numba.njit(nogil=True, fastmath=False)
def load_tile(src, item, channels, c0, rows, cw, tile, stride, nhwc):
    """``tile[r * stride + c]`` <- channel ``c0 + c`` of row ``r`` of item ``item`` of ``src``, ``r < rows``, ``c < cw``."""
    load_rows(src, item, channels, c0, rows, ZERO, rows, cw, tile, stride, nhwc)


@numba.njit(nogil=True, fastmath=False)
def load_rows(src, item, channels, c0, rows, r0, r1, cw, tile, stride, nhwc):
    """:func:`load_tile` of rows ``r0 <= r < r1`` only (of an item of ``rows`` rows), into the same places."""
    if nhwc:
        for r in range(r0, r1):
            copy_run(src, (item * rows + r) * channels + c0, tile, r * stride, cw)
    else:
        transpose_tile(src, (item * channels + c0) * rows + r0, rows, cw, r1 - r0, tile, r0 * stride, stride)


@numba.njit(nogil=True)
def store_tile(tile, stride, rows, cw, dst, item, channels, c0, nhwc):
    """Channel ``c0 + c`` of row ``r`` of item ``item`` of ``dst`` <- ``tile[r * stride + c]``, ``r < rows``, ``c < cw``."""
    store_rows(tile, ZERO, stride, rows, ZERO, rows, cw, dst, item, channels, c0, nhwc)


@numba.njit(nogil=True)
def store_rows(tile, t, stride, rows, r0, r1, cw, dst, item, channels, c0, nhwc):
    """:func:`store_tile` of rows ``r0 <= r < r1`` only (of an item of ``rows`` rows), taken from
    ``tile[t + (r - r0) * stride + c]``: a backward task's band of map rows."""
    if nhwc:
        for r in range(r0, r1):
            copy_run(tile, t + (r - r0) * stride, dst, (item * rows + r) * channels + c0, cw)
    else:
        transpose_tile(tile, t, stride, r1 - r0, cw, dst, (item * channels + c0) * rows + r0, rows)


@numba.njit(nogil=True)
def store_tile_lines(tile, stride, rows, cw, stage, dst, item, channels, c0, nhwc):
    """As :func:`store_tile`; in NCHW through ``stage`` (``>= rows * cw`` values, in L1), so that
    ``dst`` is written as whole aligned cache lines (``_simd.copy_to_lines``)."""
    if nhwc:
        store_tile(tile, stride, rows, cw, dst, item, channels, c0, nhwc)
    else:
        transpose_tile(tile, ZERO, stride, rows, cw, stage, ZERO, rows)
        copy_to_lines(stage, dst, (item * channels + c0) * rows, cw * rows)


def channels_first_in_place(a: np.ndarray) -> None:
    """Each item of ``a (items, rows, channels)`` (C-contiguous) replaced by its transpose: the
    same memory then holds ``(items, channels, rows)``, an NCHW output written channels-last.

    A task takes a run of items; each is copied into the task's own scratch
    (``rows * channels`` values, in L2) and transposed back into its place,
    ``lanes x lanes`` in registers: the copy has just brought the item's cache
    lines in, so they are written without being fetched again. Only values
    move, so the bits are those of ``a``.
    """
    if a.size:
        launch(_channels_first, a, min(a.shape[0], 8 * threads()), values=a.size)


@numba.njit(cache=True, nogil=True)
def _channels_first(a, tasks, part, parts):
    (a,) = borrowed((a,))
    items, rows, channels = a.shape
    af = a.reshape(-1)
    n = rows * channels
    for task in share(tasks, part, parts):
        scratch = scratch_lines(n, a)
        for i in range(task * items // tasks, (task + 1) * items // tasks):
            copy_run(af, i * n, scratch, 0, n)
            transpose_tile(scratch, ZERO, channels, rows, channels, af, i * n, rows)


def channels_moved_last(a: np.ndarray) -> np.ndarray:
    """The view ``np.moveaxis(a, 1, -1)`` of ``a (items, channels, *spatial)``, by one ``transpose``:
    timed alone after an idle spell on a 2-core AMD EPYC, ``moveaxis`` took 77 us, ``transpose`` 18."""
    return a.transpose(0, *range(2, a.ndim), 1)


def memory_order(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(view, nhwc)`` of a caller's ``(items, channels, *spatial)`` array for the kernels.

    ``a`` must be C-contiguous either as it is (``view`` is ``a``, ``nhwc``
    False) or with its channels moved last (``view`` is that channels-last
    view, ``nhwc`` True). An array that is both (one channel, or one spatial
    element) is taken as it is: its bytes are the same either way.
    """
    if a.flags.c_contiguous:
        return a, False
    moved = channels_moved_last(a)
    if moved.flags.c_contiguous:
        return moved, True
    raise ValueError("internal: a kernel's output must be C-contiguous in NCHW or channels-last order")


def bins_order(a: np.ndarray, copy: bool = False) -> tuple[np.ndarray, bool]:
    """``(view, nhwc)`` of a ``(K, C, PH, PW)`` array as the kernels index it: ``(K, C, PH * PW)``,
    or ``(K, PH * PW, C)`` when ``nhwc`` (:func:`memory_order`). With ``copy``, an array in
    neither order is read through a C-contiguous copy instead of refused."""
    k, channels = a.shape[:2]
    if copy and not a.flags.c_contiguous and not channels_moved_last(a).flags.c_contiguous:
        a = np.ascontiguousarray(a)
    view, nhwc = memory_order(a)
    return (view.reshape(k, -1, channels), True) if nhwc else (view.reshape(k, channels, -1), False)


def bins_as(a: np.ndarray, nhwc: bool) -> np.ndarray:
    """A ``(K, C, PH, PW)`` array as the kernels index it in the given order, ``(K, C, PH * PW)``
    or, ``nhwc``, ``(K, PH * PW, C)``: a view when it is C-contiguous that way, else a copy."""
    k, channels = a.shape[:2]
    if nhwc:
        return np.ascontiguousarray(channels_moved_last(a)).reshape(k, -1, channels)
    return np.ascontiguousarray(a).reshape(k, channels, -1)


@numba.njit(cache=True, nogil=True)
def nchw_to_nhwc(src, channels, plane, dst, cells, part, parts):
    """``dst`` (flat ``(N, H * W, C)``) <- the transpose of each image of ``src`` (flat ``(N, C, H * W)``).

    A task takes ``cells`` consecutive cells of an image, all channels: it
    transposes a vector's worth of channel planes (16 float32) at a time,
    and writes one compact, contiguous ``(cells, C)`` piece of ``dst``.
    """
    src, dst = borrowed((src, dst))
    lanes = vector_lanes(src)
    images = src.size // max(channels * plane, 1)
    pieces = (plane + cells - 1) // cells
    for item in share(images * pieces, part, parts):
        n = item // pieces
        p0 = (item % pieces) * cells
        cols = min(cells, plane - p0)
        for c0 in range(0, channels, lanes):
            rows = min(lanes, channels - c0)
            transpose_tile(
                src,
                (n * channels + c0) * plane + p0,
                plane,
                rows,
                cols,
                dst,
                (n * plane + p0) * channels + c0,
                channels,
            )


def copy_cells(channels: int, itemsize: int) -> int:
    """Cells per task of the NCHW -> NHWC copy: at least 64, and at least 64 KiB of output.

    Measured on a 56 MB ``(1, 256, 200, 272)`` float32 map (Cascade Lake, 2
    threads, warm output): 13 ms with 64 cells a task against 19 ms with
    one task per 16 channels (each of which wrote one cache line of every
    cell, across the whole output) and 21 ms with 32 cells; 64 channels
    wanted 256 cells (4 against 6 ms), 512 and 1024 channels anything from 64.
    """
    lanes = VECTOR_BYTES // itemsize
    want = max(64, 65536 // max(channels * itemsize, 1))
    return -(-want // lanes) * lanes


def _convert_part(src, dst, part, parts):
    """``dst[lo:hi] = src[lo:hi]``, cast, for this part's share of the flat arrays (NumPy's cast
    releases the GIL, so the parts run side by side)."""
    lo, hi = src.size * part // parts, src.size * (part + 1) // parts
    np.copyto(dst[lo:hi], src[lo:hi], casting="unsafe")


def reads_half(dtype) -> np.dtype | None:
    """The dtype of the bits (``_simd.HALF_BITS``) in which the kernels that read 16-bit floats
    (``roi_align``'s forward and backward, ``roi_pool``'s forwards) take a map, output or
    gradient of the 16-bit float ``dtype`` (``"bfloat16"`` or NumPy's float16), or None where
    they compute only from a float32 copy here. float16 needs the CPU's own conversions on x86
    (F16C, which every AVX2 CPU has): LLVM would otherwise call a runtime function that Numba
    does not link."""
    if getattr(dtype, "itemsize", 2) != 2:  # a NumPy dtype of another size: no str() (2 us a call)
        return None
    if str(dtype) == "bfloat16":
        return np.dtype(np.int16)
    if str(dtype) == "float16" and half_conversions():
        return np.dtype(np.uint16)
    return None


def as_dtype(a: np.ndarray, dtype) -> np.ndarray:
    """``a.astype(dtype, copy=False)``: ``a`` itself when already of ``dtype``, else a copy in the
    same memory order (``order="K"``), with the same values.

    A large copy (``_simd.HUGE_FROM`` bytes or more) of a C-contiguous or channels-last
    ``(N, C, H, W)`` array is cast by all threads into ``empty_lines`` memory, which roipool's
    memory cache keeps between calls. NumPy's ``astype`` casts on one thread into fresh pages:
    widening a ``maskrcnn`` float16 map and narrowing its ``roi_align`` output took 150 ms of a
    call whose float32 kernels take 38 (``docs/benchmarks.md``).
    """
    dtype = np.dtype(dtype)
    if a.dtype == dtype:
        return a
    if a.size * dtype.itemsize < HUGE_FROM:
        return a.astype(dtype)
    if a.flags.c_contiguous:
        order, back = None, None
    elif a.ndim == 4 and a.transpose(0, 2, 3, 1).flags.c_contiguous:
        order, back = (0, 2, 3, 1), (0, 3, 1, 2)
    else:
        return a.astype(dtype)
    src = a if order is None else a.transpose(order)
    dst = empty_lines(src.shape, dtype)
    launch(_convert_part, src.reshape(-1), dst.reshape(-1), values=src.size)
    return dst if back is None else dst.transpose(back)


#: The dtypes :func:`channels_last_copy` transposes on all threads (native byte order).
_TRANSPOSED = tuple(np.dtype(t) for t in (np.float32, np.float64, np.int16, np.uint16))


def channels_last_copy(x: np.ndarray, dtype=None) -> np.ndarray:
    """A new C-contiguous ``(N, H, W, C)`` array of ``dtype`` (default ``x``'s) holding ``x (N, C, H, W)``.

    A C-contiguous float32 or float64 ``x`` (or half-precision bits, ``_simd.HALF_BITS``)
    already of ``dtype`` is transposed by all threads, 16 x 16 blocks in registers (NumPy's
    own transposing copy runs on one thread: 31 ms against 16 ms for a 56 MB ``maskrcnn`` map
    here, into fresh memory); anything else goes through NumPy.
    """
    dtype = x.dtype if dtype is None else np.dtype(dtype)
    if not (x.flags.c_contiguous and x.dtype == dtype and dtype in _TRANSPOSED and x.size):
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1), dtype=dtype)
    n, c, h, w = x.shape
    out = empty_lines((n, h, w, c), dtype)
    launch(nchw_to_nhwc, x.reshape(-1), c, h * w, out.reshape(-1), copy_cells(c, x.itemsize), values=x.size)
    return out
