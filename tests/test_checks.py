"""Bad input: a clear ValueError or TypeError naming the argument; inputs untouched."""

from __future__ import annotations

import re

import numpy as np
import pytest

import roipool
from roipool import _checks

X = np.zeros((2, 3, 8, 8), np.float32)
ROIS = np.array([[0, 0, 0, 4, 4], [1, 1, 1, 5, 5]], np.float32)


# The case lists are shared with the torch path's tests (tests/roi_family.py).
BAD_INPUTS = [
    (np.zeros((3, 8, 8), np.float32), ValueError, "input must have 4 dimensions"),
    (np.zeros((2, 3, 8, 8), np.int32), TypeError, "input must have a real floating dtype"),
    (np.zeros((2, 3, 8, 8), np.complex64), TypeError, "input must have a real floating dtype"),
    ([[[[0.0]]]], TypeError, "input must be a NumPy array"),
]

BAD_BOXES = [
    (np.zeros((2, 4), np.float32), ValueError, r"boxes must have shape \(K, 5\)"),
    (np.zeros((5,), np.float32), ValueError, r"boxes must have shape \(K, 5\)"),
    (np.array([[0.5, 0, 0, 1, 1]]), ValueError, r"boxes\[0, 0\] is the batch index and must be a whole number"),
    (np.array([[-1, 0, 0, 1, 1]]), ValueError, r"batch index and must be in \[0, 2\)"),
    (np.array([[2, 0, 0, 1, 1]]), ValueError, r"batch index and must be in \[0, 2\)"),
    (np.array([[np.nan, 0, 0, 1, 1]]), ValueError, "whole number"),
    (np.array([[0, 0, np.nan, 1, 1]]), ValueError, "NaN or infinite"),
    (np.array([[0, 0, 0, np.inf, 1]]), ValueError, "NaN or infinite"),
    (np.array([[0, 0, 0, 1e39, 1]]), ValueError, "NaN or infinite"),
    (np.array([["0", "0", "0", "1", "1"]]), TypeError, "boxes must hold real numbers"),
    ([np.zeros((1, 4))], ValueError, "one array per image: got 1 arrays for 2 images"),
    ([np.zeros((1, 5)), np.zeros((1, 4))], ValueError, r"boxes\[0\] must have shape \(L, 4\)"),
]

BAD_OUTPUT_SIZES = [
    (0, ValueError),
    (-1, ValueError),
    ((2, 0), ValueError),
    ((2,), ValueError),
    (2.0, TypeError),
    ((2, 2.5), TypeError),
    (True, TypeError),
    ("7", TypeError),
    ((1, 2, 3), ValueError),
]

BAD_SCALES = [
    (0.0, ValueError),
    (-1.0, ValueError),
    (np.inf, ValueError),
    (np.nan, ValueError),
    ("1", TypeError),
    (None, TypeError),
    (10**400, ValueError),  # an int beyond any float
]


@pytest.mark.parametrize("input, error, words", BAD_INPUTS)
def test_bad_input(input, error, words):
    with pytest.raises(error, match=words):
        roipool.roi_pool(input, ROIS, 2)


@pytest.mark.parametrize("boxes, error, words", BAD_BOXES)
def test_bad_boxes(boxes, error, words):
    with pytest.raises(error, match=words):
        roipool.roi_pool(X, boxes, 2)


@pytest.mark.parametrize("output_size, error", BAD_OUTPUT_SIZES)
def test_bad_output_size(output_size, error):
    with pytest.raises(error, match="output_size"):
        roipool.roi_pool(X, ROIS, output_size)


@pytest.mark.parametrize("scale, error", BAD_SCALES)
def test_bad_spatial_scale(scale, error):
    with pytest.raises(error, match="spatial_scale"):
        roipool.roi_pool(X, ROIS, 2, scale)


SCALED_OPS = {  # op: (output_size, boxes) on a (1, 4, 8, 8) map
    "roi_pool": (2, ROIS[:1]),
    "roi_align": (2, ROIS[:1]),
    "prroi_pool": (2, ROIS[:1]),
    "ps_roi_pool": (2, ROIS[:1]),
    "ps_roi_align": (2, ROIS[:1]),
    "roi_align_rotated": (2, np.array([[0, 3, 3, 2, 2, 0.5]], np.float32)),
}


@pytest.mark.parametrize("frontend", ["numpy", "torch", "jax"])
@pytest.mark.parametrize("op", list(SCALED_OPS))
def test_a_spatial_scale_that_overflows_or_vanishes_in_the_maps_dtype_is_refused(op, frontend):
    # finite and positive as a float, but infinite, 0 or subnormal in float32 (which XLA's CPU
    # runtime flushes to 0): every op and frontend refuses it
    size, boxes = SCALED_OPS[op]
    small = boxes.copy()
    small[:, 1:5] *= 0.1  # whose corners and sizes stay finite at float32's largest scale
    x = np.ones((1, 4, 8, 8), np.float32)
    if frontend == "torch":
        torch = pytest.importorskip("torch")
        call, x, boxes, small = (
            getattr(roipool, op),
            torch.from_numpy(x),
            torch.from_numpy(boxes),
            torch.from_numpy(small),
        )
    elif frontend == "jax":
        pytest.importorskip("jax")
        import roipool.jax as rj

        call = getattr(rj, op)
    else:
        call = getattr(roipool, op)
    for scale in (1e300, 1e-300, 1e-40):
        with pytest.raises(ValueError, match=re.escape(f"spatial_scale={scale!r} is not representable in float32")):
            call(x, boxes, size, scale)
    # the smallest and largest normal float32 are kept, also as they print (3.4028235e38 rounds to the largest)
    fixed = (2,) if op == "roi_align_rotated" else ()  # an adaptive grid would be refused at this scale
    for scale in (1.2e-38, 3.4028235e38):
        assert not np.isnan(np.asarray(call(x, small, size, scale, *fixed))).any()


@pytest.mark.parametrize("frontend", ["numpy", "torch", "jax"])
@pytest.mark.parametrize("op", ["roi_align", "ps_roi_align", "roi_align_rotated"])
def test_a_sampling_ratio_that_would_run_for_minutes_is_refused_at_once(op, frontend):
    # the separable ops visit up to sampling_ratio samples per bin and axis, the rotated one its
    # square: 10**9 ran for minutes on one small box (bad-input fuzzing); the limits are refused
    size, boxes = SCALED_OPS[op]
    x = np.ones((1, 4, 8, 8), np.float32)
    limit = _checks.MAX_ROTATED_SAMPLING_RATIO if op == "roi_align_rotated" else _checks.MAX_SAMPLING_RATIO
    if frontend == "torch":
        torch = pytest.importorskip("torch")
        call, x, boxes = getattr(roipool, op), torch.from_numpy(x), torch.from_numpy(boxes)
    elif frontend == "jax":
        pytest.importorskip("jax")
        import roipool.jax as rj

        call = getattr(rj, op)
    else:
        call = getattr(roipool, op)
    for ratio in (limit + 1, 10**9, 2**31 - 1):
        with pytest.raises(ValueError, match=f"sampling_ratio must be at most {limit} samples per bin side"):
            call(x, boxes, size, 1.0, ratio)
    if op == "roi_align_rotated":  # the limit itself still runs: a 1024 x 1024 grid per bin
        assert np.isfinite(np.asarray(call(x, boxes, 1, 1.0, limit))).all()


# ---- found by bad-input fuzzing: each was another exception, a hang or a message naming nothing ----


def test_the_custom_ops_called_directly_refuse_the_same_sampling_ratios():
    # pytorch.md documents the roipool::* ops: called directly they skip the public checks, so
    # the CPU geometry checks the limit too
    torch = pytest.importorskip("torch")
    import roipool.nn  # noqa: F401  (registers the ops)

    x, rois = torch.ones((1, 4, 8, 8)), torch.from_numpy(ROIS[:1])
    rotated = torch.tensor([[0, 3, 3, 2, 2, 0.5]])
    for call, limit in (
        (lambda r: torch.ops.roipool.roi_align(x, rois, 1.0, 2, 2, r, True), _checks.MAX_SAMPLING_RATIO),
        (lambda r: torch.ops.roipool.ps_roi_align(x, rois, 1.0, 2, 2, r), _checks.MAX_SAMPLING_RATIO),
        (lambda r: torch.ops.roipool.roi_align_rotated(x, rotated, 1.0, 2, 2, r, True, False), 1024),
    ):
        for ratio in (10**9, -(2**40)):
            with pytest.raises(ValueError, match="sampling_ratio must be at"):
                call(ratio)
        assert call(limit // 512).shape[0] == 1


def test_the_custom_ops_called_directly_refuse_an_empty_output_size():
    # a direct call with pooled_h = 0 raised ZeroDivisionError (rotated returned an empty output)
    torch = pytest.importorskip("torch")
    import roipool.nn  # noqa: F401  (registers the ops)

    x, rois = torch.ones((1, 4, 8, 8)), torch.from_numpy(ROIS[:1])
    rotated = torch.tensor([[0, 3, 3, 2, 2, 0.5]])
    ops = torch.ops.roipool
    for call in (
        lambda h: ops.roi_pool(x, rois, 1.0, h, 2),
        lambda h: ops.roi_align(x, rois, 1.0, h, 2, 2, True),
        lambda h: ops.ps_roi_pool(x, rois, 1.0, h, 2),
        lambda h: ops.ps_roi_align(x, rois, 1.0, h, 2, 2),
        lambda h: ops.prroi_pool(x, rois, 1.0, h, 2),
        lambda h: ops.roi_align_rotated(x, rotated, 1.0, h, 2, 2, True, False),
    ):
        for h in (0, -3):
            with pytest.raises(ValueError, match=rf"output_size must be positive, got \({h}, 2\)"):
                call(h)
        assert call(1).shape[2:] == (1, 2)


def test_long_double_maps_and_gradients_are_refused_by_name():
    # the kernels compute in float32 or float64; float128 was a Numba TypingError (or rounded)
    x = np.ones((1, 4, 8, 8), np.longdouble)
    g = np.ones((1, 4, 2, 2), np.longdouble)
    words = r"must have a real floating dtype \(float16, float32, float64\), got float128"
    for call in (
        lambda: roipool.roi_pool(x, ROIS[:1], 2),
        lambda: roipool.roi_align(x, ROIS[:1], 2),
        lambda: roipool.roi_align_rotated(x, np.array([[0, 3, 3, 2, 2, 0.5]]), 2),
        lambda: roipool.roi_align_boxes_backward(g.astype(np.float32), x, ROIS[:1], 2),
    ):
        with pytest.raises(TypeError, match="input " + words):
            call()
    for call in (
        lambda: roipool.roi_align_backward(g, ROIS[:1], (1, 4, 8, 8), 2),
        lambda: roipool.roi_align_rotated_backward(g, np.array([[0, 3, 3, 2, 2, 0.5]]), (1, 4, 8, 8), 2),
        lambda: roipool.prroi_pool_backward(g, ROIS[:1], (1, 4, 8, 8), 2),
        lambda: roipool.prroi_pool_boxes_backward(g, np.ones((1, 4, 8, 8), np.float32), ROIS[:1], 2),
    ):
        with pytest.raises(TypeError, match="grad_output " + words):
            call()


@pytest.mark.parametrize(
    "input_shape",
    [(1, 4.7, 8, 8), (True, 4, 8, 8), (1, 4, np.inf, 8), (1, 4, np.nan, 8), "1488", (1, 4, "8", 8), None, 5]
    + [{0: 1, 1: 4, 2: 8, 3: 8}, {1, 4, 8, 9}],
    ids=str,
)
def test_input_shape_must_hold_ints(input_shape):
    # int() read 4.7 as 4, True as 1 and "1488" as (1, 4, 8, 8); inf and NaN raised OverflowError and
    # an unnamed ValueError
    g = np.ones((1, 4, 2, 2), np.float32)
    with pytest.raises(TypeError, match=r"input_shape must be a sequence of 4 ints \(N, C, H, W\)"):
        roipool.roi_align_backward(g, ROIS[:1], input_shape, 2)
    want = roipool.roi_align_backward(g, ROIS[:1], (1, 4, 8, 8), 2)
    np.testing.assert_array_equal(roipool.roi_align_backward(g, ROIS[:1], (np.int64(1), 4, np.array(8), 8), 2), want)


def test_ragged_boxes_a_zero_d_output_size_and_a_list_gradient():
    with pytest.raises(ValueError, match=r"boxes\[0\] must be an array of numbers; its rows have different lengths"):
        roipool.roi_pool(X, [[[1.0, 2, 3, 4], [1.0]], np.zeros((0, 4))], 2)
    # a 0-d integer array is an int, as NumPy indexing takes it
    np.testing.assert_array_equal(roipool.roi_pool(X, ROIS, np.array(2)), roipool.roi_pool(X, ROIS, 2))
    with pytest.raises(TypeError, match="grad_output must be a NumPy array, got list"):
        roipool.roi_align_rotated_backward([[1.0]], np.array([[0, 3, 3, 2, 2, 0.5]]), (1, 4, 8, 8), 2)


@pytest.mark.parametrize("frontend", ["torch", "jax"])
def test_ragged_boxes_are_refused_by_name_in_the_other_frontends(frontend):
    ragged = [[[1.0, 2, 3, 4], [1.0]], np.zeros((0, 4), np.float32)]
    if frontend == "torch":
        torch = pytest.importorskip("torch")
        call = lambda: roipool.roi_align(torch.from_numpy(X), ragged, 2)  # noqa: E731
    else:
        pytest.importorskip("jax")
        import roipool.jax as rj

        call = lambda: rj.roi_align(X, ragged, 2)  # noqa: E731
    with pytest.raises(ValueError, match=r"boxes\[0\] must be an array of numbers; its rows have different lengths"):
        call()


def test_a_gradient_without_bins_is_named_in_the_recomputing_roi_pool_backward():
    # it said "output_size must be positive", an argument this call does not take
    with pytest.raises(ValueError, match=r"grad_output must have at least one bin .*got \(2, 3, 0, 2\)"):
        roipool.roi_pool_backward(np.ones((2, 3, 0, 2), np.float32), None, ROIS, X.shape, input=X)


def test_sparse_tensors_are_refused_by_name():
    torch = pytest.importorskip("torch")
    x, rois = torch.from_numpy(X), torch.from_numpy(ROIS)
    for call, name in (
        (lambda: roipool.roi_align(x.to_sparse(), rois, 2), "input"),
        (lambda: roipool.roi_pool(x, rois.to_sparse(), 2), "boxes"),
        (lambda: roipool.prroi_pool(x, [rois[:1, 1:].to_sparse(), rois[1:, 1:]], 2), r"boxes\[0\]"),
    ):
        with pytest.raises(TypeError, match=name + r" must be a dense tensor \(layout torch.strided\), got layout"):
            call()


def test_errors_leave_inputs_untouched():
    rois = np.array([[0, 0, 0, 4, 4], [3, 1, 1, 5, 5]], np.float64)
    before = rois.copy()
    with pytest.raises(ValueError):
        roipool.roi_pool(X, rois, 2)
    np.testing.assert_array_equal(rois, before)


def test_backward_rejects_mismatched_arguments():
    out, argmax = roipool.roi_pool_with_argmax(X, ROIS, 2)
    with pytest.raises(ValueError, match="argmax must have the shape of grad_output"):
        roipool.roi_pool_backward(out, argmax[:1], ROIS, X.shape)
    with pytest.raises(ValueError, match="boxes hold 1 RoIs but grad_output has 2"):
        roipool.roi_pool_backward(out, argmax, ROIS[:1], X.shape)
    with pytest.raises(ValueError, match="argmax holds indices outside"):
        roipool.roi_pool_backward(out, argmax + 1000, ROIS, X.shape)
    with pytest.raises(ValueError, match=r"input_shape must be \(N, C, H, W\)"):
        roipool.roi_pool_backward(out, argmax, ROIS, X.shape[:3])
    with pytest.raises(TypeError, match="input_shape must be a sequence of 4 ints"):
        roipool.roi_pool_backward(out, argmax, ROIS, 8)
    for bad in (argmax - 2, (argmax + 1000).astype(np.int64), np.asfortranarray(argmax - 2)):
        with pytest.raises(ValueError, match="argmax holds indices outside"):
            roipool.roi_pool_backward(out, bad, ROIS, X.shape)
    with pytest.raises(TypeError, match="argmax must hold integers"):
        roipool.roi_pool_backward(out, argmax.astype(np.float32), ROIS, X.shape)


@pytest.mark.parametrize(
    "box, scale, offset, bad",
    [
        ([0, -2e38, 0, 2e38, 4], 1.0, 0.0, True),  # both corners finite, their extent is not
        ([0, 0, -2e38, 4, 2e38], 1.0, 0.0, True),  # the same along y
        ([0, 0, 0, 3e38, 4], 2.0, 0.0, True),  # a corner times the scale overflows
        ([0, -1e38, -1e38, 1e38, 1e38], 1.0, 0.5, False),  # large, but every value fits
    ],
)
def test_scaled_boxes_must_have_finite_corners_and_extents(box, scale, offset, bad):
    from roipool.cpu.roi_align import RoIAlignTaps

    rois = np.array([[0, 0, 0, 1, 1], box], np.float32)
    # RoIAlign's taps find the box in their own pass, by the same rule
    checks = [
        lambda: _checks.scaled_boxes_finite(rois, scale, offset),
        lambda: RoIAlignTaps(rois, scale, 2, 2, 2, offset == 0.5, 8, 8),
    ]
    for check in checks:
        if bad:
            with pytest.raises(ValueError, match=r"box 1 .* overflows float32"):
                check()
        else:
            check()


@pytest.mark.parametrize(
    "rows",
    [
        np.array([[1, 0.5, 1.5, 6.25, 7], [0, -3, 2, 1e20, 4]], np.float64),
        np.array([[1, 0, 1, 6, 7], [0, -3, 2, 9, 4]], np.int64),
        np.array([[1, 0, 1, 6, 7], [0, 3, 2, 9, 4]], np.uint8),
        np.array([[1, 0.5, 1.5, 6.25, 7], [0, -3, 2, 1e4, 4]], np.float16),
        np.array([[1, 0.5, 1.5, 6.25, 7], [0, -3, 2, 1e20, 4]], ">f8"),  # big-endian
        np.array([[1, 0.5, 1.5, 6.25, 7, 9], [0, -3, 2, 1e20, 4, 9]], np.float32)[:, :5],  # not contiguous
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_boxes_of_any_real_dtype_convert_as_numpy_does(rows, dtype):
    readonly = rows.copy()
    readonly.flags.writeable = False
    for boxes in (rows, readonly):
        rois = _checks.rois_array(boxes, 2, np.dtype(dtype))
        assert rois.dtype == dtype and rois.flags.c_contiguous and rois.dtype.isnative
        np.testing.assert_array_equal(rois, rows.astype(dtype))


def test_the_batch_index_is_checked_before_it_is_converted():
    # 1 + 1e-9 rounds to 1.0 in float32, but it is not a whole number
    with pytest.raises(ValueError, match=r"boxes\[1, 0\] is the batch index and must be a whole number, got .*1\.0+1"):
        _checks.rois_array(np.array([[0, 0, 0, 1, 1], [1 + 1e-9, 0, 0, 1, 1]]), 3, np.dtype(np.float32))
    with pytest.raises(ValueError, match="whole number"):
        _checks.rois_array(np.array([[np.inf, 0, 0, 1, 1]]), 3, np.dtype(np.float32))
    with pytest.raises(ValueError, match=r"boxes\[0, 0\] .* must be in \[0, 3\), got .*300"):
        _checks.rois_array(np.array([[300, 0, 0, 1, 1]], np.int64), 3, np.dtype(np.float32))


def test_the_first_bad_row_is_reported():
    rows = np.array([[0, 0, 0, 1, 1], [0, 0, np.nan, 1, 1], [7, 0, 0, 1, 1]], np.float32)
    with pytest.raises(ValueError, match="box 1 has a coordinate that is NaN"):
        _checks.rois_array(rows, 2, np.dtype(np.float32))
    with pytest.raises(ValueError, match=r"boxes\[1, 0\] is the batch index and must be in"):
        _checks.rois_array(rows[[0, 2, 1]], 2, np.dtype(np.float32))


def test_boxes_that_overflow_the_compute_dtype_are_refused_only_there():
    rows = np.array([[0, 0, 0, 1e39, 1]], np.float64)
    np.testing.assert_array_equal(_checks.rois_array(rows, 1, np.dtype(np.float64)), rows)
    with pytest.raises(ValueError, match=r"box 0 has a coordinate that is NaN or infinite \(or overflows float32\)"):
        _checks.rois_array(rows, 1, np.dtype(np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_box_that_is_not_finite_is_printed_as_given(dtype):
    # the converted row is filled only up to its first bad value; the message shows the row given
    rows = np.array([[0, 1, 2, 3, 4], [1, 5, np.nan, 7, 8]], dtype)
    with pytest.raises(ValueError, match=r"box 1 has a coordinate .*: \[ *5\. +nan +7\. +8\.\]$"):
        _checks.rois_array(rows, 2, np.dtype(dtype))
    with pytest.raises(ValueError, match=r"overflows float32\): \[ *0\.e\+00 +1\.e\+39 +1\.e\+00 +2\.e\+00\]$"):
        _checks.rois_array(np.array([[0, 0, 1e39, 1, 2]]), 1, np.dtype(np.float32))


def test_boxes_as_a_list_become_the_rows_of_every_image_in_order():
    per_image = [
        np.array([[1, 2, 3, 4], [5, 6, 7, 8]], ">f8"),  # big-endian float64
        np.zeros((0, 4), np.float32),  # an image without boxes
        np.array([[9, 10, 11, 12]], np.int16),
    ]
    rows = _checks.rois_array(per_image, 3, np.dtype(np.float32))
    want = np.array([[0, 1, 2, 3, 4], [0, 5, 6, 7, 8], [2, 9, 10, 11, 12]], np.float32)
    assert rows.dtype == np.float32 and rows.flags.c_contiguous
    np.testing.assert_array_equal(rows, want)
    assert _checks.rois_array([np.zeros((0, 4))] * 2, 2, np.dtype(np.float64)).shape == (0, 5)
    # a coordinate that overflows the compute dtype is reported by its row among all images' rows
    with pytest.raises(ValueError, match="box 2 has a coordinate that is NaN or infinite"):
        _checks.rois_array([per_image[0], np.array([[0, 0, 1e39, 1]])], 2, np.dtype(np.float32))


def test_scalar_arguments_give_plain_python_values_of_any_accepted_type():
    """Plain ints, floats and bools take a shortcut; NumPy scalars and sequences the full checks: same values."""
    for size in (7, np.int64(7), np.uint8(7), (7, 7), [7, np.int32(7)], np.array([7, 7]), (np.array(7), 7)):
        assert _checks.output_size_pair(size) == (7, 7)
        assert all(type(v) is int for v in _checks.output_size_pair(size))
    for scale in (0.25, np.float32(0.25), np.float64(0.25), 1):
        value = _checks.positive_scale(scale)
        assert type(value) is float and value == float(scale)
    for ratio in (2, -1, 0, np.int16(2), 2**20, np.int64(-(2**31))):
        value = _checks.sampling_ratio_int(ratio)
        assert type(value) is int and value == int(ratio)
    for flag in (True, False, np.bool_(True)):
        value = _checks.flag(flag, "aligned")
        assert type(value) is bool and value == bool(flag)
    for bad, error in ((0, ValueError), (-3, ValueError), (True, TypeError), ((np.array(7.0), 7), TypeError)):
        with pytest.raises(error, match="output_size"):
            _checks.output_size_pair(bad)
    with pytest.raises(TypeError, match="output_size must hold ints, got array"):
        _checks.output_size_pair((np.array(True), 7))
    for bad in (0.0, -0.5, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="spatial_scale must be finite and positive"):
            _checks.positive_scale(bad)
    with pytest.raises(ValueError, match=r"at most 1048576 samples per bin side, got 2147483648 \(<= 0: adaptive\)"):
        _checks.sampling_ratio_int(2**31)
    with pytest.raises(
        ValueError, match=r"at least -2\*\*31 \(any value <= 0 samples adaptively\), got -1000000000000"
    ):
        _checks.sampling_ratio_int(-(10**12))
    assert _checks.sampling_ratio_int(-(2**31)) == -(2**31) and _checks.sampling_ratio_int(2**20) == 2**20
    assert _checks.compute_dtype(np.float16) == np.float32 and _checks.compute_dtype(">f8") == np.float64
    for _ in range(2):  # computed, then remembered
        assert _checks.compute_dtype(np.dtype(">f8")) == np.float64 and _checks.compute_dtype(np.dtype(">f8")).isnative


def test_a_bad_batch_index_is_shown_as_a_plain_number():
    with pytest.raises(ValueError, match=r"must be in \[0, 2\), got 5\.0$"):
        _checks.rois_array(np.array([[5, 0, 0, 1, 1]], np.float32), 2, np.dtype(np.float32))
    with pytest.raises(ValueError, match=r"must be a whole number, got 0\.5$"):
        _checks.rois_array(np.array([[0.5, 0, 0, 1, 1]], ">f8"), 2, np.dtype(np.float32))
