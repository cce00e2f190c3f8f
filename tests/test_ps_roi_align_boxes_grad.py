"""ps_roi_align's gradient with respect to the boxes: the reference against finite differences,
the NumPy kernel against the reference, and the torch autograd against the NumPy kernel.
(The Triton kernel: tests/test_triton.py; JAX's callback: tests/test_jax.py.)"""

from __future__ import annotations

import numpy as np
import pytest

import roipool
from roipool import reference

from .test_ps_roi_numpy import FAR, far_boxes, ps_roi_align_by_runs, runs_on_the_map
from .test_roi_align_boxes_grad_numpy import edge_rois, inner_rois

SIZE = (3, 2)
CHANNELS_OUT = 2
CHANNELS = CHANNELS_OUT * SIZE[0] * SIZE[1]


def case(dtype, seed=0, height=9, width=11, scale=0.5, edges=True):
    """A map, boxes (edge cases and boxes well inside) and an upstream gradient."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, CHANNELS, height, width)).astype(dtype)
    rois = inner_rois(2, height, width, scale, 6, seed + 1)
    if edges:
        rois = np.concatenate([edge_rois(2, height, width, scale, 8, seed + 2), rois])
    g = rng.standard_normal((len(rois), CHANNELS_OUT, *SIZE)).astype(dtype)
    return x, rois.astype(dtype), g


def test_reference_is_the_derivative_of_the_forward():
    # boxes well inside, at non-round positions: no sample sits on a kink
    x, rois, g = case(np.float64, seed=3, edges=False)
    for sampling_ratio in (2, -1):
        want = reference.ps_roi_align_boxes_backward(x, g, rois, 0.5, sampling_ratio)
        h = 1e-6
        for k in range(len(rois)):
            for j in range(1, 5):
                up, down = rois.copy(), rois.copy()
                up[k, j] += h
                down[k, j] -= h
                value_up = (reference.ps_roi_align(x, up, *SIZE, 0.5, sampling_ratio) * g).sum()
                value_down = (reference.ps_roi_align(x, down, *SIZE, 0.5, sampling_ratio) * g).sum()
                assert abs((value_up - value_down) / (2 * h) - want[k, j]) < 1e-6, (sampling_ratio, k, j)
        assert not want[:, 0].any() and np.abs(want[:, 1:]).min() > 0


def test_reference_clamped_samples_do_not_move():
    x, _, _ = case(np.float64, height=5, width=6, scale=1.0)
    g = np.ones((2, CHANNELS_OUT, *SIZE))
    rois = np.array(
        [
            [0, -9.0, -9.0, -4.0, -4.0],  # every sample more than a cell off the map: reads 0
            [0, 5.7, 4.7, 6.3, 5.3],  # every sample past the last cell: clamped on both axes
        ]
    )
    assert not reference.ps_roi_align_boxes_backward(x, g, rois, 1.0, 2).any()
    assert not roipool.ps_roi_align_boxes_backward(g, x, rois, SIZE, 1.0, 2).any()
    assert reference.ps_roi_align(x, rois, *SIZE, 1.0, 2)[1].any()  # the clamped samples read the map


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sampling_ratio", [2, 1, -1, 0, 16])
def test_kernel_matches_reference(dtype, sampling_ratio):
    x, rois, g = case(dtype, seed=int(sampling_ratio) + 5)
    got = roipool.ps_roi_align_boxes_backward(g, x, rois, SIZE, 0.5, sampling_ratio)
    want = reference.ps_roi_align_boxes_backward(x, g, rois, 0.5, sampling_ratio)
    assert got.dtype == dtype and got.shape == rois.shape and not got[:, 0].any()
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(got, want.astype(dtype), rtol=rtol, atol=rtol * np.abs(want).max())


def test_kernel_visits_only_the_samples_on_the_map_of_a_huge_adaptive_grid():
    # 200 cells across one bin: 200 x 200 adaptive samples, of which the kernel visits those
    # that can land on the 6 x 6 map (ps_geometry._sample_range); the reference visits all
    x, _, _ = case(np.float64, height=6, width=6, scale=1.0)
    x = x[:, : CHANNELS_OUT * 1]
    rois = np.array([[0, -80.5, -60.25, 119.5, 139.75], [1, 2.2, -150.0, 4.9, 50.0]])
    g = np.random.default_rng(4).standard_normal((2, CHANNELS_OUT, 1, 1))
    got = roipool.ps_roi_align_boxes_backward(g, x, rois, 1, 1.0, -1)
    want = reference.ps_roi_align_boxes_backward(x, g, rois, 1.0, -1)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
    assert np.abs(got[:, 1:]).min() > 0


def boxes_backward_by_runs(x, g, rois, pooled):
    """``reference.ps_roi_align_boxes_backward`` (scale 1, adaptive grid), each run of samples at one
    position taken once: its slopes times its length, and its samples' ``a`` summed in closed form."""
    from roipool.reference.ps_roi import _ps_align_grid
    from roipool.reference.roi_align import bilinear_position_grad

    t = x.dtype.type
    _, _, height, width = x.shape
    limit = t(np.finfo(x.dtype).max / 8)
    grad = np.zeros((len(rois), 5))
    for k, roi in enumerate(rois):
        moves = [1.0 if -limit < t(roi[j]) < limit else 0.0 for j in range(5)]
        y1, x1, bin_h, bin_w, grid_h, grid_w = _ps_align_grid(t, roi, 1.0, pooled, pooled, -1)
        for ph in range(pooled):
            rows = runs_on_the_map(t(ph) * bin_h + y1, bin_h, grid_h, height, t)
            for pw in range(pooled):
                cols = runs_on_the_map(t(pw) * bin_w + x1, bin_w, grid_w, width, t)
                for iy, ny, y in rows:
                    # the sum over the run of a = (ph + (i + 0.5) / grid) / pooled, i from iy to iy + ny - 1
                    sum_ay = (ny * ph + (ny * iy + ny * ny / 2) / grid_h) / pooled
                    for ix, nx, xs in cols:
                        sum_ax = (nx * pw + (nx * ix + nx * nx / 2) / grid_w) / pooled
                        gy = gx = 0.0
                        for c in range(g.shape[1]):
                            plane = x[int(roi[0]), (c * pooled + ph) * pooled + pw]
                            _, dy, dx = bilinear_position_grad(y, xs, height, width, plane)
                            share = float(g[k, c, ph, pw]) / (float(grid_h) * float(grid_w))
                            gy += share * dy
                            gx += share * dx
                        grad[k, 1] += gx * ny * (nx - sum_ax) * moves[1]
                        grad[k, 3] += gx * ny * sum_ax * moves[3]
                        grad[k, 2] += gy * nx * (ny - sum_ay) * moves[2]
                        grad[k, 4] += gy * nx * sum_ay * moves[4]
    return grad


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("extent", [1e12, *FAR])
def test_boxes_far_past_the_map_on_both_axes_move_every_sample_on_it(extent, dtype):
    # Float32 boxes this far out put thousands (at 1e12) to 1e23 (at 1e30) samples at each
    # position on the map: the kernel visited them one by one (201 s for one box at 1e12), and
    # past about 2e12 cells its window missed some. Now each run at one position is visited once.
    rng = np.random.default_rng(19)
    x = rng.standard_normal((1, CHANNELS_OUT * 4, 6, 7)).astype(dtype)
    rois = far_boxes(extent).astype(dtype)
    g = rng.standard_normal((len(rois), CHANNELS_OUT, 2, 2)).astype(dtype)
    got = roipool.ps_roi_align_boxes_backward(g, x, rois, 2, 1.0, -1)
    want = boxes_backward_by_runs(x, g, rois, 2)
    assert np.abs(want).max() > 0 and not got[:, 0].any()
    # to the magnitude of the terms: a sample moves by at most 1 along a slope of at most 2 max|x|,
    # weighed by its bin's gradient over the bin's samples; the share of those on the map is the
    # forward on a map of ones
    on_map = ps_roi_align_by_runs(np.ones_like(x), rois, 2, -1)
    terms = 2 * np.abs(x).max() * (np.abs(g) * on_map).sum((1, 2, 3))[:, None]
    rtol = 1e-12 if dtype == np.float64 else 2e-6
    assert (np.abs(got - want) <= rtol * (np.abs(want) + terms) + np.finfo(dtype).smallest_subnormal).all()


def test_a_run_that_ends_at_the_end_of_a_grid_past_2_53_counts_only_its_samples():
    # Past 2**53 samples a side each float64 index stands for the ints that round to it. This
    # box's last column bin ends in a run at 0.0 whose end index is g itself: ints 2**58 + 288
    # to + 320 lie there, 33 samples, and those from g on are none; a float64 rounding in the
    # test for that counted 48 (found by differential fuzzing against the oracle)
    rois = np.array([[0, -1.0880016014565213e18, 0.0, 1.4, 1.0]])
    ones = np.ones((1, 16, 4, 4))
    want = ps_roi_align_by_runs(ones, rois, 4, -1)
    np.testing.assert_allclose(roipool.ps_roi_align(ones, rois, 4, 1.0, -1), want, rtol=1e-12, atol=0)
    assert 0 < want[0, 0, 0, 3] < 1e-15  # 33 samples of 2.7e17, the other bins' none
    ramp = np.ones((1, 16, 4, 4)) * np.arange(4.0)[:, None]  # rows: the y corners move the value
    g = np.ones((1, 1, 4, 4))
    got = roipool.ps_roi_align_boxes_backward(g, ramp, rois, 4, 1.0, -1)
    want = boxes_backward_by_runs(ramp, g, rois, 4)
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def test_a_large_fixed_grid_costs_the_cells_of_its_bins_not_its_samples_squared():
    # 128 x 128 samples a bin: the kernel sums each axis's samples per cell first (the reference
    # visits all 16384); before, it visited them all too, so sampling_ratio=2**10 took seconds a
    # box and 2**20 never ended
    x, _, _ = case(np.float64, seed=12, height=6, width=7, scale=1.0)
    x = x[:, :CHANNELS_OUT]
    rois = np.array([[0, 0.7, 1.3, 5.2, 4.9], [1, -2.5, 3.1, 4.4, 8.0]])
    g = np.random.default_rng(13).standard_normal((2, CHANNELS_OUT, 1, 1))
    got = roipool.ps_roi_align_boxes_backward(g, x, rois, 1, 1.0, 128)
    want = reference.ps_roi_align_boxes_backward(x, g, rois, 1.0, 128)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    assert np.abs(got[:, 1:]).min() > 0
    # 2**40 samples a bin (float32 positions there round together in runs) take milliseconds, and
    # as the grid gets finer the gradient settles, as 1 / sampling_ratio, to that of the bin's mean
    fine = roipool.ps_roi_align_boxes_backward(g, x, rois, 1, 1.0, 2**12)
    finest = roipool.ps_roi_align_boxes_backward(g.astype(np.float32), x.astype(np.float32), rois, 1, 1.0, 2**20)
    assert np.isfinite(finest).all()
    assert np.abs(finest - fine).max() < np.abs(fine - got).max() / 8


def test_boxes_without_extent_move_their_coincident_samples_together():
    # a zero width puts every sample of a bin column on one point: visited once, worth all of them
    x, _, _ = case(np.float64, seed=8)
    rois = np.array([[0, 3.3, 2.2, 3.3, 9.8], [1, 1.1, 4.4, 8.6, 4.4], [0, 5.5, 5.5, 5.5, 5.5]])
    g = np.random.default_rng(9).standard_normal((3, CHANNELS_OUT, *SIZE))
    for sampling_ratio in (3, -1):
        got = roipool.ps_roi_align_boxes_backward(g, x, rois, SIZE, 1.0, sampling_ratio)
        want = reference.ps_roi_align_boxes_backward(x, g, rois, 1.0, sampling_ratio)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        assert np.abs(got[:, 1:]).min() > 0


def test_the_same_bits_for_any_thread_count():
    x, rois, g = case(np.float32, seed=11)
    rois = np.tile(rois, (40, 1))  # enough work for a parallel launch
    g = np.tile(g, (40, 1, 1, 1))
    threads = roipool.get_num_threads()
    try:
        results = []
        for n in sorted({1, threads}):
            roipool.set_num_threads(n)
            results.append(roipool.ps_roi_align_boxes_backward(g, x, rois, SIZE, 0.5, 2))
    finally:
        roipool.set_num_threads(threads)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_box_lists_and_nhwc_give_the_same_values():
    x, rois, g = case(np.float64, seed=12)
    rois = rois[np.argsort(rois[:, 0], kind="stable")]
    want = roipool.ps_roi_align_boxes_backward(g, x, rois, SIZE, 0.5, 2)
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    got = roipool.ps_roi_align_boxes_backward(g, x, per_image, SIZE, 0.5, 2)
    assert [p.shape for p in got] == [p.shape for p in per_image]
    np.testing.assert_array_equal(np.concatenate(got), want[:, 1:])
    nhwc = roipool.ps_roi_align_boxes_backward(
        g.transpose(0, 2, 3, 1), x.transpose(0, 2, 3, 1).copy(), rois, SIZE, 0.5, 2, layout="nhwc"
    )
    np.testing.assert_array_equal(nhwc, want)
    assert roipool.ps_roi_align_boxes_backward(g[:0], x, rois[:0], SIZE, 0.5, 2).shape == (0, 5)


def test_inputs_are_not_modified():
    x, rois, g = case(np.float32, seed=13)
    copies = [a.copy() for a in (x, rois, g)]
    roipool.ps_roi_align_boxes_backward(g, x, rois, SIZE, 0.5, -1)
    for a, b in zip((x, rois, g), copies):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "change, error, words",
    [
        ({"grad_output": np.zeros((3, CHANNELS_OUT, 2, 2))}, ValueError, "grad_output"),
        ({"grad_output": np.zeros((2, CHANNELS_OUT, *SIZE))}, ValueError, "grad_output"),
        ({"input": np.zeros((2, CHANNELS + 1, 9, 11))}, ValueError, "multiple of pooled_h"),
        ({"boxes": np.array([[0, 1, 1, 3, 3], [2, 1, 1, 3, 3], [0, 1, 1, 3, 3]], float)}, ValueError, "boxes"),
        ({"boxes": np.array([[0, 1, 1, 3, np.nan]] * 3)}, ValueError, "NaN"),
        ({"sampling_ratio": 1.5}, TypeError, "sampling_ratio"),
        ({"output_size": 0}, ValueError, "output_size"),
        ({"input": [[1.0]]}, TypeError, "input"),
    ],
)
def test_bad_input_is_refused_by_name(change, error, words):
    x, _, _ = case(np.float64)
    args = {
        "grad_output": np.zeros((3, CHANNELS_OUT, *SIZE)),
        "input": x,
        "boxes": np.array([[0, 1, 1, 3, 3]] * 3, float),
        "output_size": SIZE,
        "spatial_scale": 0.5,
        "sampling_ratio": 2,
    }
    args.update(change)
    with pytest.raises(error, match=words):
        roipool.ps_roi_align_boxes_backward(**args)
