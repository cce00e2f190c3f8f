"""prroi_pool on NumPy arrays: the kernels against the float64 reference, against
numerical integration (scipy), against finite differences; edge cases; bad input."""

from __future__ import annotations

import numpy as np
import pytest

import roipool
import roipool.reference as ref
from roipool.cpu import roi_align as align_kernels

from .helpers import random_rois, run_in_threads

integrate = pytest.importorskip("scipy.integrate")

TOL = {np.float32: dict(rtol=1e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


def interpolant(image, y, x):
    """The bilinear interpolant of ``image`` extended by zeros, at the point ``(y, x)``."""
    height, width = image.shape
    total = 0.0
    for i in range(max(int(np.floor(y)), 0), min(int(np.floor(y)) + 2, height)):
        for j in range(max(int(np.floor(x)), 0), min(int(np.floor(x)) + 2, width)):
            total += image[i, j] * max(0.0, 1 - abs(y - i)) * max(0.0, 1 - abs(x - j))
    return total


def integrated_bin(image, y0, y1, x0, x1):
    """Mean of the interpolant over ``[y0, y1] x [x0, x1]`` by adaptive quadrature (scipy),
    told where the kinks are (integer coordinates)."""
    ypts = [float(v) for v in range(int(np.ceil(y0)), int(np.floor(y1)) + 1) if y0 < v < y1]
    xpts = [float(v) for v in range(int(np.ceil(x0)), int(np.floor(x1)) + 1) if x0 < v < x1]
    value, _ = integrate.nquad(
        lambda x, y: interpolant(image, y, x),
        [[x0, x1], [y0, y1]],
        opts=[{"points": xpts, "epsabs": 1e-12, "epsrel": 1e-12}, {"points": ypts, "epsabs": 1e-12, "epsrel": 1e-12}],
    )
    return value / ((y1 - y0) * (x1 - x0))


def adversarial_rois():
    """Boxes on integer and half-integer edges, off the map, inverted, tiny, huge."""
    return np.array(
        [
            [0, 1.3, 0.7, 6.2, 5.1],
            [1, -3, -2, 12, 10],  # past every edge
            [0, 2, 2, 2.0001, 3],  # narrow, starting on a cell centre
            [1, 4.5, 3.25, 4.5000001, 3.2500001],  # far smaller than a cell
            [0, 5, 5, 3, 3],  # inverted: zeros
            [1, 2, 1, 2, 6],  # zero width: zeros
            [0, 0, 0, 8, 6],  # the whole map, corners on cell centres
            [1, -0.5, -0.5, 8.5, 6.5],  # half a cell past the border
            [0, -1.5, 2, -0.25, 4],  # within a cell left of the map: the ramp to zero
            [1, -30, -30, -1, -1],  # wholly more than a cell outside: zeros
            [0, -1e6, -1e6, 1e6, 1e6],  # huge
        ],
        np.float64,
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_random_and_adversarial_boxes_match_reference(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 7, 9)).astype(dtype)
    rois = np.concatenate([adversarial_rois(), random_rois(rng, 40, 2, 7, 9, 0.5) * [1, 0.5, 0.5, 0.5, 0.5]])
    for output_size, scale in (((3, 2), 1.0), ((2, 4), 0.5), (1, 2.0)):
        boxes = rois * [1, 1 / scale, 1 / scale, 1 / scale, 1 / scale]
        out = roipool.prroi_pool(x, boxes, output_size, scale)
        expected = ref.prroi_pool(x, boxes.astype(dtype), *np.broadcast_to(output_size, 2), scale)
        assert out.dtype == dtype and np.isfinite(out).all()
        np.testing.assert_allclose(out, expected, **TOL[dtype])


def test_matches_numerical_integration_of_the_interpolant():
    # An independent oracle: scipy's adaptive quadrature of the zero-extended
    # bilinear interpolant, bin by bin (float64, small cases).
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 2, 5, 6))
    rois = np.array([[0, 0.3, -0.7, 4.6, 3.1], [0, -1.2, 2.5, 1.0, 4.9], [0, 2.25, 1.5, 6.5, 1.75]])
    out = roipool.prroi_pool(x, rois, (2, 2), 1.0)
    compared = 0
    worst = 0.0
    for k, (_, x1, y1, x2, y2) in enumerate(rois):
        bh, bw = (y2 - y1) / 2, (x2 - x1) / 2
        for ph in range(2):
            for pw in range(2):
                y0, x0 = y1 + ph * bh, x1 + pw * bw
                for c in range(2):
                    want = integrated_bin(x[0, c], y0, y0 + bh, x0, x0 + bw)
                    worst = max(worst, abs(out[k, c, ph, pw] - want))
                    compared += 1
    assert compared == 24
    assert worst < 1e-9, worst


def test_a_map_of_ones_averages_to_one_inside_and_ramps_to_zero_outside():
    x = np.ones((1, 1, 6, 8))
    out = roipool.prroi_pool(x, np.array([[0, 0.0, 0.0, 7.0, 5.0], [0, -1, -1, 0, 0], [0, -3, -3, -1, -1]]), 2)
    np.testing.assert_allclose(out[0], 1.0, rtol=1e-14)
    # on [-1, 0] the interpolant of the zero-extended map is 1 + t per axis: mean 1/4 over
    # [-1, -1/2] and 3/4 over [-1/2, 0]
    np.testing.assert_allclose(out[1, 0], np.outer([0.25, 0.75], [0.25, 0.75]), rtol=1e-14)
    np.testing.assert_array_equal(out[2], 0.0)


def test_a_linear_ramp_gives_its_value_at_the_bin_centre():
    # bilinear interpolation reproduces a linear map exactly inside [0, H-1] x [0, W-1],
    # and the mean of a linear function over a rectangle is its value at the centre
    h, w = 7, 9
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    x = (0.5 * rows - 0.25 * cols + 2.0)[None, None]
    rois = np.array([[0, 0.3, 1.1, 7.7, 5.9], [0, 2.0, 2.0, 2.000001, 2.000001]])
    out = roipool.prroi_pool(x, rois, (3, 4))
    for k, (_, x1, y1, x2, y2) in enumerate(rois):
        yc = y1 + (np.arange(3) + 0.5) * (y2 - y1) / 3
        xc = x1 + (np.arange(4) + 0.5) * (x2 - x1) / 4
        np.testing.assert_allclose(out[k, 0], 0.5 * yc[:, None] - 0.25 * xc[None, :] + 2.0, rtol=1e-12)


def test_zero_area_boxes_give_zeros_and_no_gradient():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 3, 5, 5))
    rois = np.array([[0, 3, 1, 1, 4], [0, 1, 3, 4, 1], [0, 2, 1, 2, 4], [0, 1, 2.5, 4, 2.5]])
    out = roipool.prroi_pool(x, rois, 2)
    np.testing.assert_array_equal(out, 0.0)
    g = rng.standard_normal(out.shape)
    np.testing.assert_array_equal(roipool.prroi_pool_backward(g, rois, x.shape, 2), 0.0)
    np.testing.assert_array_equal(roipool.prroi_pool_boxes_backward(g, x, rois, 2), 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_input_backward_matches_reference_and_is_the_adjoint(dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 20, 7, 9)).astype(dtype)
    rois = np.concatenate([adversarial_rois(), random_rois(rng, 30, 2, 7, 9, 1.0)])
    out = roipool.prroi_pool(x, rois, (3, 2))
    g = rng.standard_normal(out.shape).astype(dtype)
    gx = roipool.prroi_pool_backward(g, rois, x.shape, (3, 2))
    assert gx.dtype == dtype
    np.testing.assert_allclose(gx, ref.prroi_pool_backward(g, rois.astype(dtype), x.shape, 1.0), **TOL[dtype])
    lhs, rhs = np.sum(g * out, dtype=np.float64), np.sum(gx * x, dtype=np.float64)
    assert np.isclose(lhs, rhs, rtol=1e-4 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_boxes_backward_matches_reference(dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 20, 7, 9)).astype(dtype)  # 20 channels: a partial channel block
    rois = np.concatenate([adversarial_rois(), random_rois(rng, 30, 2, 7, 9, 0.5)])
    out = roipool.prroi_pool(x, rois, (3, 2), 0.5)
    g = rng.standard_normal(out.shape).astype(dtype)
    gb = roipool.prroi_pool_boxes_backward(g, x, rois, (3, 2), 0.5)
    want = ref.prroi_pool_boxes_backward(g, x, rois.astype(dtype), 0.5)
    assert gb.shape == (len(rois), 5) and gb.dtype == dtype
    tiny = 3  # the reference's edge line integrals lose digits on a bin 1e-7 wide
    others = np.arange(len(rois)) != tiny
    tol = dict(rtol=2e-3, atol=2e-3) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(gb[others], want[others], **tol)
    np.testing.assert_allclose(gb[tiny], want[tiny], rtol=1e-6 if dtype == np.float64 else 1e-2, atol=1e-6)


def test_boxes_backward_matches_finite_differences():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 3, 6, 7))
    rois = np.array([[0, 0.4, -0.6, 5.3, 4.2], [0, 1.0, 2.0, 3.0, 3.5], [0, 5.7, 4.1, 7.9, 6.6]])
    g = rng.standard_normal((3, 3, 2, 3))
    gb = roipool.prroi_pool_boxes_backward(g, x, rois, (2, 3))
    h = 1e-6
    for k in range(3):
        for q in range(1, 5):
            up, down = rois.copy(), rois.copy()
            up[k, q] += h
            down[k, q] -= h
            fd = np.sum(g * (roipool.prroi_pool(x, up, (2, 3)) - roipool.prroi_pool(x, down, (2, 3)))) / (2 * h)
            assert abs(gb[k, q] - fd) < 1e-6 * max(1.0, abs(fd)), (k, q, gb[k, q], fd)


def test_a_bin_far_smaller_than_a_cell_has_the_exact_gradient():
    # inside one cell the interpolant is bilinear: a tiny bin's mean is its centre's
    # value and the box gradient is the interpolant's slope times the centre's weights
    x = np.array([[[[0.0, 1.0], [3.0, 7.0]]]], np.float32)  # F = x + 3y + 3xy in the cell
    roi = np.array([[0, 0.25, 0.5, 0.25 + 1e-6, 0.5 + 1e-6]], np.float32)
    gb = roipool.prroi_pool_boxes_backward(np.ones((1, 1, 1, 1), np.float32), x, roi, 1)
    fx, fy = 1 + 3 * 0.5, 3 + 3 * 0.25
    np.testing.assert_allclose(gb[0, 1:], [fx / 2, fy / 2, fx / 2, fy / 2], rtol=1e-4)


def test_huge_boxes_average_the_whole_interpolant():
    # each cell's hat function integrates to 1, so a box holding the whole
    # support averages to sum(input) / area
    rng = np.random.default_rng(7)
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((1, 4, 5, 6)).astype(dtype)
        out = roipool.prroi_pool(x, np.array([[0, -1e6, -1e6, 1e6, 1e6]]), 1)
        want = x.sum(axis=(2, 3), dtype=np.float64) / 4e12
        np.testing.assert_allclose(out[0, :, 0, 0], want[0], rtol=1e-4 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_finite_input_never_gives_nan_or_inf(dtype):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 3, 4, 5)).astype(dtype)
    values = np.array([-1e30, -7.0, -1.0, -1e-30, 0.0, 1e-40, 1e-30, 0.5, 1.0, 4.0, 1e30], dtype)
    rois = np.column_stack([np.zeros(400), rng.choice(values, (400, 4))]).astype(dtype)
    out = roipool.prroi_pool(x, rois, (2, 3))
    g = np.ones_like(out)
    assert np.isfinite(out).all()
    assert np.isfinite(roipool.prroi_pool_backward(g, rois, x.shape, (2, 3))).all()
    assert np.isfinite(roipool.prroi_pool_boxes_backward(g, x, rois, (2, 3))).all()


def test_backwards_are_deterministic_and_independent_of_thread_count(monkeypatch):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 70, 10, 12)).astype(np.float32)  # 70 channels: full and partial blocks
    rois = random_rois(rng, 150, 2, 10, 12, 1.0)
    g = rng.standard_normal((150, 70, 3, 3)).astype(np.float32)
    before = roipool.get_num_threads()
    results = []
    try:
        for threads in sorted({1, min(2, before), before}):  # before is NUMBA_NUM_THREADS, the most
            roipool.set_num_threads(threads)
            for _ in range(2):
                results.append(
                    (
                        roipool.prroi_pool_backward(g, rois, x.shape, 3),
                        roipool.prroi_pool_boxes_backward(g, x, rois, 3),
                    )
                )
    finally:
        roipool.set_num_threads(before)
    # the thread count picks the input backward's channel block (RoIAlign's launcher): try each kind
    for block in (128, 48, 16):
        monkeypatch.setattr(align_kernels, "channel_block", lambda *args, block=block: block)
        results.append((roipool.prroi_pool_backward(g, rois, x.shape, 3), results[0][1]))
    for gx, gb in results[1:]:
        np.testing.assert_array_equal(gx, results[0][0])
        np.testing.assert_array_equal(gb, results[0][1])


def test_layouts_dtypes_and_box_lists_agree():
    rng = np.random.default_rng(10)
    base = rng.standard_normal((2, 6, 7, 9))
    rois = random_rois(rng, 12, 2, 7, 9, 1.0)
    rois = rois[np.argsort(rois[:, 0], kind="stable")]
    want = roipool.prroi_pool(base, rois, (2, 3))
    for x in (
        np.ascontiguousarray(base.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2),  # channels-last memory
        np.repeat(base, 2, axis=3)[..., ::2],  # strided
        base.astype(">f8"),  # byte-swapped
    ):
        np.testing.assert_allclose(roipool.prroi_pool(x, rois, (2, 3)), want, rtol=1e-13, atol=1e-14)
    as_list = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    np.testing.assert_array_equal(roipool.prroi_pool(base, as_list, (2, 3)), want)
    half = roipool.prroi_pool(base.astype(np.float16), rois, (2, 3))
    assert half.dtype == np.float16
    np.testing.assert_allclose(half, want, rtol=2e-2, atol=2e-2)
    g = rng.standard_normal(want.shape)
    gb_list = roipool.prroi_pool_boxes_backward(g, base, as_list, (2, 3))
    gb = roipool.prroi_pool_boxes_backward(g, base, rois, (2, 3))
    assert [p.shape for p in gb_list] == [(int((rois[:, 0] == i).sum()), 4) for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(gb_list), gb[:, 1:])
    np.testing.assert_array_equal(gb[:, 0], 0)


def test_inputs_are_not_modified_and_read_only_inputs_work():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 3, 5, 5))
    rois = np.array([[0, 0.5, 0.5, 3.5, 4.0]])
    g = rng.standard_normal((1, 3, 2, 2))
    copies = [a.copy() for a in (x, rois, g)]
    for a in (x, rois, g):
        a.setflags(write=False)
    roipool.prroi_pool(x, rois, 2)
    roipool.prroi_pool_backward(g, rois, x.shape, 2)
    roipool.prroi_pool_boxes_backward(g, x, rois, 2)
    for a, c in zip((x, rois, g), copies, strict=True):
        np.testing.assert_array_equal(a, c)


def test_empty_box_sets_channels_and_maps():
    x = np.ones((2, 3, 4, 5), np.float32)
    empty = np.zeros((0, 5))
    assert roipool.prroi_pool(x, empty, (2, 3)).shape == (0, 3, 2, 3)
    assert roipool.prroi_pool(x, [np.zeros((0, 4)), np.zeros((0, 4))], 2).shape == (0, 3, 2, 2)
    g = np.zeros((0, 3, 2, 3), np.float32)
    np.testing.assert_array_equal(roipool.prroi_pool_backward(g, empty, x.shape, (2, 3)), np.zeros(x.shape))
    assert roipool.prroi_pool_boxes_backward(g, x, empty, (2, 3)).shape == (0, 5)
    assert roipool.prroi_pool(np.ones((1, 0, 4, 4)), np.array([[0, 0, 0, 2, 2]]), 2).shape == (1, 0, 2, 2)
    np.testing.assert_array_equal(roipool.prroi_pool(np.ones((1, 2, 0, 0)), np.array([[0, 0, 0, 2, 2]]), 2), 0)


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda x, r, g: roipool.prroi_pool(x.astype(int), r, 2), TypeError, "input"),
        (lambda x, r, g: roipool.prroi_pool(x[0], r, 2), ValueError, "input"),
        (lambda x, r, g: roipool.prroi_pool(x, r[:, 1:], 2), ValueError, "boxes"),
        (lambda x, r, g: roipool.prroi_pool(x, r + [5, 0, 0, 0, 0], 2), ValueError, "batch index"),
        (lambda x, r, g: roipool.prroi_pool(x, r * [1, np.nan, 1, 1, 1], 2), ValueError, "NaN"),
        (lambda x, r, g: roipool.prroi_pool(x, r, 0), ValueError, "output_size"),
        (lambda x, r, g: roipool.prroi_pool(x, r, (2, 2.0)), TypeError, "output_size"),
        (lambda x, r, g: roipool.prroi_pool(x, r, 2, -1.0), ValueError, "spatial_scale"),
        (
            lambda x, r, g: roipool.prroi_pool(x.astype(np.float32), r * [1, 1e38, 1, 1, 1], 2, 10.0),
            ValueError,
            "overflows",
        ),
        (lambda x, r, g: roipool.prroi_pool_backward(g[:, :1], r, x.shape, 2), ValueError, "grad_output"),
        (lambda x, r, g: roipool.prroi_pool_backward(g, r, x.shape, 3), ValueError, "grad_output"),
        (lambda x, r, g: roipool.prroi_pool_backward(g.astype(int), r, x.shape, 2), TypeError, "grad_output"),
        (lambda x, r, g: roipool.prroi_pool_backward(g, r, (1, 3, 5), 2), ValueError, "input_shape"),
        (lambda x, r, g: roipool.prroi_pool_boxes_backward(g, x, r[:1], 2), ValueError, "grad_output"),
        (lambda x, r, g: roipool.prroi_pool_boxes_backward(list(g), x, r, 2), TypeError, "grad_output"),
        (lambda x, r, g: roipool.prroi_pool_boxes_backward(g, x.tolist(), r, 2), TypeError, "input"),
    ],
)
def test_bad_arguments_are_named(call, error, words):
    x = np.ones((1, 3, 5, 5))
    rois = np.array([[0, 0.5, 0.5, 3.5, 4.0], [0, 1, 1, 2, 2]])
    g = np.ones((2, 3, 2, 2))
    with pytest.raises(error, match=words):
        call(x, rois, g)


def test_the_first_box_whose_scaled_extent_overflows_is_named():
    # box 1's corners are finite in float32, their difference is not; box 2 overflows too, later
    x = np.ones((1, 2, 5, 5), np.float32)
    rois = np.array([[0, 0, 0, 2, 2], [0, -3e38, 0, 3e38, 1], [0, 1e38, 1, 2, 2]], np.float32)
    with pytest.raises(ValueError, match=r"boxes: box 1 .* overflows float32"):
        roipool.prroi_pool(x, rois, 2)
    rois[1] = [0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match=r"boxes: box 2 .* times spatial_scale 4.0 overflows float32"):
        roipool.prroi_pool(x, rois, 2, 4.0)
    assert np.isfinite(roipool.prroi_pool(x, rois[[0, 0]], 2)).all()


def test_concurrent_calls_from_python_threads_give_the_same_results():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 20, 8, 8))
    rois = random_rois(rng, 30, 2, 8, 8, 1.0)
    want = roipool.prroi_pool(x, rois, 3)
    results, errors = run_in_threads(lambda i: roipool.prroi_pool(x, rois, 3), 6)
    assert not errors
    for r in results:
        np.testing.assert_array_equal(r, want)


def test_worked_example_of_the_docs_centres_the_box_on_the_blob():
    # docs/prroi_pool.md: gradient ascent on a centre-minus-surround score
    yy, xx = np.mgrid[0:40, 0:48]
    feature = np.exp(-(((xx - 27.5) / 6) ** 2 + ((yy - 20.0) / 6) ** 2))[None, None]
    template = np.full((3, 3), -1 / 8)
    template[1, 1] = 1.0
    box = np.array([[0, 14.0, 10.0, 30.0, 22.0]])
    for _ in range(41):
        pooled = roipool.prroi_pool(feature, box, 3)
        score = float((pooled[0, 0] * template).sum())
        grad = roipool.prroi_pool_boxes_backward(template[None, None] * np.ones_like(pooled), feature, box, 3)
        box[:, 1:] += 20.0 * grad[:, 1:]
    assert round(score, 4) == 0.6245  # the last line of the documented output
    np.testing.assert_allclose([(box[0, 1] + box[0, 3]) / 2, (box[0, 2] + box[0, 4]) / 2], [27.5, 20.0], atol=0.02)
