"""roi_pool on NumPy arrays: the kernels against the reference and ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import roipool
from roipool import reference

from .helpers import random_rois, run_in_threads
from .ort_oracle import max_roi_pool


def check_against_reference(x, rois, output_size, scale):
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    expected, expected_argmax = reference.roi_pool(x, rois.astype(x.dtype), ph, pw, scale)
    got = roipool.roi_pool(x, rois, output_size, scale)
    got2, argmax = roipool.roi_pool_with_argmax(x, rois, output_size, scale)
    assert got.dtype == x.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got2, expected)
    np.testing.assert_array_equal(argmax, expected_argmax)
    return got, argmax


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(6))
def test_random_boxes_match_reference(dtype, seed):
    rng = np.random.default_rng(seed)
    n, c, h, w = 2, 5, int(rng.integers(1, 20)), int(rng.integers(1, 20))
    scale = float(rng.choice([1.0, 0.5, 0.25, 1 / 16, 1 / 3]))
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    rois = random_rois(rng, 40, n, h, w, scale)
    check_against_reference(x, rois, (int(rng.integers(1, 8)), int(rng.integers(1, 8))), scale)


def test_half_way_coordinates_round_away_from_zero():
    # 2.5 * 1 rounds to 3 (C's round), not 2 (NumPy's round-half-to-even)
    x = np.arange(100, dtype=np.float32).reshape(1, 1, 10, 10)
    rois = np.array([[0, 2.5, 2.5, 2.5, 2.5], [0, 0.5, 0.5, 1.5, 1.5], [0, -0.5, -0.5, -0.5, -0.5]])
    out, argmax = check_against_reference(x, rois, 1, 1.0)
    assert out[0, 0, 0, 0] == 33.0  # cell (3, 3)
    assert out[1, 0, 0, 0] == 22.0  # cells 1..2: max at (2, 2)
    assert out[2, 0, 0, 0] == 0.0  # -0.5 rounds to -1: the bin lies off the map, empty
    assert argmax[2, 0, 0, 0] == -1


def test_half_way_after_scaling_in_float32():
    # 40 * 1/16 = 2.5 exactly: rounds up to 3
    x = np.arange(100, dtype=np.float32).reshape(1, 1, 10, 10)
    out = roipool.roi_pool(x, np.array([[0, 40.0, 40.0, 40.0, 40.0]]), 1, 1 / 16)
    assert out[0, 0, 0, 0] == 33.0


def test_inverted_box_becomes_one_cell():
    x = np.arange(100, dtype=np.float64).reshape(1, 1, 10, 10)
    out = roipool.roi_pool(x, np.array([[0, 6.0, 7.0, 2.0, 1.0]]), 2, 1.0)
    # a 1x1 RoI at (7, 6): ceil(0.5)=1 so both bins of each side read that cell
    np.testing.assert_array_equal(out[0, 0], np.full((2, 2), 76.0))


def test_box_wholly_outside_gives_zeros_and_no_gradient():
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 5))
    rois = np.array([[0, 100, 100, 200, 200], [0, -50, -50, -10, -10]], dtype=np.float64)
    out, argmax = roipool.roi_pool_with_argmax(x, rois, 3)
    assert not out.any() and (argmax == -1).all()
    grad = roipool.roi_pool_backward(np.ones_like(out), argmax, rois, x.shape)
    assert not grad.any()


def test_ties_first_in_row_major_order_wins():
    x = np.zeros((1, 1, 4, 4), np.float32)
    out, argmax = roipool.roi_pool_with_argmax(x, np.array([[0, 0, 0, 3, 3]], np.float32), 1)
    assert argmax[0, 0, 0, 0] == 0
    x[0, 0, 2, 1] = x[0, 0, 1, 3] = 5.0
    out, argmax = roipool.roi_pool_with_argmax(x, np.array([[0, 0, 0, 3, 3]], np.float32), 1)
    assert argmax[0, 0, 0, 0] == 1 * 4 + 3


def test_negative_zero_keeps_first():
    x = np.array([-0.0, 0.0], np.float32).reshape(1, 1, 1, 2)
    out = roipool.roi_pool(x, np.array([[0, 0, 0, 1, 0]], np.float32), 1)
    assert np.signbit(out[0, 0, 0, 0])


def test_nan_wins_and_takes_the_gradient():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    x[0, 0, 1, 1] = np.nan
    x[0, 0, 2, 2] = np.nan
    rois = np.array([[0, 0, 0, 3, 3], [0, 2, 2, 3, 3]], np.float32)
    out, argmax = check_against_reference(x, rois, 1, 1.0)
    assert np.isnan(out[0, 0, 0, 0]) and argmax[0, 0, 0, 0] == 5
    assert np.isnan(out[1, 0, 0, 0]) and argmax[1, 0, 0, 0] == 10


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_last_channels_past_a_whole_vector_keep_every_rule(dtype, layout):
    # The channels after the last whole vector go as the vector ending at the last channel
    # (overlapping the one before); with 8 + 3 vectors and 5 more channels, and with a block of
    # 1 vector + 5, those channels must still follow the reference's rules: ties to the first
    # cell in row-major order, NaN wins (the first NaN), -0.0 before 0.0, -inf a maximum; and
    # the backward that finds the maxima again must route the gradient as the argmax does.
    from roipool.cpu._simd import VECTOR_BYTES

    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    rng = np.random.default_rng(21)
    for channels in (11 * lanes + 5, lanes + 5):
        x = rng.integers(-3, 3, (2, channels, 9, 11)).astype(dtype)  # many ties
        x[0, -3:, 2, 3] = np.nan
        x[0, -2:, 4, 5] = np.nan
        x[1, -4:, :, :6] = -np.inf
        x[1, -1, 5:, 6:] = 0.0
        x[1, -1, 6, 7] = -0.0
        rois = random_rois(rng, 30, 2, 9, 11, 1.0)
        arr = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "nhwc" else x
        expected, expected_argmax = reference.roi_pool(x, rois.astype(dtype), 3, 4, 1.0)
        got, argmax = roipool.roi_pool_with_argmax(arr, rois, (3, 4), 1.0, layout=layout)
        if layout == "nhwc":
            got, argmax = got.transpose(0, 3, 1, 2), argmax.transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(
            got.view(f"u{np.dtype(dtype).itemsize}"), expected.view(f"u{np.dtype(dtype).itemsize}")
        )
        np.testing.assert_array_equal(argmax, expected_argmax)
        g = rng.standard_normal(expected.shape).astype(dtype)
        want = roipool.roi_pool_backward(g, expected_argmax, rois, x.shape)
        np.testing.assert_array_equal(roipool.roi_pool_backward(g, None, rois, x.shape, input=x), want)


def test_minus_infinity_is_a_maximum_like_any_other():
    x = np.full((1, 1, 2, 2), -np.inf, np.float32)
    out, argmax = check_against_reference(x, np.array([[0, 0, 0, 1, 1]]), 1, 1.0)
    assert out[0, 0, 0, 0] == -np.inf and argmax[0, 0, 0, 0] == 0


def test_tiny_and_huge_boxes():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 3, 7, 9)).astype(np.float32)
    rois = np.array(
        [[0, 3, 3, 3, 3], [0, -1e6, -1e6, 1e6, 1e6], [0, -3e38, -3e38, 3e38, 3e38], [0, 4.2, 1.1, 4.3, 1.2]]
    )
    check_against_reference(x, rois, (3, 2), 1.0)


def test_empty_box_set():
    x = np.ones((2, 3, 4, 4), np.float32)
    for boxes in (np.zeros((0, 5), np.float32), [np.zeros((0, 4)), np.zeros((0, 4))]):
        out = roipool.roi_pool(x, boxes, (2, 3))
        assert out.shape == (0, 3, 2, 3) and out.dtype == np.float32
        out, argmax = roipool.roi_pool_with_argmax(x, boxes, (2, 3))
        assert argmax.shape == (0, 3, 2, 3)
        assert roipool.roi_pool_backward(out, argmax, boxes, x.shape).shape == x.shape


def test_list_of_boxes_equals_batch_index_form():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 2, 8, 8))
    per_image = [rng.uniform(0, 16, (k, 4)) for k in (2, 0, 3)]
    rows = np.concatenate([np.column_stack([np.full(len(b), i), b]) for i, b in enumerate(per_image)])
    np.testing.assert_array_equal(roipool.roi_pool(x, per_image, 2, 0.5), roipool.roi_pool(x, rows, 2, 0.5))


def test_non_contiguous_read_only_and_byte_swapped_inputs():
    rng = np.random.default_rng(5)
    base = rng.standard_normal((2, 4, 9, 11)).astype(np.float32)
    rois = random_rois(rng, 20, 2, 9, 11, 1.0)
    expected = roipool.roi_pool(base, rois, 3)
    strided = np.ascontiguousarray(np.repeat(base, 2, axis=3))[..., ::2]
    nhwc_view = np.ascontiguousarray(base.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    swapped = base.astype(base.dtype.newbyteorder(">"))
    readonly = base.copy()
    readonly.flags.writeable = False
    for x in (strided, nhwc_view, swapped, readonly):
        np.testing.assert_array_equal(roipool.roi_pool(x, rois, 3), expected)
    np.testing.assert_array_equal(roipool.roi_pool(base, rois[:, ::1].T.copy().T, 3), expected)


def test_inputs_are_not_modified():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 2, 6, 6))
    rois = random_rois(rng, 10, 1, 6, 6, 0.5)
    x0, r0 = x.copy(), rois.copy()
    out, argmax = roipool.roi_pool_with_argmax(x, rois, 2, 0.5)
    roipool.roi_pool_backward(out, argmax, rois, x.shape)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(rois, r0)


def test_float16_is_pooled_exactly():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 3, 6, 7)).astype(np.float16)
    rois = random_rois(rng, 12, 1, 6, 7, 1.0)
    out = roipool.roi_pool(x, rois, 2)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, roipool.roi_pool(x.astype(np.float32), rois, 2).astype(np.float16))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_matches_reference(dtype):
    rng = np.random.default_rng(8)
    # small integers make ties, so several outputs choose the same input
    x = rng.integers(0, 4, (2, 3, 7, 8)).astype(dtype)
    rois = random_rois(rng, 30, 2, 7, 8, 0.5)
    out, argmax = roipool.roi_pool_with_argmax(x, rois, 3, 0.5)
    grad_out = rng.standard_normal(out.shape).astype(dtype)
    _, ref_argmax = reference.roi_pool(x, rois.astype(dtype), 3, 3, 0.5)
    expected = reference.roi_pool_backward(grad_out, ref_argmax, rois, x.shape)
    got = roipool.roi_pool_backward(grad_out, argmax, rois, x.shape)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, expected, rtol=1e-6 if dtype == np.float32 else 1e-13)


def test_backward_is_the_adjoint_of_forward():
    # <grad_out, forward(x)> == <backward(grad_out), x> for max pooling at fixed argmax
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 4, 9, 9))
    rois = random_rois(rng, 25, 2, 9, 9, 1.0)
    out, argmax = roipool.roi_pool_with_argmax(x, rois, 4)
    g = rng.standard_normal(out.shape)
    gx = roipool.roi_pool_backward(g, argmax, rois, x.shape)
    assert np.isclose(np.sum(g * out), np.sum(gx * x), rtol=1e-12)


# ---- ONNX Runtime oracle (float32) ----


@pytest.mark.parametrize("seed", range(10))
def test_matches_onnxruntime_on_random_cases(seed):
    rng = np.random.default_rng(100 + seed)
    n, c = int(rng.integers(1, 4)), int(rng.integers(1, 6))
    h, w = int(rng.integers(1, 25)), int(rng.integers(1, 25))
    scale = float(rng.choice([1.0, 0.5, 0.25, 0.125, 1 / 16, 0.3]))
    ph, pw = int(rng.integers(1, 8)), int(rng.integers(1, 8))
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    rois = random_rois(rng, 60, n, h, w, scale).astype(np.float32)
    # half-way coordinates after scaling
    rois[::3, 1:] = (np.round(rois[::3, 1:] * scale * 2) + 1) / 2 / np.float32(scale)
    np.testing.assert_array_equal(roipool.roi_pool(x, rois, (ph, pw), scale), max_roi_pool(x, rois, ph, pw, scale))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    ph=st.integers(1, 5),
    pw=st.integers(1, 5),
    scale=st.sampled_from([1.0, 0.5, 0.25, 1 / 16, 2.0, 0.7]),
    coords=st.lists(st.floats(-40, 60, width=32, allow_nan=False), min_size=4, max_size=4),
    ties=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_matches_onnxruntime_and_reference(h, w, ph, pw, scale, coords, ties, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 2, h, w)).astype(np.float32)
    if ties:
        x = np.round(x)
    rois = np.array([[0, *coords]], np.float32)
    got = roipool.roi_pool(x, rois, (ph, pw), scale)
    np.testing.assert_array_equal(got, max_roi_pool(x, rois, ph, pw, scale))
    np.testing.assert_array_equal(got, reference.roi_pool(x, rois, ph, pw, scale)[0])


def test_vgg16_like_case_matches_onnxruntime():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 16, 38, 50)).astype(np.float32)
    side = np.exp(rng.uniform(np.log(16), np.log(600), (300, 2)))
    x1 = rng.uniform(0, 800 - side[:, 0])
    y1 = rng.uniform(0, 600 - side[:, 1])
    rois = np.column_stack([np.zeros(300), x1, y1, x1 + side[:, 0], y1 + side[:, 1]]).astype(np.float32)
    np.testing.assert_array_equal(roipool.roi_pool(x, rois, 7, 1 / 16), max_roi_pool(x, rois, 7, 7, 1 / 16))


# ---- threads ----


def test_concurrent_calls_give_the_same_results():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 8, 20, 20)).astype(np.float32)
    cases = [random_rois(rng, 200, 2, 20, 20, 0.5) for _ in range(4)]
    expected = [roipool.roi_pool_with_argmax(x, r, 5, 0.5) for r in cases]
    results, errors = run_in_threads(lambda i: roipool.roi_pool_with_argmax(x, cases[i % 4], 5, 0.5), 16)
    assert not errors
    for i, (out, argmax) in enumerate(results):
        np.testing.assert_array_equal(out, expected[i % 4][0])
        np.testing.assert_array_equal(argmax, expected[i % 4][1])


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_count_does_not_change_results(threads):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((1, 6, 16, 16)).astype(np.float32)
    rois = random_rois(rng, 100, 1, 16, 16, 1.0)
    before = roipool.get_num_threads()
    threads = min(threads, before)  # before is NUMBA_NUM_THREADS, the most that can be set
    expected = reference.roi_pool(x, rois.astype(np.float32), 4, 4, 1.0)[0]
    try:
        roipool.set_num_threads(threads)
        assert roipool.get_num_threads() == threads
        np.testing.assert_array_equal(roipool.roi_pool(x, rois, 4), expected)
    finally:
        roipool.set_num_threads(before)


def test_worked_example_of_the_semantics_document():
    x = (6 * np.arange(6)[:, None] + np.arange(6)[None, :]).astype(np.float32)[None, None]
    out = roipool.roi_pool(x, np.array([[0, 8, 8, 72, 40]], np.float32), (2, 3), 1 / 16)
    np.testing.assert_array_equal(out[0, 0], [[14, 16, 17], [20, 22, 23]])
    np.testing.assert_array_equal(out, max_roi_pool(x, np.array([[0, 8, 8, 72, 40]], np.float32), 2, 3, 1 / 16))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wide_channel_blocks_match_reference_bit_for_bit(dtype, threads):
    # 147 = 128 + 16 + 3 channels: the 8-vector scan, the one-vector scan and
    # the scalar tail; integers make ties, plus NaN, -0.0 and -inf
    rng = np.random.default_rng(21)
    x = rng.integers(-3, 3, (2, 147, 9, 11)).astype(dtype)
    x[rng.random(x.shape) < 0.03] = np.nan
    x[rng.random(x.shape) < 0.05] = -0.0
    x[rng.random(x.shape) < 0.02] = -np.inf
    rois = random_rois(rng, 20, 2, 9, 11, 0.5)
    expected, expected_argmax = reference.roi_pool(x, rois.astype(dtype), 7, 7, 0.5)
    out, argmax = roipool.roi_pool_with_argmax(x, rois, 7, 0.5)
    assert out.tobytes() == expected.tobytes()
    assert roipool.roi_pool(x, rois, 7, 0.5).tobytes() == expected.tobytes()
    np.testing.assert_array_equal(argmax, expected_argmax)
    grad = rng.standard_normal(out.shape).astype(dtype)
    grad[rng.random(grad.shape) < 0.02] = np.nan
    grad[rng.random(grad.shape) < 0.05] = -0.0
    expected_grad = reference.roi_pool_backward(grad, expected_argmax, rois, x.shape).tobytes()
    before = roipool.get_num_threads()
    try:
        roipool.set_num_threads(min(threads, before))
        assert roipool.roi_pool_backward(grad, argmax, rois, x.shape).tobytes() == expected_grad
        # the fused backward finds the maxima again (64 float32 / 32 float64
        # channels per task: 147 leaves a block of 19 = one vector + 3)
        again = roipool.roi_pool_backward(grad, None, rois, x.shape, input=x, spatial_scale=0.5)
        assert again.tobytes() == expected_grad
    finally:
        roipool.set_num_threads(before)


def test_recomputing_backward_equals_the_argmax_backward():
    # several images, RoIs in no batch order, boxes off the map, small integer values (ties)
    rng = np.random.default_rng(22)
    x = rng.integers(0, 4, (3, 70, 9, 12)).astype(np.float32)
    rois = random_rois(rng, 60, 3, 9, 12, 0.5)[rng.permutation(60)]
    out, argmax = roipool.roi_pool_with_argmax(x, rois, (3, 4), 0.5)
    grad = rng.standard_normal(out.shape).astype(np.float32)
    expected = reference.roi_pool_backward(grad, argmax, rois, x.shape)
    got = roipool.roi_pool_backward(grad, None, rois, x.shape, input=x, spatial_scale=0.5)
    assert got.dtype == np.float32 and got.tobytes() == expected.tobytes()
    assert roipool.roi_pool_backward(grad, argmax, rois, x.shape).tobytes() == expected.tobytes()
    # an NCHW view of channels-last memory, and a strided map: the kernel's channels-last entry
    nhwc_view = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    strided = np.repeat(x, 2, axis=3)[..., ::2]
    for other in (nhwc_view, strided):
        again = roipool.roi_pool_backward(grad, None, rois, x.shape, input=other, spatial_scale=0.5)
        assert again.tobytes() == expected.tobytes()


def test_recomputing_backward_of_empty_and_outside_boxes():
    x = np.random.default_rng(23).standard_normal((2, 3, 5, 5))
    for rois in (np.zeros((0, 5)), np.array([[1, 100, 100, 200, 200], [0, -50, -50, -10, -10]])):
        grad = np.ones((len(rois), 3, 2, 2))
        got = roipool.roi_pool_backward(grad, None, rois, x.shape, input=x)
        assert got.shape == x.shape and got.dtype == x.dtype and not got.any()


def test_recomputing_backward_rejects_inconsistent_arguments():
    x = np.zeros((1, 3, 5, 5), np.float32)
    rois = np.array([[0, 0, 0, 4, 4]], np.float32)
    grad = np.ones((1, 3, 2, 2), np.float32)
    with pytest.raises(ValueError, match="needs argmax, or input"):
        roipool.roi_pool_backward(grad, None, rois, x.shape)
    with pytest.raises(ValueError, match="not both"):
        roipool.roi_pool_backward(grad, np.zeros(grad.shape, np.int32), rois, x.shape, input=x)
    with pytest.raises(ValueError, match="input_shape"):
        roipool.roi_pool_backward(grad, None, rois, (1, 3, 5, 6), input=x)
    with pytest.raises(TypeError, match="same dtype"):
        roipool.roi_pool_backward(grad.astype(np.float64), None, rois, x.shape, input=x)
    with pytest.raises(ValueError, match="grad_output must have shape"):
        roipool.roi_pool_backward(np.ones((1, 2, 2, 2), np.float32), None, rois, x.shape, input=x)
    with pytest.raises(ValueError, match="spatial_scale"):
        roipool.roi_pool_backward(grad, None, rois, x.shape, input=x, spatial_scale=0.0)
