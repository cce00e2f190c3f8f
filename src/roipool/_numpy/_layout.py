"""The NumPy ``layout`` argument: channels-last arrays in and out.

With ``layout="nhwc"`` every array argument and result of a NumPy function is
channels-last: a feature map or its gradient ``(N, H, W, C)``, pooled
outputs and their gradients ``(K, pooled_h, pooled_w, C)``, ``input_shape``
``(N, H, W, C)``. The frontends work on the same memory through
``(N, C, H, W)``-shaped views (:func:`map_in`), whose strides the kernels read
in place; results are allocated channels-last (:func:`empty`) and handed back
in the caller's order (:func:`map_out`), without a copy where the kernels
wrote channels-last memory.

A caller that already holds the memory a result should go to (the JAX
callback backend: XLA's own output buffer) lends it with
:func:`results_into`, so that the kernels write there directly.
"""

from __future__ import annotations

import contextlib
import math
import threading

import numpy as np

from .. import _checks
from ..cpu._pool import zero_fill
from ..cpu._simd import empty_lines


def map_in(array, nhwc: bool, name: str, dims: str = "N, H, W, C"):
    """``array`` as given (``nhwc`` False), or the ``(N, C, H, W)``-shaped view of a 4-D channels-last
    array (``dims`` names its dimensions in the message if it has another rank)."""
    if not nhwc or not isinstance(array, np.ndarray):
        return array  # the frontend's own checks name what is wrong with it
    if array.ndim != 4:
        raise ValueError(f"{name} must have 4 dimensions ({dims}) with layout='nhwc', got shape {array.shape}")
    return array.transpose(0, 3, 1, 2)  # np.moveaxis, without its Python-level steps


def pooled_in(array, nhwc: bool, name: str):
    """As :func:`map_in` for a pooled output's gradient (or argmax), ``(K, pooled_h, pooled_w, C)`` when ``nhwc``."""
    return map_in(array, nhwc, name, "K, pooled_h, pooled_w, C")


def shape_in(input_shape, nhwc: bool, name: str = "input_shape"):
    """``input_shape`` as ``(N, C, H, W)``; given ``(N, H, W, C)`` when ``nhwc``."""
    if not nhwc:
        return input_shape
    n, h, w, c = _checks.input_shape_tuple(input_shape, name, "N, H, W, C")
    return n, c, h, w


_lent = threading.local()


@contextlib.contextmanager
def results_into(*arrays: np.ndarray):
    """Within the block, each NCHW result that a NumPy function allocates on this thread
    (:func:`empty`) with the shape and dtype of one of ``arrays`` (C-contiguous, writable) is that
    array itself, each array lent once: the kernels write into it, and the result returned is
    that array (``roi_pool_with_argmax`` takes an output and an argmax).

    A function whose result comes from elsewhere (a small array, a kernel that allocates its own)
    returns a new array as usual: the caller copies it over. Other threads are not affected.
    """
    for array in arrays:
        if not (array.flags.c_contiguous and array.flags.writeable):
            raise ValueError("results_into needs C-contiguous, writable arrays")
    previous = getattr(_lent, "arrays", None)
    _lent.arrays = list(arrays)
    try:
        yield
    finally:
        _lent.arrays = previous


def _lent_array(order, dtype):
    """The array lent for a result of shape ``order`` and ``dtype`` (taken: lent once), or None."""
    lent = getattr(_lent, "arrays", None)
    if lent:
        for i, array in enumerate(lent):
            if array.shape == order and array.dtype == dtype:
                return lent.pop(i)
    return None


#: Results of fewer bytes are NumPy's own arrays, not moved onto a cache line (:func:`empty`).
LINES_FROM = 256 << 10


def empty(shape, dtype, nhwc: bool, zeros: bool = False) -> np.ndarray:
    """An uninitialised (or zeroed) array of logical shape ``shape (A, C, B, D)``, channels-last in
    memory when ``nhwc``; from :data:`LINES_FROM` bytes it starts on a cache line
    (``cpu._simd.empty_lines``).

    A result is written once, so on a small one the line saves less than it
    costs: asking NumPy where its buffer starts took 35 to 70 us of a small
    call after an idle spell on a 2-core AMD EPYC, against well under a
    microsecond of vector stores split over two lines. (The kernels' copies of
    a feature map, whose cells are read many times, always start on a line.)

    Within :func:`results_into` an NCHW result of a lent array's shape and
    dtype is that array (zeroed first when ``zeros``).
    """
    a, c, b, d = shape
    order = (a, b, d, c) if nhwc else (a, c, b, d)
    dtype = np.dtype(dtype)
    lent = None if nhwc else _lent_array(order, dtype)
    if lent is not None:
        if zeros:
            zero_fill(lent)
        return lent
    if math.prod(order) * dtype.itemsize >= LINES_FROM:
        out = empty_lines(order, dtype, zeros)
    else:
        out = (np.zeros if zeros else np.empty)(order, dtype)
    return out.transpose(0, 3, 1, 2) if nhwc else out


def map_out(result: np.ndarray, nhwc: bool) -> np.ndarray:
    """A frontend's ``(A, C, B, D)`` result in the caller's order: ``(A, B, D, C)`` when ``nhwc``
    (C-contiguous: a view of channels-last memory, else a copy)."""
    if not nhwc:
        return result
    moved = result.transpose(0, 2, 3, 1)
    return moved if moved.flags.c_contiguous else np.ascontiguousarray(moved)


def per_image(boxes, rows: np.ndarray) -> list:
    """``rows (K, ...)``, one per box of ``boxes`` given as a list of per-image arrays, split back
    into that list's parts (views): a box gradient in the format of the boxes it was asked for."""
    ends = np.cumsum([len(b) for b in boxes])
    return np.split(rows, ends[:-1]) if len(boxes) else []
