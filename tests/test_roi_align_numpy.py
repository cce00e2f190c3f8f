"""roi_align on NumPy arrays: the kernels against the reference loops and ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import roipool
from roipool import reference

from .helpers import random_rois, run_in_threads
from .ort_oracle import roi_align as ort_roi_align

RTOL = {np.float32: 2e-5, np.float64: 1e-12}
ATOL = {np.float32: 2e-5, np.float64: 1e-12}


def valid_rois(rng, k, n, height, width, scale):
    """Boxes with ``x2 >= x1`` and ``y2 >= y1`` (some of zero size), the domain every peer accepts."""
    rois = random_rois(rng, k, n, height, width, scale)
    rois[:, 1:3], rois[:, 3:5] = np.minimum(rois[:, 1:3], rois[:, 3:5]), np.maximum(rois[:, 1:3], rois[:, 3:5])
    rois[::5, 3:5] = rois[::5, 1:3]
    return rois


def ramp(n, c, height, width, dtype=np.float64):
    """``x[n, c, y, x] = 100 * c + 10 * y + x``: bilinear interpolation reproduces it exactly."""
    cc, yy, xx = np.meshgrid(np.arange(c), np.arange(height), np.arange(width), indexing="ij")
    return np.broadcast_to(100.0 * cc + 10.0 * yy + xx, (n, c, height, width)).astype(dtype)


def check_against_reference(x, rois, output_size, scale, sampling_ratio, aligned, grad_seed=0):
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    dtype = x.dtype.type
    r = rois.astype(x.dtype)
    expected = reference.roi_align(x, r, ph, pw, scale, sampling_ratio, aligned)
    got = roipool.roi_align(x, rois, output_size, scale, sampling_ratio, aligned)
    assert got.dtype == x.dtype and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=RTOL[dtype], atol=ATOL[dtype])
    g = np.random.default_rng(grad_seed).standard_normal(got.shape).astype(x.dtype)
    expected_grad = reference.roi_align_backward(g, r, x.shape, scale, sampling_ratio, aligned)
    grad = roipool.roi_align_backward(g, rois, x.shape, output_size, scale, sampling_ratio, aligned)
    assert grad.dtype == x.dtype and grad.shape == x.shape
    np.testing.assert_allclose(grad, expected_grad, rtol=RTOL[dtype], atol=ATOL[dtype])
    return got, grad


# ---- against the reference loops ----


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
def test_random_boxes_match_reference(dtype, aligned, sampling_ratio):
    rng = np.random.default_rng([sampling_ratio + 1, aligned, dtype == np.float32])
    n, c, h, w = 2, 3, int(rng.integers(1, 14)), int(rng.integers(1, 14))
    scale = float(rng.choice([1.0, 0.5, 0.25, 1 / 16, 1 / 3]))
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    rois = random_rois(rng, 25, n, h, w, scale)
    rois[::4, 1:] = np.round(rois[::4, 1:] * scale * 2) / 2 / scale  # half-cell corners
    check_against_reference(x, rois, (int(rng.integers(1, 5)), int(rng.integers(1, 5))), scale, sampling_ratio, aligned)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_adversarial_boxes_match_reference(aligned, sampling_ratio):
    x = np.random.default_rng(1).standard_normal((2, 2, 5, 7))
    rois = np.array(
        [
            [0, 0, 0, 6, 4],  # the whole map
            [1, -30, -30, -10, -10],  # wholly outside, before the map
            [1, 20, 20, 40, 40],  # wholly outside, after the map
            [0, -1.5, -1.5, 0.5, 0.5],  # straddling the top-left border
            [0, 5.5, 3.5, 7.5, 5.5],  # straddling the bottom-right border
            [0, 6, 4, 2, 1],  # inverted in both axes
            [0, 1, 4, 5, 1],  # inverted in one axis
            [1, 3, 2, 3, 2],  # zero size
            [1, 3.2, 2.1, 3.25, 2.15],  # tiny
            [0, -1, -1, 7, 5],  # one cell past every border
            [1, 0.5, 0.5, 0.5, 0.5],  # a point on cell centres
            [0, -60, -40, 66, 45],  # much larger than the map
        ]
    )
    for rows in (rois, rois.astype(np.float32)):
        check_against_reference(x.astype(rows.dtype), rows, (3, 2), 1.0, sampling_ratio, aligned)


@pytest.mark.parametrize("path", ["DIRECT", "ROWS_FIRST"])
def test_both_evaluation_orders_match_reference(monkeypatch, path):
    # the kernels choose per RoI between two orders of the same sum; force each
    from roipool.cpu import roi_align as kernels

    monkeypatch.setattr(kernels, "TAP_EVALUATION", getattr(kernels, path))
    rng = np.random.default_rng(15)
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((2, 20, 11, 13)).astype(dtype)
        rois = random_rois(rng, 30, 2, 11, 13, 0.5)
        check_against_reference(x, rois, (3, 4), 0.5, -1, True)
        check_against_reference(x, rois, 2, 0.5, 2, False)


@pytest.mark.parametrize("path", ["DIRECT", "ROWS_FIRST"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wide_channel_blocks_match_reference(monkeypatch, path, dtype):
    # 147 float32 channels = a 128-channel register block + one 16-lane vector
    # + 3 single channels (float64: 2 x 64 + 2 x 8 + 3); the backward runs with
    # its widest block and with a one-vector block
    from roipool.cpu import roi_align as kernels
    from roipool.cpu._simd import VECTOR_BYTES

    monkeypatch.setattr(kernels, "TAP_EVALUATION", getattr(kernels, path))
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    rng = np.random.default_rng(16)
    x = rng.standard_normal((2, 147, 9, 12)).astype(dtype)
    rois = random_rois(rng, 12, 2, 9, 12, 0.5)
    for block in (kernels.UNROLL * lanes, lanes):
        monkeypatch.setattr(kernels, "channel_block", lambda *args, block=block: block)
        check_against_reference(x, rois, (3, 4), 0.5, 2, True)


@pytest.mark.parametrize("path", ["DIRECT", "ROWS_FIRST"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_piece_sums_a_channel_alike(monkeypatch, path, dtype):
    # Channels go a register block (8 vectors) at a time, a narrower rest four, two, then
    # one vector at a time, and the last few one channel at a time: a channel must come
    # out with the same bits whichever piece holds it (the multiply-adds fused alike).
    # 15 vectors + 5 channels: a full block, a 4-, 2- and 1-vector piece and a scalar
    # tail; a call on a slice of the channels moves them into other pieces.
    from roipool.cpu import roi_align as kernels
    from roipool.cpu._simd import VECTOR_BYTES

    monkeypatch.setattr(kernels, "TAP_EVALUATION", getattr(kernels, path))
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    channels = 15 * lanes + 5
    rng = np.random.default_rng(18)
    x = rng.standard_normal((2, channels, 9, 12)).astype(dtype)
    rois = random_rois(rng, 12, 2, 9, 12, 0.5)
    g = rng.standard_normal((12, channels, 3, 4)).astype(dtype)
    out = roipool.roi_align(x, rois, (3, 4), 0.5, 2, True)
    grad = roipool.roi_align_backward(g, rois, x.shape, (3, 4), 0.5, 2, True)
    slices = [(0, lanes), (lanes, 3 * lanes), (0, 7 * lanes), (8 * lanes, 15 * lanes), (3 * lanes, channels)]
    slices += [(c, c + 1) for c in (0, lanes + 1, 9 * lanes, 14 * lanes + 3, channels - 1)]
    for lo, hi in slices:
        part = roipool.roi_align(np.ascontiguousarray(x[:, lo:hi]), rois, (3, 4), 0.5, 2, True)
        np.testing.assert_array_equal(part, out[:, lo:hi])
        shape = (2, hi - lo, 9, 12)
        part_grad = roipool.roi_align_backward(np.ascontiguousarray(g[:, lo:hi]), rois, shape, (3, 4), 0.5, 2, True)
        np.testing.assert_array_equal(part_grad, grad[:, lo:hi])


def test_many_samples_per_bin_skip_only_samples_off_the_map():
    # more than 32 samples per side: the kernels bisect for the samples near the map
    x = np.random.default_rng(2).standard_normal((1, 2, 4, 5))
    rois = np.array([[0, -90, -70, 60, 50], [0, 1, 1, 3.5, 2.5], [0, -3, 2, 40, 3]])
    check_against_reference(x, rois, 1, 1.0, 40, True)
    check_against_reference(x, rois, 1, 1.0, 40, False)
    check_against_reference(x, rois[:1] / 1.5, (1, 2), 1.5, -1, True)  # adaptive: 50 and 75 per side


def test_huge_adaptive_grid_counts_every_sample_but_reads_only_those_on_the_map():
    # adaptive grid of 200000 x 200000 samples in one bin: the reference loop
    # cannot walk it, so sum the samples on the map directly
    height, width = 3, 4
    x = np.random.default_rng(3).standard_normal((1, 1, height, width))
    half = 100000.0
    rois = np.array([[0, -half, -half, half, half]])
    got = roipool.roi_align(x, rois, 1, 1.0, -1, True)
    grid = 200000
    pos = -half - 0.5 + (np.arange(grid) + 0.5) * (2 * half) / grid
    on_map = pos[(pos >= -1) & (pos <= max(height, width))]
    total = 0.0
    for y in on_map:
        for xx in on_map:
            for row, col, weight in reference.bilinear_taps(y, xx, height, width):
                total += weight * x[0, 0, row, col]
    np.testing.assert_allclose(got[0, 0, 0, 0], total / grid**2, rtol=1e-9, atol=1e-300)


# ---- semantics pinned by hand-derived values ----


def test_worked_example_of_the_docs():
    # ramp 10 * y + x on a 10 x 10 map; box (2.5, 2.5)-(7.5, 7.5), 2 x 2 bins, 2 x 2 samples
    x = ramp(1, 1, 10, 10)
    box = np.array([[0, 2.5, 2.5, 7.5, 7.5]])
    # aligned=True: start 2.0, end 7.0, bins of 2.5, samples at 2.625 and 3.875
    # (mean 3.25) then 5.125 and 6.375 (mean 5.75)
    np.testing.assert_allclose(roipool.roi_align(x, box, 2, 1.0, 2, True)[0, 0], [[35.75, 38.25], [60.75, 63.25]])
    # aligned=False: start 2.5, samples at 3.125, 4.375 (mean 3.75), then 6.25
    np.testing.assert_allclose(roipool.roi_align(x, box, 2, 1.0, 2, False)[0, 0], [[41.25, 43.75], [66.25, 68.75]])
    # adaptive: ceil(2.5) = 3 samples per side at 2.4166.., 3.25, 4.0833..: same means
    np.testing.assert_allclose(roipool.roi_align(x, box, 2, 1.0, -1, True)[0, 0], [[35.75, 38.25], [60.75, 63.25]])


@pytest.mark.parametrize("aligned", [False, True])
def test_a_linear_ramp_gives_the_value_at_the_bin_centre(aligned):
    # interpolation is exact on a ramp, and samples are symmetric about each bin
    # centre, so every bin inside the map reads the ramp at its centre
    rng = np.random.default_rng(4)
    x = ramp(1, 2, 12, 12)
    for _ in range(20):
        x1, y1 = rng.uniform(1.0, 5.0, 2)
        bw, bh = rng.uniform(0.34, 1.5, 2)  # extents of at least one cell (legacy rule)
        box = np.array([[0, x1, y1, x1 + 4 * bw, y1 + 3 * bh]])
        got = roipool.roi_align(x, box, (3, 4), 1.0, int(rng.integers(-1, 4)), aligned)
        shift = 0.5 if aligned else 0.0
        cy = y1 - shift + (np.arange(3) + 0.5) * bh
        cx = x1 - shift + (np.arange(4) + 0.5) * bw
        want = 100.0 * np.arange(2)[:, None, None] + 10.0 * cy[None, :, None] + cx[None, None, :]
        np.testing.assert_allclose(got[0], want, rtol=1e-12)


@pytest.mark.parametrize(
    "centre, want",
    [
        (-1.5, 0.0),  # more than a cell before the map: contributes nothing
        (-1.0, 0.0 + 3.0),  # exactly -1: still read, clamped to row 0
        (-0.4, 0.0 + 3.0),  # within a cell before the map: row 0
        (0.25, 2.5 + 3.0),  # inside: interpolated between rows 0 and 1
        (3.5, 30.0 + 3.0),  # past the last row (3) but within a cell: row 3
        (4.0, 30.0 + 3.0),  # exactly H: still read, row 3
        (4.25, 0.0),  # more than a cell after the map: nothing
    ],
)
def test_border_rules_for_one_sample(centre, want):
    # one bin, one sample at the box centre (aligned=False, no shift); column 3
    x = ramp(1, 1, 4, 6)
    box = np.array([[0, 2.0, centre - 0.5, 4.0, centre + 0.5]])
    out = roipool.roi_align(x, box, 1, 1.0, 1, False)
    assert out[0, 0, 0, 0] == want
    check_against_reference(x, box, 1, 1.0, 1, False)


def test_legacy_rule_reads_an_inverted_or_tiny_box_as_one_cell_from_its_start():
    x = np.random.default_rng(5).standard_normal((1, 3, 8, 8))
    for box, one_cell in (
        ([0, 5.0, 6.0, 2.0, 1.0], [0, 5.0, 6.0, 6.0, 7.0]),
        ([0, 2.2, 3.3, 2.4, 3.5], [0, 2.2, 3.3, 3.2, 4.3]),
    ):
        for sr in (-1, 2):
            np.testing.assert_array_equal(
                roipool.roi_align(x, np.array([box]), 3, 1.0, sr, False),
                roipool.roi_align(x, np.array([one_cell]), 3, 1.0, sr, False),
            )


def test_aligned_inverted_box_with_fixed_sampling_reads_its_bins_from_start_to_end():
    # torchvision's rule: a negative extent gives negative bin sizes, so the
    # box is read from (x1, y1) towards (x2, y2): the bins come out mirrored
    x = np.random.default_rng(6).standard_normal((1, 2, 9, 9))
    inverted = roipool.roi_align(x, np.array([[0, 7.0, 6.5, 2.0, 1.5]]), 3, 1.0, 2, True)
    upright = roipool.roi_align(x, np.array([[0, 2.0, 1.5, 7.0, 6.5]]), 3, 1.0, 2, True)
    np.testing.assert_allclose(inverted, upright[:, :, ::-1, ::-1], rtol=1e-12)


@pytest.mark.parametrize("box", [[0, 6.0, 6.0, 2.0, 2.0], [0, 2.0, 6.0, 6.0, 2.0], [0, 3.0, 3.0, 3.0, 3.0]])
def test_aligned_adaptive_zero_or_negative_extent_takes_no_samples(box):
    # torchvision fails on a box inverted in one axis only (and ONNX Runtime
    # overflows); roipool counts a zero or negative extent as no samples: 0
    # output and no gradient, like torchvision on a box of zero size
    x = np.random.default_rng(7).standard_normal((1, 2, 9, 9))
    rois = np.array([box])
    out = roipool.roi_align(x, rois, 2, 1.0, -1, True)
    assert out.shape == (1, 2, 2, 2) and not out.any()
    assert not roipool.roi_align_backward(np.ones_like(out), rois, x.shape, 2, 1.0, -1, True).any()
    check_against_reference(x, rois, 2, 1.0, -1, True)


def test_box_wholly_outside_gives_zeros_and_no_gradient():
    x = np.random.default_rng(8).standard_normal((1, 2, 5, 5))
    rois = np.array([[0, 100, 100, 200, 200], [0, -50, -50, -10, -10], [0, -3, 1, -1.6, 3]])
    for aligned in (False, True):
        out = roipool.roi_align(x, rois, 3, 1.0, -1, aligned)
        assert not out.any()
        assert not roipool.roi_align_backward(np.ones_like(out), rois, x.shape, 3, 1.0, -1, aligned).any()


# ---- finite input never gives NaN ----


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    coords=st.lists(
        st.one_of(st.floats(-30, 30, width=32), st.sampled_from([0.0, 1e6, -1e6, 1e30, -1e30, 3e38, -3e38])),
        min_size=4,
        max_size=4,
    ),
    scale=st.sampled_from([1.0, 1 / 16, 0.5]),
    sampling_ratio=st.sampled_from([-1, 0, 1, 2, 5]),
    aligned=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
    size=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 3), st.integers(1, 3)),
)
def test_finite_input_never_gives_nan(coords, scale, sampling_ratio, aligned, dtype, size):
    h, w, ph, pw = size
    x = np.random.default_rng(9).standard_normal((1, 2, h, w)).astype(dtype)
    rois = np.array([[0, *coords]], dtype)
    try:
        out = roipool.roi_align(x, rois, (ph, pw), scale, sampling_ratio, aligned)
    except ValueError as error:
        # the documented refusal: a box whose extent overflows the compute dtype
        assert "overflows" in str(error) and max(abs(v) for v in coords) * scale > 1e38 / 2
        return
    assert np.isfinite(out).all()
    grad = roipool.roi_align_backward(np.ones_like(out), rois, x.shape, (ph, pw), scale, sampling_ratio, aligned)
    assert np.isfinite(grad).all()
    # an average of interpolated values never leaves the input's range, widened to 0
    # (samples off the map count as zeros)
    bound = np.abs(x).max() * (1 + 1e-5)
    assert np.abs(out).max() <= bound


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(1, 8),
    w=st.integers(1, 8),
    ph=st.integers(1, 3),
    pw=st.integers(1, 3),
    scale=st.sampled_from([1.0, 0.5, 0.25, 2.0, 0.7]),
    coords=st.lists(st.floats(-12, 20, width=32, allow_nan=False), min_size=4, max_size=4),
    sampling_ratio=st.sampled_from([-1, 1, 2, 3]),
    aligned=st.booleans(),
)
def test_property_matches_reference(h, w, ph, pw, scale, coords, sampling_ratio, aligned):
    x = np.random.default_rng(h * 10 + w).standard_normal((1, 2, h, w)).astype(np.float32)
    check_against_reference(x, np.array([[0, *coords]], np.float32), (ph, pw), scale, sampling_ratio, aligned)


# ---- backward ----


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_is_the_adjoint_of_forward(dtype):
    # roi_align is linear in its input: <g, forward(x)> == <backward(g), x>
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 40, 9, 11)).astype(dtype)
    rois = random_rois(rng, 60, 2, 9, 11, 0.5)
    for sampling_ratio, aligned in ((-1, True), (2, False), (3, True)):
        out = roipool.roi_align(x, rois, (3, 4), 0.5, sampling_ratio, aligned)
        g = rng.standard_normal(out.shape).astype(dtype)
        gx = roipool.roi_align_backward(g, rois, x.shape, (3, 4), 0.5, sampling_ratio, aligned)
        lhs, rhs = np.sum(g * out, dtype=np.float64), np.sum(gx * x, dtype=np.float64)
        assert np.isclose(lhs, rhs, rtol=1e-4 if dtype == np.float32 else 1e-12)


def test_backward_is_deterministic_and_independent_of_thread_count():
    rng = np.random.default_rng(11)
    x_shape = (2, 70, 10, 12)  # 70 channels: several channel blocks, one of them partial
    rois = random_rois(rng, 150, 2, 10, 12, 1.0)
    g = rng.standard_normal((150, 70, 3, 3)).astype(np.float32)
    before = roipool.get_num_threads()
    results = []
    try:
        for threads in sorted({1, before}):
            roipool.set_num_threads(threads)
            for _ in range(2):
                results.append(roipool.roi_align_backward(g, rois, x_shape, 3, 1.0, 2, True))
    finally:
        roipool.set_num_threads(before)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


# ---- layouts, dtypes and empty sets ----


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_is_the_same_for_every_channel_block(monkeypatch, dtype):
    # the thread count picks the backward's channel block (a multiple of the
    # vector lanes); every channel must sum in the same order whatever it is
    from roipool.cpu import roi_align as kernels
    from roipool.cpu._simd import VECTOR_BYTES

    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    rng = np.random.default_rng(17)
    x_shape = (2, 300, 11, 13)  # 300: register blocks, single vectors and a scalar tail
    rois = random_rois(rng, 80, 2, 11, 13, 0.5)
    g = rng.standard_normal((80, 300, 3, 4)).astype(dtype)
    results = []
    for block in (kernels.UNROLL * lanes, 3 * lanes, lanes):
        monkeypatch.setattr(kernels, "channel_block", lambda *args, block=block: block)
        results.append(roipool.roi_align_backward(g, rois, x_shape, (3, 4), 0.5, -1, True))
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_float16_is_computed_in_float32():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1, 3, 6, 7)).astype(np.float16)
    rois = random_rois(rng, 12, 1, 6, 7, 1.0)
    out = roipool.roi_align(x, rois, 2, 1.0, 2, True)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(
        out, roipool.roi_align(x.astype(np.float32), rois, 2, 1.0, 2, True).astype(np.float16)
    )
    g = rng.standard_normal(out.shape).astype(np.float16)
    grad = roipool.roi_align_backward(g, rois, x.shape, 2, 1.0, 2, True)
    assert grad.dtype == np.float16
    expected = roipool.roi_align_backward(g.astype(np.float32), rois, x.shape, 2, 1.0, 2, True)
    np.testing.assert_array_equal(grad, expected.astype(np.float16))


def test_non_contiguous_read_only_byte_swapped_and_list_inputs():
    rng = np.random.default_rng(13)
    base = rng.standard_normal((2, 4, 9, 11)).astype(np.float32)
    rois = random_rois(rng, 20, 2, 9, 11, 1.0)
    expected = roipool.roi_align(base, rois, 3, 1.0, -1, True)
    strided = np.ascontiguousarray(np.repeat(base, 2, axis=3))[..., ::2]
    nhwc_view = np.ascontiguousarray(base.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    swapped = base.astype(base.dtype.newbyteorder(">"))
    readonly = base.copy()
    readonly.flags.writeable = False
    for x in (strided, nhwc_view, swapped, readonly):
        np.testing.assert_array_equal(roipool.roi_align(x, rois, 3, 1.0, -1, True), expected)
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    order = np.argsort(rois[:, 0], kind="stable")
    np.testing.assert_array_equal(roipool.roi_align(base, per_image, 3, 1.0, -1, True), expected[order])
    g = rng.standard_normal(expected.shape).astype(np.float32)
    want = roipool.roi_align_backward(g, rois, base.shape, 3, 1.0, -1, True)
    got = roipool.roi_align_backward(np.asfortranarray(g), rois[:, ::1].T.copy().T, base.shape, 3, 1.0, -1, True)
    np.testing.assert_array_equal(got, want)


def test_inputs_are_not_modified():
    rng = np.random.default_rng(14)
    x = rng.standard_normal((1, 2, 6, 6))
    rois = random_rois(rng, 10, 1, 6, 6, 0.5)
    g = rng.standard_normal((10, 2, 2, 2))
    x0, r0, g0 = x.copy(), rois.copy(), g.copy()
    roipool.roi_align(x, rois, 2, 0.5, -1, True)
    roipool.roi_align_backward(g, rois, x.shape, 2, 0.5, -1, True)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(rois, r0)
    np.testing.assert_array_equal(g, g0)


def test_empty_box_set_channels_and_map():
    x = np.ones((2, 3, 4, 4), np.float32)
    for boxes in (np.zeros((0, 5), np.float32), [np.zeros((0, 4)), np.zeros((0, 4))]):
        out = roipool.roi_align(x, boxes, (2, 3), 1.0, -1, True)
        assert out.shape == (0, 3, 2, 3) and out.dtype == np.float32
        assert not roipool.roi_align_backward(out, boxes, x.shape, (2, 3), 1.0, -1, True).any()
    rois = np.array([[0, 0, 0, 2, 2]], np.float32)
    assert roipool.roi_align(np.ones((1, 0, 4, 4)), rois, 2).shape == (1, 0, 2, 2)
    empty_map = roipool.roi_align(np.ones((1, 2, 0, 4)), rois, 2, 1.0, 2, True)
    assert empty_map.shape == (1, 2, 2, 2) and not empty_map.any()


# ---- ONNX Runtime oracle (float32, boxes with x2 >= x1 and y2 >= y1) ----


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2, 3])
def test_matches_onnxruntime_on_random_cases(aligned, sampling_ratio):
    rng = np.random.default_rng([20, sampling_ratio, aligned])
    for _ in range(3):
        n, c = int(rng.integers(1, 3)), int(rng.integers(1, 5))
        h, w = int(rng.integers(1, 20)), int(rng.integers(1, 20))
        scale = float(rng.choice([1.0, 0.5, 0.25, 0.125, 1 / 16, 0.3]))
        ph, pw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        rois = valid_rois(rng, 40, n, h, w, scale).astype(np.float32)
        got = roipool.roi_align(x, rois, (ph, pw), scale, sampling_ratio, aligned)
        want = ort_roi_align(x, rois, ph, pw, scale, sampling_ratio, aligned)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_vgg16_like_case_matches_onnxruntime():
    rng = np.random.default_rng(21)
    x = rng.standard_normal((1, 16, 38, 50)).astype(np.float32)
    side = np.exp(rng.uniform(np.log(16), np.log(600), (300, 2)))
    x1 = rng.uniform(0, np.maximum(800 - side[:, 0], 0))
    y1 = rng.uniform(0, np.maximum(600 - side[:, 1], 0))
    rois = np.column_stack([np.zeros(300), x1, y1, x1 + side[:, 0], y1 + side[:, 1]]).astype(np.float32)
    for sampling_ratio, aligned in ((2, True), (0, True), (2, False)):
        got = roipool.roi_align(x, rois, 7, 1 / 16, sampling_ratio, aligned)
        want = ort_roi_align(x, rois, 7, 7, 1 / 16, sampling_ratio, aligned)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


# ---- bad input ----

X = np.zeros((2, 3, 8, 8), np.float32)
ROIS = np.array([[0, 0, 0, 4, 4], [1, 1, 1, 5, 5]], np.float32)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(sampling_ratio=2.0), TypeError, "sampling_ratio must be an int"),
        (dict(sampling_ratio=True), TypeError, "sampling_ratio must be an int"),
        (dict(sampling_ratio=2**31), ValueError, "sampling_ratio must be at most 1048576"),
        (dict(sampling_ratio=-(10**30)), ValueError, "sampling_ratio must be at least -2"),
        (dict(aligned=1), TypeError, "aligned must be a bool"),
        (dict(aligned="yes"), TypeError, "aligned must be a bool"),
        (dict(output_size=0), ValueError, "output_size must be positive"),
        (dict(output_size=(2, 2, 2)), ValueError, "output_size must be an int or a pair"),
        (dict(spatial_scale=0.0), ValueError, "spatial_scale must be finite and positive"),
        (dict(spatial_scale=np.nan), ValueError, "spatial_scale must be finite and positive"),
        (dict(boxes=np.array([[0, 0, 0, np.nan, 4]])), ValueError, "NaN or infinite"),
        (dict(boxes=np.array([[2, 0, 0, 4, 4]])), ValueError, "batch index"),
        (dict(boxes=np.array([[0, 0, 0, 4]])), ValueError, "boxes must have shape"),
        (dict(boxes=np.array([[0, -1e38, 0, 3e38, 4]]), spatial_scale=4.0), ValueError, "overflows float32"),
        (dict(input=np.zeros((3, 8, 8), np.float32)), ValueError, "input must have 4 dimensions"),
        (dict(input=np.zeros((2, 3, 8, 8), np.int64)), TypeError, "input must have a real floating dtype"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, words):
    args = dict(input=X, boxes=ROIS, output_size=2, spatial_scale=1.0, sampling_ratio=-1, aligned=False)
    args.update(kwargs)
    with pytest.raises(error, match=words):
        roipool.roi_align(**args)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(grad_output=np.zeros((2, 3, 2, 2), np.int32)), TypeError, "grad_output must have a real floating"),
        (dict(grad_output=np.zeros((2, 3, 4), np.float32)), ValueError, "grad_output must have shape"),
        (dict(grad_output=np.zeros((2, 4, 2, 2), np.float32)), ValueError, "channels"),
        (dict(grad_output=np.zeros((3, 3, 2, 2), np.float32)), ValueError, "boxes hold 2 RoIs"),
        (dict(output_size=3), ValueError, "output_size is \\(3, 3\\)"),
        (dict(input_shape=(2, 3, 8)), ValueError, "input_shape must be"),
        (dict(input_shape=None), TypeError, "input_shape must be"),
        (dict(sampling_ratio=1.5), TypeError, "sampling_ratio must be an int"),
        (dict(aligned=None), TypeError, "aligned must be a bool"),
    ],
)
def test_bad_backward_arguments_are_named(kwargs, error, words):
    args = dict(
        grad_output=np.zeros((2, 3, 2, 2), np.float32),
        boxes=ROIS,
        input_shape=X.shape,
        output_size=2,
        spatial_scale=1.0,
        sampling_ratio=-1,
        aligned=False,
    )
    args.update(kwargs)
    with pytest.raises(error, match=words):
        roipool.roi_align_backward(**args)


def test_bisection_of_falling_positions_and_zero_size_boxes():
    # an inverted box with aligned=True has negative bins: its sample positions
    # fall with the index, and the bisection for the samples near the map must
    # follow them; 40 samples per side is above the bisection threshold
    x = np.random.default_rng(16).standard_normal((1, 2, 5, 6))
    inverted = np.array([[0, 60.0, 50.0, -40.0, -45.0], [0, 5.0, 4.0, 1.0, 0.5]])
    check_against_reference(x, inverted, 2, 1.0, 40, True)
    # a zero-size box puts every sample on one point, visited once, so even the
    # largest grid costs nothing and reads that point
    zero = np.array([[0, 2.25, 3.5, 2.25, 3.5]])
    np.testing.assert_allclose(
        roipool.roi_align(x, zero, 1, 1.0, 2**20, True), roipool.roi_align(x, zero, 1, 1.0, 1, True), rtol=1e-12
    )
    check_against_reference(x, zero, 2, 1.0, 40, True)


def test_concurrent_calls_from_python_threads_give_the_same_results():
    rng = np.random.default_rng(17)
    x = rng.standard_normal((2, 24, 12, 12)).astype(np.float32)
    cases = [random_rois(rng, 80, 2, 12, 12, 0.5) for _ in range(3)]
    expected = [roipool.roi_align(x, r, 3, 0.5, -1, True) for r in cases]
    grads = [roipool.roi_align_backward(e, r, x.shape, 3, 0.5, -1, True) for e, r in zip(expected, cases)]

    def call(i):
        out = roipool.roi_align(x, cases[i % 3], 3, 0.5, -1, True)
        return out, roipool.roi_align_backward(out, cases[i % 3], x.shape, 3, 0.5, -1, True)

    results, errors = run_in_threads(call, 9)
    assert not errors
    for i, (out, grad) in enumerate(results):
        np.testing.assert_array_equal(out, expected[i % 3])
        np.testing.assert_array_equal(grad, grads[i % 3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_register_block_sums_like_single_vectors_for_any_tap_count(dtype):
    # A full eight-vector block is summed in one pass, or (AVX2, up to TWO_PASSES_UP_TO taps)
    # in two four-vector passes; either way each channel must get the bits a one-vector
    # pass gives it. Tap counts from 0 to 24 cross the threshold in both helpers.
    import numba

    from roipool.cpu import roi_align as kernels
    from roipool.cpu._simd import VECTOR_BYTES

    @numba.njit
    def gather(src, step, idx, wt, m, dst, cw, add):
        kernels._gather(src, 0, step, idx, wt, 0, m, dst, 0, cw, add)

    @numba.njit
    def gather2(src, idx_i, wt_i, i1, idx_j, wt_j, j1, dst, cw, c):
        kernels._gather2(src, c, 40 * 128, idx_i, wt_i, 0, i1, 128, idx_j, wt_j, 0, j1, dst, c, cw)

    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    block = kernels.UNROLL * lanes
    rng = np.random.default_rng(19)
    src = rng.standard_normal(40 * 40 * 128).astype(dtype)
    idx = rng.integers(0, 40, 24).astype(np.int32)
    wt = rng.uniform(-1, 1, 24).astype(dtype)
    start = rng.standard_normal(block).astype(dtype)
    for m in range(25):
        for add in (False, True):
            whole, pieces = start.copy(), start.copy()
            gather(src, 128, idx, wt, m, whole, block, add)
            for c in range(0, block, lanes):
                gather(src[c:], 128, idx, wt, m, pieces[c:], lanes, add)
            np.testing.assert_array_equal(whole, pieces)
    for i1, j1 in [(1, 1), (2, 2), (4, 4), (3, 6), (4, 5), (5, 5), (2, 9)]:
        whole, pieces = np.zeros(block, dtype), np.zeros(block, dtype)
        gather2(src, idx, wt, i1, idx[8:], wt[8:], j1, whole, block, 0)
        for c in range(0, block, lanes):
            gather2(src, idx, wt, i1, idx[8:], wt[8:], j1, pieces, lanes, c)
        np.testing.assert_array_equal(whole, pieces)
