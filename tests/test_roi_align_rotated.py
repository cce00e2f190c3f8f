"""roi_align_rotated on NumPy arrays: the kernels against the reference loops and OpenVINO.

Torch-path tests (gradcheck of the input and the boxes, opcheck, compile,
export) are in ``tests/test_roi_align_rotated_torch.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import roipool
from roipool import reference

RTOL = {np.float32: 2e-5, np.float64: 1e-12}
ATOL = {np.float32: 2e-5, np.float64: 1e-12}


def random_rotated_rois(rng, k, n, height, width, scale, max_side=None):
    """Rotated boxes in image coordinates: centres up to a few cells past the map, any angle, some of zero size."""
    img_h, img_w = height / scale, width / scale
    max_side = max_side or 1.3 * max(img_h, img_w)
    rois = np.column_stack(
        [
            rng.integers(0, n, k),
            rng.uniform(-0.3 * img_w, 1.3 * img_w, k),
            rng.uniform(-0.3 * img_h, 1.3 * img_h, k),
            rng.uniform(0, max_side, k),
            rng.uniform(0, max_side, k),
            rng.uniform(-2 * np.pi, 2 * np.pi, k),
        ]
    )
    rois[::7, 3] = 0  # zero width
    rois[3::7, 3:5] = 0  # a point
    return rois


def ramp(n, c, height, width, dtype=np.float64):
    """``x[n, c, y, x] = 100 * c + 10 * y + x``: bilinear interpolation reproduces it exactly."""
    cc, yy, xx = np.meshgrid(np.arange(c), np.arange(height), np.arange(width), indexing="ij")
    return np.broadcast_to(100.0 * cc + 10.0 * yy + xx, (n, c, height, width)).astype(dtype)


def check_against_reference(x, rois, output_size, scale, sampling_ratio, aligned, clockwise, grad_seed=0):
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    dtype = x.dtype.type
    r = rois.astype(x.dtype)
    args = (scale, sampling_ratio, aligned, clockwise)
    expected = reference.roi_align_rotated(x, r, ph, pw, *args)
    got = roipool.roi_align_rotated(x, rois, output_size, *args)
    assert got.dtype == x.dtype and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=RTOL[dtype], atol=ATOL[dtype])
    g = np.random.default_rng(grad_seed).standard_normal(got.shape).astype(x.dtype)
    expected_grad = reference.roi_align_rotated_backward(g, r, x.shape, *args)
    grad = roipool.roi_align_rotated_backward(g, rois, x.shape, output_size, *args)
    assert grad.dtype == x.dtype and grad.shape == x.shape
    np.testing.assert_allclose(grad, expected_grad, rtol=RTOL[dtype], atol=ATOL[dtype])
    return got, grad


# ---- against the reference loops ----


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("clockwise", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 3])
def test_random_boxes_match_reference(dtype, aligned, clockwise, sampling_ratio):
    rng = np.random.default_rng([sampling_ratio + 1, aligned, clockwise, dtype == np.float32])
    n, c, h, w = 2, 3, int(rng.integers(1, 12)), int(rng.integers(1, 12))
    scale = float(rng.choice([1.0, 0.5, 0.25, 1 / 3]))
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    rois = random_rotated_rois(rng, 16, n, h, w, scale)
    check_against_reference(
        x, rois, (int(rng.integers(1, 4)), int(rng.integers(1, 4))), scale, sampling_ratio, aligned, clockwise
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wide_channel_blocks_match_reference(dtype):
    # 147 float32 channels = a 128-channel register block + one 16-lane vector + 3 single channels
    rng = np.random.default_rng(16)
    x = rng.standard_normal((2, 147, 7, 9)).astype(dtype)
    rois = random_rotated_rois(rng, 6, 2, 7, 9, 0.5)
    check_against_reference(x, rois, (2, 3), 0.5, 2, True, False)


def test_adversarial_boxes_match_reference():
    x = np.random.default_rng(1).standard_normal((2, 2, 5, 7))
    rois = np.array(
        [
            [0, 3.5, 2.5, 7, 5, 0.0],  # the whole map
            [1, -30, -30, 4, 4, 0.3],  # wholly outside, before the map
            [1, 40, 40, 6, 3, -1.0],  # wholly outside, after the map
            [0, -0.5, -0.5, 2, 2, math.pi / 4],  # straddling the top-left corner
            [0, 6.5, 4.5, 3, 2, 2.0],  # straddling the bottom-right corner
            [1, 3, 2, 0, 0, 0.7],  # a point
            [1, 3, 2, 0, 4, 0.7],  # a segment
            [0, 3.2, 2.1, 0.05, 0.05, 0.1],  # tiny
            [0, 3.5, 2.5, 9, 7, math.pi / 2],  # one cell past every border, rotated a quarter turn
            [0, 3.5, 2.5, 120, 90, 0.2],  # much larger than the map
            [1, 3.0, 2.0, 4.0, 2.0, 1e4],  # an angle far outside [-pi, pi]
        ]
    )
    for sr in (-1, 2):
        for aligned in (False, True):
            for rows in (rois, rois.astype(np.float32)):
                check_against_reference(x.astype(rows.dtype), rows, (3, 2), 1.0, sr, aligned, False)


# ---- semantics pinned by hand-derived values (docs/semantics.md, Rotated RoIAlign) ----


@pytest.mark.parametrize("clockwise", [False, True])
def test_worked_example_mmcv_convention(clockwise):
    # ramp 10 * y + x on a 10 x 10 map; box centre (4.5, 5.5), w 4, h 2, angle pi/2, one bin row of
    # two bins, one sample each. aligned=True shifts the centre to (4, 5) (x, y). In the box frame the
    # bins' samples are at u = -1 and u = +1 (v = 0); on the map y = cy - u * sin, x = cx + u * cos:
    # counter-clockwise (sin = 1): y = 6 then 4, x = 4; clockwise (sin = -1): y = 4 then 6.
    x = ramp(1, 1, 10, 10)
    box = np.array([[0, 4.5, 5.5, 4.0, 2.0, math.pi / 2]])
    got = roipool.roi_align_rotated(x, box, (1, 2), 1.0, 1, True, clockwise)[0, 0, 0]
    want = [44.0, 64.0] if clockwise else [64.0, 44.0]
    np.testing.assert_allclose(got, want, atol=1e-12)
    # aligned=False: no shift, centre (4.5, 5.5): every value moves by 10 * 0.5 + 0.5
    got = roipool.roi_align_rotated(x, box, (1, 2), 1.0, 1, False, clockwise)[0, 0, 0]
    np.testing.assert_allclose(got, np.array(want) + 5.5, atol=1e-12)


def test_worked_example_detectron2_convention():
    # detectron2's ROIAlignRotated: angle in degrees, counter-clockwise, always half-pixel aligned.
    # The documented mapping: radians = deg2rad(degrees), aligned=True, clockwise=False.
    x = ramp(1, 1, 10, 10)
    d2_box = np.array([[0, 4.5, 5.5, 4.0, 2.0, 90.0]])
    box = d2_box.copy()
    box[:, 5] = np.deg2rad(box[:, 5])
    got = roipool.roi_align_rotated(x, box, (1, 2), 1.0, 1, aligned=True, clockwise=False)[0, 0, 0]
    np.testing.assert_allclose(got, [64.0, 44.0], atol=1e-12)
    # detectron2's rule written out: y = v cos(t) - u sin(t) + cy - 0.5, x = v sin(t) + u cos(t) + cx - 0.5
    t = math.radians(30.0)
    d2_box[0, 5] = 30.0
    box[0, 5] = math.radians(30.0)
    got = roipool.roi_align_rotated(x, box, (2, 2), 1.0, 1, aligned=True)[0, 0]
    for ph in range(2):
        for pw in range(2):
            v, u = -1.0 + (ph + 0.5) * 1.0, -2.0 + (pw + 0.5) * 2.0
            yy = v * math.cos(t) - u * math.sin(t) + 5.0
            xx = v * math.sin(t) + u * math.cos(t) + 4.0
            assert got[ph, pw] == pytest.approx(10 * yy + xx, abs=1e-12)


@pytest.mark.parametrize("aligned", [False, True])
def test_angle_zero_is_axis_aligned_roi_align(aligned):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 9, 11))
    rois = random_rotated_rois(rng, 20, 2, 9, 11, 0.5)
    rois[:, 5] = 0
    rois[:, 3:5] = np.maximum(rois[:, 3:5], 2.0)  # at least one cell: the legacy clamp centres, roi_align anchors
    corners = np.column_stack(
        [
            rois[:, 0],
            rois[:, 1] - rois[:, 3] / 2,
            rois[:, 2] - rois[:, 4] / 2,
            rois[:, 1] + rois[:, 3] / 2,
            rois[:, 2] + rois[:, 4] / 2,
        ]
    )
    for sr in (-1, 2):
        got = roipool.roi_align_rotated(x, rois, (3, 2), 0.5, sr, aligned)
        want = roipool.roi_align(x, corners, (3, 2), 0.5, sr, aligned)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_angle_is_periodic_and_a_half_turn_flips_the_bins():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 2, 8, 8))
    rois = np.array([[0, 4.1, 3.7, 5.3, 2.9, 0.4]])
    base = roipool.roi_align_rotated(x, rois, (2, 3), 1.0, 2)
    for turns in (-3, 1, 5):
        moved = rois.copy()
        moved[0, 5] += 2 * math.pi * turns
        np.testing.assert_allclose(roipool.roi_align_rotated(x, moved, (2, 3), 1.0, 2), base, atol=1e-9)
    flipped = rois.copy()
    flipped[0, 5] += math.pi
    np.testing.assert_allclose(roipool.roi_align_rotated(x, flipped, (2, 3), 1.0, 2), base[:, :, ::-1, ::-1], atol=1e-9)


def test_degenerate_boxes():
    x = ramp(1, 1, 6, 6)
    # adaptive sampling of a zero-size box takes no samples: 0 (aligned)
    point = np.array([[0, 2.5, 3.5, 0.0, 0.0, 0.3]])
    assert np.all(roipool.roi_align_rotated(x, point, 2, 1.0, -1, True) == 0)
    # a fixed sampling ratio reads every sample at the (shifted) centre: (x, y) = (2, 3)
    np.testing.assert_allclose(roipool.roi_align_rotated(x, point, 2, 1.0, 2, True), 32.0, atol=1e-12)
    # legacy mode (aligned=False) reads a zero-size box as one cell: adaptive gives one sample per bin
    got = roipool.roi_align_rotated(x, point, 1, 1.0, -1, False)
    np.testing.assert_allclose(got, 35.0 + 2.5, atol=1e-12)


def test_samples_beyond_one_cell_of_the_map_read_nothing():
    x = np.ones((1, 1, 4, 4))
    # one sample per bin at centre x = -1.5 (aligned=False): more than a cell before the map
    assert roipool.roi_align_rotated(x, np.array([[0, -1.5, 2, 1, 1, 0]]), 1, 1.0, 1, False)[0, 0, 0, 0] == 0
    # at -1 exactly it is read (clamped to column 0)
    assert roipool.roi_align_rotated(x, np.array([[0, -1.0, 2, 1, 1, 0]]), 1, 1.0, 1, False)[0, 0, 0, 0] == 1
    # x = W exactly is read, past it is not
    assert roipool.roi_align_rotated(x, np.array([[0, 4.0, 2, 1, 1, 0]]), 1, 1.0, 1, False)[0, 0, 0, 0] == 1
    assert roipool.roi_align_rotated(x, np.array([[0, 4.01, 2, 1, 1, 0]]), 1, 1.0, 1, False)[0, 0, 0, 0] == 0


def test_row_clipping_of_large_adaptive_grids_matches_reference():
    # grids of more than 8 samples per bin side are clipped row by row to the samples near the map
    x = np.random.default_rng(13).standard_normal((1, 2, 5, 6))
    rois = np.array([[0, 2.5, 2.0, 40.0, 30.0, 0.4], [0, -6.0, 3.0, 25.0, 12.0, -1.1], [0, 3.0, 2.5, 36.0, 0.5, 2.0]])
    check_against_reference(x, rois, (2, 1), 1.0, -1, True, False)
    check_against_reference(x, rois, 1, 1.0, 13, False, True)


@pytest.mark.parametrize("angle", [np.pi / 2, np.pi, -np.pi / 2])
def test_row_clipping_keeps_samples_on_the_border_of_a_quarter_turned_box(angle):
    # cos(pi / 2) is 6e-17, not 0: a row's columns then move by 1e-16 per sample, and the
    # samples sitting exactly on x = W (read at the last column) must survive the clipping
    x = np.random.default_rng(0).standard_normal((1, 2, 33, 2))
    rois = np.array([[0, 1.5, 22.5, 42.0, 2.0, angle], [0, 1.0, 16.0, 40.0, 4.0, angle]])
    check_against_reference(x, rois, (2, 3), 1.0, -1, False, False)
    check_against_reference(x, rois, (2, 3), 1.0, 14, True, True)


def test_huge_adaptive_box_runs_fast_and_counts_every_sample():
    # 5000 x 5000 cells, 1 x 1 output: 25e6 samples, of which only those near the 4 x 5 map are read
    x = np.ones((1, 1, 4, 5))
    box = np.array([[0, 2.5, 2.0, 5000.0, 5000.0, 0.3]])
    got = roipool.roi_align_rotated(x, box, 1, 1.0, -1, True)[0, 0, 0, 0]
    # samples one per cell on a rotated lattice: about (H + 2) * (W + 2) of them land in [-1, H] x [-1, W]
    assert 0 < got * 5000**2 < 60
    with pytest.raises(ValueError, match="adaptive samples per bin side"):
        roipool.roi_align_rotated(x, np.array([[0, 0, 0, 1e9, 1.0, 0.0]]), 1, 1.0, -1, True)
    # a fixed sampling ratio is fine however large the box
    assert np.isfinite(roipool.roi_align_rotated(x, np.array([[0, 0, 0, 1e30, 1e30, 0.1]]), 2, 1.0, 2)).all()


# ---- OpenVINO's ROIAlignRotated (opset 15) as an independent oracle ----


@pytest.mark.parametrize("clockwise", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_matches_openvino(clockwise, sampling_ratio):
    from .openvino_oracle import roi_align_rotated as openvino_roi_align_rotated

    rng = np.random.default_rng([7, clockwise, sampling_ratio])
    x = rng.standard_normal((2, 5, 13, 17)).astype(np.float32)
    rois = random_rotated_rois(rng, 200, 2, 13, 17, 0.5)
    got = roipool.roi_align_rotated(x, rois, (3, 4), 0.5, sampling_ratio, True, clockwise)
    want = openvino_roi_align_rotated(x, rois, 3, 4, 0.5, sampling_ratio, clockwise)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


# ---- dtypes, layouts, threads ----


def test_float16_is_computed_in_float32():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 3, 6, 7)).astype(np.float16)
    rois = random_rotated_rois(rng, 5, 1, 6, 7, 1.0)
    got = roipool.roi_align_rotated(x, rois, 2, 1.0, 2)
    assert got.dtype == np.float16
    want = reference.roi_align_rotated(x.astype(np.float32), rois.astype(np.float32), 2, 2, 1.0, 2, True, False)
    np.testing.assert_array_equal(got, want.astype(np.float16))


def test_non_contiguous_and_channels_last_inputs():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 4, 6, 7))
    rois = random_rotated_rois(rng, 8, 2, 6, 7, 1.0)
    want = roipool.roi_align_rotated(x, rois, 2, 1.0, 2)
    for view in (x.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2), np.repeat(x, 2, axis=3)[..., ::2]):
        np.testing.assert_array_equal(roipool.roi_align_rotated(view, rois, 2, 1.0, 2), want)


def test_results_are_bit_identical_for_any_thread_count():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 40, 10, 12)).astype(np.float32)
    rois = random_rotated_rois(rng, 60, 2, 10, 12, 1.0)
    g = rng.standard_normal((60, 40, 3, 3)).astype(np.float32)
    before = roipool.get_num_threads()
    results = []
    try:
        for threads in sorted({1, before}):
            roipool.set_num_threads(threads)
            results.append(
                (
                    roipool.roi_align_rotated(x, rois, 3, 1.0, -1),
                    roipool.roi_align_rotated_backward(g, rois, x.shape, 3, 1.0, -1),
                )
            )
    finally:
        roipool.set_num_threads(before)
    for out, grad in results[1:]:
        np.testing.assert_array_equal(out, results[0][0])
        np.testing.assert_array_equal(grad, results[0][1])


def test_backward_with_every_channel_block_width():
    # the backward narrows its channel block when there are fewer (image, block) tasks than threads
    from roipool.cpu import roi_align_rotated as frontend

    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 40, 6, 7)).astype(np.float32)
    rois = random_rotated_rois(rng, 6, 1, 6, 7, 1.0)
    g = rng.standard_normal((6, 40, 2, 2)).astype(np.float32)
    want = reference.roi_align_rotated_backward(g, rois.astype(np.float32), x.shape, 1.0, 2, True, False)
    for threads in (1, 3, 8):
        assert frontend.channel_block(40, 1, 4, threads) % 16 == 0
    original = frontend.channel_block
    try:
        for block in (16, 128):
            frontend.channel_block = lambda *args, block=block: block
            got = roipool.roi_align_rotated_backward(g, rois, x.shape, 2, 1.0, 2)
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    finally:
        frontend.channel_block = original


# ---- bad input ----

X = np.zeros((2, 3, 8, 8), np.float32)

BAD_ROTATED_BOXES = [
    (np.zeros((2, 5), np.float32), r"must have shape \(K, 6\).*5 columns given"),
    (np.zeros((2, 4), np.float32), r"must have shape \(K, 6\)"),
    (np.array([[0.5, 1, 1, 2, 2, 0]]), "batch index and must be a whole number"),
    (np.array([[2, 1, 1, 2, 2, 0]]), r"batch index and must be in \[0, 2\)"),
    (np.array([[-1, 1, 1, 2, 2, 0]]), r"batch index and must be in \[0, 2\)"),
    (np.array([[0, 1, 1, 2, 2, np.nan]]), "NaN or infinite"),
    (np.array([[0, np.inf, 1, 2, 2, 0]]), "NaN or infinite"),
    (np.array([[0, 1, 1, 1e39, 2, 0]]), "NaN or infinite"),
    (np.array([[0, 1, 1, -2, 2, 0]]), "negative size"),
    (np.array([[0, 1, 1, 2, -1e-9, 0]]), "negative size"),
    ([np.zeros((1, 4)), np.zeros((0, 5))], r"boxes\[0\] must have shape \(L, 5\).*angle is missing"),
    ([np.zeros((1, 5))], "one array per image"),
]


@pytest.mark.parametrize("boxes, words", BAD_ROTATED_BOXES)
def test_bad_boxes_raise_a_clear_value_error_and_are_not_modified(boxes, words):
    before = [b.copy() for b in boxes] if isinstance(boxes, list) else boxes.copy()
    with pytest.raises(ValueError, match=words):
        roipool.roi_align_rotated(X, boxes, 2)
    g = np.zeros((1, 3, 2, 2), np.float32)
    with pytest.raises(ValueError, match=words):
        roipool.roi_align_rotated_backward(g, boxes, X.shape, 2)
    if isinstance(boxes, list):
        assert all(np.array_equal(a, b) for a, b in zip(before, boxes, strict=True))
    else:
        np.testing.assert_array_equal(before, boxes)


def test_bad_arguments():
    boxes = np.array([[0, 1, 1, 2, 2, 0.5]])
    with pytest.raises(TypeError, match="clockwise must be a bool"):
        roipool.roi_align_rotated(X, boxes, 2, 1.0, -1, True, 1)
    with pytest.raises(TypeError, match="aligned must be a bool"):
        roipool.roi_align_rotated(X, boxes, 2, 1.0, -1, "yes")
    with pytest.raises(ValueError, match="output_size must be positive"):
        roipool.roi_align_rotated(X, boxes, 0)
    with pytest.raises(ValueError, match="spatial_scale must be finite and positive"):
        roipool.roi_align_rotated(X, boxes, 2, -1.0)
    with pytest.raises(TypeError, match="input must have a real floating dtype"):
        roipool.roi_align_rotated(X.astype(np.int32), boxes, 2)
    with pytest.raises(ValueError, match="boxes hold 1 RoIs but grad_output has 2"):
        roipool.roi_align_rotated_backward(np.zeros((2, 3, 2, 2)), boxes, X.shape, 2)


def test_finite_input_never_gives_nan():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    rois = np.array(
        [[0, 1e30, -1e30, 1e30, 1e30, 1e30], [0, 2, 2, 3e38, 0, -1e38], [0, 2, 2, 1e-30, 1e-30, 1e-30]], np.float32
    )
    for sr in (1, 3):
        out = roipool.roi_align_rotated(x, rois, 2, 1.0, sr)
        assert np.isfinite(out).all()
        grad = roipool.roi_align_rotated_backward(np.ones_like(out), rois, x.shape, 2, 1.0, sr)
        assert np.isfinite(grad).all()


@pytest.mark.parametrize("shape", [(1, 2, 0, 5), (1, 2, 5, 0), (1, 0, 5, 5)])
def test_empty_maps(shape):
    boxes = np.array([[0, 0.2, 0.3, 1, 1, 0.1]])
    out = roipool.roi_align_rotated(np.zeros(shape), boxes, 2, 1.0, 2)
    assert out.shape == (1, shape[1], 2, 2) and not out.any()
    grad = roipool.roi_align_rotated_backward(np.ones(out.shape), boxes, shape, 2, 1.0, 2)
    assert grad.shape == shape


def test_empty_boxes():
    out = roipool.roi_align_rotated(X, np.zeros((0, 6)), (2, 3))
    assert out.shape == (0, 3, 2, 3)
    out = roipool.roi_align_rotated(X, [np.zeros((0, 5)), np.zeros((0, 5))], 2)
    assert out.shape == (0, 3, 2, 2)
    grad = roipool.roi_align_rotated_backward(np.zeros((0, 3, 2, 2), np.float32), np.zeros((0, 6)), X.shape, 2)
    assert grad.shape == X.shape and not grad.any()
