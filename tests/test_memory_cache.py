"""The memory cache (``cpu/_pool.py``, ``roipool.set_memory_cache``): freed large outputs serve later
calls, memory still in use never does, and every op overwrites the stale values of reused memory."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

# the checks here mix arrays and tensors: without torch the module is skipped, not an error
torch = pytest.importorskip("torch")

import roipool  # noqa: E402
from roipool.cpu import _pool  # noqa: E402
from roipool.cpu._simd import HUGE_FROM, HUGE_PAGE, empty_lines  # noqa: E402

MiB = 1 << 20


@pytest.fixture
def cache():
    """A fresh cache of 1 GiB for the test; the previous limit afterwards."""
    previous = roipool.set_memory_cache(0)  # empties it
    roipool.set_memory_cache(1 << 30)
    yield
    roipool.set_memory_cache(0)
    roipool.set_memory_cache(previous)


def _address(a) -> int:
    return a.data_ptr() if isinstance(a, torch.Tensor) else a.ctypes.data


def _map(channels=64, size=128, seed=0, count=100):
    """A map of 4 MiB or more (channels * size**2 float32) and ``count`` boxes, four of them outside the
    map or degenerate: 100 outputs of 64 x 14 x 14 are 5 MB."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, channels, size, size)).astype(np.float32)
    xy = rng.uniform(0, size - 8, (count, 2))
    wh = rng.uniform(1, size / 2, (count, 2))
    boxes = np.column_stack([np.zeros(count), xy, xy + wh]).astype(np.float32)
    # bins with no cells or samples must be written too (zeros), not left as they were
    boxes[:4, 1:] = [[size + 20, size + 20, size + 40, size + 40], [-50, -50, -30, -30], [9, 9, 3, 3], [5, 5, 5, 5]]
    return x, boxes


def test_a_freed_output_serves_the_next_call_and_a_live_one_never_does(cache):
    x, boxes = _map()
    first = roipool.roi_align(x, boxes, 14, 1.0, sampling_ratio=2)
    assert first.nbytes >= HUGE_FROM
    kept = first.copy()
    second = roipool.roi_align(x, boxes, 14, 1.0, sampling_ratio=2)
    assert not np.shares_memory(first, second)  # first is still alive
    np.testing.assert_array_equal(first, kept)  # and untouched
    view, address = first[3:5], _address(first)
    del first
    third = roipool.roi_align(x, boxes, 14, 1.0, sampling_ratio=2)
    assert not np.shares_memory(view, third)  # a view keeps the memory in use
    np.testing.assert_array_equal(view, kept[3:5])
    del view
    fourth = roipool.roi_align(x, boxes, 14, 1.0, sampling_ratio=2)
    assert _address(fourth) == address
    np.testing.assert_array_equal(fourth, kept)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("op", ["roi_align", "roi_pool"])
def test_a_half_precision_map_is_widened_and_its_output_narrowed_into_kept_memory(op, channels_last, dtype, cache):
    """A large half-precision map goes to the float32 kernels and back through memory the cache keeps
    (``_library.of_dtype``), not ``.to``'s fresh pages: the same values and memory format as widening
    with ``.to`` and narrowing the float32 call's output, the narrowed output in roipool's memory (on
    a huge page), which the cache takes back when it is dropped. (``roi_align``'s kernel reads a
    channels-last one as it is, ``tests/test_half_maps.py``: its output is in that memory too.)"""
    x, boxes = _map(channels=72)  # 72 x 128 x 128 float32 is 4.5 MiB, 100 outputs of 72 x 14 x 14 in half 2.8 MB
    xt = torch.from_numpy(x).to(dtype)
    if channels_last:
        xt = xt.contiguous(memory_format=torch.channels_last)
    rt = torch.from_numpy(boxes)
    call = getattr(roipool, op)
    kw = {"sampling_ratio": 2} if op == "roi_align" else {}
    boxes_many = torch.cat([rt] * 2)  # 200 outputs: 5.6 MB in half, above HUGE_FROM
    out = call(xt, boxes_many, 14, 1.0, **kw)
    assert out.numel() * out.element_size() >= HUGE_FROM
    expected = call(xt.to(torch.float32), boxes_many, 14, 1.0, **kw).to(dtype)
    assert out.dtype == dtype and out.stride() == expected.stride()
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert torch.equal(out.view(torch.int16), expected.view(torch.int16))  # the same bits, NaN-free
    assert out.data_ptr() % HUGE_PAGE == 0  # roipool's memory; .to's would start anywhere
    held, size = roipool.get_memory_cache()[1], out.numel() * out.element_size()
    del out
    assert roipool.get_memory_cache()[1] >= held + size
    again = call(xt, boxes_many, 14, 1.0, **kw)  # from kept memory, stale values overwritten
    assert torch.equal(again.view(torch.int16), expected.view(torch.int16))


@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("op", ["roi_align", "roi_pool", "prroi_pool"])
def test_a_float16_array_is_widened_and_its_output_narrowed_by_all_threads_into_kept_memory(op, nhwc, cache):
    """NumPy's float16 goes to the float32 kernels and back through ``_tiles.as_dtype``: the values and
    memory order of ``astype``, the narrowed output in roipool's memory (on a huge page). (The
    ``roi_align`` and ``roi_pool`` kernels read and write float16 themselves where the CPU converts
    it, ``tests/test_half_maps.py``: the same bits, and the output in that memory too.)"""
    x, boxes = _map(channels=72)
    x16 = x.astype(np.float16)
    kw = {"layout": "nhwc"} if nhwc else {}
    if nhwc:
        x16 = np.ascontiguousarray(x16.transpose(0, 2, 3, 1))
    boxes = np.concatenate([boxes] * 2)  # 200 outputs of 72 x 14 x 14 in float16: 5.6 MB
    call = getattr(roipool, op)
    out = call(x16, boxes, 14, 1.0, **kw)
    assert out.dtype == np.float16 and out.nbytes >= HUGE_FROM and out.flags.c_contiguous
    expected = call(x16.astype(np.float32), boxes, 14, 1.0, **kw).astype(np.float16)
    np.testing.assert_array_equal(out.view(np.uint16), expected.view(np.uint16))
    assert _address(out) % HUGE_PAGE == 0  # roipool's memory; astype's would start anywhere


@pytest.mark.parametrize("layout", ["c", "nhwc", "strided"])
def test_as_dtype_gives_astype_values_and_memory_order(layout, cache):
    from roipool.cpu._tiles import as_dtype

    x = np.random.default_rng(4).standard_normal((2, 64, 128, 140)).astype(np.float32)  # 4.6 MB in float16
    x[0, 0, 0, :4] = [np.nan, np.inf, -np.inf, 70000.0]  # the overflow rounds to inf in float16
    a = {"c": x, "nhwc": np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2), "strided": x[:, ::2]}[
        layout
    ]
    for dtype in (np.float16, np.float64):
        got, want = as_dtype(a, dtype), a.astype(dtype)
        assert got.dtype == want.dtype and got.strides == want.strides
        np.testing.assert_array_equal(got, want)
        assert (_address(got) % HUGE_PAGE == 0) == (layout != "strided")
    assert as_dtype(a, np.float32) is a
    small = x[:, :1, :8, :8]
    assert as_dtype(small, np.float16).flags.c_contiguous == small.astype(np.float16).flags.c_contiguous


def test_freed_memory_comes_back_to_the_same_size_of_call(cache):
    x, boxes = _map()
    out = roipool.roi_pool(x, boxes, 14, 1.0)
    address, size = _address(out), _kept_size(out)
    assert roipool.get_memory_cache()[0] == 1 << 30
    del out
    held = roipool.get_memory_cache()[1]  # the output's buffer, and the map copy's if there was one
    assert held >= size
    again = roipool.roi_pool(x, boxes, 14, 1.0)
    assert _address(again) == address
    assert roipool.get_memory_cache()[1] == held - size


def test_tensors_return_their_memory_when_the_last_reference_goes(cache):
    x, boxes = _map()
    xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
    bt = torch.from_numpy(boxes)
    y = roipool.roi_align(xt, bt, 14, 1.0, sampling_ratio=2)
    address, kept = y.data_ptr(), y.clone()
    z = roipool.roi_align(xt, bt, 14, 1.0, sampling_ratio=2)
    assert z.data_ptr() != address
    torch.testing.assert_close(y, kept, rtol=0, atol=0)
    latest = z.data_ptr()
    del y, z
    w = roipool.roi_align(xt, bt, 14, 1.0, sampling_ratio=2)
    assert w.data_ptr() == latest  # of two equal buffers, the last kept serves
    torch.testing.assert_close(w, kept, rtol=0, atol=0)
    assert w.is_contiguous(memory_format=torch.channels_last)


def _ops():
    """(name, call) for every op: forwards on outputs of 4 MiB or more, backwards on maps of 4 MiB or more;
    each call returns a tuple of arrays (or tensors)."""
    x, boxes = _map()
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    g = np.random.default_rng(1).standard_normal((100, 64, 14, 14)).astype(np.float32)
    gh = np.ascontiguousarray(g.transpose(0, 2, 3, 1))
    rot = np.column_stack([boxes[:, 0], (boxes[:, 1:3] + boxes[:, 3:5]) / 2, abs(boxes[:, 3:5] - boxes[:, 1:3])])
    rot = np.column_stack([rot, np.linspace(-3, 3, 100)]).astype(np.float32)
    # position-sensitive: 22 x 7 x 7 channels; 1000 outputs of 22 x 7 x 7 and the gradient are 4.3 MB
    xp, bp = _map(channels=22 * 49, size=32, seed=2, count=1000)
    gp = np.random.default_rng(3).standard_normal((1000, 22, 7, 7)).astype(np.float32)
    _, argmax = roipool.roi_pool_with_argmax(x, boxes, 14, 1.0)
    xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
    bt = torch.from_numpy(boxes)

    def torch_step(op, **kw):
        def call():
            leaf = xt.detach().requires_grad_()
            y = op(leaf, bt, 14, 1.0, **kw)
            y.backward(torch.from_numpy(g).contiguous(memory_format=torch.channels_last))
            return y.detach(), leaf.grad

        return call

    return [
        ("roi_pool", lambda: (roipool.roi_pool(x, boxes, 14, 1.0),)),
        ("roi_pool nhwc", lambda: (roipool.roi_pool(xh, boxes, 14, 1.0, layout="nhwc"),)),
        ("roi_pool_with_argmax", lambda: roipool.roi_pool_with_argmax(x, boxes, 14, 1.0)),
        ("roi_pool_backward", lambda: (roipool.roi_pool_backward(g, argmax, boxes, x.shape),)),
        ("roi_align", lambda: (roipool.roi_align(x, boxes, 14, 1.0, sampling_ratio=2),)),
        ("roi_align nhwc", lambda: (roipool.roi_align(xh, boxes, 14, 1.0, sampling_ratio=2, layout="nhwc"),)),
        ("roi_align_backward", lambda: (roipool.roi_align_backward(g, boxes, x.shape, 14, 1.0, 2),)),
        (
            "roi_align_backward nhwc",
            lambda: (roipool.roi_align_backward(gh, boxes, xh.shape, 14, 1.0, 2, layout="nhwc"),),
        ),
        ("roi_align_rotated", lambda: (roipool.roi_align_rotated(x, rot, 14, 1.0, 2),)),
        ("roi_align_rotated_backward", lambda: (roipool.roi_align_rotated_backward(g, rot, x.shape, 14, 1.0, 2),)),
        ("prroi_pool", lambda: (roipool.prroi_pool(x, boxes, 14, 1.0),)),
        ("prroi_pool_backward", lambda: (roipool.prroi_pool_backward(g, boxes, x.shape, 14, 1.0),)),
        ("ps_roi_pool", lambda: (roipool.ps_roi_pool(xp, bp, 7, 1.0),)),
        ("ps_roi_align", lambda: (roipool.ps_roi_align(xp, bp, 7, 1.0, 2),)),
        ("ps_roi_pool_backward", lambda: (roipool.ps_roi_pool_backward(gp, bp, xp.shape, 7, 1.0),)),
        ("ps_roi_align_backward", lambda: (roipool.ps_roi_align_backward(gp, bp, xp.shape, 7, 1.0, 2),)),
        ("torch roi_align step", torch_step(roipool.roi_align, sampling_ratio=2)),
        ("torch roi_pool step", torch_step(roipool.roi_pool)),
    ]


@pytest.mark.parametrize("name", [name for name, _ in _ops()])
def test_every_op_overwrites_the_stale_values_of_reused_memory(name, cache):
    """Fresh pages are zeros; kept ones hold the last output's values. Poisoned kept buffers (every byte
    0xFF: NaN, or -1 as an int) of each output's size must give the same bits as new memory."""
    call = dict(_ops())[name]
    roipool.set_memory_cache(0)
    expected = call()
    roipool.set_memory_cache(1 << 30)
    large = [a for a in expected if a.nbytes >= HUGE_FROM]
    assert large, f"{name}: no output of 4 MiB or more, nothing to test"
    poisoned = []
    for a in large:
        for _ in range(3):  # three each: a map copy or a staging array of a similar size may take some
            p = empty_lines((a.nbytes,), np.uint8)
            p.fill(0xFF)
            poisoned.append(p)
    addresses = {p.ctypes.data for p in poisoned}
    del p, poisoned
    got = call()
    for a, b in zip(expected, got, strict=True):
        if isinstance(a, torch.Tensor):
            assert a.stride() == b.stride()
            a, b = a.numpy(), b.numpy()
        assert a.strides == b.strides
        np.testing.assert_array_equal(b, a)
    reused = [b for b in got if _address(b) in addresses]
    assert reused, f"{name}: no output took the poisoned memory, nothing was tested"


def _kept_size(a) -> int:
    """Bytes of the buffer behind a large ``empty_lines`` array (its lease's)."""
    while not isinstance(a, _pool._Lease):
        a = a.base
    return a.buffer.size


def test_the_limit_drops_the_longest_unused_first_and_zero_frees_all(cache):
    arrays = [empty_lines((n * MiB,), np.uint8) for n in (8, 16, 24)]
    sizes = [_kept_size(a) for a in arrays]
    assert sizes == [(n + 2) * MiB for n in (8, 16, 24)]  # whole huge pages, and one to align
    for i in range(3):  # kept in this order: 8, 16, then 24 MiB
        arrays[i] = None
    assert roipool.get_memory_cache()[1] == sum(sizes)
    assert roipool.set_memory_cache(sizes[1] + sizes[2]) == 1 << 30  # the oldest (8 MiB) goes
    assert roipool.get_memory_cache() == (sizes[1] + sizes[2], sizes[1] + sizes[2])
    big = empty_lines((4 * sizes[2],), np.uint8)  # larger than the whole limit: never kept
    del big
    assert roipool.get_memory_cache()[1] == sizes[1] + sizes[2]
    assert roipool.set_memory_cache(0) == sizes[1] + sizes[2]
    assert roipool.get_memory_cache() == (0, 0)
    kept_nothing = empty_lines((8 * MiB,), np.uint8)
    del kept_nothing
    assert roipool.get_memory_cache() == (0, 0)


def test_a_kept_buffer_serves_only_requests_that_leave_at_most_a_quarter_of_it_unused(cache):
    large = empty_lines((64 * MiB,), np.uint8)  # a buffer of 66 MiB: requests of 49.5 MiB or more
    address = large.ctypes.data
    del large
    for n in (8, 46):  # buffers of 10 and 48 MiB: new ones
        small = empty_lines((n * MiB,), np.uint8)
        assert small.ctypes.data != address
        del small
    assert roipool.get_memory_cache()[1] >= 66 * MiB
    near = empty_lines((48 * MiB,), np.uint8)  # a buffer of 50 MiB: the kept one
    assert near.ctypes.data == address
    assert near.ctypes.data % HUGE_PAGE == 0


def test_zeroed_arrays_from_kept_memory_are_zeros(cache):
    dirty = empty_lines((8 * MiB + 12345,), np.uint8)
    dirty.fill(7)
    address = dirty.ctypes.data
    del dirty
    z = empty_lines((8 * MiB + 12345,), np.uint8, zeros=True)
    assert z.ctypes.data == address  # the kept buffer, zeroed
    assert not z.any()
    roipool.set_memory_cache(0)
    assert not empty_lines((8 * MiB,), np.uint8, zeros=True).any()  # a new one


def test_calls_from_many_threads_get_their_own_memory(cache):
    x, boxes = _map()
    expected = roipool.roi_align(x, boxes, 14, 1.0, sampling_ratio=2)

    def work(i):
        ok = True
        for _ in range(6):
            out = roipool.roi_align(x, boxes, 14, 1.0, sampling_ratio=2)
            out2 = roipool.roi_pool(x, boxes, 14, 1.0)
            ok &= np.array_equal(out, expected) and not np.shares_memory(out, out2)
        return ok

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(8)))


@pytest.mark.parametrize("value", ["-5", "1.5", "lots"])
def test_a_bad_environment_value_is_refused_by_name(value):
    env = dict(os.environ, ROIPOOL_MEMORY_CACHE=value)
    code = "import roipool; roipool.get_memory_cache()"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode != 0
    assert "ROIPOOL_MEMORY_CACHE must be a whole number of bytes" in run.stderr


def test_the_environment_sets_the_limit():
    env = dict(os.environ, ROIPOOL_MEMORY_CACHE="12345")
    code = "import roipool; print(roipool.get_memory_cache())"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "(12345, 0)"


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.0, TypeError), (True, TypeError), ("1", TypeError)])
def test_set_memory_cache_refuses_bad_limits_by_name(bad, error, cache):
    with pytest.raises(error, match="max_bytes"):
        roipool.set_memory_cache(bad)
    assert roipool.get_memory_cache()[0] == 1 << 30


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_starts_with_an_empty_cache(cache):
    kept = empty_lines((8 * MiB,), np.uint8)
    del kept
    assert roipool.get_memory_cache()[1] > 0
    pid = os.fork()
    if pid == 0:  # the child: only Python here, then leave at once
        os._exit(0 if roipool.get_memory_cache()[1] == 0 and _pool._lock.acquire(blocking=False) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
