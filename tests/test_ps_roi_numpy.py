"""ps_roi_pool and ps_roi_align on NumPy: the kernels against the slow reference, and the rules pinned.

torchvision is not an oracle here (it is not a test dependency); the
comparison against it is done locally and reported in docs/semantics.md (verification).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import roipool
from roipool import reference

from .helpers import run_in_threads

SAMPLING_RATIOS = [-1, 0, 1, 2, 3]


def random_rois(rng, k, n, height, width, scale):
    """Boxes in image coordinates: some past the map, some inverted, some degenerate."""
    img_h, img_w = height / scale, width / scale
    x = rng.uniform(-0.4 * img_w, 1.4 * img_w, (k, 2))
    y = rng.uniform(-0.4 * img_h, 1.4 * img_h, (k, 2))
    rois = np.column_stack([rng.integers(0, n, k), x[:, 0], y[:, 0], x[:, 1], y[:, 1]])
    rois[: k // 3, 3:] = np.maximum(rois[: k // 3, 1:3], rois[: k // 3, 3:])  # well ordered
    rois[k // 3 : k // 2, 3:] = rois[k // 3 : k // 2, 1:3]  # zero width and height
    return rois


def ps_input(rng, n, channels_out, output_size, height, width, dtype):
    ph, pw = output_size
    return rng.standard_normal((n, channels_out * ph * pw, height, width)).astype(dtype)


def tolerance(dtype):
    return {"rtol": 1e-12, "atol": 1e-12} if dtype == np.float64 else {"rtol": 2e-5, "atol": 2e-6}


# ---- forward against the reference ----


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(4))
def test_ps_roi_pool_equals_reference_bit_for_bit(dtype, seed):
    rng = np.random.default_rng(seed)
    ph, pw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    h, w = int(rng.integers(1, 14)), int(rng.integers(1, 14))
    scale = float(rng.choice([1.0, 0.5, 0.25, 1 / 16, 1 / 3]))
    x = ps_input(rng, 2, 2, (ph, pw), h, w, dtype)
    rois = random_rois(rng, 25, 2, h, w, scale)
    got = roipool.ps_roi_pool(x, rois, (ph, pw), scale)
    expected = reference.ps_roi_pool(x, rois.astype(dtype), ph, pw, scale)
    assert got.dtype == dtype and got.shape == (25, 2, ph, pw)
    # same cells, same summation order, same division: identical bits
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sampling_ratio", SAMPLING_RATIOS)
def test_ps_roi_align_matches_reference(dtype, sampling_ratio):
    rng = np.random.default_rng(10 + sampling_ratio)
    ph, pw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    h, w = int(rng.integers(1, 12)), int(rng.integers(1, 12))
    scale = float(rng.choice([1.0, 0.5, 0.25, 1 / 3]))
    x = ps_input(rng, 2, 2, (ph, pw), h, w, dtype)
    rois = random_rois(rng, 20, 2, h, w, scale)
    got = roipool.ps_roi_align(x, rois, (ph, pw), scale, sampling_ratio)
    expected = reference.ps_roi_align(x, rois.astype(dtype), ph, pw, scale, sampling_ratio)
    assert got.dtype == dtype and got.shape == (20, 2, ph, pw)
    np.testing.assert_allclose(got, expected, **tolerance(dtype))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    ph=st.integers(1, 3),
    pw=st.integers(1, 3),
    scale=st.sampled_from([1.0, 0.5, 0.25, 2.0, 0.7]),
    coords=st.lists(st.floats(-30, 40, width=32, allow_nan=False), min_size=4, max_size=4),
    sampling_ratio=st.sampled_from(SAMPLING_RATIOS),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_both_ops_match_reference(h, w, ph, pw, scale, coords, sampling_ratio, seed):
    rng = np.random.default_rng(seed)
    x = ps_input(rng, 1, 1, (ph, pw), h, w, np.float32)
    rois = np.array([[0, *coords]], np.float32)
    np.testing.assert_array_equal(
        roipool.ps_roi_pool(x, rois, (ph, pw), scale), reference.ps_roi_pool(x, rois, ph, pw, scale)
    )
    got = roipool.ps_roi_align(x, rois, (ph, pw), scale, sampling_ratio)
    expected = reference.ps_roi_align(x, rois, ph, pw, scale, sampling_ratio)
    np.testing.assert_allclose(got, expected, **tolerance(np.float32))


# ---- the rules, with numbers (docs/semantics.md) ----


def test_channel_mapping_reads_channel_c_times_bins_plus_bin():
    # input channel i is the constant i, so every output names the channel it read
    ph, pw, channels_out = 2, 3, 4
    x = np.broadcast_to(np.arange(channels_out * ph * pw, dtype=np.float64)[None, :, None, None], (1, 24, 8, 8))
    rois = np.array([[0, 1, 1, 6, 6]], np.float64)
    expected = np.arange(24, dtype=np.float64).reshape(1, channels_out, ph, pw)
    np.testing.assert_array_equal(roipool.ps_roi_pool(x, rois, (ph, pw)), expected)
    # bilinear weights of a constant sum to 1 up to rounding
    np.testing.assert_allclose(roipool.ps_roi_align(x, rois, (ph, pw)), expected, rtol=1e-14)
    assert expected[0, 1, 0, 2] == (1 * ph + 0) * pw + 2 == 8


def test_ps_roi_pool_worked_example_never_reads_the_last_row_and_column():
    # 4x4 map 0..15 and a box covering it: bins are clipped to [0, 3), so the
    # average is over rows and columns 0..2 -- torchvision's forward does this
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    assert roipool.ps_roi_pool(x, np.array([[0, 0, 0, 4, 4]], np.float64), 1)[0, 0, 0, 0] == 5.0
    # 2x2 bins of an 8x8 map, box (0, 0)-(6, 6): the RoI spans 6 cells, bins of 3
    x = np.arange(64, dtype=np.float64).reshape(1, 1, 8, 8).repeat(4, axis=1)
    out = roipool.ps_roi_pool(x, np.array([[0, 0, 0, 6, 6]], np.float64), 2)
    # on a linear ramp 8 * row + col a bin's mean is the value at its centre cell:
    # bin (0, 0) rows/cols 0..2 -> (1, 1) = 9; bin (0, 1) cols 3..5 -> (1, 4) = 12; ...
    np.testing.assert_array_equal(out[0, 0], [[9.0, 12.0], [33.0, 36.0]])


def test_ps_roi_pool_box_smaller_than_a_cell_spans_one_cell():
    x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    # corners round to (2, 2) and (2, 2): extent max(0, 1) = 1 cell, bin [2, 3)
    out = roipool.ps_roi_pool(x, np.array([[0, 2.2, 2.4, 1.6, 1.9]]), 1)
    assert out[0, 0, 0, 0] == 12.0


def test_ps_roi_pool_empty_bins_give_zero():
    x = np.ones((1, 4, 6, 6), np.float32)
    rois = np.array([[0, 50, 50, 60, 60], [0, -20, -20, -10, -10], [0, 5, 5, 5, 5]], np.float32)
    out = roipool.ps_roi_pool(x, rois, 2)
    assert not out.any()


def test_ps_roi_align_worked_example():
    # 1 output channel, 1x1 bin, sampling_ratio 2: box (1, 1)-(3, 3) becomes
    # (0.5, 0.5)-(2.5, 2.5); samples at 1.0 and 2.0 on each axis, exactly on cells
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    out = roipool.ps_roi_align(x, np.array([[0, 1, 1, 3, 3]], np.float64), 1, 1.0, 2)
    assert out[0, 0, 0, 0] == np.mean([x[0, 0, 1, 1], x[0, 0, 1, 2], x[0, 0, 2, 1], x[0, 0, 2, 2]]) == 7.5
    # adaptive: extent 2 -> 2 samples per side, the same points
    assert roipool.ps_roi_align(x, np.array([[0, 1, 1, 3, 3]], np.float64), 1)[0, 0, 0, 0] == 7.5


def test_ps_roi_align_half_cell_shift_reads_the_cell_centre():
    # a box with corners on cell (2, 1)'s edges samples its centre, which is x[2, 1] itself
    x = np.random.default_rng(0).standard_normal((1, 1, 5, 5))
    out = roipool.ps_roi_align(x, np.array([[0, 1, 2, 2, 3]], np.float64), 1, 1.0, 1)
    assert out[0, 0, 0, 0] == x[0, 0, 2, 1]


# ---- never NaN: where torchvision divides 0 by 0 ----


def test_degenerate_box_with_adaptive_sampling_takes_one_sample_per_bin():
    # zero width and height: torchvision's adaptive grid is ceil(0) = 0 samples -> 0/0 = NaN.
    # Here every bin takes one sample at the box's point: (y, x) = (1.5 - 0.5, 2.5 - 0.5) = (1, 2)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 4 * 3, 4, 5))
    out = roipool.ps_roi_align(x, np.array([[0, 2.5, 1.5, 2.5, 1.5]]), 2)
    np.testing.assert_array_equal(out[0].reshape(3, 4), x[0, :, 1, 2].reshape(3, 4))


@pytest.mark.parametrize("box", [[0, 9, 8, 1, 2], [0, 3.2, 3.1, 3.0, 2.9], [0, 1, 1, 1, 7], [0, 7, 1, 1, 1]])
def test_inverted_box_with_adaptive_sampling_is_sampled_once_per_bin(box):
    # ceil(extent / pooled) <= 0 -> one sample, the same as sampling_ratio=1 on that axis;
    # positions follow the signed bin size, as torchvision's fixed sampling does
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
    rois = np.array([box], np.float32)
    adaptive = roipool.ps_roi_align(x, rois, 2, 1.0, -1)
    assert np.isfinite(adaptive).all()
    np.testing.assert_allclose(adaptive, reference.ps_roi_align(x, rois, 2, 2, 1.0, -1), rtol=2e-6, atol=1e-7)
    if box[3] < box[1] and box[4] < box[2]:
        np.testing.assert_array_equal(adaptive, roipool.ps_roi_align(x, rois, 2, 1.0, 1))


def test_finite_input_never_gives_nan():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 9, 6, 7)).astype(np.float32)
    rois = random_rois(rng, 200, 2, 6, 7, 0.5)
    extreme = np.array(
        [[0, 3e38, 3e38, -3e38, -3e38], [1, -3e38, -3e38, 3e38, 3e38], [0, 1e30, -1e30, 1e30, 1e30], [1, 0, 0, 0, 0]],
        np.float32,
    )
    rois = np.concatenate([rois.astype(np.float32), extreme])
    for scale in (1.0, 0.5, 2.0):  # 2.0 overflows 3e38 * scale to infinity in float32
        for sampling_ratio in SAMPLING_RATIOS:
            assert np.isfinite(roipool.ps_roi_align(x, rois, 3, scale, sampling_ratio)).all()
        assert np.isfinite(roipool.ps_roi_pool(x, rois, 3, scale)).all()
        g = np.ones((len(rois), 1, 3, 3), np.float32)
        assert np.isfinite(roipool.ps_roi_align_backward(g, rois, x.shape, 3, scale)).all()
        assert np.isfinite(roipool.ps_roi_pool_backward(g, rois, x.shape, 3, scale)).all()


# ---- boxes much larger than the map ----


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_adaptive_grid_visits_only_samples_on_the_map(dtype):
    # extent 600 over 2 bins: 300 samples per bin along x, most of them off the
    # 3x4 map; the kernel skips those, the reference visits them all
    rng = np.random.default_rng(4)
    x = ps_input(rng, 1, 2, (1, 2), 3, 4, dtype)
    rois = np.array([[0, -300, 0.2, 300, 2.1], [0, 301.3, 2.7, -299.1, 0.4], [0, -150.5, -1, 149, 3]], dtype)
    got = roipool.ps_roi_align(x, rois, (1, 2), 1.0, -1)
    np.testing.assert_allclose(got, reference.ps_roi_align(x, rois, 1, 2, 1.0, -1), **tolerance(dtype))
    g = rng.standard_normal(got.shape).astype(dtype)
    np.testing.assert_allclose(
        roipool.ps_roi_align_backward(g, rois, x.shape, (1, 2), 1.0, -1),
        reference.ps_roi_align_backward(g, rois, x.shape, 1.0, -1),
        **tolerance(dtype),
    )


def test_large_fixed_grid_on_inverted_boxes_matches_reference():
    # sampling_ratio 100 on a 3x4 map takes the path that visits only in-map
    # samples, here with a negative step (x2 < x1) and with a box partly off the map
    rng = np.random.default_rng(16)
    x = ps_input(rng, 1, 1, (1, 2), 3, 4, np.float64)
    rois = np.array([[0, 60.5, 2.6, -40.2, 0.3], [0, -7.3, -0.8, 3.9, 2.2]])
    got = roipool.ps_roi_align(x, rois, (1, 2), 1.0, 100)
    np.testing.assert_allclose(got, reference.ps_roi_align(x, rois, 1, 2, 1.0, 100), rtol=1e-12, atol=1e-14)


def test_enormous_boxes_return_promptly_and_count_every_sample():
    # A box of side 2e6 has 2e6 x 2e6 samples in its one bin (torchvision visits
    # all of them); only those on the map are visited here. With corners at
    # -side/2 - 0.5 the samples sit on the integers, and those in [-1, 4] read
    # the all-ones 4x4 map: 6 x 6 of them, each worth 1 / side^2.
    x = np.ones((1, 1, 4, 4), np.float64)
    for side in (2e3, 2e6):
        rois = np.array([[0, -side / 2, -side / 2, side / 2, side / 2]])
        out = roipool.ps_roi_align(x, rois, 1)
        assert np.isclose(out[0, 0, 0, 0] * side**2, 36.0, rtol=1e-9)


def test_huge_sampling_ratio_on_a_zero_size_box_is_one_point():
    # 2**20 x 2**20 coinciding samples (the largest sampling_ratio): the value is that of their
    # common point (1, 2)
    x = np.random.default_rng(14).standard_normal((1, 4, 4, 5))
    out = roipool.ps_roi_align(x, np.array([[0, 2.5, 1.5, 2.5, 1.5]]), 2, 1.0, 2**20)
    np.testing.assert_array_equal(out[0].reshape(4), x[0, :, 1, 2])


# ---- boxes far past the map: only the samples on it, by runs ----


def first_beyond(position, lo, hi, bound, strict):
    """The first int in ``[lo, hi)`` with ``position(i) > bound`` (``strict``) or ``>= bound``, else ``hi``
    (``position`` rising with ``i``)."""
    while lo < hi:
        mid = (lo + hi) // 2
        y = position(mid)
        if y > bound if strict else y >= bound:
            hi = mid
        else:
            lo = mid + 1
    return lo


def runs_on_the_map(start, size, grid, limit, t):
    """``[(i, count, position)]``: one bin side's samples, placed as ``reference.ps_roi_align`` places
    them (``start + t(i + 0.5) * size / t(grid)`` in ``t``, ``i`` a Python int), that lie in
    ``[-1, limit]``, grouped into runs at one position. Found by bisection over Python ints (positions
    move monotonically with ``i``), independently of the kernels' float64 indices: a bin side of
    ``10**30`` samples costs a few hundred positions."""
    sign = 1 if size >= 0 else -1

    def position(i):
        with np.errstate(over="ignore"):  # float32 products past 3.4e38 are inf, as in the kernels
            return sign * (start + t(i + 0.5) * size / t(grid))

    bounds = (-1.0, limit) if sign > 0 else (-limit, 1.0)
    i = first_beyond(position, 0, grid, t(bounds[0]), False)
    end = first_beyond(position, i, grid, t(bounds[1]), True)
    runs = []
    while i < end:
        after = first_beyond(position, i + 1, end, position(i), True)
        runs.append((i, after - i, sign * position(i)))
        i = after
    return runs


def ps_roi_align_by_runs(x, rois, pooled, sampling_ratio):
    """``reference.ps_roi_align`` (scale 1), each run of samples at one position taken once times its
    length: the forward of boxes whose grids are far too large to visit sample by sample."""
    from roipool.reference import _common
    from roipool.reference.ps_roi import _ps_align_grid

    t = x.dtype.type
    _, channels, height, width = x.shape
    out = np.zeros((len(rois), channels // pooled**2, pooled, pooled))
    for k, roi in enumerate(rois):
        y1, x1, bin_h, bin_w, grid_h, grid_w = _ps_align_grid(t, roi, 1.0, pooled, pooled, sampling_ratio)
        for ph in range(pooled):
            rows = runs_on_the_map(t(ph) * bin_h + y1, bin_h, grid_h, height, t)
            for pw in range(pooled):
                cols = runs_on_the_map(t(pw) * bin_w + x1, bin_w, grid_w, width, t)
                for c in range(out.shape[1]):
                    plane = x[int(roi[0]), (c * pooled + ph) * pooled + pw]
                    total = 0.0
                    for _, ny, y in rows:
                        for _, nx, xs in cols:
                            taps = _common.bilinear_taps(y, xs, height, width)
                            total += ny * nx * sum(float(w) * float(plane[h, v]) for h, v, w in taps)
                    out[k, c, ph, pw] = total / (float(grid_h) * float(grid_w))
    return out


FAR = [1e13, 1e15, 1e20, 1e30]


def far_boxes(extent):
    """Boxes reaching ``extent`` cells out on both axes, across the map, and inverted: float32
    positions then round together in runs of up to ``extent * 2**-23`` samples on the map."""
    e = extent
    return np.array(
        [
            [0, -e, -e, e, 0.25 * e],
            [0, -e, -0.5 * e, 3.0, 4.0],
            [0, 2.5, 1.0, e, e],
            [0, e, 5.0, -e, -e],
            [0, -e, 1.5, e, 5.0],
        ]
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("extent", FAR)
def test_boxes_far_past_the_map_count_every_sample_that_lands_on_it(extent, dtype):
    # The windows of samples that land on the map were estimated with a margin capped at a
    # million samples: from about 2e12 cells out in float32 that missed samples on the map.
    # Past 1024 samples a side the runs of samples at one position are visited once.
    rng = np.random.default_rng(17)
    x = ps_input(rng, 1, 2, (2, 2), 6, 7, dtype)
    rois = far_boxes(extent).astype(dtype)
    got = roipool.ps_roi_align(x, rois, 2, 1.0, -1)
    want = ps_roi_align_by_runs(x, rois, 2, -1)
    assert np.abs(want).max() > 0
    # the sums run over up to 1e29 samples in another order: to the magnitude of their terms
    # (float32 results below its smallest subnormal are 0)
    terms = ps_roi_align_by_runs(np.abs(x), rois, 2, -1)
    rtol = 1e-12 if dtype == np.float64 else 2e-6
    assert (np.abs(got - want) <= rtol * (np.abs(want) + terms) + np.finfo(dtype).smallest_subnormal).all()


def test_tiny_boxes_match_reference():
    rng = np.random.default_rng(5)
    x = ps_input(rng, 1, 2, (2, 2), 6, 6, np.float64)
    rois = np.array(
        [[0, 2.0, 2.0, 2.0001, 2.0001], [0, 3.3, 1.1, 3.3, 1.1], [0, 5.9, 5.9, 6.0, 6.0], [0, -0.9, -0.9, -0.8, -0.8]]
    )
    for sampling_ratio in (-1, 2):
        np.testing.assert_allclose(
            roipool.ps_roi_align(x, rois, 2, 1.0, sampling_ratio),
            reference.ps_roi_align(x, rois, 2, 2, 1.0, sampling_ratio),
            rtol=1e-12,
            atol=1e-14,
        )
    np.testing.assert_array_equal(roipool.ps_roi_pool(x, rois, 2), reference.ps_roi_pool(x, rois, 2, 2, 1.0))


# ---- shapes, layouts, dtypes ----


def test_empty_box_set_and_empty_map():
    x = np.ones((2, 8, 4, 4), np.float32)
    for boxes in (np.zeros((0, 5), np.float32), [np.zeros((0, 4)), np.zeros((0, 4))]):
        for op in (roipool.ps_roi_pool, roipool.ps_roi_align):
            out = op(x, boxes, (2, 2))
            assert out.shape == (0, 2, 2, 2) and out.dtype == np.float32
        assert roipool.ps_roi_pool_backward(out, boxes, x.shape, 2).shape == x.shape
        assert not roipool.ps_roi_align_backward(out, boxes, x.shape, 2).any()
    rois = np.array([[0, 0, 0, 3, 3]], np.float32)
    for shape in ((1, 4, 0, 5), (1, 4, 5, 0), (1, 0, 5, 5)):
        empty_map = np.ones(shape, np.float32)
        for op in (roipool.ps_roi_pool, roipool.ps_roi_align):
            out = op(empty_map, rois, 2)
            assert out.shape == (1, shape[1] // 4, 2, 2) and not out.any()
        assert roipool.ps_roi_align_backward(np.ones_like(out), rois, shape, 2).shape == shape


def test_one_row_map():
    # ps_roi_pool clips bins to [0, H - 1) = [0, 0): always empty; ps_roi_align reads the row
    x = np.arange(2 * 4 * 5, dtype=np.float64).reshape(2, 4, 1, 5)
    rois = np.array([[1, 0, 0, 4, 1]], np.float64)
    assert not roipool.ps_roi_pool(x, rois, 2).any()
    np.testing.assert_allclose(roipool.ps_roi_align(x, rois, 2, 1.0, 2), reference.ps_roi_align(x, rois, 2, 2, 1.0, 2))


def test_list_of_boxes_equals_batch_index_form():
    rng = np.random.default_rng(6)
    x = ps_input(rng, 3, 2, (2, 2), 8, 8, np.float64)
    per_image = [rng.uniform(0, 16, (k, 4)) for k in (2, 0, 3)]
    rows = np.concatenate([np.column_stack([np.full(len(b), i), b]) for i, b in enumerate(per_image)])
    for op in (roipool.ps_roi_pool, roipool.ps_roi_align):
        np.testing.assert_array_equal(op(x, per_image, 2, 0.5), op(x, rows, 2, 0.5))


def test_non_contiguous_read_only_and_byte_swapped_inputs():
    rng = np.random.default_rng(7)
    base = ps_input(rng, 2, 3, (2, 2), 9, 11, np.float32)
    rois = random_rois(rng, 20, 2, 9, 11, 1.0)
    strided = np.ascontiguousarray(np.repeat(base, 2, axis=3))[..., ::2]
    nhwc_view = np.ascontiguousarray(base.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    swapped = base.astype(base.dtype.newbyteorder(">"))
    readonly = base.copy()
    readonly.flags.writeable = False
    for op in (roipool.ps_roi_pool, roipool.ps_roi_align):
        expected = op(base, rois, 2)
        for x in (strided, nhwc_view, swapped, readonly):
            np.testing.assert_array_equal(op(x, rois, 2), expected)
    g = rng.standard_normal((20, 3, 2, 2)).astype(np.float32)
    expected = roipool.ps_roi_align_backward(g, rois, base.shape, 2)
    for g_variant in (np.asfortranarray(g), g.astype(">f4"), np.repeat(g, 2, axis=3)[..., ::2]):
        np.testing.assert_array_equal(roipool.ps_roi_align_backward(g_variant, rois, base.shape, 2), expected)


def test_inputs_are_not_modified():
    rng = np.random.default_rng(8)
    x = ps_input(rng, 1, 2, (2, 2), 6, 6, np.float64)
    rois = random_rois(rng, 10, 1, 6, 6, 0.5)
    g = rng.standard_normal((10, 2, 2, 2))
    x0, r0, g0 = x.copy(), rois.copy(), g.copy()
    roipool.ps_roi_pool(x, rois, 2, 0.5)
    roipool.ps_roi_align(x, rois, 2, 0.5)
    roipool.ps_roi_pool_backward(g, rois, x.shape, 2, 0.5)
    roipool.ps_roi_align_backward(g, rois, x.shape, 2, 0.5)
    for a, b in ((x, x0), (rois, r0), (g, g0)):
        np.testing.assert_array_equal(a, b)


def test_float16_is_computed_in_float32():
    rng = np.random.default_rng(9)
    x = ps_input(rng, 1, 2, (2, 2), 6, 7, np.float16)
    rois = random_rois(rng, 12, 1, 6, 7, 1.0)
    for op in (roipool.ps_roi_pool, roipool.ps_roi_align):
        out = op(x, rois, 2)
        assert out.dtype == np.float16
        np.testing.assert_array_equal(out, op(x.astype(np.float32), rois, 2).astype(np.float16))
    g = rng.standard_normal((12, 2, 2, 2)).astype(np.float16)
    got = roipool.ps_roi_align_backward(g, rois, x.shape, 2)
    assert got.dtype == np.float16
    wide = roipool.ps_roi_align_backward(g.astype(np.float32), rois, x.shape, 2)
    np.testing.assert_array_equal(got, wide.astype(np.float16))


# ---- backward ----


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ps_roi_pool_backward_equals_reference(dtype):
    rng = np.random.default_rng(10)
    x = ps_input(rng, 2, 3, (3, 2), 7, 8, dtype)
    rois = random_rois(rng, 30, 2, 7, 8, 0.5)
    g = rng.standard_normal((30, 3, 3, 2)).astype(dtype)
    got = roipool.ps_roi_pool_backward(g, rois, x.shape, (3, 2), 0.5)
    assert got.dtype == dtype and got.shape == x.shape
    # each gradient element sums its RoIs in ascending order in both: identical bits
    np.testing.assert_array_equal(got, reference.ps_roi_pool_backward(g, rois.astype(dtype), x.shape, 0.5))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_ps_roi_align_backward_matches_reference(dtype, sampling_ratio):
    rng = np.random.default_rng(11)
    x = ps_input(rng, 2, 2, (2, 3), 7, 6, dtype)
    rois = random_rois(rng, 20, 2, 7, 6, 0.5)
    g = rng.standard_normal((20, 2, 2, 3)).astype(dtype)
    got = roipool.ps_roi_align_backward(g, rois, x.shape, (2, 3), 0.5, sampling_ratio)
    expected = reference.ps_roi_align_backward(g, rois.astype(dtype), x.shape, 0.5, sampling_ratio)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, expected, **tolerance(dtype))


@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 3])
def test_backward_is_the_adjoint_of_forward(sampling_ratio):
    # both ops are linear in the input: <g, F(x)> == <F^T(g), x>
    rng = np.random.default_rng(12)
    x = ps_input(rng, 2, 3, (3, 3), 9, 10, np.float64)
    rois = random_rois(rng, 40, 2, 9, 10, 0.5)
    g = rng.standard_normal((40, 3, 3, 3))
    for forward, backward, extra in (
        (roipool.ps_roi_pool, roipool.ps_roi_pool_backward, ()),
        (roipool.ps_roi_align, roipool.ps_roi_align_backward, (sampling_ratio,)),
    ):
        out = forward(x, rois, 3, 0.5, *extra)
        gx = backward(g, rois, x.shape, 3, 0.5, *extra)
        assert np.isclose(np.sum(g * out), np.sum(gx * x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 2])
def test_results_do_not_depend_on_the_thread_count(threads):
    rng = np.random.default_rng(13)
    x = ps_input(rng, 1, 3, (2, 2), 12, 12, np.float32)
    rois = random_rois(rng, 60, 1, 12, 12, 1.0)
    g = rng.standard_normal((60, 3, 2, 2)).astype(np.float32)
    before = roipool.get_num_threads()
    try:
        roipool.set_num_threads(1)
        expected = [
            roipool.ps_roi_align(x, rois, 2),
            roipool.ps_roi_align_backward(g, rois, x.shape, 2),
            roipool.ps_roi_pool_backward(g, rois, x.shape, 2),
        ]
        roipool.set_num_threads(min(threads, before))
        got = [
            roipool.ps_roi_align(x, rois, 2),
            roipool.ps_roi_align_backward(g, rois, x.shape, 2),
            roipool.ps_roi_pool_backward(g, rois, x.shape, 2),
        ]
    finally:
        roipool.set_num_threads(before)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_serial_and_parallel_kernels_give_the_same_bits(monkeypatch):
    # small calls run on the calling thread, large ones on the pool: same tasks' arithmetic
    from roipool.cpu import ps_roi as kernels

    rng = np.random.default_rng(15)
    x = ps_input(rng, 2, 16, (2, 2), 24, 24, np.float32)
    rois = random_rois(rng, 300, 2, 24, 24, 0.5)
    g = rng.standard_normal((300, 16, 2, 2)).astype(np.float32)
    calls = [
        lambda: roipool.ps_roi_pool(x, rois, 2, 0.5),
        lambda: roipool.ps_roi_align(x, rois, 2, 0.5),
        lambda: roipool.ps_roi_pool_backward(g, rois, x.shape, 2, 0.5),
        lambda: roipool.ps_roi_align_backward(g, rois, x.shape, 2, 0.5),
    ]
    monkeypatch.setattr(kernels, "_SMALL_WORK", 0)
    monkeypatch.setattr(kernels, "_SMALL_LAYOUT", 0)
    parallel = [call() for call in calls]
    monkeypatch.setattr(kernels, "_SMALL_WORK", 1 << 62)
    monkeypatch.setattr(kernels, "_SMALL_LAYOUT", 1 << 62)
    for call, expected in zip(calls, parallel):
        np.testing.assert_array_equal(call(), expected)


def test_concurrent_calls_give_the_same_results():
    rng = np.random.default_rng(17)
    x = ps_input(rng, 2, 16, (2, 2), 24, 24, np.float32)
    cases = [random_rois(rng, k, 2, 24, 24, 0.5) for k in (5, 300)]  # one small (serial), one large (parallel)
    g = [rng.standard_normal((len(r), 16, 2, 2)).astype(np.float32) for r in cases]

    def run(i):
        r = cases[i % 2]
        return roipool.ps_roi_align(x, r, 2, 0.5), roipool.ps_roi_pool_backward(g[i % 2], r, x.shape, 2, 0.5)

    expected = [run(0), run(1)]
    results, errors = run_in_threads(run, 12)
    assert not errors
    for i, (out, grad) in enumerate(results):
        np.testing.assert_array_equal(out, expected[i % 2][0])
        np.testing.assert_array_equal(grad, expected[i % 2][1])


# ---- bad input ----


def test_channels_not_a_multiple_of_the_bins_is_rejected():
    x = np.zeros((1, 10, 5, 5), np.float32)
    rois = np.zeros((1, 5), np.float32)
    for op in (roipool.ps_roi_pool, roipool.ps_roi_align):
        with pytest.raises(ValueError, match=r"input has 10 channels.*pooled_h \* pooled_w = 3 \* 3 = 9.*output_size"):
            op(x, rois, 3)
    with pytest.raises(ValueError, match="input_shape.*|output_size"):
        roipool.ps_roi_pool_backward(np.zeros((1, 1, 3, 3)), rois, (1, 10, 5, 5), 3)


def test_bad_arguments_name_themselves():
    x = np.zeros((1, 4, 5, 5), np.float32)
    rois = np.zeros((1, 5), np.float32)
    with pytest.raises(TypeError, match="sampling_ratio"):
        roipool.ps_roi_align(x, rois, 2, 1.0, 1.5)
    with pytest.raises(ValueError, match="spatial_scale"):
        roipool.ps_roi_align(x, rois, 2, 1e39)  # not representable in float32
    with pytest.raises(ValueError, match="spatial_scale"):
        roipool.ps_roi_pool(x, rois, 2, -1.0)
    with pytest.raises(ValueError, match="output_size"):
        roipool.ps_roi_pool(x, rois, (2, 0))
    with pytest.raises(TypeError, match="input"):
        roipool.ps_roi_pool(x.astype(np.int32), rois, 2)
    with pytest.raises(ValueError, match="boxes"):
        roipool.ps_roi_align(x, np.array([[1, 0, 0, 1, 1]]), 2)
    with pytest.raises(ValueError, match="grad_output must have shape"):
        roipool.ps_roi_align_backward(np.zeros((1, 1, 2, 3)), rois, x.shape, 2)
    with pytest.raises(ValueError, match="grad_output must have shape"):
        roipool.ps_roi_pool_backward(np.zeros((2, 1, 2, 2)), rois, x.shape, 2)
    with pytest.raises(TypeError, match="grad_output"):
        roipool.ps_roi_pool_backward([[0.0]], rois, x.shape, 2)
    with pytest.raises(ValueError, match="input_shape"):
        roipool.ps_roi_pool_backward(np.zeros((1, 1, 2, 2)), rois, (4, 5, 5), 2)
