"""Arrays that start on a 64-byte cache line: ``cpu._simd.empty_lines`` and ``scratch_lines``, and the
outputs and map copies allocated through them (NumPy starts a large array 16 bytes into a line);
results under ``_numpy._layout.LINES_FROM`` bytes are NumPy's own."""

from __future__ import annotations

import mmap
import os
import sys

import numba
import numpy as np
import pytest

# the checks here mix arrays and tensors: without torch the module is skipped, not an error
torch = pytest.importorskip("torch")

import roipool  # noqa: E402
from roipool._numpy import _layout  # noqa: E402
from roipool._numpy._layout import LINES_FROM  # noqa: E402
from roipool.cpu._simd import HUGE_FROM, HUGE_PAGE, VECTOR_BYTES, advise_huge_pages, empty_lines, scratch_lines  # noqa: E402
from roipool.cpu._tiles import channels_last_copy  # noqa: E402
from roipool.cpu.roi_align import blocked_map  # noqa: E402


def _starts_a_line(a) -> bool:
    address = a.data_ptr() if isinstance(a, torch.Tensor) else a.ctypes.data
    return address % VECTOR_BYTES == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.uint8])
@pytest.mark.parametrize("shape", [(0,), (3,), (5, 7), (2, 256, 50, 68), (1, 0, 4, 4)])
@pytest.mark.parametrize("zeros", [False, True])
def test_empty_lines_is_a_fresh_contiguous_array_on_a_line(shape, dtype, zeros):
    a = empty_lines(shape, dtype, zeros)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    assert _starts_a_line(a) or a.size == 0
    if zeros:
        assert not a.any()
    a[...] = 1  # every element is its own memory
    assert a.sum() == a.size


def test_empty_lines_takes_an_int_and_refuses_negative_dimensions():
    assert empty_lines(5, np.float32).shape == (5,)
    with pytest.raises(ValueError, match="negative"):
        empty_lines((3, -1), np.float32)


@pytest.mark.parametrize("nbytes", [HUGE_FROM, HUGE_FROM + 4, 3 * HUGE_PAGE + 12_345 * 8, 102_760_448])
@pytest.mark.parametrize("zeros", [False, True])
def test_large_arrays_start_on_a_huge_page_and_their_buffer_runs_to_the_next(nbytes, zeros, no_memory_cache):
    """From HUGE_FROM bytes (where NumPy asks for huge pages) the array starts on a 2 MiB boundary and
    its buffer reaches the 2 MiB boundary after its end, so every page it uses can be a huge page
    (a new buffer: with the memory cache on, a kept one may be longer, tests/test_memory_cache.py)."""
    a = empty_lines((nbytes // 4,), np.float32, zeros)
    start, base = a.ctypes.data, _buffer(a)
    assert start % HUGE_PAGE == 0
    end_of_buffer = base.ctypes.data + base.nbytes
    assert end_of_buffer >= start + -(-a.nbytes // HUGE_PAGE) * HUGE_PAGE
    assert base.nbytes <= a.nbytes + 2 * HUGE_PAGE  # the slack is at most two huge pages
    if zeros:
        assert not a.any()
    below = empty_lines((HUGE_FROM // 4 - 16,), np.float32)  # below it, a cache line's slack as before
    assert below.ctypes.data % VECTOR_BYTES == 0 and _buffer(below).nbytes == below.nbytes + VECTOR_BYTES


def _buffer(a):
    """The array that owns ``a``'s memory (through the lease of a large one, ``cpu._pool``)."""
    while a.base is not None:
        a = a.base
        a = getattr(a, "buffer", a)
    return a


@pytest.fixture
def no_memory_cache():
    previous = roipool.set_memory_cache(0)
    yield
    roipool.set_memory_cache(previous)


def test_empty_lines_arrays_do_not_share_memory():
    a, b = empty_lines((1000,), np.float32), empty_lines((1000,), np.float32)
    assert not np.shares_memory(a, b)


@numba.njit
def _scratch(n, like, zeros):
    a = scratch_lines(n, like, zeros)
    return a.ctypes.data % VECTOR_BYTES, a


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 17, 4096, 300_001])
def test_scratch_lines_starts_a_line(n, dtype):
    for zeros in (False, True):
        offset, a = _scratch(n, np.zeros(1, dtype), zeros)
        assert a.shape == (n,) and a.dtype == dtype
        assert offset == 0 or n == 0
        if zeros:
            assert not a.any()


def test_outputs_and_map_copies_start_on_a_line():
    """Large enough (MBs) that NumPy's own allocation would start 16 bytes into a line."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 256, 40, 48)).astype(np.float32)
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    boxes = np.array([[0, 1.0, 2.0, 30.0, 20.0]] * 64, np.float32)
    for out in (
        roipool.roi_align(x, boxes, 7, 1.0, sampling_ratio=2),
        roipool.roi_align(xh, boxes, 7, 1.0, sampling_ratio=2, layout="nhwc"),
        roipool.roi_pool(x, boxes, 7, 1.0),
        roipool.roi_pool_with_argmax(x, boxes, 7, 1.0)[1],
        roipool.prroi_pool(xh, boxes, 7, 1.0, layout="nhwc"),
        roipool.roi_align(torch.from_numpy(x), torch.from_numpy(boxes), 7, 1.0, sampling_ratio=2),
        roipool.roi_align(
            torch.from_numpy(x).contiguous(memory_format=torch.channels_last), torch.from_numpy(boxes), 7, 1.0
        ),
        channels_last_copy(x),
        blocked_map(x),
    ):
        assert _starts_a_line(out)


@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("zeros", [False, True])
def test_small_results_are_numpys_own_and_large_ones_start_a_line(nhwc, zeros):
    for channels, expect_line in ((LINES_FROM // (4 * 64) - 1, False), (LINES_FROM // (4 * 64), True)):
        shape = (2, channels, 4, 8)  # float32: just under LINES_FROM bytes, then exactly
        a = _layout.empty(shape, np.float32, nhwc, zeros)
        assert a.shape == shape and a.dtype == np.float32
        assert (np.moveaxis(a, 1, -1) if nhwc else a).flags.c_contiguous
        if expect_line:
            assert _starts_a_line(a)
        else:
            own = a.base if nhwc else a  # the channels-last result is a view of it
            assert own.base is None  # NumPy's own allocation, not a view into a longer buffer
        if zeros:
            assert not a.any()


def test_huge_pages_are_asked_for_on_large_arrays_only_and_nothing_moves():
    small = np.arange(1000, dtype=np.float32)
    assert not advise_huge_pages(small) and not advise_huge_pages(np.empty(0, np.float32))
    large = np.arange(3 * HUGE_FROM // 4, dtype=np.float32)[1:]  # 12 MiB from an address off any page boundary
    want = large.copy()
    advised = advise_huge_pages(large)
    if sys.platform.startswith("linux") and os.path.exists(THP):
        assert advised
    assert np.array_equal(large, want) and np.array_equal(small, np.arange(1000, dtype=np.float32))


THP = "/sys/kernel/mm/transparent_hugepage/enabled"


@pytest.mark.skipif(
    not os.path.exists(THP) or "[never]" in open(THP).read(), reason="no transparent huge pages on this system"
)
def test_memory_advised_by_us_gets_huge_pages():
    # private anonymous memory that nobody has advised yet (NumPy advises its own large arrays)
    def huge_kib():
        with open("/proc/self/smaps") as smaps:
            return sum(int(line.split()[1]) for line in smaps if line.startswith("AnonHugePages:"))

    memory = mmap.mmap(-1, 16 * HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        a = np.frombuffer(memory, np.float32)
        before = huge_kib()
        assert advise_huge_pages(a)
        a[:] = 1
        assert huge_kib() > before  # at least one of its 16 huge pages (the host may be short of whole ones)
        del a
    finally:
        memory.close()
