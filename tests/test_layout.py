"""NumPy ``layout="nhwc"``: channels-last arrays in and out, bit for bit the values of the NCHW call.

Every public NumPy function takes ``layout``; with ``"nhwc"`` its maps,
pooled outputs, gradients and ``input_shape`` are channels-last. The
expected values come from the same function on the NCHW arrays (itself
checked against ``roipool.reference`` in the op's own tests), compared byte
for byte.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import roipool
from roipool._numpy import _layout

SHAPE = (2, 147, 9, 11)  # 147 channels: the kernels' full blocks, one-vector and scalar remainders
BOXES = np.array(
    [[0, 1.5, 2.0, 30.0, 25.0], [1, -3, 4, 10, 50], [0, 5, 5, 5.5, 6], [1, 12, 9, 3, 2], [0, 0, 0, 21, 17]],
    np.float64,
)
ROTATED = np.array([[0, 10, 8, 12, 6, 0.3], [1, 5, 5, 20, 3, -2.0], [0, 3, 4, 0, 2, 7.0]], np.float64)

# name, boxes, output_size, keyword arguments; the ps ops need C a multiple of the bins (147 = 3 x 7 x 7)
OPS = [
    ("roi_pool", BOXES, (7, 7), dict(spatial_scale=0.5)),
    ("roi_align", BOXES, (7, 7), dict(spatial_scale=0.5, sampling_ratio=2, aligned=True)),
    ("roi_align", BOXES, (3, 2), dict(spatial_scale=0.25, sampling_ratio=-1, aligned=False)),
    ("ps_roi_pool", BOXES, (7, 7), dict(spatial_scale=0.5)),
    ("ps_roi_align", BOXES, (7, 7), dict(spatial_scale=0.5, sampling_ratio=2)),
    ("roi_align_rotated", ROTATED, (7, 7), dict(spatial_scale=0.5)),
    ("prroi_pool", BOXES, (7, 7), dict(spatial_scale=0.5)),
]
IDS = [f"{name}-{size[0]}x{size[1]}" for name, _, size, _ in OPS]


def nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def same_bytes(got, want_nchw):
    """``got`` is the C-contiguous channels-last form of ``want_nchw``, byte for byte."""
    assert got.flags.c_contiguous and got.dtype == want_nchw.dtype
    assert got.tobytes() == nhwc(want_nchw).tobytes()


def make_map(dtype, seed=0):
    # small whole numbers: exact in every dtype, with ties for the max pooling
    return np.random.default_rng(seed).integers(0, 4, SHAPE).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=str)
@pytest.mark.parametrize("name, boxes, size, kw", OPS, ids=IDS)
def test_forward_and_backward_in_nhwc_match_nchw_bit_for_bit(name, boxes, size, kw, dtype):
    op, backward = getattr(roipool, name), getattr(roipool, f"{name}_backward")
    x = make_map(dtype)
    xh = nhwc(x)
    xh_before = xh.copy()
    want = op(x, boxes, size, **kw)
    got = op(xh, boxes, size, layout="nhwc", **kw)
    same_bytes(got, want)
    g = np.random.default_rng(1).standard_normal(want.shape).astype(dtype)
    gh = nhwc(g)
    if name == "roi_pool":
        want_grad = backward(g, None, boxes, x.shape, input=x, spatial_scale=kw["spatial_scale"])
        got_grad = backward(gh, None, boxes, xh.shape, input=xh, spatial_scale=kw["spatial_scale"], layout="nhwc")
    else:
        want_grad = backward(g, boxes, x.shape, size, **kw)
        got_grad = backward(gh, boxes, xh.shape, size, layout="nhwc", **kw)
    same_bytes(got_grad, want_grad)
    assert np.array_equal(xh, xh_before)


@pytest.mark.parametrize("name, boxes, size, kw", OPS[:3] + OPS[-1:], ids=IDS[:3] + IDS[-1:])
def test_strided_channels_last_views_are_read_in_place_and_give_the_same_values(name, boxes, size, kw):
    # a transposed view of NCHW memory is a valid (N, H, W, C) array too
    op = getattr(roipool, name)
    x = make_map(np.float32)
    same_bytes(op(x.transpose(0, 2, 3, 1), boxes, size, layout="nhwc", **kw), op(x, boxes, size, **kw))


@pytest.mark.parametrize("threads", [1, 2])
def test_roi_pool_with_argmax_and_its_backward_in_nhwc(threads):
    # the channels-last argmax backward splits the channels by thread count: the bits may not change
    before = roipool.get_num_threads()
    roipool.set_num_threads(min(threads, before))
    try:
        _check_roi_pool_with_argmax_in_nhwc()
    finally:
        roipool.set_num_threads(before)


def _check_roi_pool_with_argmax_in_nhwc():
    x = make_map(np.float32)
    out, argmax = roipool.roi_pool_with_argmax(x, BOXES, 7, 0.5)
    out_h, argmax_h = roipool.roi_pool_with_argmax(nhwc(x), BOXES, 7, 0.5, layout="nhwc")
    same_bytes(out_h, out)
    same_bytes(argmax_h, argmax)
    g = np.random.default_rng(2).standard_normal(out.shape).astype(np.float32)
    want = roipool.roi_pool_backward(g, argmax, BOXES, x.shape)
    got = roipool.roi_pool_backward(nhwc(g), argmax_h, BOXES, nhwc(x).shape, layout="nhwc")
    same_bytes(got, want)


@pytest.fixture
def caches(monkeypatch):
    """Set the L2 and L3 sizes the kernels' choices read (``ROIPOOL_L2_BYTES``, ``ROIPOOL_L3_BYTES``) for one test."""
    from roipool.cpu import _machine

    def set_to(l2, l3):
        monkeypatch.setenv("ROIPOOL_L2_BYTES", str(l2))
        monkeypatch.setenv("ROIPOOL_L3_BYTES", str(l3))
        _machine.l2_bytes.cache_clear()
        _machine.l3_bytes.cache_clear()

    yield set_to
    _machine.l2_bytes.cache_clear()
    _machine.l3_bytes.cache_clear()


# many boxes on both images, partly off the map, degenerate and inverted: the sweep reorders them
SWEPT = np.concatenate(
    [BOXES, np.random.default_rng(5).uniform([0, -4, -4, 0, 0], [2, 22, 18, 30, 26], (40, 5)).round(1)]
)
SWEPT[:, 0] = np.floor(SWEPT[:, 0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=str)
@pytest.mark.parametrize(
    "name, size, kw",
    [
        ("roi_pool", (7, 7), dict(spatial_scale=0.5)),
        ("roi_pool_with_argmax", (5, 3), dict(spatial_scale=0.5)),
        ("roi_align", (7, 7), dict(spatial_scale=0.5, sampling_ratio=2, aligned=True)),
        ("roi_align", (3, 4), dict(spatial_scale=0.25, sampling_ratio=-1, aligned=False)),
        ("prroi_pool", (7, 7), dict(spatial_scale=0.5)),
    ],
)
def test_the_map_row_sweep_gives_the_bits_of_whole_rois(name, size, kw, dtype, caches):
    """On a map larger than a quarter of the L3 the bins are taken in pieces of bin rows, down
    strips of the map (``_parallel.row_sweep``), instead of RoI by RoI (into channels-last; into
    NCHW by ``roi_pool``, with and without argmax, by whole bin rows): the values may not change,
    in either output format, whether the strips span the map (a large L2) or are 4 columns wide
    and cut the channels-last bin rows (a tiny one)."""
    from roipool.cpu import _machine

    op = getattr(roipool, name)
    x = make_map(dtype, seed=4)
    caches(1 << 40, 1 << 40)
    want = op(x, SWEPT, size, **kw)
    want = want if isinstance(want, tuple) else (want,)
    for l2, l3, sweeps in ((1 << 40, 1 << 40, False), (1 << 40, 64, True), (1 << 10, 64, True)):
        caches(l2, l3)
        assert _machine.sweeps_map_rows(nhwc(x)[0].nbytes) == sweeps
        if l2 == 1 << 10:  # strips narrower than the map (SHAPE), which cut the wider RoIs' bin rows
            assert _machine.sweep_strip(1, x.shape[1] * x.itemsize) == 4 < x.shape[3]
        got = op(nhwc(x), SWEPT, size, layout="nhwc", **kw)
        for got_part, want_part in zip(got if isinstance(got, tuple) else (got,), want):
            same_bytes(got_part, want_part)
        got = op(x, SWEPT, size, **kw)
        for got_part, want_part in zip(got if isinstance(got, tuple) else (got,), want):
            assert got_part.tobytes() == want_part.tobytes() and got_part.flags.c_contiguous


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=str)
@pytest.mark.parametrize(
    "name, size, kw",
    [
        ("roi_align", (7, 7), dict(spatial_scale=0.5, sampling_ratio=2, aligned=True)),
        ("roi_align", (3, 4), dict(spatial_scale=0.25, sampling_ratio=-1, aligned=False)),
        ("prroi_pool", (5, 5), dict(spatial_scale=0.5)),
    ],
)
def test_backward_bands_give_the_bits_of_the_whole_map(name, size, kw, dtype, caches):
    """When a backward task's scratch for the whole map is larger than a quarter of the L3, the map
    is cut into bands of rows (``_machine.scratch_band``), each task summing only the taps that land
    in its band, in the whole map's order: with bands of one row, which cut every bin row, the
    gradient keeps its bits, from NCHW and channels-last gradients into either layout, for boxes
    inside, across, outside and inverted."""
    from roipool.cpu import _machine

    backward = getattr(roipool, f"{name}_backward")
    rng = np.random.default_rng(6)
    shape = (2, 147, 21, 26)
    boxes = rng.uniform([0, -4, -4, -4, -4], [2, 56, 46, 60, 50], (60, 5)).round(1)
    boxes[:, 0] = rng.integers(0, 2, 60)
    g = rng.standard_normal((60, 147, *size)).astype(dtype)  # sums that round: their order shows
    caches(1 << 40, 1 << 40)
    assert _machine.scratch_band(21, 26, 128 * 8, 2) == 21
    want = backward(g, boxes, shape, size, **kw)
    caches(1 << 10, 64)
    assert _machine.scratch_band(21, 26, 128 * 4, 2) == 1
    assert backward(g, boxes, shape, size, **kw).tobytes() == want.tobytes()
    same_bytes(backward(nhwc(g), boxes, (2, 21, 26, 147), size, layout="nhwc", **kw), want)
    # a channels-last gradient into an NCHW one
    assert backward(nhwc(g).transpose(0, 3, 1, 2), boxes, shape, size, **kw).tobytes() == want.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=str)
@pytest.mark.parametrize("size, scale", [((7, 7), 0.5), ((2, 3), 1.0), ((1, 1), 0.25)])
def test_roi_pool_rescanning_backward_in_bands_gives_the_bits_of_the_whole_map(size, scale, dtype, caches):
    """``roi_pool``'s backward without an argmax re-scans the bins; in bands of map rows
    (``_machine.scratch_band``; here one row, so every bin row reaching a band reads rows beyond
    it) it keeps the bits of the whole map and of the stored-argmax backward, in both layouts,
    ties included (the map holds small whole numbers)."""
    from roipool.cpu import _machine

    rng = np.random.default_rng(7)
    x = rng.integers(0, 4, (2, 147, 21, 26)).astype(dtype)
    boxes = rng.uniform([0, -4, -4, -4, -4], [2, 56, 46, 60, 50], (60, 5)).round(1)
    boxes[:, 0] = rng.integers(0, 2, 60)
    out, argmax = roipool.roi_pool_with_argmax(x, boxes, size, scale)
    g = rng.standard_normal(out.shape).astype(dtype)  # sums that round: their order shows
    want = roipool.roi_pool_backward(g, argmax, boxes, x.shape)
    caches(1 << 40, 1 << 40)
    assert _machine.scratch_band(21, 26, 512, 2) == 21
    assert roipool.roi_pool_backward(g, None, boxes, x.shape, input=x, spatial_scale=scale).tobytes() == want.tobytes()
    caches(1 << 10, 64)
    assert _machine.scratch_band(21, 26, 512, 2) == 1
    assert roipool.roi_pool_backward(g, None, boxes, x.shape, input=x, spatial_scale=scale).tobytes() == want.tobytes()
    got = roipool.roi_pool_backward(
        nhwc(g), None, boxes, nhwc(x).shape, input=nhwc(x), spatial_scale=scale, layout="nhwc"
    )
    same_bytes(got, want)


@pytest.mark.parametrize("name", ["roi_align", "prroi_pool"])
def test_box_gradients_take_nhwc_arrays(name):
    x = make_map(np.float64)
    kw = dict(spatial_scale=0.5)
    out = getattr(roipool, name)(x, BOXES, 3, **kw)
    g = np.random.default_rng(3).standard_normal(out.shape)
    fn = getattr(roipool, f"{name}_boxes_backward")
    want = fn(g, x, BOXES, 3, **kw)
    got = fn(nhwc(g), nhwc(x), BOXES, 3, layout="nhwc", **kw)
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("layout", ["NCHW?", "chw", "", 3, None, "channels_last"])
def test_unknown_layout_is_refused_naming_the_accepted_values(layout):
    with pytest.raises(ValueError, match="layout must be one of 'nchw', 'nhwc'"):
        roipool.roi_align(make_map(np.float32), BOXES, 2, layout=layout)


def test_layout_names_are_case_insensitive():
    x = make_map(np.float32)
    same_bytes(roipool.roi_pool(nhwc(x), BOXES, 2, layout="NHWC"), roipool.roi_pool(x, BOXES, 2, layout="NCHW"))


def test_nhwc_arrays_of_the_wrong_rank_say_which_layout_was_expected():
    with pytest.raises(ValueError, match=r"input must have 4 dimensions \(N, H, W, C\) with layout='nhwc'"):
        roipool.roi_align(np.zeros((9, 11, 3), np.float32), BOXES, 2, layout="nhwc")
    with pytest.raises(ValueError, match=r"grad_output must have 4 dimensions \(K, pooled_h, pooled_w, C\)"):
        roipool.roi_align_backward(np.zeros((5, 2, 2), np.float32), BOXES, (2, 9, 11, 3), 2, layout="nhwc")
    with pytest.raises(ValueError, match=r"input_shape must be \(N, H, W, C\)"):
        roipool.roi_align_backward(np.zeros((5, 2, 2, 3), np.float32), BOXES, (2, 9, 11), 2, layout="nhwc")


def test_out_of_range_batch_index_in_nhwc_gets_the_nchw_error():
    bad = BOXES.copy()
    bad[0, 0] = 2
    with pytest.raises(ValueError, match=r"batch index and must be in \[0, 2\)"):
        roipool.roi_align(nhwc(make_map(np.float32)), bad, 2, layout="nhwc")


def test_tensors_refuse_nhwc_and_point_to_their_memory_format():
    torch = pytest.importorskip("torch")
    x = torch.zeros(2, 3, 9, 11)
    with pytest.raises(ValueError, match="memory format"):
        roipool.roi_align(x, torch.from_numpy(BOXES).float(), 2, layout="nhwc")
    assert roipool.roi_align(x, torch.from_numpy(BOXES).float(), 2, layout="nchw").shape == (5, 3, 2, 2)


# ---- results_into: a caller's buffer as the result (the JAX callback hands over XLA's output) ----


def _calls(x):
    """``(name, call, result shape)`` of NumPy functions whose NCHW result comes from ``_layout.empty``."""
    g = np.random.default_rng(3).standard_normal((5, SHAPE[1], 7, 7)).astype(x.dtype)
    _, argmax = roipool.roi_pool_with_argmax(x, BOXES, 7, 0.5)
    pooled, whole = (5, SHAPE[1], 7, 7), SHAPE
    return [
        ("roi_pool", lambda: roipool.roi_pool(x, BOXES, 7, 0.5), pooled),
        ("roi_align", lambda: roipool.roi_align(x, BOXES, 7, 0.5, 2, True), pooled),
        ("prroi_pool", lambda: roipool.prroi_pool(x, BOXES, 7, 0.5), pooled),
        ("roi_align_rotated", lambda: roipool.roi_align_rotated(x, ROTATED, 7, 0.5), (3, SHAPE[1], 7, 7)),
        ("roi_align_backward", lambda: roipool.roi_align_backward(g, BOXES, x.shape, 7, 0.5, 2, True), whole),
        # zeroed first: most of the map gets no gradient
        ("roi_pool_backward argmax", lambda: roipool.roi_pool_backward(g, argmax, BOXES, x.shape), whole),
        ("roi_pool_backward input", lambda: roipool.roi_pool_backward(g, None, BOXES, x.shape, input=x, spatial_scale=0.5), whole),
    ]  # fmt: skip


@pytest.mark.parametrize("index", range(7))
def test_a_lent_buffer_is_the_result_with_the_bits_of_a_new_one(index):
    x = make_map(np.float32)
    name, call, shape = _calls(x)[index]
    want = call()
    lent = np.full(shape, np.nan, np.float32)  # every element must be written
    with _layout.results_into(lent):
        got = call()
        again = call()  # lent once: the second result is a new array
    assert got is lent, name
    assert lent.tobytes() == want.tobytes(), name
    assert again is not lent and again.tobytes() == want.tobytes(), name


def test_an_output_and_an_argmax_lent_together_are_both_written():
    x = make_map(np.float32)
    want_out, want_argmax = roipool.roi_pool_with_argmax(x, BOXES, 7, 0.5)
    lent_argmax, lent_out = np.full(want_argmax.shape, -7, np.int32), np.full(want_out.shape, np.nan, np.float32)
    with _layout.results_into(lent_argmax, lent_out):  # matched by shape and dtype, in any order
        out, argmax = roipool.roi_pool_with_argmax(x, BOXES, 7, 0.5)
    assert out is lent_out and argmax is lent_argmax
    assert out.tobytes() == want_out.tobytes() and argmax.tobytes() == want_argmax.tobytes()


def test_a_lent_buffer_of_another_shape_dtype_or_layout_is_left_alone():
    x = make_map(np.float32)
    want = roipool.roi_align(x, BOXES, 7, 0.5)
    for lent in [np.zeros((5, SHAPE[1], 7, 6), np.float32), np.zeros(want.shape, np.float64)]:
        with _layout.results_into(lent):
            got = roipool.roi_align(x, BOXES, 7, 0.5)
        assert got is not lent and not lent.any() and got.tobytes() == want.tobytes()
    lent = np.zeros((5, 7, 7, SHAPE[1]), np.float32)  # an nhwc result of the right size is not lent
    with _layout.results_into(lent):
        got = roipool.roi_align(nhwc(x), BOXES, 7, 0.5, layout="nhwc")
    assert not np.shares_memory(got, lent) and not lent.any()
    same_bytes(got, want)


def test_a_lent_buffer_serves_only_its_own_thread_and_block():
    x = make_map(np.float32)
    lent = np.zeros((5, SHAPE[1], 7, 7), np.float32)
    other = []
    with _layout.results_into(lent):
        thread = threading.Thread(target=lambda: other.append(roipool.roi_pool(x, BOXES, 7, 0.5)))
        thread.start()
        thread.join()
        assert other[0] is not lent and not lent.any()
        with _layout.results_into(np.zeros(1)):  # nested: the outer buffer comes back after it
            pass
        assert roipool.roi_pool(x, BOXES, 7, 0.5) is lent
    assert roipool.roi_pool(x, BOXES, 7, 0.5) is not lent


def test_results_into_needs_a_contiguous_writable_array():
    read_only = np.zeros((5, 3, 2, 2), np.float32)
    read_only.flags.writeable = False
    for bad in [np.zeros((5, 2, 2, 3), np.float32).transpose(0, 3, 1, 2), read_only]:
        with pytest.raises(ValueError, match="C-contiguous, writable"):
            with _layout.results_into(np.zeros(3), bad):
                pass
